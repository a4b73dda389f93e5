"""The statistics of `training_health.statistics`, as PyTorch ops.

Each function here computes, on the tensors' own device and without any
transfer to the host, what the numpy function of the same name in
`training_health.statistics` computes (the tests check one against the
other on the same batch). They return tensors; nothing here branches on a
tensor's value, so no call waits for the device.

Layout: PyTorch keeps the unit (channel) axis of an image-like output at
axis 1 (NCHW); the statistics take units on the last axis, as Keras does.
`units_last` moves it there.
"""

import math

import torch

from training_health import format as fmt
from training_health import statistics as ref

_NAN = float("nan")


def units_last(a, unit_axis):
    """`a` with its unit axis moved last (a view)."""
    return a if unit_axis in (-1, a.dim() - 1) else a.movedim(unit_axis, -1)


# -- sampling (the rule is `statistics.sampling`) ----------------------------------
class Sampler:
    """Fixed sample indices per tensor size, kept on one device."""

    def __init__(self, device):
        self.device = device
        self._flat = {}  # n -> LongTensor of sampled flat indices, or None
        self._positions = {}

    def flat_indices(self, n):
        if n not in self._flat:
            blocks = ref.sample_block_indices(n)
            if blocks is None:
                self._flat[n] = None
            else:
                idx = (torch.as_tensor(blocks, dtype=torch.int64)[:, None] * ref.SAMPLE_BLOCK
                       + torch.arange(ref.SAMPLE_BLOCK)[None, :]).reshape(-1)
                self._flat[n] = idx.to(self.device)
        return self._flat[n]

    def sample(self, t, copy=False):
        """(flat float32 sample of t, scale), as `statistics.sample`.
        copy=True: never a view of `t` (for a value that `t`'s in-place
        update must not change)."""
        flat = t.detach().reshape(-1)
        idx = self.flat_indices(flat.numel())
        if idx is None:
            out = flat.float()
            return (out.clone() if copy and out.data_ptr() == flat.data_ptr() else out), 1.0
        return flat.index_select(0, idx).float(), flat.numel() / float(ref.SAMPLE_ELEMENTS)

    def activation_sample(self, a, examples):
        """`statistics.activation_sample` of `a` (units last), float32."""
        a = a.detach()
        if examples is not None:
            a = a[:examples]
            if a.dim() >= 3:
                positions = int(math.prod(a.shape[1:-1]))
                key = (positions, a.shape[-1], examples)
                if key not in self._positions:
                    idx = ref.sample_position_indices(positions, a.shape[-1], examples)
                    self._positions[key] = None if idx is None else torch.as_tensor(idx).to(self.device)
                idx = self._positions[key]
                if idx is not None:
                    a = a.reshape(a.shape[0], positions, a.shape[-1]).index_select(1, idx)
        return a.float()


# -- per-tensor parts ----------------------------------------------------------------
def gradient_parts(grads, sampler):
    """[5] float32: sum of finite squares, non-finite count, zeros (scaled)
    in the samples, entries, max |g| over the samples, of a list of
    gradients (one layer's)."""
    sq, bad, zeros, peak = [], [], [], []
    n = 0
    for g in grads:
        g = g.detach()
        finite = torch.isfinite(g)
        sq.append(torch.where(finite, g, 0).float().square().sum())
        bad.append(g.numel() - finite.sum())
        s, scale = sampler.sample(g)
        zeros.append((s == 0).sum() * scale)
        peak.append(torch.where(torch.isfinite(s), s.abs(), 0).max())
        n += g.numel()
    return torch.stack([torch.stack(sq).sum(), torch.stack(bad).sum().float(),
                        torch.stack(zeros).sum().float(), torch.full((), float(n), device=sq[0].device),
                        torch.stack(peak).max()])


def gradient_columns(parts):
    """The gradient columns [4] from `gradient_parts`, in GRADIENT_STATS order."""
    sq, bad, zeros, n, peak = parts.unbind()
    return torch.stack([sq.sqrt(), peak, zeros / n, bad])


def weight_parts(before, after):
    """[3]: scaled sums of squares of W_before and dW, and the count of
    entries finite in both, over samples `before`, `after` ((sample,
    scale) pairs of one layer's weights)."""
    sq_b, sq_u, count = [], [], []
    for (b, scale), (a, _) in zip(before, after):
        both = torch.isfinite(b) & torch.isfinite(a)
        sq_b.append(torch.where(both, b, 0).square().sum() * scale)
        sq_u.append(torch.where(both, a - b, 0).square().sum() * scale)
        count.append(both.sum().float())
    return torch.stack([torch.stack(sq_b).sum(), torch.stack(sq_u).sum(), torch.stack(count).sum()])


def weight_columns(parts):
    """[weight_norm, update_ratio] from `weight_parts` (NaN where undefined)."""
    sq_b, sq_u, count = parts.unbind()
    norm = sq_b.sqrt()
    nan = torch.full_like(norm, _NAN)
    norm_out = torch.where(count > 0, norm, nan)
    ratio = torch.where((count > 0) & (norm > 0), sq_u.sqrt() / norm, nan)
    return torch.stack([norm_out, ratio])


def activation_columns(a, bounds):
    """The activation columns [6] of a sample `a` (units last, batch first),
    in ACTIVATION_STATS order: `statistics.activation_stats`."""
    finite = torch.isfinite(a)
    n = a.numel()
    count = finite.sum()
    z = torch.where(finite, a, 0)
    mean = z.sum() / count
    var = torch.where(finite, (a - mean).square(), 0).sum() / count
    nan = torch.full_like(mean, _NAN)
    batch = a.shape[0] if a.dim() else 1
    if batch >= 2:
        per_example = z.reshape(batch, -1)
        example_std = per_example.std(dim=0, unbiased=False).mean()
    else:
        example_std = nan
    if bounds is not None:
        lo, hi = bounds
        eps = fmt.SATURATION_EPS * (hi - lo)
        saturated = (finite & ((a <= lo + eps) | (a >= hi - eps))).sum() / float(max(n, 1))
    else:
        saturated = nan
    return torch.stack([
        torch.where(count > 0, mean, nan),
        torch.where(count > 0, var.sqrt(), nan),
        example_std,
        (a == 0).sum() / float(max(n, 1)),
        saturated,
        (n - count).float(),
    ]).float()


def units_active(a):
    """Bool [units]: `statistics.units_active` of a whole output (units last)."""
    if a.dim() < 2:
        a = a.reshape(-1, 1)
    return (a.detach().reshape(-1, a.shape[-1]) > 0).any(dim=0)


def input_columns(inputs):
    """[5] `statistics.input_stats` over a list of tensors, in INPUT_STATS order."""
    flat = torch.cat([x.detach().reshape(-1).float() for x in inputs])
    finite = torch.isfinite(flat)
    count = finite.sum()
    z = torch.where(finite, flat, 0)
    mean = z.sum() / count
    std = (torch.where(finite, flat - mean, 0).square().sum() / count).sqrt()
    inf = torch.full_like(mean, float("inf"))
    return torch.stack([mean, std, torch.where(finite, flat, inf).min(),
                        torch.where(finite, flat, -inf).max(), (flat.numel() - count).float()])


# -- histograms ------------------------------------------------------------------------
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
        finite = torch.isfinite(part)
        zeros = zeros + (part == 0).sum() * scale
        bad = bad + (~finite).sum() * scale
        use = finite & (part != 0)
        idx = torch.floor((torch.log10(torch.where(use, part.abs(), 1.0)) - lo) / (hi - lo) * fmt.HIST_BINS)
        idx = idx.clamp(0, fmt.HIST_BINS - 1).long()
        counts = counts + torch.bincount(idx, weights=use.float() * scale, minlength=fmt.HIST_BINS)
    if n == 0:
        return torch.full((fmt.HIST_ROW,), _NAN, device=device)
    return torch.cat([torch.stack([zeros / n, bad / n]), counts / n]).float()


def activation_histogram(a):
    """[HIST_ROW]: `statistics.activation_histogram` of an activation sample."""
    flat = a.reshape(-1).float()
    n = flat.numel()
    finite = torch.isfinite(flat)
    inf = torch.full((), float("inf"), device=flat.device)
    lo = torch.where(finite, flat, inf).min()
    hi = torch.where(finite, flat, -inf).max()
    width = hi - lo
    idx = torch.where(width > 0, torch.floor((flat - lo) / torch.where(width > 0, width, 1.0)
                                              * fmt.HIST_BINS), 0.0)
    idx = torch.nan_to_num(idx, nan=0.0, posinf=0.0, neginf=0.0).clamp(0, fmt.HIST_BINS - 1).long()
    counts = torch.bincount(idx, weights=finite.float(), minlength=fmt.HIST_BINS)
    return torch.cat([torch.stack([lo, hi]), counts / max(n, 1)]).float()
