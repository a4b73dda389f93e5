"""Server-side reduction of per-step arrays to the width a view can show.

numpy only. Every function takes `steps`, a sorted int array [N], and
`values`, a float array whose first axis is N. NaN means "not measured"
and is ignored; +/-Inf is kept (an exploding gradient must stay visible).
"""

import numpy as np

REDUCTIONS = ("mean", "max", "min")


def bucket_starts(steps, width):
    """Start indices of at most `width` non-empty step buckets.

    Buckets split the step range [steps[0], steps[-1]] into `width` equal
    spans, so columns line up with a linear step axis even when the stored
    samples are unevenly spaced (TensorBoard keeps a random reservoir).

    Args:
        steps: sorted int array [N], N >= 1.
        width: the most buckets wanted, >= 1.

    Returns:
        int array of the index of each non-empty bucket's first sample.
    """
    steps = np.asarray(steps)
    if len(steps) <= width:
        return np.arange(len(steps))
    lo, hi = float(steps[0]), float(steps[-1]) + 1.0
    bucket = np.floor((steps - lo) * (width / (hi - lo))).astype(np.int64)
    np.clip(bucket, 0, width - 1, out=bucket)
    change = np.flatnonzero(np.diff(bucket)) + 1
    return np.concatenate(([0], change))


def reduce_columns(steps, values, width, reduce="mean"):
    """Reduces the samples of each step bucket to one column.

    Args:
        steps: sorted int array [N].
        values: float array [N, ...].
        width: the most columns wanted, >= 1.
        reduce: "mean", "max" or "min" of the measured (non-NaN) values of a
            bucket. Defaults to "mean".

    Returns:
        (first_steps, last_steps, reduced) with reduced of shape [C, ...],
        C <= width; a bucket with no measured value is NaN.
    """
    if reduce not in REDUCTIONS:
        raise ValueError("reduce must be one of %s; received %r" % (REDUCTIONS, reduce))
    steps = np.asarray(steps, dtype=np.int64)
    values = np.asarray(values, dtype=np.float32)
    if len(steps) == 0:
        empty = np.zeros((0,) + values.shape[1:], dtype=np.float32)
        return steps, steps, empty
    starts = bucket_starts(steps, width)
    ends = np.concatenate((starts[1:], [len(steps)])) - 1
    first_steps, last_steps = steps[starts], steps[ends]
    if len(starts) == len(steps):
        return first_steps, last_steps, values.copy()
    if reduce == "mean":
        unmeasured = np.isnan(values)
        sizes = np.diff(np.append(starts, len(steps)))
        if unmeasured.any():
            total = np.add.reduceat(np.where(unmeasured, np.float32(0), values), starts, axis=0)
            count = np.add.reduceat(~unmeasured, starts, axis=0, dtype=np.int32)
        else:
            total = np.add.reduceat(values, starts, axis=0)
            count = sizes.reshape((-1,) + (1,) * (values.ndim - 1))
        with np.errstate(invalid="ignore", divide="ignore"):
            reduced = total / count  # 0/0 -> NaN: nothing measured in the bucket
        return first_steps, last_steps, reduced.astype(np.float32)
    ufunc = np.fmax if reduce == "max" else np.fmin  # fmax/fmin skip NaN
    return first_steps, last_steps, ufunc.reduceat(values, starts, axis=0)


def pick_samples(steps, count):
    """Indices of at most `count` samples spread evenly, always the last one.

    Used where averaging would not make sense to a reader (histograms).
    """
    n = len(steps)
    if n <= count:
        return np.arange(n)
    if count == 1:
        return np.array([n - 1])
    return np.unique(np.round(np.linspace(0, n - 1, count)).astype(np.int64))


def to_json_values(array, digits=5):
    """A float array as nested lists: NaN -> None, +/-Inf -> "Infinity"/"-Infinity".

    Finite values are rounded to `digits` significant digits, which keeps
    responses short (a float32 carries digits of noise when printed as a
    double). Defaults to 5 digits.
    """
    array = np.asarray(array, dtype=np.float64)
    if array.size == 0:
        return array.tolist()  # nested empty lists of the right shape
    pattern = "%%.%dg" % digits
    inf = float("inf")

    def one(value):
        if value != value:
            return None
        if value == inf:
            return "Infinity"
        if value == -inf:
            return "-Infinity"
        return float(pattern % value)

    flat = [one(v) for v in array.ravel().tolist()]
    for size in reversed(array.shape[1:]):
        flat = [flat[i:i + size] for i in range(0, len(flat), size)]
    return flat
