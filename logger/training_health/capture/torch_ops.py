"""The statistics of `training_health.statistics`, as PyTorch ops.

Each function here computes, on the tensors' own device and without any
transfer to the host, what the numpy function of the same name in
`training_health.statistics` computes (the tests check one against the
other on the same batches). They return tensors; nothing here branches on a
tensor's value, so no call waits for the device.

Every layer's statistics of one kind are computed together: the layers'
samples are concatenated into one vector and reduced per layer with segment
sums, so a step costs a few dozen kernels whatever the number of layers (on
a GPU each kernel launch costs about as much as a small kernel itself). On
whole tensors only fused multi-tensor reductions run (`torch._foreach_norm`).

Layout: PyTorch keeps the unit (channel) axis of an image-like output at
axis 1 (NCHW); the statistics take units on the last axis, as Keras does.
"""

import importlib.util
import sys

import torch

from training_health import format as fmt
from training_health import statistics as ref

_NAN = float("nan")


def dynamo_import_would_abort():
    """Whether importing torch._dynamo would abort this process: it loads
    triton (CUDA builds of PyTorch ship it), whose LLVM clashes with the one
    TensorFlow loaded ("LLVM ERROR: inconsistency in registered CommandLine
    options", then SIGABRT) when TensorFlow was imported first."""
    return "tensorflow" in sys.modules and importlib.util.find_spec("triton") is not None


def _constant_when_compiling(fn):
    """Under torch.compile, `fn` runs while tracing and its result is a
    constant of the graph (it reads numpy: tracing into it would break the
    graph); outside, a plain call. Marking it imports torch._dynamo, which is
    skipped where that import would abort the process (in such a process
    torch.compile cannot run either)."""
    mark = getattr(torch.compiler, "assume_constant_result", None)
    if mark is None or dynamo_import_would_abort():
        return fn
    return mark(fn)


def position_indices(k, units, positions, examples, device):
    """Flat indices into an output's first k examples ([k, units, positions],
    contiguous) of the values at the positions
    `statistics.sample_position_indices` keeps, in that layout, as an int64
    tensor on `device`, or None where every position is kept (one gather,
    `take`, then picks the sample: faster than an index_select along an
    inner axis)."""
    kept = ref.sample_position_indices(positions, units, examples)
    if kept is None:
        return None
    kept = torch.as_tensor(kept, dtype=torch.int64)
    example = torch.arange(k)[:, None, None] * (units * positions)
    unit = torch.arange(units)
    flat = example + unit[None, :, None] * positions + kept[None, None, :]  # value (u, p)
    return flat.reshape(-1).to(device)


def kept_positions(positions, units, examples, device):
    """The positions `statistics.sample_position_indices` keeps, as an
    int64 tensor on `device`, or None where every position is kept."""
    kept = ref.sample_position_indices(positions, units, examples)
    return None if kept is None else torch.as_tensor(kept, dtype=torch.int64).to(device)


_INDEX_MAKERS = {"flat": position_indices, "kept": kept_positions}


@_constant_when_compiling
def _index_name(sampler, kind, *key):
    """The name of the `sampler` attribute that holds the `kind` index
    tensor (`_INDEX_MAKERS`) for `key`, made on first use.

    Under torch.compile this runs while tracing, its result (a string) is a
    constant of the graph and the tensor, read from the sampler by that
    name, an input of the graph: each index its own. (A function whose
    result is itself a tensor would give the constants of all its calls one
    name, which torch.compile rejects as soon as two outputs differ in
    shape.)"""
    name = "_index_%s_%s" % (kind, "_".join(str(int(x)) for x in key))
    if name not in sampler.__dict__:
        setattr(sampler, name, _INDEX_MAKERS[kind](*key, device=sampler.device))
    return name


class Sampler:
    """Fixed sample indices per tensor size (`statistics.sampling`), kept on one device."""

    def __init__(self, device):
        self.device = device
        self._flat = {}  # n -> LongTensor of sampled block indices, or None

    def blocks(self, n):
        """int64 indices of the sampled blocks of a tensor of n entries
        (`statistics.sample_block_indices`), or None (no sampling)."""
        if n not in self._flat:
            blocks = ref.sample_block_indices(n)
            self._flat[n] = None if blocks is None else torch.as_tensor(blocks, dtype=torch.int64).to(
                self.device)
        return self._flat[n]

    def sample(self, t):
        """(flat sample of t, scale), as `statistics.sample`: a view of a
        small tensor, a gathered copy of a large one (whole blocks of
        SAMPLE_BLOCK entries at a time)."""
        return self.sample_flat(t.detach().reshape(-1))

    def sample_flat(self, flat):
        """`sample` of a flat (1-D) tensor."""
        n = flat.numel()
        blocks = self.blocks(n)
        if blocks is None:
            return flat, 1.0
        return _rows(flat).index_select(0, blocks).view(-1), n / float(ref.SAMPLE_ELEMENTS)

    def activation_sample(self, a, examples, unit_axis, out=None):
        """The values of `statistics.activation_sample` of `a` (batch first;
        units at `unit_axis`) as [examples, values]: the first `examples`
        examples and, of a large output, a fixed set of positions, in the
        output's own layout. The values of one example keep their order:
        [units, positions] for units at axis 1, [positions, units]
        otherwise; every statistic but unit activity (`sample_units_active`)
        is the same in either.

        Always a copy, never a view of `a`: the statistics are computed at
        the end of the step, and the model may change its outputs in place
        before (a `ReLU(inplace=True)` after a `Linear`). `a` is detached
        from the autograd graph (the forward hook's `t.detach()`). out: a
        tensor to write the sample into (an earlier sample of an output of
        the same shape and dtype, taken the same way), or None (a new one)."""
        batch = a.shape[0]
        # (a number where torch.compile treats the batch size as dynamic:
        # the comparison is one of its guards)
        whole = examples is None or batch <= examples
        k = batch if whole else examples
        if a.dim() >= 3 and examples is not None:
            units = a.shape[unit_axis]
            positions = 1  # (from the other sizes: a number there too)
            for i in range(1, a.dim()):
                if i != unit_axis:
                    positions *= a.shape[i]
            kept = getattr(self, _index_name(self, "kept", positions, units, examples))
            if kept is not None:
                if unit_axis == a.dim() - 1:  # a kept position's units are contiguous: whole rows
                    return _select(a[:k].reshape(k, positions, units), 1, kept, out)
                if whole:
                    return _select(a.reshape(k, units, positions), 2, kept, out)
                # (flat indices into the first k examples: the same in a)
                idx = getattr(self, _index_name(self, "flat", k, units, positions, examples))
                if out is None:
                    return a.take(idx).view(k, -1)
                return torch.take(a, idx, out=out.view(-1)).view(k, -1)
        values = (a if whole else a[:k]).reshape(k, -1)
        return values.clone() if out is None else out.copy_(values)


def _select(values, dim, index, out):
    """values.index_select(dim, index) as [values.shape[0], -1], into out (its shape) or new."""
    if out is None:
        return values.index_select(dim, index).view(values.shape[0], -1)
    shape = list(values.shape)
    shape[dim] = index.numel()
    torch.index_select(values, dim, index, out=out.view(shape))
    return out


class Layout:
    """Pieces of known lengths one after another: `index` (int64, each
    position's piece), `lengths` (int64) and `count` (pieces)."""

    __slots__ = ("index", "lengths", "count")

    def __init__(self, index, lengths, count):
        self.index, self.lengths, self.count = index, lengths, count


class Segments:
    """Segment reductions over a concatenation of pieces, and the small
    constant tensors a step needs (segment ids, scales, bounds), made once
    per layout and kept on the device: no step copies from the host."""

    def __init__(self, device):
        self.device = device
        self._cache = {}

    def const(self, values, dtype=torch.float32):
        """`values` (a sequence of numbers) as a tensor on the device, cached."""
        key = (tuple(values), dtype)
        if key not in self._cache:
            self._cache[key] = torch.tensor(list(values), dtype=dtype).to(self.device)
        return self._cache[key]

    def ids(self, lengths):
        """The `Layout` of pieces of these lengths, one after another."""
        key = ("ids", tuple(lengths))
        if key not in self._cache:
            lengths_t = torch.as_tensor(list(lengths), dtype=torch.int64)
            self._cache[key] = Layout(
                torch.repeat_interleave(torch.arange(len(lengths)), lengths_t).to(self.device),
                lengths_t.to(self.device), len(lengths))
        return self._cache[key]

    def unit_ids(self, widths, units, units_first):
        """int64 [sum(widths)]: for each value of samples laid out as
        `Sampler.activation_sample` gives them, its unit's index among all
        the layers' units, layer after layer."""
        key = ("units", tuple(widths), tuple(units), tuple(units_first))
        if key not in self._cache:
            ids, offset = [], 0
            for w, u, first in zip(widths, units, units_first):
                col = torch.arange(w)
                ids.append(offset + (col // (w // u) if first else col % u))
                offset += u
            self._cache[key] = torch.cat(ids).to(self.device)
        return self._cache[key]

    def sum(self, values, layout):
        """[pieces]: the sum of each piece of `values` (laid out as `layout`).
        On a CPU a segment reduction; elsewhere an index_add (a segment
        reduction checks its lengths on the host there)."""
        if values.device.type == "cpu":
            return torch.segment_reduce(values, "sum", lengths=layout.lengths)
        return torch.zeros(layout.count, dtype=values.dtype, device=values.device).index_add_(
            0, layout.index, values)

    def max(self, values, ids, count, empty=float("-inf")):
        out = torch.full((count,), empty, dtype=values.dtype, device=values.device)
        return out.scatter_reduce_(0, ids, values, "amax")


def _rows(flat):
    """A flat tensor's whole blocks of SAMPLE_BLOCK entries, as rows (a view)."""
    n = flat.numel()
    if n % ref.SAMPLE_BLOCK:
        flat = flat[: (n // ref.SAMPLE_BLOCK) * ref.SAMPLE_BLOCK]
    return flat.view(-1, ref.SAMPLE_BLOCK)


def _f32(t):
    return t if t.dtype == torch.float32 else t.float()


# -- gradients -----------------------------------------------------------------------
def finite_norms(grads, host_is_device):
    """(sum of squares of the finite entries, count of the others) of each
    gradient tensor, exact, as two float32 [tensors] vectors.

    host_is_device (a CPU): one fused reduction per tensor, and the masking
    passes only for the rare tensor whose norm is not finite. Otherwise (an
    accelerator, where reading a value would wait for the device) the
    masking passes run for every tensor, as a few fused kernels."""
    if host_is_device:
        # (a dot product of each tensor with itself: one read of it, about
        # twice as fast as a norm on a CPU)
        sq = torch.stack([_self_dot(g if g.dim() == 1 else g.detach().reshape(-1))
                          for g in grads]).float()
        bad = torch.zeros_like(sq)
        for i, ok in enumerate(torch.isfinite(sq).tolist()):
            if not ok:
                g = grads[i].detach()
                finite = torch.isfinite(g)
                sq[i] = torch.where(finite, g, 0).float().square().sum()
                bad[i] = float(g.numel()) - finite.sum()
        return sq, bad
    return _masked_sums(grads)


def _self_dot(flat):
    """The sum of squares of a flat tensor's entries, as one dot product
    (float32 and float64 tensors; others through a float32 copy)."""
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    return torch.dot(flat, flat)


# Gradient entries concatenated at a time on an accelerator (bounds the
# temporaries of `_masked_sums`: about 9 bytes an entry).
FUSED_ENTRIES = 1 << 25


def _masked_sums(grads):
    """(finite sum of squares, non-finite count) of each tensor, in a few
    kernels a group: the tensors concatenated, masked once, and reduced per
    tensor by fused multi-tensor norms over views of the concatenation."""
    sq, bad = [], []
    group, size = [], 0
    for g in list(grads) + [None]:
        if g is not None and (not group or size + g.numel() <= FUSED_ENTRIES):
            group.append(g)
            size += g.numel()
            continue
        sizes = [t.numel() for t in group]
        flat = torch.cat([_f32(t.detach().reshape(-1)) for t in group])
        finite = torch.isfinite(flat)
        sq.append(torch.stack(torch._foreach_norm(list(torch.where(finite, flat, 0.0).split(sizes)))))
        bad.append(torch.stack(torch._foreach_norm(list((~finite).float().split(sizes)), 1)))
        group, size = [g], (g.numel() if g is not None else 0)
    return torch.cat(sq).square(), torch.cat(bad)


def gradient_parts(grads, owners, layers, sampler, segments, host_is_device, shared=()):
    """Per-layer sums of every layer's gradients at once: ([layers, 5] =
    (sum of finite squares, non-finite count, zeros (scaled), entries,
    max |g|), as `statistics.gradient_stats` adds them up; [2] = the sum of
    finite squares and the non-finite count over all the gradients).

    grads: the gradient tensors; owners: each one's layer index (0 ..
    layers - 1); shared: (gradient index, layer) pairs of the other layers
    a gradient also belongs to (a weight tied between two modules: counted
    in each layer, once in the totals). Norms and non-finite counts cover
    every entry (`finite_norms`); zeros and max |g| each tensor's
    sample."""
    with torch.no_grad():  # (flat once, for the norms and the samples)
        grads = [g.reshape(-1) for g in grads]
    sq, bad = finite_norms(grads, host_is_device)
    samples, scales = zip(*(sampler.sample_flat(g) for g in grads))
    n_t = len(grads)
    scale = segments.const(scales)
    if host_is_device and bool(torch.isfinite(sq).all()) and not bool(bad.any()):
        # Every entry is finite: a few reductions over all the samples.
        zeros, peak = _zeros_and_peaks(samples, segments)
        zeros = zeros * scale
    else:
        flat = torch.cat([_f32(s) for s in samples])
        t_ids = segments.ids([s.numel() for s in samples])
        zeros = segments.sum((flat == 0).float(), t_ids) * scale
        peak = segments.max(torch.where(torch.isfinite(flat), flat.abs(), 0.0), t_ids.index, n_t, 0.0)
    entries = segments.const([float(g.numel()) for g in grads])
    per_tensor = torch.stack([sq, bad, zeros, entries], dim=1)
    peak = peak.float()
    if shared:
        index = segments.const([i for i, _ in shared], torch.int64)
        per_tensor_all = torch.cat([per_tensor, per_tensor.index_select(0, index)])
        peak_all = torch.cat([peak, peak.index_select(0, index)])
        owners = list(owners) + [layer for _, layer in shared]
    else:
        per_tensor_all, peak_all = per_tensor, peak
    owner = segments.const(owners, torch.int64)
    sums = torch.zeros(layers, 4, device=sq.device).index_add_(0, owner, per_tensor_all)
    peaks = segments.max(peak_all, owner, layers, 0.0)
    return torch.cat([sums, peaks[:, None]], dim=1), per_tensor[:, :2].sum(0)


def _zeros_and_peaks(samples, segments):
    """(zero entries, max |entry|) of each sample, as float32 [samples]
    vectors, for finite samples (a CPU's fast path): the full-size samples (every one
    SAMPLE_ELEMENTS entries) as the rows of one matrix, the smaller ones
    (whole small tensors) concatenated, each group in a few reductions."""
    full = [i for i, s in enumerate(samples) if s.numel() == ref.SAMPLE_ELEMENTS]
    small = [i for i, s in enumerate(samples) if s.numel() != ref.SAMPLE_ELEMENTS]
    zeros = torch.empty(len(samples), device=segments.device)
    peak = torch.empty(len(samples), device=segments.device)
    if full:
        rows = torch.stack([_f32(samples[i]) for i in full])
        index = segments.const(full, torch.int64)
        nonzero = rows.bool().view(torch.uint8).sum(1, dtype=torch.int32)
        zeros.index_copy_(0, index, (ref.SAMPLE_ELEMENTS - nonzero).float())
        peak.index_copy_(0, index, rows.abs_().amax(1))
    if small:
        lengths = [samples[i].numel() for i in small]
        flat = torch.cat([_f32(samples[i]).reshape(-1) for i in small])
        layout = segments.ids(lengths)
        index = segments.const(small, torch.int64)
        nonzero = segments.sum(flat.bool().float(), layout)
        zeros.index_copy_(0, index, segments.const([float(n) for n in lengths]) - nonzero)
        peak.index_copy_(0, index, torch.segment_reduce(flat.abs(), "max", lengths=layout.lengths,
                                                        initial=0.0))
    return zeros, peak


def gradient_columns(parts):
    """[layers, 4] gradient columns (GRADIENT_STATS order) from `gradient_parts`
    (NaN for a layer without gradients)."""
    sq, bad, zeros, n, peak = parts.unbind(1)
    nan = torch.full_like(sq, _NAN)
    has = n > 0
    return torch.stack([torch.where(has, sq.sqrt(), nan), torch.where(has, peak, nan),
                        torch.where(has, zeros / torch.where(has, n, 1.0), nan),
                        torch.where(has, bad, nan)], dim=1)


# -- weights ----------------------------------------------------------------------------
class WeightSamples:
    """The samples (`statistics.sample`) of a fixed list of parameters, as
    one float32 vector written at each `take(slot)` into a buffer of its own
    per slot (a step takes two: before and after the update).

    Layout: the parameters sampled to SAMPLE_ELEMENTS entries (`full`, the
    large ones) first, so that their samples are the rows of a [full,
    SAMPLE_ELEMENTS] matrix, then the others whole; `order` is each part's
    parameter index, `scales` and `lengths` follow it.

    The flat views of the parameters and the sampled blocks are made once
    (a step then costs one gather per large parameter, written in place);
    they are made again when a parameter's storage changes (`p.data = ...`,
    as when a model is moved or loaded that way). A parameter that is not
    contiguous (channels_last weights) has no flat view: it is sampled
    afresh at every call."""

    def __init__(self, params, sampler):
        self.params = list(params)
        self.sampler = sampler
        self._storages = None
        self._sources = None  # [(flat view, None) | (rows view, blocks) | (parameter, False)]
        self._buffers = {}  # slot -> (buffer, [each large parameter's row of it], the rest of it)
        self.order = self.scales = self.lengths = None
        self.full = 0

    def _make_views(self):
        entries = []
        for i, p in enumerate(self.params):
            n = p.numel()
            blocks = self.sampler.blocks(n)
            entries.append((blocks is None, i, n, blocks))
        entries.sort(key=lambda e: (e[0], e[1]))  # (the sampled ones first, each group in order)
        sources, order, scales, lengths = [], [], [], []
        for whole, i, n, blocks in entries:
            p = self.params[i]
            order.append(i)
            scales.append(1.0 if whole else n / float(ref.SAMPLE_ELEMENTS))
            lengths.append(n if whole else ref.SAMPLE_ELEMENTS)
            if not p.is_contiguous():  # (no flat view: `Sampler.sample` at every call)
                sources.append((p, False))
            elif whole:
                sources.append((p.detach().view(-1), None))
            else:
                sources.append((_rows(p.detach().view(-1)), blocks))
        self._sources, self._buffers = sources, {}
        self.order, self.scales, self.lengths = tuple(order), tuple(scales), tuple(lengths)
        self.full = sum(1 for e in entries if not e[0])

    def forget(self):
        """Drops the views and buffers (made again at the next `take`)."""
        self._storages = self._sources = None
        self._buffers = {}

    def take(self, slot):
        """The flat float32 samples in this layout, in `slot`'s buffer (the
        same tensor at every call with that slot: used before the next).
        One op per large parameter (its sampled blocks gathered into its
        row) and one for all the others (concatenated into the rest)."""
        storages = [(p.data_ptr(), p.dtype, p.shape, p.stride()) for p in self.params]
        if storages != self._storages:
            self._make_views()
            self._storages = storages
        if slot not in self._buffers:
            buffer = torch.empty(sum(self.lengths), dtype=torch.float32, device=self.sampler.device)
            rows = self.full * ref.SAMPLE_ELEMENTS
            blocks = buffer[:rows].view(-1, ref.SAMPLE_ELEMENTS // ref.SAMPLE_BLOCK, ref.SAMPLE_BLOCK)
            self._buffers[slot] = (buffer, list(blocks.unbind(0)), buffer[rows:])
        buffer, rows, rest = self._buffers[slot]
        with torch.no_grad():
            for (source, blocks), out in zip(self._sources, rows):  # (the sampled ones)
                if blocks is False:
                    out.copy_(self.sampler.sample(source)[0].view(-1, ref.SAMPLE_BLOCK))
                elif source.dtype == torch.float32:  # (gathered straight into the buffer)
                    torch.index_select(source, 0, blocks, out=out)
                else:
                    out.copy_(source.index_select(0, blocks))
            if rest.numel():
                torch.cat([source if blocks is None else source.detach().reshape(-1)
                           for source, blocks in self._sources[self.full:]], out=rest)
        return buffer


def weight_columns(before, after, samples, owners, layers, segments, masked=True):
    """[layers, 2]: weight_norm (W_before) and update_ratio of every layer
    (`statistics.weight_stats`) from the flat samples before and after the
    update (`WeightSamples.take`; `samples` the WeightSamples, for their
    layout). owners: each parameter's layer. masked=False: as in
    `activation_columns` (right only when every sampled value is finite).
    Returns (columns, probe)."""
    device = before.device
    scale = segments.const(samples.scales)
    owner = segments.const([owners[i] for i in samples.order], torch.int64)
    delta = after - before
    lengths = samples.lengths
    if masked:
        t_ids = segments.ids(lengths)
        both = torch.isfinite(before) & torch.isfinite(after)
        b_sq = torch.where(both, before, 0.0).square()
        d_sq = torch.where(both, delta, 0.0).square()
        count = segments.sum(both.float(), t_ids)
        sq_b, sq_u = segments.sum(b_sq, t_ids), segments.sum(d_sq, t_ids)
    else:  # no masking: the large parameters' rows by one norm, the others by segment sums
        rows = samples.full * ref.SAMPLE_ELEMENTS
        sq_b, sq_u = [], []
        if samples.full:
            for values, out in ((before, sq_b), (delta, sq_u)):
                out.append(torch.linalg.vector_norm(values[:rows].view(samples.full, -1), dim=1).square())
        if rows < before.numel():
            t_ids = segments.ids(lengths[samples.full:])
            sq_b.append(segments.sum(before[rows:].square(), t_ids))
            sq_u.append(segments.sum(delta[rows:].square(), t_ids))
        sq_b, sq_u = torch.cat(sq_b), torch.cat(sq_u)
        count = segments.const([float(n) for n in lengths])
    per_tensor = torch.stack([sq_b * scale, sq_u * scale, count], dim=1)
    sq_b, sq_u, count = torch.zeros(layers, 3, device=device).index_add_(0, owner, per_tensor).unbind(1)
    norm = sq_b.sqrt()
    nan = torch.full_like(norm, _NAN)
    columns = torch.stack([torch.where(count > 0, norm, nan),
                           torch.where((count > 0) & (norm > 0),
                                       sq_u.sqrt() / torch.where(norm > 0, norm, 1.0), nan)], dim=1)
    return columns, sq_b.sum() + sq_u.sum()


# -- activations --------------------------------------------------------------------------
def concatenate(samples):
    """[examples, all values]: layer output samples of one batch size
    ([examples, values] each, `Sampler.activation_sample`) side by side, as
    a new float32 tensor (the functions below may write into it)."""
    return torch.cat([_f32(s) for s in samples], dim=1)


def activation_columns(x, widths, bounds, segments, masked=True):
    """[layers, 6] activation columns (ACTIVATION_STATS order) of layer
    output samples (`statistics.activation_stats`), given as their
    `concatenate`d values x (consumed: it may be overwritten) and each
    layer's width in it. bounds: each layer's (lo, hi) or None.

    masked=False skips the masking of non-finite values (fewer passes); its
    result is right only when every value is finite, which its second
    return value, a finite-only probe (the sum of all values), tells.
    Returns (columns, probe)."""
    k = x.shape[0]
    layers = len(widths)
    ids = segments.ids(widths)
    n = segments.const([float(k * w) for w in widths])
    width = segments.const([float(w) for w in widths])
    nan = torch.full((layers,), _NAN, device=x.device)
    saturated = nan
    bounded = [i for i, b in enumerate(bounds) if b is not None]
    if bounded:  # only the bounded layers' values (before x is overwritten)
        if len(bounded) == layers:
            part = x
        else:
            offsets = [0]
            for w in widths:
                offsets.append(offsets[-1] + w)
            part = torch.cat([x[:, offsets[i]:offsets[i + 1]] for i in bounded], dim=1)
        b_ids = segments.ids([widths[i] for i in bounded])
        lo = segments.const([bounds[i][0] for i in bounded])
        hi = segments.const([bounds[i][1] for i in bounded])
        eps = fmt.SATURATION_EPS * (hi - lo)
        at_bound = (part <= (lo + eps)[b_ids.index]) | (part >= (hi - eps)[b_ids.index])
        if masked:
            at_bound = at_bound & torch.isfinite(part)
        counts = segments.sum(at_bound.sum(0).float(), b_ids)
        saturated = nan.index_copy(0, segments.const(bounded, torch.int64),
                                   counts / segments.const([float(k * widths[i]) for i in bounded]))
    if not masked:
        (mean, std, example_std, zeros), probe = _unmasked_activation_columns(x, ids, n, width,
                                                                              segments)
        return torch.stack([mean, std, example_std, zeros, saturated, torch.zeros_like(mean)],
                           dim=1), probe
    # Zeros per value (column): a byte count where it cannot overflow (the
    # fastest reduction of a mask on a CPU).
    count_type = torch.uint8 if k <= 255 else torch.int32
    zeros = segments.sum(x.eq(0).view(torch.uint8).sum(0, dtype=count_type).float(), ids) / n
    finite = torch.isfinite(x)
    z = torch.where(finite, x, 0.0)
    count = segments.sum(finite.sum(0).float(), ids)
    col_sum = z.sum(0)
    mean = segments.sum(col_sum, ids) / count
    centered = torch.where(finite, x - mean[ids.index], 0.0)
    var = segments.sum(centered.square().sum(0), ids) / count
    spread = (z - col_sum / k).square().sum(0)  # per value, across the examples
    nonfinite = n - count
    example_std = (segments.sum((spread / k).sqrt(), ids) / width) if k >= 2 else nan
    columns = torch.stack([torch.where(count > 0, mean, nan), torch.where(count > 0, var.sqrt(), nan),
                           example_std, zeros, saturated, nonfinite], dim=1)
    return columns, col_sum.sum()


def _unmasked_activation_columns(x, ids, n, width, segments):
    """`activation_columns` without masking (a CPU; x consumed): ((mean,
    std, example std, zero fraction) of each layer, probe). Per value
    (column) first, then per layer: the variance as the spread within
    columns plus the spread of the column means (no cancellation), and the
    columns' spread is example_std's too."""
    k = x.shape[0]
    # Non-zero values per column: a byte count where it cannot overflow (a
    # cast to bool is about 5x faster than a comparison with zero here).
    count_type = torch.uint8 if k <= 255 else torch.int32
    nonzero = x.bool().view(torch.uint8).sum(0, dtype=count_type)
    zeros = 1.0 - segments.sum(nonzero.float(), ids) / n
    col_sum = x.sum(0)
    col_mean = col_sum / k
    spread = x.sub_(col_mean).square_().sum(0)  # (x is consumed: in place)
    mean = segments.sum(col_sum, ids) / n
    between = segments.sum((col_mean - mean.index_select(0, ids.index)).square_(), ids)
    var = (segments.sum(spread, ids) + k * between) / n
    example_std = (segments.sum(spread.div_(k).sqrt_(), ids) / width if k >= 2
                   else torch.full_like(mean, _NAN))
    return (mean, var.sqrt(), example_std, zeros), col_sum.sum()


def sample_units_active(x, widths, units, units_first, segments, branch_free=False):
    """Bool [sum of units]: `statistics.units_active` of each layer's
    sample, given as their `concatenate`d values x (not modified) and each
    layer's width in it (`Sampler.activation_sample`'s layout: units_first
    [units, positions] or not [positions, units]), layer after layer, in one
    reduction over all of them.

    branch_free=True (a CPU, not under torch.compile): through each value's
    largest example (a faster reduction than a mask's), checked for NaN
    (a NaN example hides a positive one from it: then through the mask)."""
    positive = None
    if branch_free:
        peak = x.amax(dim=0)
        if not bool(torch.isnan(peak).any()):
            positive = (peak > 0).to(torch.uint8)
    if positive is None:
        positive = (x > 0).any(dim=0).to(torch.uint8)
    ids = segments.unit_ids(widths, units, units_first)
    out = torch.zeros(sum(units), dtype=torch.uint8, device=x.device)
    return out.scatter_reduce_(0, ids, positive, "amax").bool()


_ALL_UNITS = {}


def _all_units(units, device):
    """A bool [units] of True (shared: never written)."""
    key = (units, device)
    if key not in _ALL_UNITS:
        _ALL_UNITS[key] = torch.ones(units, dtype=torch.bool, device=device)
    return _ALL_UNITS[key]


def is_all_units(active):
    """Whether `active` is the shared all-True vector `units_active` returns
    where every unit fired (not one that merely holds only True)."""
    return active is _ALL_UNITS.get((active.numel(), active.device))


def units_active(a, unit_axis, nonnegative=False, probe=None):
    """Bool [units]: the units of a whole output (batch first, units at
    `unit_axis`) that are > 0 somewhere (`statistics.units_active`),
    reduced in the output's own layout (no copy of it). `a` is detached
    from the autograd graph.

    nonnegative=True: the output has no negative values (ReLU, ReLU6); a
    unit is then active where the sum of its values, NaN left out, is > 0
    (one reduction, no temporary of the output's size).

    probe (where reading a value waits for nothing: a CPU, not under
    torch.compile): some of the output's values as [examples, units,
    values] (its activation sample, just taken: no cold read of the
    output). Where every unit fired in it (the common case in a healthy
    network) that is the answer, the probe being part of the output; else
    the whole output is reduced (the same result, a fraction of the reads
    in the common case)."""
    if a.dim() < 2:
        a = a.reshape(-1, 1)
        unit_axis = 1
    if probe is not None:
        # (a sum of values >= 0, NaN left out, is not 0 exactly where one is > 0)
        fired = torch.nansum(probe, (0, 2)) if nonnegative else probe.gt(0).any(2).any(0)
        if bool(fired.all()):
            return _all_units(a.shape[unit_axis], a.device)
    if unit_axis == a.dim() - 1:
        per_unit, dims = a.reshape(-1, a.shape[-1]), (0,)
    else:  # [batch, units, positions]
        per_unit, dims = a.reshape(a.shape[0], a.shape[unit_axis], -1), (0, 2)
    if nonnegative:
        return torch.nansum(per_unit, dims) > 0
    positive = per_unit > 0
    for d in sorted(dims, reverse=True):
        positive = positive.any(dim=d)
    return positive


def input_columns(inputs):
    """[5] `statistics.input_stats` over a list of tensors, in INPUT_STATS order."""
    flat = torch.cat([_f32(x.detach().reshape(-1)) for x in inputs])
    finite = torch.isfinite(flat)
    count = finite.sum()
    z = torch.where(finite, flat, 0.0)
    mean = z.sum() / count
    std = (torch.where(finite, flat - mean, 0.0).square().sum() / count).sqrt()
    inf = torch.full_like(mean, float("inf"))
    return torch.stack([mean, std, torch.where(finite, flat, inf).min(),
                        torch.where(finite, flat, -inf).max(), (flat.numel() - count).float()])


# -- histograms (every `histogram_every` steps) ---------------------------------------------
def gradient_histogram(grads, sampler):
    """[HIST_ROW]: `statistics.gradient_histogram` of one layer's gradients."""
    lo, hi = fmt.GRAD_LOG10_RANGE
    device = sampler.device
    counts = torch.zeros(fmt.HIST_BINS, device=device)
    zeros = torch.zeros((), device=device)
    bad = torch.zeros((), device=device)
    n = 0
    for g in grads:
        n += g.numel()
        part, scale = sampler.sample(g)
        part = _f32(part)
        finite = torch.isfinite(part)
        zeros = zeros + (part == 0).sum() * scale
        bad = bad + (~finite).sum() * scale
        use = finite & (part != 0)
        idx = torch.floor((torch.log10(torch.where(use, part.abs(), 1.0)) - lo) / (hi - lo) * fmt.HIST_BINS)
        idx = idx.clamp(0, fmt.HIST_BINS - 1).long()
        counts = counts.scatter_add(0, idx, use.float() * scale)
    if n == 0:
        return torch.full((fmt.HIST_ROW,), _NAN, device=device)
    return torch.cat([torch.stack([zeros / n, bad / n]), counts / n]).float()


def activation_histogram(a):
    """[HIST_ROW]: `statistics.activation_histogram` of an activation sample."""
    flat = _f32(a.reshape(-1))
    n = flat.numel()
    finite = torch.isfinite(flat)
    inf = torch.full((), float("inf"), device=flat.device)
    lo = torch.where(finite, flat, inf).min()
    hi = torch.where(finite, flat, -inf).max()
    width = hi - lo
    idx = torch.where(width > 0, torch.floor((flat - lo) / torch.where(width > 0, width, 1.0)
                                              * fmt.HIST_BINS), 0.0)
    idx = torch.nan_to_num(idx, nan=0.0, posinf=0.0, neginf=0.0).clamp(0, fmt.HIST_BINS - 1).long()
    # (a scatter into the bins, not bincount: bincount reads the largest
    # index back from the device)
    counts = torch.zeros(fmt.HIST_BINS, device=flat.device).scatter_add(0, idx, finite.float())
    return torch.cat([torch.stack([lo, hi]), counts / max(n, 1)]).float()
