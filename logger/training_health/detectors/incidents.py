"""Incidents: alerts that follow from an earlier one, grouped under it.

One root cause often raises a wall of alerts: gradients explode at step 3,
the loss turns NaN, then the ReLUs of every layer die and training stalls.
`Incidents` reads the alert sequence of a run in order and gives each alert
an `incident` number and, for a consequence, `caused_by`: the reference
(`ref`) of the alert it follows from. The same class runs online (inside
`DetectorSuite.update`, so the logger writes the fields into the event
files) and offline (`training-health check`, `watch`, the TensorBoard tab),
so every place shows the same incidents.

An alert follows from an earlier one when:

- its kind is a known consequence of the earlier alert's kind
  (`CONSEQUENCES`: NaN after an explosion, dead units after a divergence,
  a stall after dead units, ...), and
- the earlier alert's episode is still open at the later alert's step, or
  closed no more than `horizon` steps before it (the windowed detectors
  judge up to ~50-100 steps of evidence, so a consequence can be raised
  after its cause has cleared).

Among the alerts it may follow from, the earliest is taken: the
consequence joins the incident of the first cause, as a user reads it.
Alerts of the same step are taken cause first (`CAUSE_ORDER`): an
explosion and the NaN it produced are often raised at one step.

Pure: no I/O, no framework.
"""

import dataclasses

# kind -> the kinds it leads to. Each entry is a mechanism:
# - exploding gradients: weights jump, so the loss overflows (nan_inf),
#   ReLU pre-activations are pushed below zero (dead_units), bounded units
#   are pinned (saturation) and backpropagate nothing (vanishing), the model
#   ends up answering one thing (constant_output) and stops (stalled), or
#   the loss jumps around (oscillating_loss);
# - a learning rate too high shows first as oscillation, then as the same;
# - NaN weights make every later statistic of the layers meaningless;
# - dead units pass no signal: the output no longer depends on the input
#   (saturation's constant answer, constant_output), no gradient reaches the
#   layers before them (vanishing) and training stalls;
# - pinned units pass no gradient (vanishing) and may fix the output;
# - vanishing gradients: the first layers stop learning (stalled);
# - an output that does not depend on its input cannot lower the loss.
CONSEQUENCES = {
    "exploding_gradients": ("nan_inf", "dead_units", "saturation", "vanishing_gradients",
                            "constant_output", "stalled", "oscillating_loss"),
    "oscillating_loss": ("exploding_gradients", "nan_inf", "dead_units", "saturation",
                         "constant_output", "stalled"),
    "nan_inf": ("dead_units", "saturation", "vanishing_gradients", "constant_output", "stalled"),
    "dead_units": ("saturation", "vanishing_gradients", "constant_output", "stalled"),
    "saturation": ("vanishing_gradients", "constant_output", "stalled"),
    "vanishing_gradients": ("saturation", "constant_output", "stalled"),
    "constant_output": ("saturation", "stalled"),
    "stalled": ("constant_output",),
    "overfitting": (),
}
# Within one step, causes before consequences.
CAUSE_ORDER = ("exploding_gradients", "oscillating_loss", "nan_inf", "saturation", "dead_units",
               "vanishing_gradients", "constant_output", "stalled", "overfitting")


# A consequence is shown on one line: its message up to the first "; ",
# cut to this many characters.
SHORT_MESSAGE = 100


def short_line(alert):
    """One line for an alert that follows from another (no hint: its
    incident's first alert has the one that matters)."""
    where = " in %s" % alert.layer if alert.layer else ""
    message = alert.message.split("; ")[0]
    if len(message) > SHORT_MESSAGE:
        message = message[:SHORT_MESSAGE - 3] + "..."
    return "step %d %s %s%s: %s" % (alert.step, alert.severity, alert.kind, where, message)


def ref(alert):
    """A short reference to one alert: "kind@step", or "kind@step/layer"."""
    text = "%s@%d" % (alert.kind, alert.step)
    return text + "/" + alert.layer if alert.layer else text


def _rank(kind):
    return CAUSE_ORDER.index(kind) if kind in CAUSE_ORDER else len(CAUSE_ORDER)


def cause_first(alerts):
    """`alerts` sorted by step, causes before consequences within a step
    (stable otherwise)."""
    return sorted(alerts, key=lambda a: (a.step, _rank(a.kind)))


class Incidents:
    """Gives each alert of one run its incident (see the module docstring).

    Args:
        horizon: steps after an episode closed during which a new alert can
            still follow from it. Defaults to 100: twice the longest window
            of the default detectors (50 steps), so a windowed detector's
            evidence that began while the cause was open still counts.
    """

    def __init__(self, horizon=100):
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 0:
            raise ValueError("horizon must be an integer >= 0 (steps); received %r" % (horizon,))
        self.horizon = horizon
        self.reset()

    def reset(self):
        """Forgets every alert seen (a new run)."""
        self._count = 0
        self._open = {}  # (kind, layer) -> the annotated alert of the open episode
        self._closed = []  # (annotated alert, step at which its episode closed)
        self._last_step = None

    def assign(self, alerts):
        """Annotates alerts (raised or cleared) that come after those seen.

        Args:
            alerts: `records.Alert`s in step order (e.g. the alerts of one
                step); those of one step are taken cause first.

        Returns:
            The alerts, cause first within a step, each a copy with
            `incident` (1, 2, ... in order of the incidents' first alerts) and
            `caused_by` (`ref` of the alert it follows from; None for the
            first alert of an incident). A cleared record gets the fields of
            the alert whose episode it closes.
        """
        out = []
        for alert in cause_first(alerts):
            if self._last_step is not None and alert.step < self._last_step:
                self.reset()  # the step went back: another run
            self._last_step = alert.step
            out.append(self._one(alert))
        return out

    def _one(self, alert):
        key = (alert.kind, alert.layer)
        if alert.cleared:
            opened = self._open.pop(key, None)
            if opened is None:
                return dataclasses.replace(alert, incident=None, caused_by=None)
            self._closed.append((opened, alert.step))
            return dataclasses.replace(alert, incident=opened.incident,
                                       caused_by=opened.caused_by)
        cause = self._cause_of(alert)
        if cause is None:
            self._count += 1
            annotated = dataclasses.replace(alert, incident=self._count, caused_by=None)
        else:
            annotated = dataclasses.replace(alert, incident=cause.incident, caused_by=ref(cause))
        self._open[key] = annotated
        return annotated

    def _cause_of(self, alert):
        """The earliest alert that `alert` can follow from, or None."""
        candidates = list(self._open.values())
        self._closed = [(a, closed) for a, closed in self._closed
                        if alert.step - closed <= self.horizon]
        candidates.extend(a for a, _ in self._closed)
        candidates = [a for a in candidates
                      if alert.kind in CONSEQUENCES.get(a.kind, ())
                      and (a.kind, a.layer) != (alert.kind, alert.layer)]
        if not candidates:
            return None
        return min(candidates, key=lambda a: (a.step, _rank(a.kind)))


def group(alerts, horizon=100):
    """The alerts of one run (raised and cleared, any order) annotated with
    their incidents by a fresh `Incidents`; cause first within a step."""
    return Incidents(horizon).assign(alerts)


def by_incident(alerts):
    """Raised alerts grouped: [(root alert, [consequences in step order])],
    in order of the roots' steps. Alerts without an incident number are
    their own incident."""
    groups = {}
    order = []
    for alert in alerts:
        if alert.cleared:
            continue
        key = alert.incident if alert.incident is not None else ("alone", id(alert))
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(alert)
    out = []
    for key in order:
        members = groups[key]
        root = next((a for a in members if a.caused_by is None), members[0])
        out.append((root, [a for a in members if a is not root]))
    return out

