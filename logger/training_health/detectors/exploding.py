"""exploding_gradients: gradient norms blow up."""

import statistics

from training_health.detectors import hints
from training_health.detectors.base import (
    MODEL, Detector, Finding, check_float, check_int, finite)


class ExplodingGradientsDetector(Detector):
    """Raises `exploding_gradients` when the global gradient norm blows up.

    The reference is the median gradient norm (and loss) of the first
    `reference_observations` logged steps (of those seen so far, before
    that many have been). Evidence, any of which suffices:

    - growth: the gradient norm is `growth` times its reference while the
      loss is at least twice its own reference (a gradient that grows
      while the loss falls is a net leaving a flat start, not an explosion);
    - size: the gradient norm is above `max_grad_norm` while the loss is
      not below its reference (a model on unscaled targets can have large
      gradients and still learn);
    - conclusive at once, without waiting for `patience`: the norm is above
      100 x `max_grad_norm`, or `growth`^2 times its reference with the loss
      10 times its own, or the gradients overflow to NaN/Inf right after a
      logged step that had grown `growth`^0.5 times or met the evidence
      above (`nan_inf` is raised too).

    Args:
        growth: growth factor over the reference. Defaults to 100: healthy
            runs keep the gradient norm within ~10x of its early value while
            the loss falls; a diverging run multiplies it by orders of
            magnitude within a few steps.
        max_grad_norm: absolute bound. Defaults to 1e4: Keras losses are
            averaged over the batch, so with scaled inputs gradient norms of
            healthy models sit around 1e-2..1e2 (raw 0..255 pixels give up
            to ~1e3).
        reference_observations: logged steps in the reference. Defaults to
            10.
        patience: steps the condition must last. Defaults to 5: a single
            spiky batch is not an explosion.
        min_observations: logged steps it must hold on. Defaults to 2.
        clear_patience: steps back under the bounds that close the episode.
            Defaults to 50.
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
        self._early_grads = []
        self._early_losses = []
        self._previous_growth = 0.0  # growth factor at the last finite step
        self._previous_flagged = False  # the last finite step was above the bounds
        self._previous_norm = float("nan")

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
        loss = stats.global_values.get("loss")
        if g is None:
            return {}
        g = float(g)
        ref_grad = statistics.median(self._early_grads) if self._early_grads else None
        ref_loss = statistics.median(self._early_losses) if self._early_losses else None
        if not finite(g) or _has_nonfinite_gradients(stats):
            grew, self._previous_growth = self._previous_growth, 0.0
            flagged, self._previous_flagged = self._previous_flagged, False
            if grew >= self.growth ** 0.5 or flagged:
                return {MODEL: Finding(
                    "critical",
                    "gradient norm reached %.3g (%.0fx its early median), then the "
                    "gradients overflowed to NaN/Inf at step %d" % (self._previous_norm, grew, step),
                    hints.hint_for(self.kind, stats, first=self.first_stats),
                    immediate=True,
                )}
            return {}
        loss = float(loss) if loss is not None else float("nan")
        if len(self._early_grads) < self.reference_observations:
            self._early_grads.append(g)
            if finite(loss):
                self._early_losses.append(loss)
        growth = g / ref_grad if ref_grad else 0.0
        self._previous_growth = growth
        self._previous_norm = g
        if not finite(loss):
            loss_growth = float("inf")
        elif ref_loss is None:
            loss_growth = 1.0  # first step: the loss has not fallen
        else:
            loss_growth = loss / ref_loss if ref_loss > 0 else 0.0
        reasons = []
        immediate = g > 100 * self.max_grad_norm
        if g > self.max_grad_norm and (immediate or loss_growth >= 1.0):
            reasons.append("above %.0e" % self.max_grad_norm)
        if growth > self.growth and loss_growth >= 2.0:
            reasons.append("%.0fx its early median %.3g while the loss rose %.3gx"
                           % (growth, ref_grad, loss_growth))
            immediate = immediate or (growth > self.growth ** 2 and loss_growth >= 10.0)
        self._previous_flagged = bool(reasons)
        if not reasons:
            return {MODEL: None}
        largest = self._largest_layer(stats)
        where = " (largest in %s: %.3g)" % largest if largest else ""
        return {MODEL: Finding(
            "critical" if immediate else "warning",
            "gradient norm %.3g at step %d, %s%s" % (g, step, " and ".join(reasons), where),
            hints.hint_for(self.kind, stats, first=self.first_stats),
            layer=largest[0] if largest else None,
            immediate=immediate,
        )}


def _has_nonfinite_gradients(stats):
    """Whether any gradient entry of the step was NaN/Inf (by the logged counts)."""
    count = stats.global_values.get("grad_nonfinite")
    if finite(count) and float(count) >= 1:
        return True
    if "grad_nonfinite" not in stats.layer_stats:
        return False
    counts = stats.column("grad_nonfinite")
    return any(finite(c) and float(c) >= 1 for c in counts)
