"""dead_units: most units of a ReLU layer never fire."""

from training_health.detectors import hints
from training_health.detectors.base import Detector, Finding, check_float, check_int, finite


# A layer with at most this fraction of its units dead at some step was
# alive then: if most of it is dead later, the units died during training.
ALIVE_FRAC = 0.5


class DeadUnitsDetector(Detector):
    """Raises `dead_units` when most units of a ReLU layer output 0 all the time.

    A unit is dead when it is zero for every example of every batch of the
    logger's window (`dead_frac_window`, falling back to the per-batch
    `dead_frac` when the window is not logged). Such a unit gets no gradient
    and cannot recover, which is the usual meaning of "dying ReLU".

    Args:
        threshold: fraction of a layer's units that must be dead. Defaults to
            0.9: healthy ReLU nets keep well under half their units dead (up
            to ~40% after a too-high learning rate, CS231n), while a dying
            ReLU layer loses nearly all of them; 0.9 leaves room for both.
        patience: steps the condition must last. Defaults to 20, so a
            short-window burst early in training (few batches in the window
            yet) is not reported.
        min_observations: logged steps the condition must hold on. Defaults
            to 3.
        clear_patience: steps below the threshold that close the episode.
            Defaults to 50.
        min_units: layers with fewer units are not judged (one dead unit of
            two is 50%). Defaults to 4.
        activations: activations whose zero output has zero gradient and can
            therefore die. Defaults to ("relu", "relu6"): leaky ReLU, ELU,
            GELU, SiLU pass gradient below zero, so their units do not die.
        start_from_step: no alert before this step. Defaults to 0.
    """

    kind = "dead_units"

    def __init__(
        self,
        threshold=0.9,
        patience=20,
        min_observations=3,
        clear_patience=50,
        min_units=4,
        activations=("relu", "relu6"),
        start_from_step=0,
    ):
        super().__init__(patience, min_observations, clear_patience, start_from_step)
        self.threshold = check_float("threshold", threshold, 0.0, 1.0, low_open=True)
        self.min_units = check_int("min_units", min_units, minimum=1)
        if isinstance(activations, str) or not all(isinstance(a, str) for a in activations):
            raise ValueError(
                "activations must be a sequence of activation names such as "
                "('relu', 'relu6'); received %r" % (activations,)
            )
        self.activations = tuple(activations)
        self._reset_state()

    def _reset_state(self):
        # layer name -> (step, fraction) of the fewest dead units seen: a
        # layer that was mostly alive once died during training.
        self._fewest = {}

    @staticmethod
    def _dead_fraction(row, names):
        """(fraction dead, how it was measured) or (None, None) if not measured.

        The window measure (`dead_frac_window`) is the definition. Before the
        window has filled it lags behind, so the batch measure (`dead_frac`)
        counts too when the layer's gradient is exactly zero: a layer with
        every unit at zero and no gradient at all is dead now.
        """
        window = float(row[names.index("dead_frac_window")])
        batch = float(row[names.index("dead_frac")])
        grad = float(row[names.index("grad_norm")])
        if finite(batch) and grad == 0.0 and (not finite(window) or batch > window):
            return batch, "in the batch, with no gradient at all"
        if finite(window):
            return window, "over the window"
        if finite(batch):
            return batch, "in the batch"
        return None, None

    def _evaluate(self, step, stats):
        names = stats.layer_stats
        out = {}
        for i, info in enumerate(stats.layers):
            if info.activation not in self.activations or not info.has_activation:
                continue
            if info.units and info.units < self.min_units:
                continue
            row = stats.layer_values[i]
            frac, source = self._dead_fraction(row, names)
            if frac is None:
                continue
            fewest = self._fewest.get(info.name)
            if fewest is None or frac < fewest[1]:
                self._fewest[info.name] = fewest = (step, frac)
            if frac < self.threshold:
                out[info.name] = None
                continue
            units = " of %d" % info.units if info.units else ""
            severity = "critical" if frac >= 0.999 else "warning"
            out[info.name] = Finding(
                severity,
                "%.0f%%%s units of %s (%s) output 0 on every example %s at step %d"
                % (100 * frac, units, info.name, info.activation, source, step),
                hints.hint_for(self.kind, stats, info.name,
                               alive_at=fewest if fewest[1] <= ALIVE_FRAC else None,
                               first=self.first_stats),
            )
        return out
