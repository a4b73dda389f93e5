"""vanishing_gradients: early layers get almost no gradient."""

from training_health.detectors import hints
from training_health.detectors.base import (
    Detector, Finding, check_float, check_int, finite, weighted_rows)


def relative_gradients(stats, max_zero_frac=0.5):
    """[(row, name, ||g||/||W||)] of layers whose gradient is measured and dense.

    Layers whose gradient is mostly exact zeros (a dead ReLU upstream, an
    embedding's unused rows) are left out: their gradient is absent, not
    small, and other detectors speak about them.
    """
    names = stats.layer_stats
    out = []
    for i in weighted_rows(stats):
        row = stats.layer_values[i]
        g = float(row[names.index("grad_norm")])
        w = float(row[names.index("weight_norm")])
        zero = float(row[names.index("grad_zero_frac")])
        if not (finite(g) and finite(w)) or g <= 0 or w <= 0:
            continue
        if finite(zero) and zero > max_zero_frac:
            continue
        out.append((i, stats.layers[i].name, g / w))
    return out


class VanishingGradientsDetector(Detector):
    """Raises `vanishing_gradients` when the first layers learn ~nothing.

    Compares the relative gradient ||g||/||W|| (gradient norm over weight
    norm, so layers of different sizes compare fairly) of the first layer
    with weights against the last one's. Backpropagation through each
    sigmoid/tanh layer multiplies the gradient by at most 0.25/1 times the
    weights' gain, so the ratio falls geometrically with depth.

    Args:
        ratio: alert when first/last relative gradient is below this. Defaults
            to 1e-4: a shallow sigmoid net (2-3 layers) keeps ratios around
            1e-2..1e-1, ten sigmoid layers give ~1e-6; AutoTrainer's rule
            uses 1e-3, we take 10x stricter to stay silent on nets that still
            train.
        min_layers: fewer layers with usable gradients are not judged.
            Defaults to 3 (two layers cannot show a trend with depth).
        patience: steps the condition must last. Defaults to 50: the
            ratio is noisy batch to batch, vanishing gradients last.
        min_observations: logged steps the condition must hold on.
            Defaults to 5.
        clear_patience: steps above the ratio that close the episode.
            Defaults to 50.
        start_from_step: no alert before this step. Defaults to 0.
    """

    kind = "vanishing_gradients"

    def __init__(self, ratio=1e-4, min_layers=3, patience=50, min_observations=5,
                 clear_patience=50, start_from_step=0):
        super().__init__(patience, min_observations, clear_patience, start_from_step)
        self.ratio = check_float("ratio", ratio, 0.0, 1.0, low_open=True)
        self.min_layers = check_int("min_layers", min_layers, minimum=2)
        self._key = None

    def _reset_state(self):
        self._key = None

    def _evaluate(self, step, stats):
        rel = relative_gradients(stats)
        if len(rel) < self.min_layers:
            return {}
        first, last = rel[0], rel[-1]
        key = first[1]
        ratio = first[2] / last[2]
        if ratio >= self.ratio:
            return {key: None}
        return {
            key: Finding(
                "critical" if ratio < self.ratio * 1e-2 else "warning",
                "relative gradient ||g||/||W|| of %s is %.1e, %.1e times that of %s "
                "(%d layers) at step %d" % (first[1], first[2], ratio, last[1], len(rel), step),
                hints.hint_for(self.kind, stats, key, first=self.first_stats),
            )
        }
