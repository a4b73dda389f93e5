"""Input columns of the global vector: input_mean, input_std, input_min, input_max, input_nonfinite.
"""

import numpy as np

from training_health.statistics.sampling import finite_mask


def input_stats(inputs):
    """Mean, std, min, max and non-finite count over all input tensors."""
    flat = np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1) for x in inputs])
    flat, mask = finite_mask(flat)
    finite = flat[mask]
    return dict(
        input_mean=float(np.mean(finite)),
        input_std=float(np.std(finite)),
        input_min=float(np.min(finite)),
        input_max=float(np.max(finite)),
        input_nonfinite=float(np.sum(~mask)),
    )
