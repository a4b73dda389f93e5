"""saturation: bounded activations pinned at their limits, or a constant output."""

from training_health.detectors import hints
from training_health.detectors.base import (
    Detector, Finding, StepWindow, check_float, finite, output_rows)

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
      example: the mean over units of the std across the batch
      (`act_example_std`, relative to the activation's range, or to the mean
      magnitude for an unbounded output) is at most `constant_std` on at
      least half of the last `patience` steps and never above 1e-3 (the
      logger's float32 moments leave up to ~1e-4 of rounding noise on an
      exactly constant output). A single-unit softmax (always 1.0) and a
      head behind dead layers are the classic cases.

    Args:
        threshold: fraction of outputs at a bound. Defaults to 0.75: with
            scaled inputs and Glorot initialization a tanh layer has a few %
            of its outputs within 1% of +-1; DeepDiagnosis calls a layer
            saturated past 50% of |z| >= 5, which is stricter per value, so
            we ask for more of them at our looser bound.
        constant_std: relative spread at or below which the outputs count as
            exactly constant. Defaults to 1e-6: an output that depends on its
            input varies far more (the lowest healthy value measured, a deep
            net at its initial plateau, is 1.8e-4).
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
        self._reset_state()

    def _reset_state(self):
        self._spreads = {}  # output layer name -> StepWindow of spread / scale

    def _constant_answer(self, step, stats, row_index, spread):
        """A Finding when the output has not varied across examples over the window.

        The logger measures the spread from float32 moments, whose rounding
        leaves ~1e-4 of noise on an output that is exactly constant; so the
        test is: at most `constant_std` (relative to the range) on at least
        half of the steps of the last `patience` steps, and never more than
        1e-3 on any of them.
        """
        info = stats.layers[row_index]
        names = stats.layer_stats
        mean = float(stats.layer_values[row_index, names.index("act_mean")])
        nonfinite = float(stats.layer_values[row_index, names.index("act_nonfinite")])
        if not finite(mean) or (finite(nonfinite) and nonfinite >= 1):
            return None  # non-finite outputs: nan_inf speaks for them
        if info.bounds is not None:
            scale = float(info.bounds[1]) - float(info.bounds[0])
        elif info.activation in OUTPUT_BOUNDED:
            scale = 1.0
        else:
            scale = abs(mean) if finite(mean) and mean != 0 else 1.0
        history = self._spreads.get(info.name)
        if history is None:
            history = self._spreads[info.name] = StepWindow(1)
        history.append(step, (spread / scale,))
        if not history.trim(step, self.patience, self.min_observations):
            return None
        values = history.values()[:, 0].tolist()
        exact = sum(v <= self.constant_std for v in values)
        if exact * 2 < len(values) or max(values) > 1e-3:
            return None
        return Finding(
            "critical",
            "output layer %s (%s) gives the same output for every example over the last "
            "%d steps (std across the batch at most %.1e of its range, mean output %.4g)"
            % (info.name, info.activation or "linear", step - history.first_step(), max(values),
               mean),
            hints.hint_for(self.kind, stats, info.name, first=self.first_stats),
            immediate=True,
        )

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
                    finding = self._constant_answer(step, stats, i, spread)
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
                            hints.hint_for(self.kind, stats, info.name, first=self.first_stats),
                        )
            if judged:
                out[info.name] = finding
        return out
