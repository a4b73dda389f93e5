"""saturation: bounded activations pinned at their limits, or a constant output."""

from training_health import hints
from training_health.detectors.base import (
    Detector, Finding, check_float, finite, output_rows)

HIDDEN_BOUNDED = ("sigmoid", "tanh", "hard_sigmoid", "hard_tanh", "hard_silu")
OUTPUT_BOUNDED = ("sigmoid", "softmax", "tanh", "hard_sigmoid", "hard_tanh")


class SaturationDetector(Detector):
    """Raises `saturation` for pinned hidden units or an output that never varies.

    Two conditions, per layer:

    - pinned: a hidden sigmoid/tanh layer has at least `threshold` of its
      outputs within 1% of the activation's range of a bound (the logger's
      `act_saturated_frac`); the derivative there is < 0.04, so those units
      barely learn. Output layers are exempt from this one: a classifier
      that is confidently right has saturated outputs (single-unit layers
      are taken for outputs too: a binary head of a multi-output model).
    - constant answer: an output layer gives the same value for every
      example of the batch:
      the mean over units of the std across the batch (`act_example_std`)
      is below `constant_std` times the activation's range (times the mean
      magnitude for an unbounded output). A single-unit softmax (always
      1.0) is the classic case.

    Args:
        threshold: fraction of outputs at a bound. Defaults to 0.75: with
            scaled inputs and Glorot initialization a tanh layer has a few %
            of its outputs within 1% of +-1; DeepDiagnosis calls a layer
            saturated past 50% of |z| >= 5, which is stricter per value, so
            we ask for more of them at our looser bound.
        constant_std: relative spread below which the outputs are constant.
            Defaults to 1e-6: float32 noise of a layer that does depend on
            its input is far above that.
        patience: steps the condition must last. Defaults to 50.
        min_observations: logged steps the condition must hold on.
            Defaults to 5.
        clear_patience: steps without the condition that close the
            episode. Defaults to 50.
        start_from_step: no alert before this step. Defaults to 0.
    """

    kind = "saturation"

    def __init__(self, threshold=0.75, constant_std=1e-6, patience=50, min_observations=5,
                 clear_patience=50, start_from_step=0):
        super().__init__(patience, min_observations, clear_patience, start_from_step)
        self.threshold = check_float("threshold", threshold, 0.0, 1.0, low_open=True)
        self.constant_std = check_float("constant_std", constant_std, 0.0, low_open=True)

    def _evaluate(self, step, stats):
        names = stats.layer_stats
        outputs = set(output_rows(stats))
        out = {}
        for i, info in enumerate(stats.layers):
            if not info.has_activation:
                continue
            row = stats.layer_values[i]
            is_output = i in outputs
            finding = None
            judged = False
            # constant answer (outputs only: a hidden layer whose output does not
            # depend on the input is the symptom of another problem, e.g.
            # vanishing signal in a deep sigmoid stack or dead units)
            if is_output:
                spread = float(row[names.index("act_example_std")])
                if finite(spread):
                    judged = True
                    if info.bounds is not None:
                        scale = float(info.bounds[1]) - float(info.bounds[0])
                    elif info.activation in OUTPUT_BOUNDED:
                        scale = 1.0
                    else:
                        mean = float(row[names.index("act_mean")])
                        scale = abs(mean) if finite(mean) and mean != 0 else 1.0
                    if spread <= self.constant_std * scale:
                        mean = float(row[names.index("act_mean")])
                        finding = Finding(
                            "critical" if is_output else "warning",
                            "%s%s (%s) gives the same output for every example at step %d "
                            "(std across the batch %.1e, mean output %.4g)"
                            % ("output layer " if is_output else "", info.name,
                               info.activation or "linear", step, spread, mean),
                            hints.hint_for(self.kind, stats, info.name),
                        )
            # pinned hidden units (a single-unit sigmoid/tanh is almost always
            # a model output, e.g. a binary head of a multi-output model)
            if (finding is None and not is_output and info.activation in HIDDEN_BOUNDED
                    and info.units != 1):
                frac = float(row[names.index("act_saturated_frac")])
                if finite(frac):
                    judged = True
                    if frac >= self.threshold:
                        finding = Finding(
                            "warning",
                            "%.0f%% of the outputs of %s (%s) are at the activation's bounds "
                            "at step %d" % (100 * frac, info.name, info.activation, step),
                            hints.hint_for(self.kind, stats, info.name),
                        )
            if judged:
                out[info.name] = finding
        return out
