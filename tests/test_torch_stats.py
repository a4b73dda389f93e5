"""Every PyTorch statistic against the shared numpy reference, on the same batch.

A small CNN (convolution big enough for the activation position sample, a
Linear layer big enough for the weight/gradient sample, BatchNorm, ReLU,
Sigmoid) trains a few SGD-with-momentum steps through
`training_health.torch.HealthMonitor`. The test keeps its own copies of what
each step saw (full layer outputs through its own forward hooks, the
gradients the optimizer applied, the weights before and after the update),
computes every column with `training_health.statistics`, and compares with
the rows read back from the run's event files.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from training_health import format as fmt  # noqa: E402
from training_health import statistics as ref  # noqa: E402
from training_health.io import reader  # noqa: E402
import training_health.torch as tht  # noqa: E402

EXAMPLES = 8

# Both ways the capture computes a statistic: with the host reading the
# device (a CPU: branches for rare non-finite values) and without (an
# accelerator: every value computed without a branch), tried here on the CPU.
PATHS = pytest.mark.parametrize("host_is_device", [True, False], ids=["cpu_path", "accelerator_path"])


def monitor_on(host_is_device, *args, **kwargs):
    monitor = tht.HealthMonitor(*args, **kwargs)
    monitor._program.host_is_device = host_is_device
    return monitor


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3),  # 16 x 14 x 14 per example: positions are sampled
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(16 * 16, 80),  # 20480 weights: max|g|, zeros, ||W||, ||dW|| are sampled
        nn.Sigmoid(),
        nn.Linear(80, 10),
    )


def units_last(name, a):
    """The reference layout: units last (PyTorch image outputs are NCHW)."""
    a = a.detach().double().numpy()
    return np.moveaxis(a, 1, -1) if a.ndim == 4 else a


class Truth:
    """What each step saw, kept by the test itself."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        self.outputs = {}
        for name, module in model.named_modules():
            if name:
                module.register_forward_hook(self._keeper(name))
        self.steps = []

    def _keeper(self, name):
        def keep(module, inputs, output):
            self.outputs.setdefault(name, units_last(name, output))
        return keep

    def run_step(self, x, y, monitor):
        self.outputs = {}
        self.optimizer.zero_grad()
        loss = nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        before = {n: p.detach().double().numpy().copy() for n, p in self.model.named_parameters()}
        grads = {n: p.grad.detach().double().numpy().copy() for n, p in self.model.named_parameters()}
        self.optimizer.step()
        after = {n: p.detach().double().numpy().copy() for n, p in self.model.named_parameters()}
        monitor.step(loss)
        self.steps.append(dict(x=x.double().numpy(), loss=float(loss), outputs=self.outputs,
                               before=before, after=after, grads=grads))


def params_of(layer, table):
    return [v for k, v in table.items() if k.rsplit(".", 1)[0] == layer]


BOUNDS = {"6": (0.0, 1.0)}  # the Sigmoid


def expected_row(truth, step_index, layers, dead_window, bounds=BOUNDS):
    s = truth.steps[step_index]
    rows = {}
    for info in layers:
        name = info.name
        cols = {}
        grads = params_of(name, s["grads"])
        cols.update(ref.gradient_stats(grads) if grads else {k: np.nan for k in fmt.GRADIENT_STATS})
        before, after = params_of(name, s["before"]), params_of(name, s["after"])
        cols.update(ref.weight_stats(before, after) if before else {k: np.nan for k in fmt.WEIGHT_STATS})
        out = s["outputs"][name]
        cols.update(ref.activation_stats(ref.activation_sample(out, EXAMPLES), bounds.get(name)))
        # Dead units of a ReLU output over the whole batch; of any other
        # output over the activation sample (as the Keras capture does).
        seen = (lambda a: a) if info.is_relu_family else (lambda a: ref.activation_sample(a, EXAMPLES))
        cols["dead_frac"] = ref.dead_fraction(seen(out))
        window = [seen(truth.steps[j]["outputs"][name])
                  for j in range(max(0, step_index - dead_window + 1), step_index + 1)]
        cols["dead_frac_window"] = ref.dead_fraction_window(window)
        rows[name] = [cols[k] for k in fmt.LAYER_STATS]
    return rows


def assert_rows_match(run, truth, dead_window, bounds):
    """Every logged layer column of every step equals the reference's."""
    layers = run.steps[0].layers
    for i, stats in enumerate(run.steps):
        want = expected_row(truth, i, layers, dead_window, bounds)
        for j, info in enumerate(layers):
            np.testing.assert_allclose(stats.layer_values[j], np.float32(want[info.name]),
                                       rtol=2e-5, atol=1e-6, equal_nan=True,
                                       err_msg="step %d layer %s" % (stats.step, info.name))


@PATHS
def test_every_column_matches_the_numpy_reference(tmp_path, host_is_device):
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    truth = Truth(model, optimizer)
    g = torch.Generator().manual_seed(1)
    dead_window = 2
    with monitor_on(host_is_device, str(tmp_path), model, optimizer, dead_window=dead_window,
                    flush_every=2, histogram_every=0, detectors=None) as monitor:
        for _ in range(4):
            x = torch.randn(24, 3, 16, 16, generator=g) * 2 + 0.5
            y = torch.randint(0, 10, (24,), generator=g)
            truth.run_step(x, y, monitor)
    (run,) = reader.read_logdir(str(tmp_path))
    assert [s.step for s in run.steps] == [1, 2, 3, 4]
    layers = run.steps[0].layers
    # Modules with parameters and activation modules, by named_modules() path.
    assert [(l.name, l.type) for l in layers] == [
        ("0", "Conv2d"), ("1", "BatchNorm2d"), ("2", "ReLU"), ("5", "Linear"), ("6", "Sigmoid"),
        ("7", "Linear")]
    assert [l.units for l in layers] == [16, 16, 16, 80, 80, 10]
    assert [l.is_output for l in layers] == [False] * 5 + [True]
    assert layers[4].bounds == (0.0, 1.0) and layers[2].activation == "relu"
    assert_rows_match(run, truth, dead_window, BOUNDS)
    for i, stats in enumerate(run.steps):
        s = truth.steps[i]
        glob = stats.global_values
        inp = ref.input_stats([s["x"][:EXAMPLES]])
        for k in fmt.INPUT_STATS:
            np.testing.assert_allclose(glob[k], inp[k], rtol=1e-5, atol=1e-6, err_msg=k)
        all_grads = list(s["grads"].values())
        np.testing.assert_allclose(glob["grad_norm"], ref.gradient_stats(all_grads)["grad_norm"],
                                   rtol=1e-5)
        assert glob["grad_nonfinite"] == 0
        np.testing.assert_allclose(glob["loss"], s["loss"], rtol=1e-6)
        np.testing.assert_allclose(glob["learning_rate"], 0.05, rtol=1e-6)


def train_and_compare(tmp_path, host_is_device, model, batches, between_steps=None):
    """Trains `model` (SGD with momentum) on `batches` [(x, y)] through the
    monitor, checks every logged layer column against the reference, and
    returns the run read back. between_steps(i) runs before step i."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    truth = Truth(model, optimizer)
    with monitor_on(host_is_device, str(tmp_path), model, optimizer, dead_window=2,
                    flush_every=2, histogram_every=0, detectors=None) as monitor:
        for i, (x, y) in enumerate(batches):
            if between_steps is not None:
                between_steps(i)
            truth.run_step(x, y, monitor)
    (run,) = reader.read_logdir(str(tmp_path))
    assert_rows_match(run, truth, dead_window=2, bounds={})
    return run


class MeanOverTime(nn.Module):
    def forward(self, x):
        return x.mean(dim=1)


@PATHS
def test_sequence_outputs_and_replaced_weights_match_the_reference(tmp_path, host_is_device):
    """Sequence outputs [batch, time, features] (units last) too large to
    keep whole have their positions sampled as the reference does; a
    weight whose storage the loop replaces between steps (`p.data = ...`)
    is sampled from its new storage, not from the old one."""
    torch.manual_seed(6)
    model = nn.Sequential(
        nn.Linear(256, 80),  # 20480 weights (sampled); 8 x 40 x 80 output values (sampled)
        nn.ReLU(),
        MeanOverTime(),
        nn.Linear(80, 10),
    )
    g = torch.Generator().manual_seed(7)
    batches = [(torch.randn(12, 40, 256, generator=g), torch.randint(0, 10, (12,), generator=g))
               for _ in range(3)]

    def replace_weights(i):
        if i == 2:
            with torch.no_grad():
                model[0].weight.data = model[0].weight.detach() * 3.0 + 0.5

    run = train_and_compare(tmp_path, host_is_device, model, batches, replace_weights)
    assert [l.name for l in run.steps[0].layers] == ["0", "1", "3"]
    # (the replaced weights: about 3x the norm of the step before)
    norm = fmt.LAYER_STATS.index("weight_norm")
    assert run.steps[2].layer_values[0][norm] > 2.5 * run.steps[1].layer_values[0][norm]


@PATHS
def test_channels_last_weights_match_the_reference(tmp_path, host_is_device):
    """A model in channels_last memory format (non-contiguous weights,
    sampled afresh each step, not through a stale flat copy)."""
    torch.manual_seed(8)
    model = nn.Sequential(
        nn.Conv2d(8, 64, 3),  # 4608 weights
        nn.ReLU(),
        nn.Conv2d(64, 32, 3),  # 18432 weights: sampled
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).to(memory_format=torch.channels_last)
    assert not model[2].weight.is_contiguous()
    g = torch.Generator().manual_seed(9)
    batches = [(torch.randn(10, 8, 9, 9, generator=g).to(memory_format=torch.channels_last),
                torch.randint(0, 10, (10,), generator=g)) for _ in range(3)]
    run = train_and_compare(tmp_path, host_is_device, model, batches)
    ratio = fmt.LAYER_STATS.index("update_ratio")
    assert all(s.layer_values[2][ratio] > 0 for s in run.steps)


@PATHS
def test_bfloat16_parameters_match_the_reference(tmp_path, host_is_device):
    """A model trained in bfloat16 (parameters, gradients and outputs: as
    large language models are fine-tuned): the float32 statistics of the
    bfloat16 values, a large weight sampled among small ones."""
    torch.manual_seed(10)
    model = nn.Sequential(
        nn.Linear(12, 8),
        nn.ReLU(),
        nn.Linear(8, 2304),  # 18432 weights: sampled
        nn.ReLU(),
        nn.Linear(2304, 10),  # 23040 weights: sampled
    ).to(torch.bfloat16)
    g = torch.Generator().manual_seed(11)
    batches = [(torch.randn(16, 12, generator=g).to(torch.bfloat16),
                torch.randint(0, 10, (16,), generator=g)) for _ in range(3)]
    run = train_and_compare(tmp_path, host_is_device, model, batches)
    ratio = fmt.LAYER_STATS.index("update_ratio")
    assert all(s.layer_values[2][ratio] > 0 for s in run.steps)


class SharedReLU(nn.Module):
    """One ReLU module applied twice in a forward pass (as torchvision's ResNet blocks do)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)  # 8 x 48 x 48 per example: positions sampled
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


@PATHS
def test_samples_kept_across_steps_follow_the_batch_size(tmp_path, host_is_device):
    """Each layer's first sample of a step is written into a buffer kept
    from step to step: batches of 12, 5 (fewer than activation_examples),
    12 and 12 examples, and a module applied twice a forward pass (its first
    output is the one measured), each step against the reference."""
    torch.manual_seed(12)
    model = SharedReLU()
    g = torch.Generator().manual_seed(13)
    batches = [(torch.randn(n, 3, 48, 48, generator=g), torch.randint(0, 10, (n,), generator=g))
               for n in (12, 5, 12, 12)]
    run = train_and_compare(tmp_path, host_is_device, model, batches)
    assert [l.name for l in run.steps[0].layers] == ["conv1", "conv2", "relu", "head"]
    assert [s.step for s in run.steps] == [1, 2, 3, 4]


class TiedWeights(nn.Module):
    """A language-model head that reuses the embedding's weight."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.mix = nn.Linear(16, 16)
        self.out = nn.Linear(16, 50)
        self.out.weight = self.emb.weight

    def forward(self, tokens):
        return self.out(torch.tanh(self.mix(self.emb(tokens)))).mean(dim=1)


@PATHS
def test_a_weight_tied_between_two_modules_counts_in_both(tmp_path, host_is_device):
    """The gradient of a weight two modules share is each module's (it
    was the last one's alone: the embedding's gradient columns were NaN),
    and counts once in the global gradient norm."""
    torch.manual_seed(10)
    model = TiedWeights()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(11)
    seen = []
    with monitor_on(host_is_device, str(tmp_path), model, optimizer, flush_every=2,
                    histogram_every=0, detectors=None) as monitor:
        for _ in range(3):
            tokens = torch.randint(0, 50, (6, 5), generator=g)
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(tokens), torch.randint(0, 50, (6,), generator=g))
            loss.backward()
            seen.append({n: p.grad.double().numpy().copy() for n, p in model.named_parameters()})
            optimizer.step()
            monitor.step(loss)
    (run,) = reader.read_logdir(str(tmp_path))
    assert [l.name for l in run.steps[0].layers] == ["emb", "mix", "out"]
    cols = [fmt.LAYER_STATS.index(k) for k in fmt.GRADIENT_STATS]
    for stats, grads in zip(run.steps, seen):
        want = {"emb": [grads["emb.weight"]], "mix": [grads["mix.weight"], grads["mix.bias"]],
                "out": [grads["emb.weight"], grads["out.bias"]]}
        for j, name in enumerate(["emb", "mix", "out"]):
            expected = ref.gradient_stats(want[name])
            np.testing.assert_allclose(stats.layer_values[j][cols],
                                       [expected[k] for k in fmt.GRADIENT_STATS],
                                       rtol=2e-5, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(stats.global_values["grad_norm"],
                                   ref.gradient_stats(list(grads.values()))["grad_norm"], rtol=1e-5)


class AddedInPlace(nn.Module):
    """A residual block's end: relu(bn(conv(x)) + x), the sum made in place."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.bn(self.conv(x))
        out += x
        return self.relu(out)


@PATHS
def test_outputs_changed_in_place_afterwards_are_measured_as_produced(tmp_path, host_is_device):
    """In-place activations (`ReLU(inplace=True)`, `LeakyReLU(inplace=True)`)
    overwrite the output of the layer before them: that layer's statistics
    are still those of its own output (its sample is a copy, also where no
    position is dropped), and the activation's own are those of what it
    returned (also where its sample comes from its input's: a convolution's
    sampled positions, a Linear's whole output; not where the input was
    changed in between: a residual sum added in place)."""
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3),  # 16 x 14 x 14 per example: positions are sampled
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
        AddedInPlace(16),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 20),  # [batch, 20]: every value of the first examples kept
        nn.ReLU(inplace=True),
        nn.Linear(20, 12),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Linear(12, 10),
    )
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(16, 3, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g))
               for _ in range(3)]
    run = train_and_compare(tmp_path, host_is_device, model, batches)
    assert [l.name for l in run.steps[0].layers] == ["0", "1", "2", "3.conv", "3.bn", "3.relu",
                                                     "6", "7", "8", "9", "10"]
    # The Linear's output has no zeros; the ReLU that overwrote it has many.
    zero_frac = fmt.LAYER_STATS.index("act_zero_frac")
    assert run.steps[0].layer_values[6][zero_frac] == 0.0
    assert run.steps[0].layer_values[7][zero_frac] > 0.2


def test_histograms_match_the_numpy_reference(tmp_path):
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    truth = Truth(model, optimizer)
    g = torch.Generator().manual_seed(2)
    monitor = tht.HealthMonitor(str(tmp_path), model, optimizer, histogram_every=2,
                                flush_every=100, detectors=None)
    for _ in range(2):
        x = torch.randn(16, 3, 16, 16, generator=g)
        truth.run_step(x, torch.randint(0, 10, (16,), generator=g), monitor)
    count, hist, steps = monitor._program.read_histograms()
    monitor.close()
    assert count == 1 and steps[0] == 2
    s = truth.steps[1]
    for j, layer in enumerate(monitor._program.layers):
        grads = params_of(layer.name, s["grads"])
        if grads:
            np.testing.assert_allclose(hist[0, j, 0], ref.gradient_histogram(grads), rtol=1e-4,
                                       atol=1e-6, err_msg=layer.name)
        else:
            assert np.isnan(hist[0, j, 0]).all()
        sample = ref.activation_sample(s["outputs"][layer.name], EXAMPLES)
        np.testing.assert_allclose(hist[0, j, 1], ref.activation_histogram(sample), rtol=1e-4,
                                   atol=1e-6, err_msg=layer.name)


@PATHS
def test_non_finite_values_are_counted_and_masked(tmp_path, host_is_device):
    """A NaN in a gradient and an Inf in an output: counted, and the other
    statistics taken over the finite entries (as the reference does)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    model[1].register_forward_hook(lambda m, i, o: o.index_fill(1, torch.tensor([0]), float("inf")))
    monitor = monitor_on(host_is_device, str(tmp_path), model, optimizer, detectors=None,
                         histogram_every=0, activation_examples=None)
    x = torch.randn(5, 4)
    optimizer.zero_grad()
    model(x).sum().backward()
    model[0].weight.grad[0, 0] = float("nan")
    grads = [model[0].weight.grad.double().numpy().copy(), model[0].bias.grad.double().numpy().copy()]
    all_grads = [p.grad.double().numpy().copy() for p in model.parameters()]
    out = model[1](model[0](x)).detach().double().numpy()
    optimizer.step()
    monitor.step(torch.tensor(1.0))
    monitor.close()
    (run,) = reader.read_logdir(str(tmp_path))
    values = dict(zip(fmt.LAYER_STATS, run.steps[0].layer_values[0]))
    want = ref.gradient_stats(grads)
    for k in fmt.GRADIENT_STATS:
        np.testing.assert_allclose(values[k], want[k], rtol=1e-5, err_msg=k)
    assert values["grad_nonfinite"] == 1
    # (the Inf output reaches the last Linear's weight gradient too)
    want_all = ref.gradient_stats(all_grads)
    assert want_all["grad_nonfinite"] == 3
    assert run.steps[0].global_values["grad_nonfinite"] == 3
    np.testing.assert_allclose(run.steps[0].global_values["grad_norm"], want_all["grad_norm"], rtol=1e-5)
    relu = dict(zip(fmt.LAYER_STATS, run.steps[0].layer_values[1]))
    want = ref.activation_stats(out)
    assert relu["act_nonfinite"] == 5
    for k in fmt.ACTIVATION_STATS:
        np.testing.assert_allclose(relu[k], want[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_a_large_gradient_with_non_finite_entries(tmp_path):
    """Above the sample size: the exact count and the finite part's norm,
    on both paths."""
    for host_is_device in (True, False):
        torch.manual_seed(4)
        model = nn.Sequential(nn.Linear(200, 100))  # 20000 weights
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        logdir = tmp_path / str(host_is_device)
        monitor = monitor_on(host_is_device, str(logdir), model, optimizer, detectors=None,
                             histogram_every=0)
        optimizer.zero_grad()
        model(torch.randn(3, 200)).sum().backward()
        model[0].weight.grad[5, :7] = float("nan")
        model[0].weight.grad[50, 3] = float("-inf")
        grads = [p.grad.double().numpy().copy() for p in model.parameters()]
        optimizer.step()
        monitor.step(torch.tensor(0.5))
        monitor.close()
        (run,) = reader.read_logdir(str(logdir))
        values = dict(zip(fmt.LAYER_STATS, run.steps[0].layer_values[0]))
        want = ref.gradient_stats(grads)
        assert values["grad_nonfinite"] == 8, host_is_device
        np.testing.assert_allclose(values["grad_norm"], want["grad_norm"], rtol=1e-5)


SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


@pytest.mark.parametrize("setup", ["sgd_momentum", "adamw_groups_accumulation", "grad_scaler"])
def test_the_step_never_waits_for_the_device(tmp_path, monkeypatch, setup):
    """On the accelerator path no call of the monitor's (`step()` and its
    hooks) reads a value back from the device (what would wait for it):
    counted by wrapping every Tensor method that does, over steps with
    activations, gradients, weights, dead units, histograms and the input,
    between two reads of the buffer (every flush_every steps, on the
    background thread); with SGD and momentum, AdamW over two param groups
    with two micro-batches a step, and a GradScaler (whose own read of its
    inf check, in `scaler.step`, is the loop's, not the monitor's)."""
    import threading

    model = make_model()
    micro = 2 if setup == "adamw_groups_accumulation" else 1
    if setup == "adamw_groups_accumulation":
        params = list(model.parameters())
        optimizer = torch.optim.AdamW([{"params": params[:4]},
                                       {"params": params[4:], "lr": 1e-3}], lr=1e-2)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu") if setup == "grad_scaler" else None
    monitor = monitor_on(False, str(tmp_path), model, optimizer, flush_every=1000,
                         histogram_every=2)
    depth = [0]  # > 0 inside the monitor's code

    def in_monitor(fn):
        def wrapped(*args, **kwargs):
            depth[0] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
        return wrapped

    program = monitor._program
    program.remove()
    for name in program.HOOK_METHODS:
        setattr(program, name, in_monitor(getattr(program, name)))
    program._install()
    step = in_monitor(monitor.step)
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(16, 3, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g))
               for _ in range(6)]

    def train(x, y):
        optimizer.zero_grad()
        for part in range(micro):
            loss = nn.functional.cross_entropy(model(x[part::micro]), y[part::micro]) / micro
            (loss if scaler is None else scaler.scale(loss)).backward()
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()
        return loss

    for x, y in batches[:2]:  # the first steps make the cached constants
        step(train(x, y))
    calls = []
    main = threading.current_thread()
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, __original=original, __name=name, **kwargs):
            if depth[0] and threading.current_thread() is main:
                calls.append(__name)
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    for x, y in batches[2:]:
        loss = train(x, y)
        before = len(calls)
        step(loss)
        assert calls[before:] == [], "monitor.step read the device: %s" % calls[before:]
    assert calls == []  # (not in the hooks either)
    monkeypatch.undo()
    assert monitor.optimizer_steps == 6  # (no step skipped: every update's hooks ran)
    monitor.close()
    (run,) = reader.read_logdir(str(tmp_path))
    assert [s.step for s in run.steps] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("fused_entries", [1 << 25, 50])
def test_accelerator_gradient_sums_in_groups(monkeypatch, fused_entries):
    """The accelerator path's masked sums, in one group or in many (tensors
    larger than a group alone), against the reference per tensor."""
    from training_health.capture import torch_ops

    monkeypatch.setattr(torch_ops, "FUSED_ENTRIES", fused_entries)
    g = torch.Generator().manual_seed(6)
    grads = [torch.randn(n, generator=g) for n in (7, 300, 40, 1, 64)]
    grads[1][[3, 9]] = float("nan")
    grads[4][0] = float("inf")
    sq, bad = torch_ops.finite_norms(grads, host_is_device=False)
    for i, t in enumerate(grads):
        want = ref.gradient_stats([t.double().numpy()])
        np.testing.assert_allclose(float(sq[i]) ** 0.5, want["grad_norm"], rtol=1e-6)
        assert float(bad[i]) == want["grad_nonfinite"]


@pytest.mark.parametrize("with_probe", [True, False], ids=["cpu_path", "accelerator_path"])
def test_unit_activity_shortcuts_match_the_reference(with_probe):
    """The CPU shortcuts of unit activity give the reference's answer: a
    whole ReLU output judged from a probe of its values (its activation
    sample) when every unit fired there (else the whole batch), and
    samples through each value's largest example unless a NaN hides a
    positive one."""
    from training_health.capture import torch_ops
    from training_health.capture.torch_ops import Segments

    g = torch.Generator().manual_seed(3)
    # A ReLU output [batch 6, 5 channels, 4 x 4]: channel 2 fires only in
    # example 4, channel 3 never (a probe of the first examples would miss
    # one and rightly not see the other).
    a = torch.relu(torch.randn(6, 5, 4, 4, generator=g))
    a[:, 2] = 0.0
    a[4, 2, 1, 1] = 0.5
    a[:, 3] = 0.0
    for out in (a, a[[4, 0, 1, 2, 3, 5]]):  # (the second: every unit fires in its first example but 3)
        want = ref.units_active(units_last("", out))
        probe = out[:2].reshape(2, 5, -1)[:, :, ::3] if with_probe else None
        got = torch_ops.units_active(out, 1, nonnegative=True, probe=probe)
        assert got.tolist() == want.tolist()
        # (the same for an output with negative values: a leaky ReLU's)
        leaky = torch.where(out > 0, out, -0.01)
        probe = leaky[:2].reshape(2, 5, -1) if with_probe else None
        assert torch_ops.units_active(leaky, 1, False, probe).tolist() == want.tolist()
    alive = torch.relu(torch.randn(6, 5, 4, 4, generator=g)) + 0.1
    probe = alive[:1].reshape(1, 5, -1)[:, :, :2] if with_probe else None
    assert torch_ops.units_active(alive, 1, True, probe).tolist() == [True] * 5
    # Units last ([batch, positions, units]): the probe is [examples, units, values].
    seq = torch.relu(torch.randn(6, 7, 5, generator=g))
    seq[:, :, 1] = 0.0
    seq[5, 6, 1] = 2.0  # unit 1 fires in the last example only
    probe = seq[:3].transpose(1, 2) if with_probe else None
    assert ref.units_active(seq.numpy()).tolist() == [True] * 5
    assert torch_ops.units_active(seq, 2, True, probe).tolist() == [True] * 5
    seq[5, 6, 1] = float("nan")  # (a NaN is not a unit firing)
    assert torch_ops.units_active(seq, 2, True, probe).tolist() == [True, False, True, True, True]

    # Samples of two layers: [examples, values], units last (3 units) and
    # units first (2 units x 4 positions); a NaN beside a positive value,
    # and a unit whose only positive value is in the last example.
    s1 = -torch.rand(4, 6, generator=g)  # 2 positions x 3 units
    s1[3, 4] = 2.0  # position 1, unit 1
    s1[0, 0], s1[2, 0] = float("nan"), 1.0  # unit 0: NaN in one example, positive in another
    s2 = -torch.rand(4, 8, generator=g)  # 2 units x 4 positions
    s2[1, 6] = 0.25  # unit 1
    x = torch_ops.concatenate([s1, s2])
    got = torch_ops.sample_units_active(x, [6, 8], [3, 2], [False, True], Segments(x.device),
                                        branch_free=with_probe)
    want = np.concatenate([ref.units_active(s1.double().numpy().reshape(4, 2, 3)),
                           ref.units_active(np.moveaxis(s2.double().numpy().reshape(4, 2, 4), 1, -1))])
    assert got.tolist() == want.tolist() == [True, True, False, False, True]
