"""Scenario record and synthetic data shared by the scenarios."""

import dataclasses
from typing import Callable, Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One training run with a known outcome.

    Attributes:
        name: short identifier.
        expected: the alert kind the bug must raise, or None (healthy: no alert).
        build: callable() -> (compiled model, x, y, fit kwargs).
        description: what the run is and why it is (un)healthy.
        onset: the step at which the problem starts (0: from the start).
        cause: for a buggy run, text that the hint the user reads first (of
            the incident holding the first alert of the expected kind) must
            contain to name the cause the run built in; None: not scored.
    """

    name: str
    expected: Optional[str]
    build: Callable
    description: str
    onset: int = 0
    cause: Optional[str] = None


def teacher_classification(n, dim, classes, seed, priors=None, noise=0.0):
    """Gaussian inputs [n, dim] and one-hot labels from a random linear teacher.

    Args:
        priors: class frequencies to impose (labels are assigned by ranking
            the teacher's scores per class). Defaults to a plain argmax.
        noise: fraction of labels replaced by random ones. Defaults to 0.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype("float32")
    w = rng.standard_normal((dim, classes))
    scores = x @ w
    if priors is None:
        labels = scores.argmax(axis=1)
    else:
        labels = np.empty(n, dtype=int)
        margin = scores[:, 0] - scores[:, 1:].max(axis=1) if classes > 1 else scores[:, 0]
        order = np.argsort(margin)
        bounds = np.cumsum([0] + [int(round(p * n)) for p in priors])
        bounds[-1] = n
        for c in range(classes):
            labels[order[bounds[c]:bounds[c + 1]]] = c
    if noise:
        flip = rng.random(n) < noise
        labels[flip] = rng.integers(0, classes, int(flip.sum()))
    return x, np.eye(classes, dtype="float32")[labels]


def images(n, size, classes, seed, priors):
    """Raw 0..255 grey images whose class sets the brightness of one quadrant."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(classes, size=n, p=priors)
    x = rng.integers(0, 160, (n, size, size, 1)).astype("float32")
    half = size // 2
    for c in range(classes):
        r, col = divmod(c, 2)
        sel = labels == c
        x[sel, r * half:(r + 1) * half, col * half:(col + 1) * half, :] += 95.0
    return x, np.eye(classes, dtype="float32")[labels]
