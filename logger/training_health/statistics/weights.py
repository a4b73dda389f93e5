"""Weight columns: weight_norm (W_before) and update_ratio (||dW|| / ||W_before||).
"""

import numpy as np

from training_health.statistics.sampling import sample


def weight_stats(before, after):
    """Weight norm at the start of the step and the update-to-weight ratio ||dW|| / ||W_before||.

    The norm is taken before the update, so that update_ratio * weight_norm
    = ||dW||; both sums cover the entries finite before and after the step
    (both NaN when there is none).
    """
    if not before:
        return dict(weight_norm=np.nan, update_ratio=np.nan)
    sq_before, sq_update, count = 0.0, 0.0, 0
    for b, a in zip(before, after):
        (sb, scale), (sa, _) = sample(np.asarray(b, dtype=np.float64)), sample(np.asarray(a, dtype=np.float64))
        both = np.isfinite(sb) & np.isfinite(sa)
        sq_before += np.sum(sb[both] ** 2) * scale
        sq_update += np.sum((sa[both] - sb[both]) ** 2) * scale
        count += int(np.sum(both))
    if count == 0:
        return dict(weight_norm=np.nan, update_ratio=np.nan)
    norm_before = np.sqrt(sq_before)
    return dict(
        weight_norm=float(norm_before),
        update_ratio=float(np.sqrt(sq_update) / norm_before) if norm_before > 0 else np.nan,
    )
