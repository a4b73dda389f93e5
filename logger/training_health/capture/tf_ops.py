"""The statistics of `training_health.statistics`, as TensorFlow ops.

Everything here runs inside the (possibly XLA-compiled) training step and
returns float32 scalars or small vectors: no host transfer, no summary ops.
"""

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2

try:  # whether the graph being traced is compiled by XLA (jit_compile=True)
    from tensorflow.python.ops.control_flow_util import GraphOrParentsInXlaContext as _in_xla
except ImportError:  # pragma: no cover - a TensorFlow without it: assume no XLA
    _in_xla = None

from training_health import format as fmt
from training_health import statistics as _ref

F32 = tf.float32
NAN = float("nan")


def _nan():
    return tf.constant(NAN, F32)


def cond(pred, true_fn, false_fn):
    """`tf.cond` that, in a graph, runs only the branch taken.

    Inside a `tf.function` TensorFlow lowers a cond to Switch/Merge nodes
    and the executor still walks every node of the branch not taken (to
    mark it dead): for the masking row or the histograms, ~1,000 nodes per
    step for nothing. An `If` op that is not lowered calls just one branch
    function. XLA compiles either form.
    """
    graph = tf.compat.v1.get_default_graph()
    before = len(graph.get_operations()) if not tf.executing_eagerly() else None
    out = tf.cond(pred, true_fn, false_fn)
    if before is not None:
        for op in graph.get_operations()[before:]:
            if op.type in ("If", "StatelessIf"):
                try:
                    op._set_attr("_lower_using_switch_merge", attr_value_pb2.AttrValue(b=False))
                except AttributeError:  # a TensorFlow without this hook: the lowered cond is correct too
                    break
    return out


def compiled_by_xla():
    """Whether the step being traced is compiled by XLA (`jit_compile=True`).

    XLA fuses the masking of non-finite entries into the pass each statistic
    makes anyway, so a compiled step computes the masking statistics
    directly; an op-by-op step computes the cheaper unmasked ones and masks
    only when something was non-finite (see `_capture._row_values`).
    """
    if _in_xla is None or tf.executing_eagerly():
        return False
    return bool(_in_xla(tf.compat.v1.get_default_graph()))


def _as_f32(x):
    if isinstance(x, tf.IndexedSlices):
        x = tf.convert_to_tensor(x)
    x = tf.convert_to_tensor(x)
    if x.dtype != F32:
        x = tf.cast(x, F32)
    return x


def _size(x):
    return tf.cast(tf.size(x), F32)


def sample(x):
    """(flat sample of x, scale) as `training_health.statistics.sample` takes it.

    Up to SAMPLE_ELEMENTS entries, x itself (flattened, no copy); beyond, one
    gather of the fixed blocks, and scale = n / sample size.
    """
    n = x.shape.num_elements()
    idx = _ref.sample_block_indices(n)
    if idx is None:
        return tf.reshape(x, [-1]), 1.0
    block = _ref.SAMPLE_BLOCK
    if n % block:
        blocks = tf.reshape(tf.reshape(x, [-1])[: (n // block) * block], [n // block, block])
    else:  # one reshape, no slice (each op costs microseconds in every step)
        blocks = tf.reshape(x, [n // block, block])
    return tf.reshape(tf.gather(blocks, tf.constant(idx, tf.int32)), [-1]), n / float(_ref.SAMPLE_ELEMENTS)


def leading(t, k):
    """The first k examples of a batch (all of it when smaller)."""
    if getattr(t, "shape", None) is None or t.shape.rank in (None, 0):
        return t
    return t[:k]


def activation_sample(a, examples):
    """`training_health.statistics.activation_sample` in the step (a slice and, for
    a large output, one gather of the kept positions)."""
    if examples is None:
        return a
    a = leading(a, examples)
    if getattr(a, "shape", None) is None or a.shape.rank in (None, 0):
        return a
    shape = a.shape.as_list()
    if len(shape) < 3 or any(d is None for d in shape[1:]):
        return a
    positions = int(np.prod(shape[1:-1]))
    idx = _ref.sample_position_indices(positions, shape[-1], examples)
    if idx is None:
        return a
    flat = tf.reshape(a, [-1, positions, shape[-1]])
    return tf.gather(flat, tf.constant(idx, tf.int32), axis=1)


def _finite_parts(x):
    """(x with non-finite entries set to 0, finite mask)."""
    mask = tf.math.is_finite(x)
    return tf.where(mask, x, 0.0), mask


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
        nonfinite.append(tf.reduce_sum(tf.cast(tf.logical_not(mask), F32)))
        n.append(_size(g))
        s, scale = sample(g)
        sf, smask = _finite_parts(s)
        mx.append(tf.reduce_max(tf.abs(sf)) if g.shape.num_elements() != 0 else tf.constant(0.0, F32))
        zeros.append(tf.reduce_sum(tf.cast(tf.equal(s, 0.0), F32)) * scale)
    total_sq = tf.add_n(sq)
    total_n = tf.maximum(tf.add_n(n), 1.0)
    return dict(
        grad_norm=tf.sqrt(total_sq),
        grad_max_abs=tf.reduce_max(tf.stack(mx)),
        grad_zero_frac=tf.add_n(zeros) / total_n,
        grad_nonfinite=tf.add_n(nonfinite),
        _sq=total_sq,
    )


def weight_snapshot(values):
    """The weights' samples before the step: one (flat sample, scale) per
    tensor. Only the samples are kept, so the optimizer can update the
    variables in place."""
    return [sample(_as_f32(v)) for v in values]


def _weight_sums(pairs, masked):
    """([V] sums of squares of the before samples, [V] of the update samples,
    each times its tensor's scale; [V] entries counted). masked: over the
    entries where both are finite (the weights finite before and after the
    step); unmasked, every entry counts."""
    befores, updates, scales = (list(x) for x in zip(*pairs))
    if masked:
        counts = []
        for j, (b, d) in enumerate(zip(befores, updates)):
            both = tf.logical_and(tf.math.is_finite(b), tf.math.is_finite(d))
            befores[j], updates[j] = tf.where(both, b, 0.0), tf.where(both, d, 0.0)
            counts.append(tf.reduce_sum(tf.cast(both, F32)))
        counts = tf.stack(counts)
    else:
        counts = tf.constant([float(b.shape.num_elements() or 0) for b in befores], F32)
    return _sums_of_squares(befores, scales), _sums_of_squares(updates, scales), counts


def _norm_and_ratio(sq_before, sq_update, count):
    """weight_norm and update_ratio from the (per-layer) sums; NaN where no
    entry was finite before and after the step."""
    norm = tf.where(count > 0, tf.sqrt(sq_before), NAN)
    ratio = tf.where(norm > 0, tf.sqrt(sq_update) / tf.maximum(norm, 1e-30), NAN)
    return dict(weight_norm=norm, update_ratio=ratio)


def weight_stats(pairs):
    """One layer's weight_norm and update_ratio (scalars), masked.

    pairs: one (sample before the step, sample of the step's update, scale)
    per tensor of the layer; both sums cover the entries finite before and
    after the step.
    """
    if not pairs:
        return dict(weight_norm=_nan(), update_ratio=_nan())
    return _norm_and_ratio(*(tf.reduce_sum(x) for x in _weight_sums(pairs, masked=True)))


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


def _by_unit(a):
    a = _as_f32(a)
    if a.shape.rank is not None and a.shape.rank < 2:
        a = tf.reshape(a, [-1, 1])
    return tf.reshape(a, [-1, a.shape[-1]])


def units_active(acts, bias_grads):
    """bool vector over the units of every output in `acts`, one output after
    another: whether the unit's output was > 0 somewhere in the batch (in
    the output, or, with the gradient of its `firing_bias`, where that is
    non-zero). bias_grads: one per output, or None. One compare-and-any per
    output; one set of ops for all the bias gradients."""
    active = [tf.reduce_any(_by_unit(a) > 0, axis=0) for a in acts]
    fired, any_fired = [], False
    for act, g in zip(active, bias_grads):
        if g is not None and g.shape == act.shape:
            fired.append(g)
            any_fired = True
        else:
            fired.append(tf.zeros_like(act, dtype=F32))
    active = tf.concat(active, axis=0) if len(active) > 1 else active[0]
    if any_fired:
        g = tf.concat(fired, axis=0) if len(fired) > 1 else fired[0]
        active = tf.logical_or(active, tf.logical_and(tf.not_equal(g, 0.0), tf.math.is_finite(g)))
    return active


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
    """`training_health.statistics.gradient_histogram`: over each tensor's sample,
    every sampled entry weighted by its tensor's scale."""
    if not grads:
        return tf.fill([fmt.HIST_ROW], NAN)
    parts, weights, sizes = [], [], []
    for g in grads:
        g = _as_f32(g)
        part, scale = sample(g)
        parts.append(part)
        weights.append(tf.fill(tf.shape(part), scale))
        sizes.append(_num_elements(g))
    flat = tf.concat(parts, axis=0)
    weight = tf.concat(weights, axis=0)
    n = tf.maximum(tf.add_n(sizes), 1.0)
    mask = tf.math.is_finite(flat)
    is_zero = tf.equal(flat, 0.0)
    counted = tf.logical_and(mask, tf.logical_not(is_zero))
    lo, hi = fmt.GRAD_LOG10_RANGE
    safe = tf.where(counted, tf.abs(flat), tf.ones_like(flat))
    log10 = tf.math.log(safe) / tf.math.log(10.0)
    idx = tf.floor((log10 - lo) / (hi - lo) * fmt.HIST_BINS)
    idx = tf.cast(tf.clip_by_value(idx, 0.0, fmt.HIST_BINS - 1.0), tf.int32)
    zero = tf.zeros_like(weight)
    fractions = _bin_fractions(idx, tf.where(counted, weight, zero), n)
    head = tf.stack([
        tf.reduce_sum(tf.where(is_zero, weight, zero)) / n,
        tf.reduce_sum(tf.where(mask, zero, weight)) / n,
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
# extra kernels per tensor. The step computes the columns below instead: no
# masking, as few passes over each tensor as the statistic needs, and the
# per-layer arithmetic done once on [L] vectors rather than once per layer.
# Each function also returns a probe vector: when every probe entry is
# finite, every entry of the tensors was finite and the fast values are exact;
# otherwise the careful functions above recompute the row (see
# `_capture._row_values`).


def _sum_sq(x):
    """sum(x**2) as one fused kernel (l2_loss is sum(x**2) / 2)."""
    return 2.0 * tf.nn.l2_loss(x)


def _num_elements(x):
    n = x.shape.num_elements()
    return tf.constant(float(n), F32) if n is not None else _size(x)


def _per_layer(values, segments, n_layers, reduce=tf.math.unsorted_segment_sum):
    """[V] per-tensor values (a vector or a list of scalars) -> [n_layers]
    per-layer totals (segment n_layers is dropped)."""
    if isinstance(values, list):
        values = tf.stack(values)
    return reduce(values, tf.constant(segments, tf.int32), n_layers + 1)[:n_layers]


def _sums_of_squares(tensors, scales=None):
    """[V] vector of sum(t**2) (times scales[i]): one l2_loss kernel per
    tensor, then one multiply for all of them."""
    factors = [2.0 * s for s in scales] if scales is not None else [2.0] * len(tensors)
    return tf.stack([tf.nn.l2_loss(t) for t in tensors]) * tf.constant(factors, F32)


def _where_has(has, values):
    """values where the layer has the tensors, NaN elsewhere (has: python bools)."""
    if all(has):
        return values
    return tf.where(tf.constant(has), values, tf.fill(tf.shape(values), NAN))


def fast_gradient_columns(per_layer_grads, unowned_grads):
    """Gradient columns [L] of an all-finite step, the global norm, and the probe.

    Per gradient tensor: one pass for the sum of squares; max |g| and the
    count of non-zero entries (the sum of squares of sign(g)) on its sample.
    """
    n_layers = len(per_layer_grads)
    grads, segments = [], []
    for i, gs in enumerate(per_layer_grads):
        grads.extend(gs)
        segments.extend([i] * len(gs))
    grads.extend(unowned_grads)
    segments.extend([n_layers] * len(unowned_grads))
    if not grads:
        nan = tf.fill([n_layers], NAN)
        return dict(grad_norm=nan, grad_max_abs=nan, grad_zero_frac=nan, grad_nonfinite=nan), \
            _nan(), tf.zeros([1], F32)
    grads = [_as_f32(g) for g in grads]
    signs, scales, mx, n = [], [], [], []
    for g in grads:
        s, scale = sample(g)
        mx.append(tf.reduce_max(tf.abs(s)) if g.shape.num_elements() != 0 else tf.constant(0.0, F32))
        signs.append(tf.sign(s))
        scales.append(scale)
        n.append(_num_elements(g))
    sq = _sums_of_squares(grads)
    nonzero = _sums_of_squares(signs, scales)
    layer_sq = _per_layer(sq, segments, n_layers)
    layer_n = tf.maximum(_per_layer(n, segments, n_layers), 1.0)
    has = [bool(gs) for gs in per_layer_grads]
    columns = dict(
        grad_norm=_where_has(has, tf.sqrt(layer_sq)),
        grad_max_abs=_where_has(has, _per_layer(mx, segments, n_layers, tf.math.unsorted_segment_max)),
        grad_zero_frac=_where_has(has, 1.0 - _per_layer(nonzero, segments, n_layers) / layer_n),
        grad_nonfinite=_where_has(has, tf.zeros([n_layers], F32)),
    )
    total_sq = tf.reduce_sum(sq)
    return columns, tf.sqrt(total_sq), tf.reshape(total_sq, [1])


def weight_columns(layers):
    """weight_norm (before the step) and update_ratio columns [L].

    layers[i]: the layer's (before, update, scale) samples, as `weight_stats`
    takes them. Op by op, the unmasked sums of squares of every tensor, then
    one segment sum into the layers; the masked sums only when one of them is
    not finite. Under XLA, layer by layer with the masking (`weight_stats`):
    with the segment sum, the compiled step took 1.16x the plain step's wall
    time on a CPU (layer by layer: 1.00x).
    """
    if compiled_by_xla():
        stats = [weight_stats(list(pairs)) for pairs in layers]
        return {k: tf.stack([s[k] for s in stats]) for k in ("weight_norm", "update_ratio")}
    n_layers = len(layers)
    pairs, segments = [], []
    for i, layer_pairs in enumerate(layers):
        pairs.extend(layer_pairs)
        segments.extend([i] * len(layer_pairs))
    if not pairs:
        nan = tf.fill([n_layers], NAN)
        return dict(weight_norm=nan, update_ratio=nan)
    fast = _weight_sums(pairs, masked=False)
    sums = cond(tf.reduce_all(tf.math.is_finite(tf.concat(fast[:2], axis=0))),
                lambda: fast, lambda: _weight_sums(pairs, masked=True))
    columns = _norm_and_ratio(*(_per_layer(x, segments, n_layers) for x in sums))
    has = [bool(pairs) for pairs in layers]
    return {k: _where_has(has, v) for k, v in columns.items()}


def fast_activation_columns(acts, bounds):
    """act_* columns [L] of all-finite layer outputs (None: not captured), and the probe.

    Per output: the per-feature mean and centred second moment over the
    examples (three passes; the overall mean and std follow from them), and
    the count of non-zero entries (two passes); one more pair of passes for
    a bounded activation's saturation.
    """
    n_layers = len(acts)
    parts = {k: [] for k in ("mean", "ex2", "example_std", "nonzero", "n", "saturated")}
    probe = []
    for a, b in zip(acts, bounds):
        if a is None:
            for values in parts.values():
                values.append(tf.constant(NAN, F32))
            continue
        a = _as_f32(a)
        if a.shape.rank == 0:
            a = tf.reshape(a, [1])
        batch = tf.shape(a)[0]
        per_example = tf.reshape(a, [batch, -1])
        # Means over the examples as [1, E] x [E, F] products: one fast
        # kernel, where a reduction over the leading axis is several times
        # slower on a CPU. The second moment is centred (a second pass over
        # the small sample), so an output that is the same for every
        # example reads (almost exactly) 0.
        weights = tf.fill([1, batch], 1.0 / tf.cast(batch, F32))
        m1 = tf.matmul(weights, per_example)
        centred = tf.matmul(weights, tf.math.squared_difference(per_example, m1))
        mean = tf.reduce_mean(m1)
        ex2 = tf.reduce_mean(centred + tf.square(m1))
        parts["mean"].append(mean)
        parts["ex2"].append(ex2)
        parts["example_std"].append(tf.where(batch >= 2, tf.reduce_mean(tf.sqrt(centred)), NAN))
        parts["nonzero"].append(tf.nn.l2_loss(tf.sign(a)))  # half the count
        n = tf.maximum(_num_elements(a), 1.0)
        parts["n"].append(n)
        if b is not None:
            lo, hi = float(b[0]), float(b[1])
            eps = fmt.SATURATION_EPS * (hi - lo)
            at_bound = tf.logical_or(a <= lo + eps, a >= hi - eps)
            parts["saturated"].append(tf.reduce_sum(tf.cast(at_bound, F32)) / n)
        else:
            parts["saturated"].append(tf.constant(NAN, F32))
        probe.extend([mean, ex2])
    v = {k: tf.stack(values) for k, values in parts.items()}
    columns = dict(
        act_mean=v["mean"],
        act_std=tf.sqrt(tf.maximum(v["ex2"] - tf.square(v["mean"]), 0.0)),
        act_example_std=v["example_std"],
        act_zero_frac=1.0 - 2.0 * v["nonzero"] / v["n"],
        act_saturated_frac=v["saturated"],
        act_nonfinite=_where_has([a is not None for a in acts], tf.zeros([n_layers], F32)),
    )
    return columns, (tf.stack(probe) if probe else tf.zeros([1], F32))


def dead_columns(units, active, last_active, threshold, n_layers):
    """dead_frac and dead_frac_window columns [n_layers] (NaN: not captured).

    units: ((layer index, units), ...) of the captured layers; active (bool)
    and last_active (int64): over their units, one layer after another, or
    None when no layer was captured. A few ops for all layers: one segment
    sum per column.
    """
    counts = np.zeros(n_layers)
    for i, n in units:
        counts[i] = n
    if active is None:
        nan = tf.fill([n_layers], NAN)
        return dict(dead_frac=nan, dead_frac_window=nan)
    segments = tf.constant(np.repeat([i for i, _ in units], [n for _, n in units]), tf.int32)
    with np.errstate(divide="ignore"):
        inverse = tf.constant(np.where(counts > 0, 1.0 / counts, np.nan), F32)

    def share(flags):  # per layer: the share of its units where flags holds
        return tf.math.unsorted_segment_sum(tf.cast(flags, F32), segments, n_layers) * inverse

    return dict(dead_frac=1.0 - share(active), dead_frac_window=share(last_active < threshold))


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
