"""The device side of the PyTorch capture: hooks and the row ring buffer.

`TorchProgram` watches a model and its optimizer through hooks and keeps one
row per optimizer step (the layout of `format`: GLOBAL_STATS, then every
layer's LAYER_STATS) in a ring buffer on the model's device:

* a forward hook on each monitored module computes the activation columns
  of the first `activation_examples` examples of its output, and which of
  its units fired anywhere in the batch (training forwards only: nothing is
  done when the model runs under `torch.no_grad()` / `inference_mode` or in
  `eval()` mode; a part of it that runs so inside a training forward, as a
  frozen base, is measured);
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

import functools
import threading

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence

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
# Elementwise activations whose output sample is, bit for bit, the function
# applied to their input's sample (`TorchProgram._sample_of_input`): the
# same kernel on the same values.
_ELEMENTWISE = {
    "ReLU": lambda m, s: torch.relu(s),
    "ReLU6": lambda m, s: torch.nn.functional.hardtanh(s, 0.0, 6.0),
    "Hardtanh": lambda m, s: torch.nn.functional.hardtanh(s, m.min_val, m.max_val),
    "LeakyReLU": lambda m, s: torch.nn.functional.leaky_relu(s, m.negative_slope),
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


def is_frozen(module):
    """Whether a module has parameters of its own and none requires grad."""
    params = list(module.parameters(recurse=False))
    return bool(params) and not any(p.requires_grad for p in params)


def select_modules(model, patterns=None):
    """[(name, module)] to monitor, in `named_modules()` order: modules with
    trainable parameters of their own and activation modules (frozen
    modules, `is_frozen`, are left out: see `frozen_unmonitored`), or those
    whose path fully matches one of `patterns` (frozen ones included)."""
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
    linear = (torch.nn.Linear, torch.nn.Bilinear, torch.nn.modules.conv._ConvNd)
    if isinstance(module, linear):
        return "linear"
    if cls in ("RNN",):
        return getattr(module, "nonlinearity", "tanh")
    if cls in ("LSTM", "GRU"):
        return "tanh"
    return ""


def _first_tensor(out):
    """The first tensor of a module's output (nested tuples, lists, dicts);
    of a PackedSequence, its `data`: [tokens, features], every sequence's
    steps one after another (tokens take the examples' place)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, PackedSequence):
        return out.data
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


def _is_packed(out):
    """Whether a module's output is, or begins with, a PackedSequence (an RNN's)."""
    return isinstance(out, PackedSequence) or (
        isinstance(out, tuple) and bool(out) and isinstance(out[0], PackedSequence))


class _Layer:
    """One monitored module and what the step recorded of it."""

    def __init__(self, name, module):
        self.name = name
        self.module = module
        self.params = [p for p in module.parameters(recurse=False) if p.requires_grad]
        self.frozen = is_frozen(module)
        self.activation = _activation(module)
        self.bounds = ACTIVATION_BOUNDS.get(self.activation)
        # Dead units of a ReLU-family output cover the whole batch; of any
        # other output, the activation sample (as in Keras).
        self.whole_batch_units = LayerInfo(name, activation=self.activation).is_relu_family
        cls = type(module).__name__
        self.elementwise = (_ELEMENTWISE.get(cls) if type(module).__module__.startswith("torch.nn")
                            else None)
        # A module whose outputs keep units at axis 1 (see
        # `TorchProgram._unit_axis_first`).
        self.channels_first = cls.startswith(_CHANNELS_FIRST)
        # RNNs without batch_first put the batch on axis 1.
        self.batch_axis = 1 if cls in ("RNN", "LSTM", "GRU") and not module.batch_first else 0
        self.units = 0
        self.units_first = False  # its samples hold [units, positions] per example
        # ((layout, dtype), tensor): the step's first activation sample is
        # written into the same tensor at every step while the output's
        # layout stays (eager mode): a sample lives from the forward pass to
        # `end_step`, and one allocated anew at every step, among the
        # training's own large tensors allocated and freed meanwhile, would
        # split the free memory between them (more memory mapped afresh,
        # page faults, in the training's own allocations on a CPU).
        self.sample_buffer = None
        self.captured = False
        self.is_output = False
        # Appended by the forward hook at every training forward of the step
        # (several with gradient accumulation); `end_step` empties them.
        self.samples = []  # activation samples [examples, values], units last
        self.active = []  # whole-batch unit activity (ReLU family)
        self.seen = []  # (units, units at axis 1) of each output

    def buffer_for(self, layout, dtype):
        """The sample buffer for an output of this layout and dtype, or None."""
        kept = self.sample_buffer
        return kept[1] if kept is not None and kept[0] == (layout, dtype) else None


class TorchProgram(host.RowSource):
    """Hooks on a model and optimizer, and the row buffer on the device.

    Args:
        model: the user's model (wrappers allowed: DDP, torch.compile).
        optimizer: the torch optimizer that updates it.
        layers, every_n_batches, histogram_every, dead_window,
        activation_examples: see `training_health.torch.HealthMonitor`.
        rows: capacity of the ring buffer (steps).
        gather: under data parallelism, an object whose `examples(t)`,
            `any(flags)` and `mean(value)` give the whole step's values
            (see `training_health.torch`), or None.
        start_step: the optimizer steps taken before (the first step
            recorded is start_step + 1).
    """

    def __init__(self, model, optimizer, layers, every_n_batches, histogram_every, dead_window,
                 activation_examples, rows, gather=None, start_step=0):
        self.model = model
        self.inner = unwrap(model)
        self.optimizer = optimizer
        self.layers = [_Layer(n, m) for n, m in select_modules(self.inner, layers)]
        chosen = {id(layer.module) for layer in self.layers}
        # Frozen modules not monitored, named in the layer metadata.
        self.frozen_unmonitored = tuple(n for n, m in self.inner.named_modules()
                                        if n and is_frozen(m) and id(m) not in chosen)
        self.every_n_batches = int(every_n_batches)
        self.histogram_every = int(histogram_every)
        self.dead_window = int(dead_window)
        self.activation_examples = activation_examples
        self.rows = int(rows)
        self.gather = gather
        params = list(self.inner.parameters())
        self.device = params[0].device if params else torch.device("cpu")
        self.sampler = ops.Sampler(self.device)
        # On a CPU the host is the device: reading a value waits for
        # nothing, so rare cases (non-finite values) may be handled by a
        # branch; on an accelerator every statistic is computed without one.
        self.host_is_device = self.device.type == "cpu"
        self.segments = ops.Segments(self.device)
        self.global_names = tuple(fmt.GLOBAL_STATS)
        self.width = len(self.global_names) + len(self.layers) * len(fmt.LAYER_STATS)
        self.buffer = torch.zeros(self.rows, self.width, device=self.device)
        self.row_steps = np.zeros(self.rows, np.int64)
        self.count = 0  # rows written (a host counter: no device read)
        self.hist_slots = (max(2, self.rows // max(1, self.histogram_every) + 2)
                           if self.histogram_every else 0)
        if self.hist_slots:
            self.hist = torch.zeros(self.hist_slots, len(self.layers), len(fmt.HIST_SERIES),
                                    fmt.HIST_ROW, device=self.device)
            self.hist_steps = np.zeros(self.hist_slots, np.int64)
        self.hist_count = 0
        self.step = int(start_step)  # the last step closed by end_step
        self.optimizer_steps = 0  # optimizer.step() calls that ran
        self.start = int(start_step)
        self._lock = threading.Lock()  # the buffers vs the host's reads
        # The monitored parameters, layer after layer, and their owners.
        self._params = [p for layer in self.layers for p in layer.params]
        self._param_owner = [i for i, layer in enumerate(self.layers) for _ in layer.params]
        # Each monitored parameter's layers (more than one for a weight tied
        # between modules: its gradient counts in each).
        self._owners = {}
        for p, i in zip(self._params, self._param_owner):
            self._owners.setdefault(id(p), []).append(i)
        self._weight_samples = ops.WeightSamples(self._params, self.sampler)
        self._last_active = None  # int64 [all units], the step each unit last fired
        self._inputs = []
        # The step's batch inputs as a trainer handed them over (`batch_inputs`),
        # for a step whose model forward did not run as a whole.
        self._batch_inputs = None
        self._grads = None  # ((gradient parts [L + 1, 5], totals [2]), per-layer gradients for histograms)
        self._before = None  # flat sample of the weights before the update
        self._weights = None  # [L, 2] weight columns of the step
        self._step_lr = None  # the learning rate of the step's update
        self._output_ids = {}
        self._last_output = None  # (units at axis 1, shape) of the last output hooked
        # (output tensor, its version, layout, sample) of the last output
        # sampled, for an elementwise activation applied to it next.
        self._last_sample = None
        # Inside a training forward of the whole model (see `_recording`).
        self._training_forward = False
        # Set by `HealthMonitor.paused()`: forwards that are not the step's.
        self.paused = False
        self._handles = []
        self._install()

    # -- hooks -----------------------------------------------------------------------
    def _recording(self, module):
        return not self.paused and torch.is_grad_enabled() and module.training

    def _recording_layer(self, module):
        """Whether a monitored module's output belongs to the training step:
        inside a training forward of the whole model (grad enabled, model in
        train() mode), also where the module runs in eval() mode or under
        torch.no_grad() (a frozen base kept in eval() mode, a feature
        extractor run without gradients); or, called outside the model's
        forward, when the module itself is training with grad enabled.
        Nothing while `paused` (a model forward begun paused is not a
        training forward)."""
        return self._training_forward or self._recording(module)

    # The methods the hooks call, every one of them (`_install`; a test
    # checks the two agree): benchmarks/overhead_torch.py times these.
    HOOK_METHODS = ("_on_output", "_on_input", "_on_model_output", "_before_update",
                    "_after_update")

    def _install(self):
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.module.register_forward_hook(
                functools.partial(self._on_output, i)))
        self._handles.append(self.inner.register_forward_pre_hook(self._on_input, with_kwargs=True))
        self._handles.append(self.inner.register_forward_hook(self._on_model_output))
        self._handles.append(self.optimizer.register_step_pre_hook(self._before_update))
        self._handles.append(self.optimizer.register_step_post_hook(self._after_update))

    def remove(self):
        """Removes every hook (the model and optimizer are as they were)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._weight_samples.forget()  # (its views would keep replaced weights alive)

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
        if layer.params or layer.frozen or layer.channels_first:
            return layer.channels_first
        previous = self._last_output
        return previous is not None and previous[1] == tuple(a.shape) and previous[0]

    # The hooks below do the same at every call, whatever the step: under
    # torch.compile they are traced into the model's graph, and any Python
    # state they branched on would be a guard (a recompilation when it
    # changes). What they record goes into lists that `end_step` empties.
    def _on_output(self, index, module, args, out):
        if not self._recording_layer(module):
            return
        t = _first_tensor(out)
        if t is None or not t.is_floating_point():
            return
        layer = self.layers[index]
        a = t.detach()
        # (a packed sequence's tokens are on axis 0, whatever batch_first says)
        if layer.batch_axis != 0 and not _is_packed(out):
            a = a.movedim(layer.batch_axis, 0)
        if a.dim() < 2:
            a = a.reshape(-1, 1)
        first = self._unit_axis_first(layer, a)
        self._last_output = (first, tuple(a.shape))
        unit_axis = 1 if first else a.dim() - 1
        layout = (tuple(a.shape), first)
        compiling = torch.compiler.is_compiling()
        if layer.samples and not compiling:
            # A later forward of the step (gradient accumulation): a step's
            # activation statistics are those of its first, so only which
            # units fire counts here, and not even that once all have.
            self._output_ids[id(t)] = index
            self._last_sample = None
            if layer.whole_batch_units and not any(map(ops.is_all_units, layer.active)):
                active = ops.units_active(a, unit_axis, layer.activation in ("relu", "relu6"))
                layer.active.append(self.gather.any(active) if self.gather is not None else active)
            return
        # The step's first sample of this layer goes into the layer's buffer
        # (eager mode; see `_Layer.sample_buffer`).
        kept = not compiling and not layer.samples
        out = layer.buffer_for(layout, a.dtype) if kept else None
        sample = None if compiling else self._sample_of_input(layer, args, t, layout)
        if sample is None:
            sample = self.sampler.activation_sample(a, self.activation_examples, unit_axis, out)
        elif out is not None:
            sample = out.copy_(sample)
        if kept and out is None:  # (a new layout: this sample is the buffer from now on)
            layer.sample_buffer = ((layout, a.dtype), sample)
        if layer.whole_batch_units:
            probe = None
            if self._branch_free():
                units = a.shape[unit_axis]
                probe = (sample.view(sample.shape[0], units, -1) if first or a.dim() < 3
                         else sample.view(sample.shape[0], -1, units).transpose(1, 2))
            active = ops.units_active(a, unit_axis, layer.activation in ("relu", "relu6"), probe)
            layer.active.append(self.gather.any(active) if self.gather is not None else active)
        if not compiling:
            self._output_ids[id(t)] = index
            # (an inference tensor keeps no version)
            self._last_sample = None if t.is_inference() else (t, t._version, layout, sample)
        layer.samples.append(self.gather.examples(sample) if self.gather is not None else sample)
        layer.seen.append((int(a.shape[unit_axis]), first and a.dim() >= 3))

    def _sample_of_input(self, layer, args, out, layout):
        """An in-place elementwise activation's sample computed from that of
        its input, where its input is the output sampled just before (a
        `ReLU(inplace=True)` after a convolution or a normalization), laid
        out alike and changed since by this activation alone (its version
        one more; not replaced by another forward hook): the same values as
        gathering them from the output, without reading the output again (a
        cold read of a large one). None otherwise (an activation that is
        not in place: a forward hook may have replaced its output)."""
        previous = self._last_sample
        if layer.elementwise is None or previous is None or not args:
            return None
        tensor, version, prev_layout, prev_sample = previous
        if args[0] is not tensor or out is not tensor or prev_layout != layout:
            return None
        if tensor._version != version + 1:
            return None
        return layer.elementwise(layer.module, prev_sample)

    def _on_input(self, module, args, kwargs):
        self._last_output = None
        self._last_sample = None
        self._training_forward = self._recording(module)
        if not self._training_forward or self._inputs:
            return
        xs = [x for x in (*args, *kwargs.values())
              if isinstance(x, torch.Tensor) and x.is_floating_point()]
        if xs:
            self._inputs.append(self._input_columns(xs))

    def _input_columns(self, xs):
        """The input columns of floating tensors (batch first), on their
        first `activation_examples` examples (of every process's)."""
        k = self.activation_examples
        part = [x.detach()[:k] if k is not None else x.detach() for x in xs]
        if self.gather is not None:
            part = [self.gather.examples(x.float()) for x in part]
        return ops.input_columns(part)

    def batch_inputs(self, x):
        """The inputs of the step about to run, as a trainer's batch holds
        them (a floating tensor, batch first; anything else is ignored): the
        step's input columns where the model's own forward does not run (a
        LightningModule whose `training_step` calls its submodules). Where
        it runs, its inputs are taken instead."""
        if self._batch_inputs is None:  # (the step's first batch, as the first forward's inputs)
            self._batch_inputs = (x if isinstance(x, torch.Tensor) and x.is_floating_point()
                                  else None)

    def _on_model_output(self, module, args, out):
        self._training_forward = False
        if torch.compiler.is_compiling() or not self._recording(module):
            return
        t = _first_tensor(out)
        index = self._output_ids.get(id(t)) if t is not None else None
        if index is not None:
            self.layers[index].is_output = True
        self._output_ids = {}

    def _before_update(self, optimizer, args, kwargs):
        # (the rate this update uses, whether a scheduler steps before or
        # after `HealthMonitor.step()`; a tensor rate copied: a scheduler
        # changes it in place)
        lr = optimizer.param_groups[0].get("lr")
        self._step_lr = lr.detach().clone() if isinstance(lr, torch.Tensor) else lr
        grads, owners, shared, per_layer = [], [], [], [[] for _ in self.layers]
        unowned = len(self.layers)  # one more row: gradients of unmonitored parameters
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None or p.grad.is_sparse:
                    continue
                layers = self._owners.get(id(p), (unowned,))
                grads.append(p.grad)
                owners.append(layers[0])
                shared.extend((len(grads) - 1, i) for i in layers[1:])
                for i in layers:
                    if i != unowned:
                        per_layer[i].append(p.grad)
        parts = (ops.gradient_parts(grads, owners, unowned + 1, self.sampler, self.segments,
                                    self.host_is_device, shared) if grads else None)
        self._grads = (parts, per_layer)
        if self._params:
            self._before = self._weight_samples.take("before")

    def _after_update(self, optimizer, args, kwargs):
        self.optimizer_steps += 1
        if self._before is None:
            return
        after = self._weight_samples.take("after")
        self._weights = self._masked_if_needed(
            ops.weight_columns, self._before, after, self._weight_samples, self._param_owner,
            len(self.layers), self.segments)
        self._before = None

    def _branch_free(self):
        """Whether a hook may branch on a value here: on a CPU (reading a
        value waits for nothing) and not while torch.compile traces (a
        branch on a value would break the graph)."""
        return self.host_is_device and not torch.compiler.is_compiling()

    def _masked_if_needed(self, columns, *args):
        """`columns(*args, masked=...)` (ops.weight_columns): on a CPU first without masking non-finite
        values, again with it only when the probe says some value is not
        finite (rare; reading it waits for nothing there); elsewhere masked."""
        if self.host_is_device:
            values, probe = columns(*args, masked=False)
            if bool(torch.isfinite(probe)):
                return values
        return columns(*args)[0]

    # -- the row ---------------------------------------------------------------------
    def end_step(self, loss, learning_rate):
        """Closes one optimizer step: writes its row (every `every_n_batches`
        steps) into the buffer. Returns True when a row was written.
        learning_rate: the first param group's rate now, logged where no
        update ran (one a GradScaler skipped); else the rate the update
        used."""
        if self._step_lr is not None:
            learning_rate = self._step_lr
        self.step += 1
        step = self.step
        for layer in self.layers:
            if layer.seen:
                layer.captured = True
                layer.units, layer.units_first = layer.seen[0]
        try:
            if not self._inputs and self._batch_inputs is not None:
                self._inputs.append(self._input_columns([self._batch_inputs]))
            captured = self._captured()
            # Every captured layer's sample side by side, once for the unit
            # activity and the activation columns.
            x = (ops.concatenate([self.layers[i].samples[0] for i in captured])
                 if captured else None)
            active = self._track_units(step, captured, x)
            if step % self.every_n_batches != 0:
                return False
            row = self._row(step, loss, learning_rate, active, x)
            hist = self._histograms() if self.hist_slots and step % self.histogram_every == 0 else None
            with self._lock:
                slot = self.count % self.rows
                self.buffer[slot].copy_(row)
                self.row_steps[slot] = step
                self.count += 1
                if hist is not None:
                    hslot = self.hist_count % self.hist_slots
                    self.hist[hslot].copy_(hist)
                    self.hist_steps[hslot] = step
                    self.hist_count += 1
            return True
        finally:
            for layer in self.layers:
                layer.samples.clear()
                layer.active.clear()
                layer.seen.clear()
            self._inputs.clear()  # (the same list: a compiled forward's hooks append to it)
            self._batch_inputs = None
            self._last_sample = None
            self._grads = None
            self._weights = None
            self._before = None
            self._step_lr = None

    def _captured(self):
        """The captured layers' indices that have a sample this step."""
        return [i for i, layer in enumerate(self.layers) if layer.captured and layer.samples]

    def _track_units(self, step, captured, x):
        """Updates each unit's last step of firing; returns (indices, units,
        active, last active) over the captured layers (their samples
        concatenated in x), or None."""
        if not captured:
            return None
        units = [self.layers[i].units for i in captured]
        # Whole-batch activity where the hooks took it (ReLU family), else
        # that of the activation sample, all such layers in one reduction.
        parts = {}
        for i in captured:
            layer = self.layers[i]
            if layer.active:
                a = layer.active[0]
                for more in layer.active[1:]:
                    a = a | more
                parts[i] = a
        if len(parts) < len(captured):
            layers = [self.layers[i] for i in captured]
            a = ops.sample_units_active(x, [l.samples[0].shape[1] for l in layers], units,
                                        [l.units_first for l in layers], self.segments,
                                        branch_free=self._branch_free())
            if self.gather is not None:
                a = self.gather.any(a)
            for i, part in zip(captured, a.split(units)):
                parts.setdefault(i, part)
        active = torch.cat([parts[i] for i in captured])
        key = tuple(zip(captured, units))
        if self._last_active is None or self._last_active[0] != key:
            self._last_active = (key, torch.full((sum(units),), self.start - 1, dtype=torch.int64,
                                                 device=self.device))
        last = torch.where(active, step, self._last_active[1])
        self._last_active = (key, last)
        return captured, units, active, last

    def _row(self, step, loss, learning_rate, units_state, x):
        device = self.device
        n_layers = len(self.layers)
        nan = torch.full((), float("nan"), device=device)
        parts = self._grads[0] if self._grads is not None else None
        blocks = {}
        if parts is not None:
            parts, totals = parts
            blocks[fmt.GRADIENT_STATS] = ops.gradient_columns(parts[:n_layers])
            grad_norm = totals[0].sqrt()
            grad_bad = totals[1]
        else:
            grad_norm = grad_bad = nan
        if self._weights is not None:
            blocks[fmt.WEIGHT_STATS] = self._weights
        if units_state is not None:
            captured, units, active, last = units_state
            index = self.segments.const(captured, torch.int64)
            samples = [self.layers[i].samples[0] for i in captured]
            widths = [sample.shape[1] for sample in samples]
            bounds = [self.layers[i].bounds for i in captured]
            # On a CPU first without masking non-finite values (x is
            # consumed), again with it only when the probe says some value
            # is not finite; elsewhere masked.
            masked = not self.host_is_device
            acts, probe = ops.activation_columns(x, widths, bounds, self.segments, masked=masked)
            if not masked and not bool(torch.isfinite(probe)):
                acts, _ = ops.activation_columns(ops.concatenate(samples), widths, bounds,
                                                 self.segments)
            ids = self.segments.ids(units)
            threshold = max(step - self.dead_window + 1, self.start)
            per_unit = self.segments.const([float(u) for u in units])
            dead = torch.stack([
                1.0 - self.segments.sum(active.float(), ids) / per_unit,
                self.segments.sum((last < threshold).float(), ids) / per_unit], dim=1)
            for group, values in ((fmt.ACTIVATION_STATS, acts), (fmt.DEAD_UNIT_STATS, dead)):
                full = torch.full((n_layers, len(group)), float("nan"), device=device)
                blocks[group] = full.index_copy_(0, index, values.float())
        table = torch.cat([blocks[g].float() if g in blocks else
                           torch.full((n_layers, len(g)), float("nan"), device=device)
                           for g in fmt.LAYER_GROUPS], dim=1)
        if isinstance(loss, torch.Tensor):
            loss_value = loss.detach().float().reshape(-1).mean().to(device)
            if self.gather is not None:
                loss_value = self.gather.mean(loss_value)
        elif loss is None:
            loss_value = nan
        else:
            loss_value = torch.full((), float(loss), device=device)
        inputs = (self._inputs[0] if self._inputs
                  else torch.full((len(fmt.INPUT_STATS),), float("nan"), device=device))
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
        per_layer = self._grads[1] if self._grads is not None else [[] for _ in self.layers]
        for i, layer in enumerate(self.layers):
            g = ops.gradient_histogram(per_layer[i], self.sampler) if per_layer[i] else nan_row
            a = ops.activation_histogram(layer.samples[0]) if layer.samples else nan_row
            rows.append(torch.stack([g, a]))
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

    def last_step(self):
        return self.step if self.step > self.start else None

    def layer_infos(self):
        return [LayerInfo(name=l.name, type=type(l.module).__name__, activation=l.activation,
                          bounds=l.bounds, units=l.units, has_weights=bool(l.params),
                          has_activation=l.captured, is_output=l.is_output, frozen=l.frozen)
                for l in self.layers]
