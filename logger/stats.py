"""What each statistic means, as plain numpy (the reference implementation).

The logger computes the same quantities with TensorFlow ops inside the
training step (`training_health._tf_stats`); the tests check one against the
other on the same batch. Conventions shared by both:

* Norms, maxima, means and stds are taken over the *finite* entries; the
  non-finite entries are counted separately (`*_nonfinite`).
* A "unit" is an index of the output's last axis (a Dense unit, a conv
  channel, an embedding dimension). A unit is dead on a batch when its output
  is <= 0 for every example and every other position of the batch.
* Statistics that do not apply are NaN (no weights -> no gradient stats,
  unbounded activation -> no saturation fraction).
"""

import numpy as np

from training_health import format as fmt


def _finite(a):
    a = np.asarray(a, dtype=np.float64)
    mask = np.isfinite(a)
    return a, mask


def gradient_stats(grads):
    """grads: list of arrays (one per variable). Returns a dict of the grad_* stats."""
    if not grads:
        return dict(grad_norm=np.nan, grad_max_abs=np.nan, grad_zero_frac=np.nan, grad_nonfinite=np.nan)
    flat = np.concatenate([np.asarray(g, dtype=np.float64).reshape(-1) for g in grads])
    flat, mask = _finite(flat)
    finite = flat[mask]
    return dict(
        grad_norm=float(np.sqrt(np.sum(finite**2))),
        grad_max_abs=float(np.max(np.abs(finite))) if finite.size else 0.0,
        grad_zero_frac=float(np.mean(flat == 0)),
        grad_nonfinite=float(np.sum(~mask)),
    )


def weight_stats(before, after):
    """Weight norm after the step and the update-to-weight ratio ||dW|| / ||W_before||."""
    if not before:
        return dict(weight_norm=np.nan, update_ratio=np.nan)
    b = np.concatenate([np.asarray(w, dtype=np.float64).reshape(-1) for w in before])
    a = np.concatenate([np.asarray(w, dtype=np.float64).reshape(-1) for w in after])
    fb, fa = np.isfinite(b), np.isfinite(a)
    norm_before = np.sqrt(np.sum(b[fb] ** 2))
    both = fb & fa
    update = np.sqrt(np.sum((a[both] - b[both]) ** 2))
    return dict(
        weight_norm=float(np.sqrt(np.sum(a[fa] ** 2))),
        update_ratio=float(update / norm_before) if norm_before > 0 else np.nan,
    )


def activation_stats(a, bounds=None):
    """Statistics of one layer output `a` (batch axis first)."""
    a, mask = _finite(a)
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


def units_active(a):
    """Boolean [units]: the unit's output was > 0 somewhere in the batch."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim < 2:
        a = a.reshape(-1, 1)
    return np.any(a.reshape(-1, a.shape[-1]) > 0, axis=0)


def dead_fraction(a):
    """Fraction of units whose output is <= 0 for every example of the batch."""
    return float(1.0 - np.mean(units_active(a)))


def dead_fraction_window(batches):
    """Fraction of units <= 0 on every example of every batch in `batches`."""
    active = np.zeros_like(units_active(batches[0]))
    for a in batches:
        active |= units_active(a)
    return float(1.0 - np.mean(active))


def input_stats(inputs):
    """Mean, std, min, max and non-finite count over all input tensors."""
    flat = np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1) for x in inputs])
    flat, mask = _finite(flat)
    finite = flat[mask]
    return dict(
        input_mean=float(np.mean(finite)),
        input_std=float(np.std(finite)),
        input_min=float(np.min(finite)),
        input_max=float(np.max(finite)),
        input_nonfinite=float(np.sum(~mask)),
    )


def gradient_histogram(grads):
    """[zero_frac, nonfinite_frac, fractions over HIST_BINS bins of log10|g|] (zeros excluded from bins)."""
    flat = np.concatenate([np.asarray(g, dtype=np.float64).reshape(-1) for g in grads])
    n = flat.size
    mask = np.isfinite(flat)
    nonzero = flat[mask & (flat != 0)]
    lo, hi = fmt.GRAD_LOG10_RANGE
    idx = np.floor((np.log10(np.abs(nonzero)) - lo) / (hi - lo) * fmt.HIST_BINS)
    idx = np.clip(idx, 0, fmt.HIST_BINS - 1).astype(int)
    counts = np.bincount(idx, minlength=fmt.HIST_BINS)
    return np.concatenate([[np.mean(flat == 0), np.mean(~mask)], counts / n])


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
