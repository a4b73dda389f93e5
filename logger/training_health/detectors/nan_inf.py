"""nan_inf: a non-finite loss, gradient, weight, activation or input."""

import math

from training_health.detectors import hints
from training_health.detectors.base import MODEL, Detector, Finding, finite


def _count(x):
    """A NaN/Inf count as a float; NaN (not measured) or < 1 counts as 0."""
    return float(x) if finite(x) and float(x) >= 1 else 0.0


class NanInfDetector(Detector):
    """Raises `nan_inf` (critical) the first step anything is NaN or Inf.

    One model-wide episode; its `layer` names where the non-finite values
    start: None when the inputs or only the loss are affected, else the first
    layer (in model order) with non-finite activations, gradients or weights.

    A NaN loss is also how a run without a loss reads (a PyTorch loop that
    calls `step()` without one): until the run has logged a finite loss, a
    NaN loss counts only together with other non-finite values at the same
    step (a NaN loss that was back-propagated makes the gradients NaN). An
    infinite loss always counts.

    Args:
        patience: steps the condition must last before the alert. Defaults to
            0: a single non-finite value is conclusive (no healthy run has
            one; Keras's `TerminateOnNaN` also acts on the first).
        clear_patience: steps of finite values that close the episode.
            Defaults to 200, so a run whose data holds a few NaN rows (NaN
            in one batch of tens) keeps one open episode instead of many.
        start_from_step: no alert before this step. Defaults to 0.
    """

    kind = "nan_inf"

    def __init__(self, patience=0, clear_patience=200, start_from_step=0):
        super().__init__(patience, 1, clear_patience, start_from_step)
        self._loss_logged = False  # a finite loss seen: from then on a NaN one is a NaN

    def _reset_state(self):
        self._loss_logged = False

    def _evaluate(self, step, stats):
        g = stats.global_values
        parts = []
        origin = None
        n_inputs = _count(g.get("input_nonfinite"))
        if n_inputs:
            parts.append("%d NaN/Inf input values" % n_inputs)
        loss = g.get("loss")
        loss_bad = loss is not None and not finite(loss)
        if loss_bad:
            parts.append("loss %s" % float(loss))
        elif loss is not None:
            self._loss_logged = True
        n_grad = _count(g.get("grad_nonfinite"))
        if n_grad:
            parts.append("%d NaN/Inf gradient entries" % n_grad)
        names = stats.layer_stats
        for i, info in enumerate(stats.layers):
            row = stats.layer_values[i]
            what = []
            if "act_nonfinite" in names and _count(row[names.index("act_nonfinite")]):
                what.append("activations")
            if "grad_nonfinite" in names and _count(row[names.index("grad_nonfinite")]):
                what.append("gradients")
            if info.has_weights and "weight_norm" in names:
                # NaN means "not measured"; NaN weights show as NaN/Inf gradients.
                norm = float(row[names.index("weight_norm")])
                if norm in (float("inf"), float("-inf")):
                    what.append("weights")
            if what:
                if origin is None:
                    origin = info.name
                    parts.append("first non-finite layer: %s (%s)" % (info.name, ", ".join(what)))
        if loss_bad and len(parts) == 1 and math.isnan(float(loss)) and not self._loss_logged:
            parts = []  # (a NaN loss alone, none finite before: no loss given)
        if not parts:
            return {MODEL: None}
        layer = None if n_inputs else origin
        return {
            MODEL: Finding(
                "critical",
                "non-finite values at step %d: %s" % (step, "; ".join(parts)),
                hints.hint_for(self.kind, stats, layer, first=self.first_stats),
                layer=layer,
            )
        }
