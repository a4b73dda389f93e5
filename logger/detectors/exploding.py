"""exploding_gradients: gradient norms blow up."""

import statistics

from training_health import hints
from training_health.detectors.base import (
    MODEL, Detector, Finding, check_float, check_int, finite)


class ExplodingGradientsDetector(Detector):
    """Raises `exploding_gradients` when the global gradient norm blows up.

    Three pieces of evidence, any of which suffices:

    - growth: the global gradient norm is `growth` times its reference (the
      median of the first `reference_observations` logged steps);
    - size: the global gradient norm is above `max_grad_norm`;
    - overflow: the gradients become non-finite right after a logged step
      with growth above `growth ** 0.5` (raised at once, even as `nan_inf`
      is raised too).

    Args:
        growth: growth factor over the reference. Defaults to 100: healthy
            runs keep the gradient norm within ~10x of its early value (it
            usually shrinks as the loss falls); a diverging run multiplies it
            by orders of magnitude within a few steps.
        max_grad_norm: absolute bound. Defaults to 1e4: Keras losses are
            averaged over the batch, so with scaled inputs gradient norms of
            healthy models sit around 1e-2..1e2 (raw 0..255 pixels give up to
            ~1e3).
        reference_observations: logged steps averaged into the reference.
            Defaults to 10.
        patience: steps the condition must last. Defaults to 5: a single
            spiky batch is not an explosion, but a diverging run overflows
            to NaN within tens of steps, so we cannot wait long.
        min_observations: logged steps it must hold on. Defaults to 2.
        clear_patience: steps back under the bounds that close the
            episode. Defaults to 50.
        start_from_step: no alert before this step. Defaults to 0.
    """

    kind = "exploding_gradients"

    def __init__(self, growth=100.0, max_grad_norm=1e4, reference_observations=10,
                 patience=5, min_observations=2, clear_patience=50, start_from_step=0):
        super().__init__(patience, min_observations, clear_patience, start_from_step)
        self.growth = check_float("growth", growth, 1.0, low_open=True)
        self.max_grad_norm = check_float("max_grad_norm", max_grad_norm, 0.0, low_open=True)
        self.reference_observations = check_int(
            "reference_observations", reference_observations, minimum=1)
        self._reset_state()

    def _reset_state(self):
        self._early = []
        self._reference = None
        self._previous = None  # last finite global gradient norm

    def _largest_layer(self, stats):
        names = stats.layer_stats
        best = None
        for i, info in enumerate(stats.layers):
            g = float(stats.layer_values[i, names.index("grad_norm")])
            if info.has_weights and finite(g) and (best is None or g > best[1]):
                best = (info.name, g)
        return best

    def _evaluate(self, step, stats):
        g = stats.global_values.get("grad_norm")
        if g is None:
            return {}
        g = float(g)
        if not finite(g):
            previous, reference = self._previous, self._reference
            self._previous = None
            if (previous is not None and reference
                    and previous >= reference * self.growth ** 0.5):
                return {MODEL: Finding(
                    "critical",
                    "gradient norm grew from %.3g to %.3g, then overflowed to %s at step %d"
                    % (reference, previous, g, step),
                    hints.hint_for(self.kind, stats),
                    immediate=True,
                )}
            return {}
        self._previous = g
        if self._reference is None:
            self._early.append(g)
            if len(self._early) >= self.reference_observations:
                self._reference = statistics.median(self._early)
        reasons = []
        if g > self.max_grad_norm:
            reasons.append("above %.0e" % self.max_grad_norm)
        if self._reference and g > self.growth * self._reference:
            reasons.append("%.0fx its early median %.3g" % (g / self._reference, self._reference))
        if not reasons:
            return {MODEL: None}
        largest = self._largest_layer(stats)
        where = " (largest in %s: %.3g)" % largest if largest else ""
        return {MODEL: Finding(
            "critical" if g > 100 * self.max_grad_norm else "warning",
            "gradient norm %.3g at step %d, %s%s" % (g, step, " and ".join(reasons), where),
            hints.hint_for(self.kind, stats),
            layer=largest[0] if largest else None,
        )}
