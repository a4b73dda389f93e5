"""Histogram rows: gradients over log10|g| bins, activations over [min, max].
"""

import numpy as np

from training_health import format as fmt
from training_health.statistics.sampling import sample


def gradient_histogram(grads):
    """[zero_frac, nonfinite_frac, fractions over HIST_BINS bins of log10|g|] (zeros excluded from bins).

    Over each tensor's `sample`, every sampled entry counting for `scale` entries.
    """
    lo, hi = fmt.GRAD_LOG10_RANGE
    n, zeros, nonfinite = 0, 0.0, 0.0
    counts = np.zeros(fmt.HIST_BINS)
    for g in grads:
        flat = np.asarray(g, dtype=np.float64).reshape(-1)
        n += flat.size
        part, scale = sample(flat)
        mask = np.isfinite(part)
        zeros += np.sum(part == 0) * scale
        nonfinite += np.sum(~mask) * scale
        nonzero = part[mask & (part != 0)]
        idx = np.floor((np.log10(np.abs(nonzero)) - lo) / (hi - lo) * fmt.HIST_BINS)
        idx = np.clip(idx, 0, fmt.HIST_BINS - 1).astype(int)
        counts += np.bincount(idx, minlength=fmt.HIST_BINS) * scale
    return np.concatenate([[zeros / n, nonfinite / n], counts / n])


def activation_histogram(a):
    """[min, max, fractions over HIST_BINS equal bins in [min, max]] over finite entries."""
    flat = np.asarray(a, dtype=np.float64).reshape(-1)
    n = flat.size
    finite = flat[np.isfinite(flat)]
    lo, hi = float(np.min(finite)), float(np.max(finite))
    width = hi - lo
    if width > 0:
        idx = np.floor((finite - lo) / width * fmt.HIST_BINS)
    else:
        idx = np.zeros_like(finite)
    idx = np.clip(idx, 0, fmt.HIST_BINS - 1).astype(int)
    counts = np.bincount(idx, minlength=fmt.HIST_BINS)
    return np.concatenate([[lo, hi], counts / n])
