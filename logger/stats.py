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
* Gradient norms and non-finite counts always cover every entry. The other
  statistics of a weight or gradient tensor with more than
  `SAMPLE_ELEMENTS` entries (max |g|, the fraction of zeros, ||W||,
  ||dW||) are taken over a fixed sample of it: `SAMPLE_ELEMENTS // SAMPLE_BLOCK` blocks
  of `SAMPLE_BLOCK` consecutive entries, at positions drawn once per tensor
  size (`sample`). Counts and sums over the sample are scaled up by
  n / sample size. On a CPU each extra pass over a large kernel costs about
  as much as the optimizer's own arithmetic on it; the sample keeps the
  step's overhead small. On a tensor whose entries are alike (a conv
  kernel, Adam's updates) it estimates fractions to about +-0.01 and norms
  to about 1%; where a few rows dominate (an embedding, a kernel behind
  inputs of very different scales) the estimate of one step can be off
  by 10-20% (see docs/format.md).
"""

import numpy as np

from training_health import format as fmt


SAMPLE_ELEMENTS = 16384
SAMPLE_BLOCK = 32


def sample_block_indices(n):
    """Sorted indices of the sampled blocks of a tensor of n entries, or None (no sampling)."""
    if n is None or n <= SAMPLE_ELEMENTS:
        return None
    rng = np.random.default_rng(n)  # the same blocks at every step and in every process
    return np.sort(rng.choice(n // SAMPLE_BLOCK, SAMPLE_ELEMENTS // SAMPLE_BLOCK, replace=False))


def sample(a):
    """(flat sample of a, scale): every entry and 1.0 up to SAMPLE_ELEMENTS entries."""
    flat = np.asarray(a).reshape(-1)
    idx = sample_block_indices(flat.size)
    if idx is None:
        return flat, 1.0
    blocks = flat[: (flat.size // SAMPLE_BLOCK) * SAMPLE_BLOCK].reshape(-1, SAMPLE_BLOCK)
    return blocks[idx].reshape(-1), flat.size / float(SAMPLE_ELEMENTS)


def sample_position_indices(positions, per_example, examples):
    """Sorted indices of the kept positions of a layer output, or None (all kept).

    A layer output [examples, positions..., units] with more than
    SAMPLE_ELEMENTS values in the examples looked at keeps a fixed set of
    positions (all units and examples at each), as many as fit in
    SAMPLE_ELEMENTS values; `per_example` is the units per position.
    """
    keep = max(1, SAMPLE_ELEMENTS // max(1, examples * per_example))
    if keep >= positions:
        return None
    rng = np.random.default_rng(positions * 100003 + keep)
    return np.sort(rng.choice(positions, keep, replace=False))


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


def _finite(a):
    a = np.asarray(a, dtype=np.float64)
    mask = np.isfinite(a)
    return a, mask


def gradient_stats(grads):
    """grads: list of arrays (one per variable). Returns a dict of the grad_* stats."""
    if not grads:
        return dict(grad_norm=np.nan, grad_max_abs=np.nan, grad_zero_frac=np.nan, grad_nonfinite=np.nan)
    sq, nonfinite, n, zeros, peak = 0.0, 0, 0, 0.0, 0.0
    for g in grads:
        g, mask = _finite(g)
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


def units_active(a, bias_grad=None):
    """Boolean [units]: the unit's output was > 0 somewhere in the batch.

    `a` may be a sample of the layer's output; `bias_grad`, the gradient of
    the bias of a ReLU layer (`relu(z + b)`), adds the units whose bias got a
    finite non-zero gradient: they fired somewhere in the whole batch.
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim < 2:
        a = a.reshape(-1, 1)
    active = np.any(a.reshape(-1, a.shape[-1]) > 0, axis=0)
    if bias_grad is not None:
        g = np.asarray(bias_grad, dtype=np.float64).reshape(-1)
        active |= (g != 0) & np.isfinite(g)
    return active


def dead_fraction(a, bias_grad=None):
    """Fraction of units whose output is <= 0 for every example of the batch."""
    return float(1.0 - np.mean(units_active(a, bias_grad)))


def dead_fraction_window(batches, bias_grads=None):
    """Fraction of units <= 0 on every example of every batch in `batches`
    (`bias_grads`: one per batch, or None; see `units_active`)."""
    if bias_grads is None:
        bias_grads = [None] * len(batches)
    active = np.zeros_like(units_active(batches[0]))
    for a, g in zip(batches, bias_grads):
        active |= units_active(a, g)
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
