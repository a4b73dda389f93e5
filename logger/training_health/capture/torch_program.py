"""The device side of the PyTorch capture: hooks and the row ring buffer.

`TorchProgram` watches a model and its optimizer through hooks and keeps one
row per optimizer step (the layout of `format`: GLOBAL_STATS, then every
layer's LAYER_STATS) in a ring buffer on the model's device:

* a forward hook on each monitored module computes the activation columns
  of the first `activation_examples` examples of its output, and which of
  its units fired anywhere in the batch (training forwards only: nothing is
  done under `torch.no_grad()` / `inference_mode` or in `eval()` mode);
* a forward pre-hook on the model takes the input statistics;
* the optimizer's step pre-hook takes the gradient columns (the gradients
  the optimizer applies: after `GradScaler` unscaled them) and a sample of
  each weight; its step post-hook the same sample after the update, for
  ||dW|| / ||W_before|| of the step's actual update;
* `end_step(loss)` puts the row together and writes it into the buffer.

Every statistic is a tensor op on the device; the host learns the row
count by counting steps, so no call here waits for the device. As a
`host.RowSource` the buffer goes to the host in one copy per read.
"""

import threading

import numpy as np
import torch

from training_health import format as fmt
from training_health.capture import host
from training_health.capture import torch_ops as ops
from training_health.records import LayerInfo
from training_health.statistics import ACTIVATION_BOUNDS

# Activation modules: class name -> normalized activation name.
ACTIVATIONS = {
    "ReLU": "relu", "ReLU6": "relu6", "LeakyReLU": "leaky_relu", "PReLU": "leaky_relu",
    "RReLU": "leaky_relu", "ELU": "elu", "CELU": "elu", "SELU": "selu", "GELU": "gelu",
    "SiLU": "silu", "Mish": "mish", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softmax": "softmax",
    "Hardtanh": "hard_tanh", "Hardsigmoid": "hard_sigmoid", "Hardswish": "hard_swish",
    "Softplus": "softplus", "Softsign": "softsign", "LogSoftmax": "log_softmax",
}
# Modules whose output keeps channels at axis 1 (N, C, ...).
_CHANNELS_FIRST = ("Conv", "ConvTranspose", "BatchNorm", "InstanceNorm", "GroupNorm",
                   "MaxPool", "AvgPool", "AdaptiveAvgPool", "AdaptiveMaxPool", "LazyConv")


def unwrap(model):
    """The user's module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if isinstance(inner, torch.nn.Module) and type(model).__name__ in (
                "DistributedDataParallel", "DataParallel"):
            model = inner
            continue
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, torch.nn.Module):
            model = inner
            continue
        return model


def select_modules(model, patterns=None):
    """[(name, module)] to monitor, in `named_modules()` order: modules with
    parameters of their own plus activation modules, or those whose path
    fully matches one of `patterns`."""
    import re

    named = [(n, m) for n, m in model.named_modules() if n]
    if not named:
        named = [("model", model)]
    if patterns is None:
        chosen = [(n, m) for n, m in named
                  if any(p.requires_grad for p in m.parameters(recurse=False))
                  or type(m).__name__ in ACTIVATIONS]
    else:
        compiled = [re.compile(p) for p in patterns]
        chosen = [(n, m) for n, m in named if any(c.fullmatch(n) for c in compiled)]
        if not chosen:
            raise ValueError(
                "`layers` matched no module of the model; received %r, the model's modules are %s"
                % (list(patterns), [n for n, _ in named]))
    if not chosen:
        raise ValueError("the model has no module with trainable parameters or activation to "
                         "monitor; received %r" % (model,))
    return chosen


def _activation(module):
    cls = type(module).__name__
    if cls in ACTIVATIONS:
        name = ACTIVATIONS[cls]
        if cls == "Hardtanh" and (module.min_val, module.max_val) == (0.0, 6.0):
            name = "relu6"
        return name
    if cls.startswith(("Linear", "Conv", "LazyLinear", "LazyConv", "Bilinear")):
        return "linear"
    if cls in ("RNN",):
        return getattr(module, "nonlinearity", "tanh")
    if cls in ("LSTM", "GRU"):
        return "tanh"
    return ""


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for x in out:
            t = _first_tensor(x)
            if t is not None:
                return t
    if isinstance(out, dict):
        for x in out.values():
            t = _first_tensor(x)
            if t is not None:
                return t
    return None


class _Layer:
    """One monitored module and what the step recorded of it."""

    def __init__(self, name, module):
        self.name = name
        self.module = module
        self.params = [p for p in module.parameters(recurse=False) if p.requires_grad]
        self.activation = _activation(module)
        self.bounds = ACTIVATION_BOUNDS.get(self.activation)
        cls = type(module).__name__
        # A module whose outputs keep units at axis 1 (see
        # `TorchProgram._unit_axis_first`).
        self.channels_first = cls.startswith(_CHANNELS_FIRST)
        # RNNs without batch_first put the batch on axis 1.
        self.batch_axis = 1 if cls in ("RNN", "LSTM", "GRU") and not module.batch_first else 0
        self.units = 0
        self.captured = False
        self.is_output = False
        # Appended by the forward hook at every training forward of the step
        # (several with gradient accumulation): the activation columns and
        # the units that fired.
        self.acts = []
        self.active = []
        self.samples = []  # activation samples (for the histograms)
        self.seen = []  # (units at axis 1, units) of each output


class TorchProgram(host.RowSource):
    """Hooks on a model and optimizer, and the row buffer on the device.

    Args:
        model: the user's model (wrappers allowed: DDP, torch.compile).
        optimizer: the torch optimizer that updates it.
        layers, every_n_batches, histogram_every, dead_window,
        activation_examples: see `training_health.torch.HealthMonitor`.
        rows: capacity of the ring buffer (steps).
        gather: callable(list of tensors) -> tensors of the whole step
            under data parallelism (see `training_health.torch`), or None.
    """

    def __init__(self, model, optimizer, layers, every_n_batches, histogram_every, dead_window,
                 activation_examples, rows, gather=None):
        self.model = model
        self.inner = unwrap(model)
        self.optimizer = optimizer
        self.layers = [_Layer(n, m) for n, m in select_modules(self.inner, layers)]
        self.every_n_batches = int(every_n_batches)
        self.histogram_every = int(histogram_every)
        self.dead_window = int(dead_window)
        self.activation_examples = activation_examples
        self.rows = int(rows)
        self.gather = gather
        params = [p for p in self.inner.parameters()]
        self.device = params[0].device if params else torch.device("cpu")
        self.sampler = ops.Sampler(self.device)
        self.global_names = tuple(fmt.GLOBAL_STATS)
        self.width = len(self.global_names) + len(self.layers) * len(fmt.LAYER_STATS)
        self.buffer = torch.zeros(self.rows, self.width, device=self.device)
        self.row_steps = np.zeros(self.rows, np.int64)
        self.count = 0  # rows written (host counter: no device read)
        self.hist_slots = (max(2, self.rows // max(1, self.histogram_every) + 2)
                           if self.histogram_every else 0)
        if self.hist_slots:
            self.hist = torch.zeros(self.hist_slots, len(self.layers), len(fmt.HIST_SERIES),
                                    fmt.HIST_ROW, device=self.device)
            self.hist_steps = np.zeros(self.hist_slots, np.int64)
        self.hist_count = 0
        self.step = 0  # optimizer steps seen
        self.start = 0
        self._lock = threading.Lock()  # row/histogram buffers vs the host's reads
        self._owner = {}  # id(param) -> layer index
        for i, layer in enumerate(self.layers):
            for p in layer.params:
                self._owner.setdefault(id(p), i)
        self._unit_offsets = None
        self._last_active = None  # int64 [all units], step each unit last fired
        self._inputs = []
        self._grad_parts = None
        self._grad_samples = None  # for histograms
        self._before = None
        self._weight_parts = None
        self._output_ids = {}
        self._root_output = None
        self._last_output = None  # (channels first, shape) of the last output hooked
        self._handles = []
        self._install()

    # -- hooks -----------------------------------------------------------------------
    def _recording(self, module):
        return torch.is_grad_enabled() and module.training

    def _install(self):
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.module.register_forward_hook(
                lambda m, args, out, __i=i: self._on_output(__i, m, out)))
        self._handles.append(self.inner.register_forward_pre_hook(self._on_input))
        self._handles.append(self.inner.register_forward_hook(self._on_model_output))
        self._handles.append(self.optimizer.register_step_pre_hook(self._before_update))
        self._handles.append(self.optimizer.register_step_post_hook(self._after_update))

    def remove(self):
        """Removes every hook (the model and optimizer are as they were)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def _unit_axis_first(self, layer, a):
        """Whether a layer's output (batch first) keeps its units at axis 1.

        Images and volumes (rank >= 4) are channels-first in PyTorch. At
        rank 3, convolution / normalization / pooling outputs are [N, C, L]
        while sequence outputs are [N, T, features]; a module without
        parameters (an activation) follows the module whose output it got
        (the last one hooked in this forward, when of the same shape)."""
        if a.dim() >= 4:
            return True
        if a.dim() < 3:
            return False
        if layer.params or layer.channels_first:
            return layer.channels_first
        previous = self._last_output
        return previous is not None and previous[1] == tuple(a.shape) and previous[0]

    # The hooks below do the same at every call, whatever the step: under
    # torch.compile they are traced into the model's graph, and any Python
    # state they branched on would be a guard (a recompilation when it
    # changes). What they record goes into lists that `end_step` empties.
    def _on_output(self, index, module, out):
        if not self._recording(module):
            return
        t = _first_tensor(out)
        if t is None or not t.is_floating_point():
            return
        layer = self.layers[index]
        a = t.detach()
        if layer.batch_axis != 0:
            a = a.movedim(layer.batch_axis, 0)
        if a.dim() < 2:
            a = a.reshape(-1, 1)
        first = self._unit_axis_first(layer, a)
        self._last_output = (first, tuple(a.shape))
        if first:
            a = a.movedim(1, -1)
        sample = self.sampler.activation_sample(a, self.activation_examples)
        if self.gather is not None:
            sample = self.gather.examples(sample)
        layer.acts.append(ops.activation_columns(sample, layer.bounds))
        layer.active.append(ops.units_active(a))
        layer.samples.append(sample)
        layer.seen.append((first, int(a.shape[-1])))
        if not torch.compiler.is_compiling():
            self._output_ids[id(t)] = index

    def _on_input(self, module, args):
        self._last_output = None
        if not self._recording(module) or self._inputs:
            return
        xs = [x for x in args if isinstance(x, torch.Tensor) and x.is_floating_point()]
        if not xs:
            return
        k = self.activation_examples
        part = [x.detach()[:k] if k is not None else x.detach() for x in xs]
        if self.gather is not None:
            part = [self.gather.examples(x.float()) for x in part]
        self._inputs.append(ops.input_columns(part))

    def _on_model_output(self, module, args, out):
        if torch.compiler.is_compiling() or not self._recording(module):
            return
        t = _first_tensor(out)
        index = self._output_ids.get(id(t)) if t is not None else None
        if index is not None:
            self.layers[index].is_output = True
        self._output_ids = {}

    def _before_update(self, optimizer, args, kwargs):
        per_layer = [[] for _ in self.layers]
        unowned = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                owner = self._owner.get(id(p))
                (unowned if owner is None else per_layer[owner]).append(p.grad)
        self._grad_parts = ([ops.gradient_parts(g, self.sampler) if g else None for g in per_layer],
                            ops.gradient_parts(unowned, self.sampler) if unowned else None)
        if self.histogram_every and (self.step + 1) % self.histogram_every == 0:
            self._grad_samples = per_layer
        self._before = [[self.sampler.sample(p, copy=True) for p in layer.params]
                        for layer in self.layers]

    def _after_update(self, optimizer, args, kwargs):
        if self._before is None:
            return
        parts = []
        for layer, before in zip(self.layers, self._before):
            if not before:
                parts.append(None)
                continue
            after = [self.sampler.sample(p) for p in layer.params]
            parts.append(ops.weight_parts(before, after))
        self._weight_parts = parts
        self._before = None

    # -- the row ---------------------------------------------------------------------
    def end_step(self, loss, learning_rate):
        """Closes one optimizer step: writes its row (every `every_n_batches`
        steps) into the buffer. Returns True when a row was written."""
        self.step += 1
        step = self.step
        for layer in self.layers:
            if layer.seen:
                layer.captured = True
                layer.units = layer.seen[0][1]
        try:
            if step % self.every_n_batches != 0:
                self._track_units(step)
                return False
            row = self._row(step, loss, learning_rate)
            hist = self._histograms() if self.hist_slots and step % self.histogram_every == 0 else None
            with self._lock:
                slot = self.count % self.rows
                self.buffer[slot].copy_(row, non_blocking=True)
                self.row_steps[slot] = step
                self.count += 1
                if hist is not None:
                    hslot = self.hist_count % self.hist_slots
                    self.hist[hslot].copy_(hist, non_blocking=True)
                    self.hist_steps[hslot] = step
                    self.hist_count += 1
            return True
        finally:
            for layer in self.layers:
                layer.acts.clear()
                layer.active.clear()
                layer.samples.clear()
                layer.seen.clear()
            self._inputs = []
            self._grad_parts = None
            self._grad_samples = None
            self._weight_parts = None
            self._before = None

    def _track_units(self, step):
        """Updates each unit's last step of firing; returns (active, last
        active) over every captured unit, or (None, None)."""
        layers = [l for l in self.layers if l.captured]
        if not layers:
            return None, None
        total = sum(l.units for l in self.layers if l.captured)
        if self._last_active is None or self._last_active.numel() != total:
            self._last_active = torch.full((total,), self.start - 1, dtype=torch.int64,
                                           device=self.device)
        parts = []
        for l in layers:
            if l.active:
                a = l.active[0]
                for more in l.active[1:]:
                    a = a | more
            else:
                a = torch.zeros(l.units, dtype=torch.bool, device=self.device)
            parts.append(a)
        active = torch.cat(parts)
        if self.gather is not None:
            active = self.gather.any(active)
        self._last_active = torch.where(active, torch.full_like(self._last_active, step),
                                        self._last_active)
        return active, self._last_active

    def _row(self, step, loss, learning_rate):
        device = self.device
        nan = torch.full((), float("nan"), device=device)
        active, last = self._track_units(step)
        n_layers = len(self.layers)
        table = torch.full((n_layers, len(fmt.LAYER_STATS)), float("nan"), device=device)
        grad_parts, unowned = self._grad_parts if self._grad_parts is not None else (
            [None] * n_layers, None)
        col = {k: i for i, k in enumerate(fmt.LAYER_STATS)}
        g0, w0, a0, d0 = (col[fmt.GRADIENT_STATS[0]], col[fmt.WEIGHT_STATS[0]],
                          col[fmt.ACTIVATION_STATS[0]], col[fmt.DEAD_UNIT_STATS[0]])
        gathered = []
        for i, layer in enumerate(self.layers):
            parts = grad_parts[i]
            if parts is not None:
                table[i, g0:g0 + len(fmt.GRADIENT_STATS)] = ops.gradient_columns(parts)
                gathered.append(parts)
            if self._weight_parts is not None and self._weight_parts[i] is not None:
                table[i, w0:w0 + len(fmt.WEIGHT_STATS)] = ops.weight_columns(self._weight_parts[i])
            if layer.acts:
                table[i, a0:a0 + len(fmt.ACTIVATION_STATS)] = layer.acts[0]
        if active is not None:
            threshold = max(step - self.dead_window + 1, self.start)
            k = 0
            for i, layer in enumerate(self.layers):
                if not layer.captured:
                    continue
                seg = slice(k, k + layer.units)
                k += layer.units
                dead = 1.0 - active[seg].float().mean()
                dead_window = (last[seg] < threshold).float().mean()
                table[i, d0:d0 + 2] = torch.stack([dead, dead_window])
        if unowned is not None:
            gathered.append(unowned)
        if gathered:
            total = torch.stack(gathered).sum(dim=0)
            grad_norm, grad_bad = total[0].sqrt(), total[1]
        else:
            grad_norm, grad_bad = nan, nan
        if isinstance(loss, torch.Tensor):
            loss_value = loss.detach().float().reshape(-1).mean().to(device)
            if self.gather is not None:
                loss_value = self.gather.mean(loss_value)
        elif loss is None:
            loss_value = nan
        else:
            loss_value = torch.full((), float(loss), device=device)
        inputs = self._inputs[0] if self._inputs else torch.full((len(fmt.INPUT_STATS),),
                                                                 float("nan"), device=device)
        if isinstance(learning_rate, torch.Tensor):
            lr = learning_rate.detach().float().reshape(-1)[0].to(device)
        else:
            # (a fill, not a copy from the host: no wait for the device)
            lr = torch.full((), float("nan") if learning_rate is None else float(learning_rate),
                            device=device)
        values = {"loss": loss_value, "grad_norm": grad_norm, "grad_nonfinite": grad_bad,
                  "learning_rate": lr}
        values.update(zip(fmt.INPUT_STATS, inputs.unbind()))
        head = torch.stack([values[k].float() for k in fmt.GLOBAL_STATS])
        return torch.cat([head, table.reshape(-1)])

    def _histograms(self):
        rows = []
        nan_row = torch.full((fmt.HIST_ROW,), float("nan"), device=self.device)
        grads = self._grad_samples or [[] for _ in self.layers]
        for i, _ in enumerate(self.layers):
            g = ops.gradient_histogram(grads[i], self.sampler) if grads[i] else nan_row
            samples = self.layers[i].samples
            a = samples[0] if samples else None
            rows.append(torch.stack([g, ops.activation_histogram(a) if a is not None else nan_row]))
        return torch.stack(rows)

    # -- host.RowSource ----------------------------------------------------------------
    def read_rows(self):
        with self._lock:
            before = self.count
            if before == 0:
                return None
            buffer = self.buffer.clone()
            steps = self.row_steps.copy()
        # The copy to the host waits for the device in this (background)
        # thread; the training thread goes on.
        return before, buffer.cpu().numpy(), steps, before

    def read_histograms(self):
        if not self.hist_slots:
            return None
        with self._lock:
            count = self.hist_count
            hist = self.hist.clone()
            steps = self.hist_steps.copy()
        return count, hist.cpu().numpy(), steps

    def layer_infos(self):
        return [LayerInfo(name=l.name, type=type(l.module).__name__, activation=l.activation,
                          bounds=l.bounds, units=l.units, has_weights=bool(l.params),
                          has_activation=l.captured, is_output=l.is_output)
                for l in self.layers]
