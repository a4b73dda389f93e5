"""Gradient columns: grad_norm, grad_max_abs, grad_zero_frac, grad_nonfinite.
"""

import numpy as np

from training_health.statistics.sampling import finite_mask, sample


def gradient_stats(grads):
    """grads: list of arrays (one per variable). Returns a dict of the grad_* stats."""
    if not grads:
        return dict(grad_norm=np.nan, grad_max_abs=np.nan, grad_zero_frac=np.nan, grad_nonfinite=np.nan)
    sq, nonfinite, n, zeros, peak = 0.0, 0, 0, 0.0, 0.0
    for g in grads:
        g, mask = finite_mask(g)
        sq += np.sum(g[mask] ** 2)
        nonfinite += np.sum(~mask)
        n += g.size
        s, scale = sample(g)
        zeros += np.sum(s == 0) * scale
        finite = s[np.isfinite(s)]
        if finite.size:
            peak = max(peak, float(np.max(np.abs(finite))))
    return dict(
        grad_norm=float(np.sqrt(sq)),
        grad_max_abs=peak,
        grad_zero_frac=float(zeros / n) if n else np.nan,
        grad_nonfinite=float(nonfinite),
    )
