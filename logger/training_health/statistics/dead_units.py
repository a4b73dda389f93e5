"""Dead-unit columns: dead_frac over the batch, dead_frac_window over a window of batches.
"""

import numpy as np


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
