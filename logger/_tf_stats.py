"""The statistics of `training_health.stats`, as TensorFlow ops.

Everything here runs inside the (possibly XLA-compiled) training step and
returns float32 scalars or small vectors: no host transfer, no summary ops.
"""

import tensorflow as tf

from training_health import format as fmt

F32 = tf.float32
NAN = float("nan")


def _nan():
    return tf.constant(NAN, F32)


def _as_f32(x):
    if isinstance(x, tf.IndexedSlices):
        x = tf.convert_to_tensor(x)
    x = tf.convert_to_tensor(x)
    if x.dtype != F32:
        x = tf.cast(x, F32)
    return x


def _size(x):
    return tf.cast(tf.size(x), F32)


def _finite_parts(x):
    """(x with non-finite entries set to 0, finite mask)."""
    mask = tf.math.is_finite(x)
    return tf.where(mask, x, tf.zeros_like(x)), mask


def gradient_stats(grads):
    """grads: list of tensors (None entries already removed)."""
    if not grads:
        return dict(grad_norm=_nan(), grad_max_abs=_nan(), grad_zero_frac=_nan(),
                    grad_nonfinite=_nan(), _sq=tf.constant(0.0, F32))
    sq, mx, zeros, nonfinite, n = [], [], [], [], []
    for g in grads:
        g = _as_f32(g)
        gf, mask = _finite_parts(g)
        sq.append(tf.reduce_sum(tf.square(gf)))
        mx.append(tf.reduce_max(tf.abs(gf)) if g.shape.num_elements() != 0 else tf.constant(0.0, F32))
        zeros.append(tf.reduce_sum(tf.cast(tf.equal(g, 0.0), F32)))
        nonfinite.append(tf.reduce_sum(tf.cast(tf.logical_not(mask), F32)))
        n.append(_size(g))
    total_sq = tf.add_n(sq)
    total_n = tf.maximum(tf.add_n(n), 1.0)
    return dict(
        grad_norm=tf.sqrt(total_sq),
        grad_max_abs=tf.reduce_max(tf.stack(mx)),
        grad_zero_frac=tf.add_n(zeros) / total_n,
        grad_nonfinite=tf.add_n(nonfinite),
        _sq=total_sq,
    )


def weight_stats(before, after):
    if not before:
        return dict(weight_norm=_nan(), update_ratio=_nan())
    sq_before, sq_after, sq_update = [], [], []
    for b, a in zip(before, after):
        b, a = _as_f32(b), _as_f32(a)
        bf, bmask = _finite_parts(b)
        af, amask = _finite_parts(a)
        both = tf.logical_and(bmask, amask)
        sq_before.append(tf.reduce_sum(tf.square(bf)))
        sq_after.append(tf.reduce_sum(tf.square(af)))
        sq_update.append(tf.reduce_sum(tf.where(both, tf.square(af - bf), tf.zeros_like(af))))
    norm_before = tf.sqrt(tf.add_n(sq_before))
    update = tf.sqrt(tf.add_n(sq_update))
    ratio = tf.where(norm_before > 0, update / tf.maximum(norm_before, 1e-30), _nan())
    return dict(weight_norm=tf.sqrt(tf.add_n(sq_after)), update_ratio=ratio)


def activation_stats(a, bounds):
    """a: the layer output (batch axis first); bounds: (lo, hi) or None."""
    a = _as_f32(a)
    if a.shape.rank == 0:
        a = tf.reshape(a, [1])
    af, mask = _finite_parts(a)
    n = _size(a)
    n_finite = tf.reduce_sum(tf.cast(mask, F32))
    denom = tf.maximum(n_finite, 1.0)
    mean = tf.reduce_sum(af) / denom
    var = tf.reduce_sum(tf.where(mask, tf.square(a - mean), tf.zeros_like(a))) / denom
    no_finite = n_finite < 0.5
    mean = tf.where(no_finite, _nan(), mean)
    std = tf.where(no_finite, _nan(), tf.sqrt(var))

    batch = tf.shape(a)[0]
    per_example = tf.reshape(af, [batch, -1])
    ex_mean = tf.reduce_mean(per_example, axis=0)
    ex_std = tf.sqrt(tf.reduce_mean(tf.square(per_example - ex_mean), axis=0))
    example_std = tf.where(batch >= 2, tf.reduce_mean(ex_std), _nan())

    if bounds is not None:
        lo, hi = float(bounds[0]), float(bounds[1])
        eps = fmt.SATURATION_EPS * (hi - lo)
        at_bound = tf.logical_or(a <= lo + eps, a >= hi - eps)
        saturated = tf.reduce_sum(tf.cast(tf.logical_and(mask, at_bound), F32)) / tf.maximum(n, 1.0)
    else:
        saturated = _nan()
    return dict(
        act_mean=mean,
        act_std=std,
        act_example_std=example_std,
        act_zero_frac=tf.reduce_sum(tf.cast(tf.equal(a, 0.0), F32)) / tf.maximum(n, 1.0),
        act_saturated_frac=saturated,
        act_nonfinite=n - n_finite,
    )


def units_active(a):
    """bool [units]: the unit's output was > 0 somewhere in the batch."""
    a = _as_f32(a)
    if a.shape.rank is not None and a.shape.rank < 2:
        a = tf.reshape(a, [-1, 1])
    units = a.shape[-1]
    return tf.reduce_any(tf.reshape(a > 0, [-1, units]), axis=0)


def input_stats(inputs):
    flat = [tf.reshape(_as_f32(x), [-1]) for x in inputs]
    x = tf.concat(flat, axis=0) if len(flat) > 1 else flat[0]
    xf, mask = _finite_parts(x)
    n_finite = tf.reduce_sum(tf.cast(mask, F32))
    denom = tf.maximum(n_finite, 1.0)
    mean = tf.reduce_sum(xf) / denom
    var = tf.reduce_sum(tf.where(mask, tf.square(x - mean), tf.zeros_like(x))) / denom
    big = tf.constant(3.4e38, F32)
    return dict(
        input_mean=mean,
        input_std=tf.sqrt(var),
        input_min=tf.reduce_min(tf.where(mask, x, big)),
        input_max=tf.reduce_max(tf.where(mask, x, -big)),
        input_nonfinite=_size(x) - n_finite,
    )


def _bin_fractions(idx, weights, n):
    counts = tf.math.unsorted_segment_sum(weights, idx, fmt.HIST_BINS)
    return counts / tf.maximum(n, 1.0)


def gradient_histogram(grads):
    if not grads:
        return tf.fill([fmt.HIST_ROW], NAN)
    flat = tf.concat([tf.reshape(_as_f32(g), [-1]) for g in grads], axis=0)
    n = _size(flat)
    mask = tf.math.is_finite(flat)
    is_zero = tf.equal(flat, 0.0)
    counted = tf.logical_and(mask, tf.logical_not(is_zero))
    lo, hi = fmt.GRAD_LOG10_RANGE
    safe = tf.where(counted, tf.abs(flat), tf.ones_like(flat))
    log10 = tf.math.log(safe) / tf.math.log(10.0)
    idx = tf.floor((log10 - lo) / (hi - lo) * fmt.HIST_BINS)
    idx = tf.cast(tf.clip_by_value(idx, 0.0, fmt.HIST_BINS - 1.0), tf.int32)
    fractions = _bin_fractions(idx, tf.cast(counted, F32), n)
    head = tf.stack([
        tf.reduce_sum(tf.cast(is_zero, F32)) / tf.maximum(n, 1.0),
        tf.reduce_sum(tf.cast(tf.logical_not(mask), F32)) / tf.maximum(n, 1.0),
    ])
    return tf.concat([head, fractions], axis=0)


def activation_histogram(a):
    flat = tf.reshape(_as_f32(a), [-1])
    n = _size(flat)
    mask = tf.math.is_finite(flat)
    big = tf.constant(3.4e38, F32)
    lo = tf.reduce_min(tf.where(mask, flat, big))
    hi = tf.reduce_max(tf.where(mask, flat, -big))
    width = hi - lo
    scaled = tf.where(width > 0, (flat - lo) / tf.maximum(width, 1e-30) * fmt.HIST_BINS, tf.zeros_like(flat))
    scaled = tf.where(mask, scaled, tf.zeros_like(scaled))
    idx = tf.cast(tf.clip_by_value(tf.floor(scaled), 0.0, fmt.HIST_BINS - 1.0), tf.int32)
    fractions = _bin_fractions(idx, tf.cast(mask, F32), n)
    return tf.concat([tf.stack([lo, hi]), fractions], axis=0)


# -- the fast path ----------------------------------------------------------
# The functions above mask non-finite entries everywhere, which costs several
# extra kernels per tensor. The step computes the statistics below, with no
# masking, and checks a small probe of sums: when every sum is finite, every
# entry was finite and the fast values are exact; otherwise the careful
# functions above recompute the row (see `_capture._row_values`).


def _sum_sq(x):
    """sum(x**2) as one fused kernel (l2_loss is sum(x**2) / 2)."""
    return 2.0 * tf.nn.l2_loss(x)


def fast_gradient_stats(grads):
    """gradient_stats() for all-finite gradients; also returns the probe sum."""
    if not grads:
        return gradient_stats([])
    sq, mx, zeros, n = [], [], [], []
    for g in grads:
        g = _as_f32(g)
        sq.append(_sum_sq(g))
        mx.append(tf.reduce_max(tf.abs(g)) if g.shape.num_elements() != 0 else tf.constant(0.0, F32))
        zeros.append(tf.reduce_sum(tf.cast(tf.equal(g, 0.0), F32)))
        n.append(_size(g))
    total_sq = tf.add_n(sq)
    return dict(
        grad_norm=tf.sqrt(total_sq),
        grad_max_abs=tf.reduce_max(tf.stack(mx)),
        grad_zero_frac=tf.add_n(zeros) / tf.maximum(tf.add_n(n), 1.0),
        grad_nonfinite=tf.constant(0.0, F32),
        _sq=total_sq,
    )


def fast_weight_stats(before, after):
    if not before:
        return dict(weight_norm=_nan(), update_ratio=_nan(), _sq=tf.constant(0.0, F32))
    sq_before, sq_after, sq_update = [], [], []
    for b, a in zip(before, after):
        b, a = _as_f32(b), _as_f32(a)
        sq_before.append(_sum_sq(b))
        sq_after.append(_sum_sq(a))
        sq_update.append(_sum_sq(a - b))
    norm_before = tf.sqrt(tf.add_n(sq_before))
    update = tf.sqrt(tf.add_n(sq_update))
    ratio = tf.where(norm_before > 0, update / tf.maximum(norm_before, 1e-30), _nan())
    total_after = tf.add_n(sq_after)
    return dict(weight_norm=tf.sqrt(total_after), update_ratio=ratio,
                _sq=total_after + tf.add_n(sq_before))


def fast_activation_stats(a, bounds):
    """activation_stats() for an all-finite output; `_sq` is the probe."""
    a = _as_f32(a)
    if a.shape.rank == 0:
        a = tf.reshape(a, [1])
    n = tf.maximum(_size(a), 1.0)
    s1 = tf.reduce_sum(a)
    s2 = _sum_sq(a)
    mean = s1 / n
    batch = tf.shape(a)[0]
    per_example = tf.reshape(a, [batch, -1])
    # Centred second moment (two passes over the small sample): an output
    # that is exactly the same for every example reads exactly 0.
    m1 = tf.reduce_mean(per_example, axis=0)
    centred = tf.reduce_mean(tf.square(per_example - m1), axis=0)
    example_std = tf.where(batch >= 2, tf.reduce_mean(tf.sqrt(centred)), _nan())
    if bounds is not None:
        lo, hi = float(bounds[0]), float(bounds[1])
        eps = fmt.SATURATION_EPS * (hi - lo)
        at_bound = tf.logical_or(a <= lo + eps, a >= hi - eps)
        saturated = tf.reduce_sum(tf.cast(at_bound, F32)) / n
    else:
        saturated = _nan()
    return dict(
        act_mean=mean,
        act_std=tf.sqrt(tf.maximum(s2 / n - tf.square(mean), 0.0)),
        act_example_std=example_std,
        act_zero_frac=tf.reduce_sum(tf.cast(tf.equal(a, 0.0), F32)) / n,
        act_saturated_frac=saturated,
        act_nonfinite=tf.constant(0.0, F32),
        _sq=s1 + s2,
    )


def fast_input_stats(inputs):
    flat = [tf.reshape(_as_f32(x), [-1]) for x in inputs]
    x = tf.concat(flat, axis=0) if len(flat) > 1 else flat[0]
    n = tf.maximum(_size(x), 1.0)
    s1 = tf.reduce_sum(x)
    s2 = _sum_sq(x)
    mean = s1 / n
    return dict(
        input_mean=mean,
        input_std=tf.sqrt(tf.maximum(s2 / n - tf.square(mean), 0.0)),
        input_min=tf.reduce_min(x),
        input_max=tf.reduce_max(x),
        input_nonfinite=tf.constant(0.0, F32),
        _sq=s1 + s2,
    )
