"""Activation columns of a layer output (its sample: `activation_sample`).
"""

import numpy as np

from training_health import format as fmt
from training_health.statistics.sampling import finite_mask, sample_position_indices


# Bounds of the bounded activations (act_saturated_frac counts the values
# within SATURATION_EPS of the range from a bound).
ACTIVATION_BOUNDS = {
    "sigmoid": (0.0, 1.0),
    "hard_sigmoid": (0.0, 1.0),
    "tanh": (-1.0, 1.0),
    "hard_tanh": (-1.0, 1.0),
    "softsign": (-1.0, 1.0),
    "softmax": (0.0, 1.0),
    "relu6": (0.0, 6.0),
}


def activation_sample(a, examples=None):
    """The values of a layer output `a` that the activation statistics cover.

    The first `examples` examples (all with None) and, for an output of
    rank >= 3 with more than SAMPLE_ELEMENTS values in them, a fixed set of
    positions (`sample_position_indices`, sized with `examples`). Keeps
    the layout [examples, ..., units].
    """
    a = np.asarray(a)
    if examples is None:
        return a
    a = a[:examples]
    if a.ndim < 3:
        return a
    positions = int(np.prod(a.shape[1:-1]))
    idx = sample_position_indices(positions, a.shape[-1], examples)
    if idx is None:
        return a
    return a.reshape(a.shape[0], positions, a.shape[-1])[:, idx, :]


def activation_stats(a, bounds=None):
    """Statistics of one layer output `a` (batch axis first)."""
    a, mask = finite_mask(a)
    finite = a[mask]
    n = a.size
    mean = float(np.mean(finite)) if finite.size else np.nan
    std = float(np.std(finite)) if finite.size else np.nan
    batch = a.shape[0] if a.ndim else 1
    if batch >= 2:
        per_example = np.where(mask, a, 0.0).reshape(batch, -1)
        example_std = float(np.mean(np.std(per_example, axis=0)))
    else:
        example_std = np.nan
    if bounds is not None:
        lo, hi = bounds
        eps = fmt.SATURATION_EPS * (hi - lo)
        saturated = float(np.mean(mask & ((a <= lo + eps) | (a >= hi - eps))))
    else:
        saturated = np.nan
    return dict(
        act_mean=mean,
        act_std=std,
        act_example_std=example_std,
        act_zero_frac=float(np.mean(a == 0)) if n else np.nan,
        act_saturated_frac=saturated,
        act_nonfinite=float(np.sum(~mask)),
    )
