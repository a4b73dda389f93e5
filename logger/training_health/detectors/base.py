"""What every detector shares: knob checks, persistence and episodes.

A detector looks at one logged step at a time (`update(step, stats)`) and
says, for each thing it watches (a layer, or the whole model), whether its
condition holds *now*. This base class turns those instantaneous findings
into alerts:

- persistence: a condition must hold on consecutive logged steps spanning at
  least `patience` steps (batches) and on at least `min_observations` of
  them before it is reported, so one odd batch never raises anything;
- episodes: one `Alert` per (kind, layer) episode. While an episode is open
  nothing more is raised for that key; once the condition has been false on
  consecutive steps spanning `clear_patience` steps, a record with
  `cleared=True` closes the episode and a later recurrence opens a new one.

Steps may be spaced (the logger can log every N batches): every span here is
measured in steps (batches), not in observations.
"""

import dataclasses
import math

import numpy as np

from training_health.records import Alert


@dataclasses.dataclass
class Finding:
    """A condition that holds at the current step for one key.

    Attributes:
        severity: "warning" or "critical".
        message: what was measured, with the numbers.
        hint: likely causes and fixes (see `training_health.detectors.hints`).
        layer: layer name reported in the alert (None: model-wide). Defaults to
            the key when the key is a layer name.
        immediate: the evidence is conclusive on its own: raise without
            waiting for `patience`. Defaults to False.
    """

    severity: str
    message: str
    hint: str = ""
    layer: object = None
    immediate: bool = False


MODEL = "__model__"  # key of model-wide conditions


def check_int(name, value, minimum=0):
    """Returns `value` as an int, or raises ValueError naming the knob."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value != int(value)):
        raise ValueError("%s must be an integer; received %r" % (name, value))
    if value < minimum:
        raise ValueError("%s must be >= %d; received %r" % (name, minimum, value))
    return int(value)


def check_float(name, value, low=None, high=None, low_open=False):
    """Returns `value` as a float in [low, high] (or (low, high]), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError("%s must be a number; received %r" % (name, value))
    number = float(value)
    if low is not None and (number < low or (low_open and number == low)):
        raise ValueError(
            "%s must be %s %g; received %r" % (name, ">" if low_open else ">=", low, value)
        )
    if high is not None and number > high:
        raise ValueError("%s must be <= %g; received %r" % (name, high, value))
    return number


class _Track:
    """Per-key state: the current streak of true (or false) observations."""

    __slots__ = ("true_since", "true_count", "false_since", "open", "layer", "severity")

    def __init__(self):
        self.true_since = None
        self.true_count = 0
        self.false_since = None
        self.open = False
        self.layer = None  # layer and severity of the open episode
        self.severity = None


class Detector:
    """Base class: subclasses implement `_evaluate(step, stats)`.

    Args:
        patience: the condition must hold on logged steps spanning at least
            this many steps (batches) before an alert is raised.
        min_observations: ...and on at least this many logged steps.
        clear_patience: an open episode is closed (a `cleared=True` record)
            once the condition has been false on logged steps spanning this
            many steps.
        start_from_step: no alert is raised before this step (statistics are
            still observed, so windows fill up). Defaults to 0.
    """

    kind = None

    def __init__(self, patience, min_observations, clear_patience, start_from_step=0):
        self.patience = check_int("patience", patience)
        self.min_observations = check_int("min_observations", min_observations, minimum=1)
        self.clear_patience = check_int("clear_patience", clear_patience)
        self.start_from_step = check_int("start_from_step", start_from_step)
        self._tracks = {}
        self._last_step = None
        # The run's first logged step: at step 0 its numbers describe the
        # initial weights, before any update (hints weigh them first).
        self.first_stats = None

    def reset(self):
        """Forgets everything seen (call at the start of training)."""
        self._tracks = {}
        self._last_step = None
        self.first_stats = None
        self._reset_state()

    def _reset_state(self):
        """Subclasses clear their own history here."""

    def _evaluate(self, step, stats):
        """Returns {key: Finding or None} for every key observed at `step`.

        A key absent from the result was not measured at this step and keeps
        its state; None means "observed, condition false".
        """
        raise NotImplementedError

    def update(self, step, stats):
        """Looks at one logged step; returns the alerts it raises or clears.

        Args:
            step: the global step of `stats` (only increases; a step that does
                not is taken as the start of a new run and resets the state).
            stats: a `records.StepStats`.

        Returns:
            A list of `records.Alert` (possibly empty).
        """
        step = int(step)
        if self._last_step is not None and step <= self._last_step:
            self.reset()
        self._last_step = step
        if self.first_stats is None:
            self.first_stats = stats
        findings = self._evaluate(step, stats)
        alerts = []
        for key, finding in findings.items():
            track = self._tracks.get(key)
            if track is None:
                track = self._tracks[key] = _Track()
            if finding is not None:
                track.false_since = None
                if track.true_since is None:
                    track.true_since = step
                    track.true_count = 0
                track.true_count += 1
                if (
                    not track.open
                    and step >= self.start_from_step
                    and (
                        finding.immediate
                        or (
                            step - track.true_since >= self.patience
                            and track.true_count >= self.min_observations
                        )
                    )
                ):
                    track.open = True
                    alert = self._alert(key, step, finding)
                    track.layer, track.severity = alert.layer, alert.severity
                    alerts.append(alert)
            else:
                track.true_since = None
                track.true_count = 0
                if track.open:
                    if track.false_since is None:
                        track.false_since = step
                    if step - track.false_since >= self.clear_patience:
                        track.open = False
                        track.false_since = None
                        alerts.append(self._cleared(track, step))
        return alerts

    def _alert(self, key, step, finding):
        layer = finding.layer if finding.layer is not None else (None if key == MODEL else key)
        return Alert(
            kind=self.kind,
            step=step,
            layer=layer,
            severity=finding.severity,
            message=finding.message,
            hint=finding.hint,
        )

    def _cleared(self, track, step):
        return Alert(
            kind=self.kind,
            step=step,
            layer=track.layer,
            severity=track.severity,
            message="%s no longer observed at step %d" % (self.kind.replace("_", " "), step),
            hint="",
            cleared=True,
        )


class StepWindow:
    """The rows of the latest steps of a windowed condition, as one float64
    array (detectors compute over whole columns).

    Rows are appended at the end and dropped from the front (`trim`,
    `drop_before`); both are amortized O(1), and `values()` is a view, not
    a copy.

    Args:
        width: number of values per row.
    """

    def __init__(self, width):
        self.width = int(width)
        self.clear()

    def clear(self):
        self._steps = np.zeros(64, np.int64)
        self._values = np.zeros((64, self.width), np.float64)
        self._start = self._end = 0

    def __len__(self):
        return self._end - self._start

    def append(self, step, row):
        if self._end == len(self._steps):
            n = len(self)
            capacity = max(64, 2 * n)
            steps = np.zeros(capacity, np.int64)
            values = np.zeros((capacity, self.width), np.float64)
            steps[:n] = self._steps[self._start:self._end]
            values[:n] = self._values[self._start:self._end]
            self._steps, self._values, self._start, self._end = steps, values, 0, n
        self._steps[self._end] = step
        self._values[self._end] = row
        self._end += 1

    def add_column(self, fill=float("nan")):
        """Widens every row by one value (`fill` for the rows already held)."""
        column = np.full((len(self._steps), 1), fill, np.float64)
        self._values = np.concatenate([self._values, column], axis=1)
        self.width += 1

    def trim(self, step, window, min_observations):
        """Drops the oldest rows that are not needed for a window of `window`
        steps ending at `step` holding at least `min_observations` rows.

        Returns True when what is left spans the window (to within the
        spacing of the last two rows) and has enough rows, i.e. when a
        windowed condition can be judged.
        """
        steps = self._steps
        while self._end - self._start > min_observations and steps[self._start + 1] <= step - window:
            self._start += 1
        n = len(self)
        if n < min_observations:
            return False
        spacing = int(steps[self._end - 1] - steps[self._end - 2]) if n > 1 else 0
        return step - int(steps[self._start]) >= window - spacing

    def drop_before(self, step):
        """Drops the rows of steps before `step`."""
        self._start += int(np.searchsorted(self._steps[self._start:self._end], step))

    def first_step(self):
        return int(self._steps[self._start])

    def values(self):
        """[rows, width] view of the rows held, oldest first."""
        return self._values[self._start:self._end]


def finite(x):
    """True for a real, finite number."""
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def weighted_rows(stats):
    """Indices of layers that have trainable weights (gradient statistics)."""
    return [i for i, info in enumerate(stats.layers) if info.has_weights]


def output_rows(stats):
    """Indices of layers treated as model outputs.

    A layer is an output when its LayerInfo says so (`is_output`), else the
    last layer whose activation was captured is.
    """
    flagged = [i for i, info in enumerate(stats.layers) if getattr(info, "is_output", False)]
    if flagged:
        return flagged
    captured = [i for i, info in enumerate(stats.layers) if info.has_activation]
    return captured[-1:]
