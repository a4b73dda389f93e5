"""Which entries of a large tensor the sampled statistics cover.
"""

import numpy as np

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


def finite_mask(a):
    """(a as float64, mask of its finite entries)."""
    a = np.asarray(a, dtype=np.float64)
    return a, np.isfinite(a)
