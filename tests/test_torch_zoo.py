"""PyTorch models and training set-ups through `training_health.torch.HealthMonitor`.

A zoo (MLP, CNN with BatchNorm, LSTM, GRU, Embedding, TransformerEncoder, a
residual block) trained with AdamW over two parameter groups; gradient
accumulation; bf16 autocast and GradScaler; torch.compile; evaluation under
no_grad; and the model's outputs and weights with and without the monitor.
Gradient and weight columns are checked against `training_health.statistics`
from what the test itself saw of each step.
"""

import contextlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from training_health import format as fmt  # noqa: E402
from training_health import statistics as ref  # noqa: E402
from training_health.io import reader  # noqa: E402
import training_health.torch as tht  # noqa: E402


class Residual(nn.Module):
    def __init__(self, width=12):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(width, width)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


class SeqClassifier(nn.Module):
    """Embedding -> recurrent layer (sequence first, as PyTorch's default) -> Linear."""

    def __init__(self, cell):
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.rnn = cell(8, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens):  # tokens [batch, time]
        out, _ = self.rnn(self.embed(tokens).transpose(0, 1))
        return self.head(out[-1])


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


def zoo():
    torch.manual_seed(0)
    return {
        "mlp": (nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 3)), "dense"),
        "cnn_bn": (nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Flatten(), nn.Linear(8 * 7 * 7, 3)), "image"),
        "lstm": (SeqClassifier(nn.LSTM), "tokens"),
        "gru": (SeqClassifier(nn.GRU), "tokens"),
        "transformer": (TinyTransformer(), "tokens"),
        "residual": (nn.Sequential(nn.Linear(12, 12), Residual(), nn.GELU(), nn.Linear(12, 3)), "dense"),
    }


def batch(kind, g, n=10):
    if kind == "dense":
        x = torch.randn(n, 12, generator=g)
    elif kind == "image":
        x = torch.randn(n, 3, 16, 16, generator=g)
    else:
        x = torch.randint(0, 50, (n, 7), generator=g)
    return x, torch.randint(0, 3, (n,), generator=g)


def train_step(model, optimizer, x, y):
    """One optimizer step on (x, y); returns the loss."""
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss


def two_groups(model):
    """AdamW with biases (and norms) in a second group without weight decay."""
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                              {"params": no_decay, "weight_decay": 0.0, "lr": 3e-3}], lr=1e-3)


def keep_first(store, key, pick=lambda o: o):
    """A forward hook that keeps a module's first output of a step in `store`."""
    def hook(module, inputs, output):
        if key not in store:
            store[key] = pick(output).detach()
    return hook


def direct_params(model, layer):
    return [(n, p) for n, p in model.named_parameters() if n.rsplit(".", 1)[0] == layer]


def check_columns(run, model, seen):
    """Gradient and weight columns of every step against the reference from `seen`."""
    for stats, step in zip(run.steps, seen):
        for j, info in enumerate(stats.layers):
            names = [n for n, _ in direct_params(model, info.name)]
            values = dict(zip(fmt.LAYER_STATS, stats.layer_values[j]))
            if not names:
                assert np.isnan(values["grad_norm"]) and not info.has_weights
                continue
            want = ref.gradient_stats([step["grads"][n] for n in names])
            want.update(ref.weight_stats([step["before"][n] for n in names],
                                         [step["after"][n] for n in names]))
            for k in fmt.GRADIENT_STATS + fmt.WEIGHT_STATS:
                np.testing.assert_allclose(values[k], want[k], rtol=5e-5, atol=1e-7,
                                           err_msg="%s step %d %s" % (info.name, stats.step, k))


def snapshot(model, attr):
    return {n: (p.grad if attr == "grad" else p).detach().double().numpy().copy()
            for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["mlp", "cnn_bn", "lstm", "gru", "transformer", "residual"])
def test_zoo_with_adamw_two_groups(tmp_path, name):
    model, kind = zoo()[name]
    optimizer = two_groups(model)
    called = {}
    for n, m in model.named_modules():
        m.register_forward_hook(keep_first(called, n, lambda o: torch.zeros(())))
    g = torch.Generator().manual_seed(1)
    seen = []
    with tht.HealthMonitor(str(tmp_path), model, optimizer, flush_every=2, histogram_every=2) as monitor:
        for _ in range(3):
            x, y = batch(kind, g)
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            before, grads = snapshot(model, "param"), snapshot(model, "grad")
            optimizer.step()
            seen.append(dict(before=before, grads=grads, after=snapshot(model, "param")))
            monitor.step(loss)
    (run,) = reader.read_logdir(str(tmp_path))
    assert [s.step for s in run.steps] == [1, 2, 3]
    layers = run.steps[0].layers
    names = dict(model.named_modules())
    assert all(info.name in names for info in layers)
    # every module with parameters of its own is monitored
    owners = {n.rsplit(".", 1)[0] for n, _ in model.named_parameters()}
    assert owners <= {info.name for info in layers}
    check_columns(run, model, seen)
    last = run.steps[-1]
    for j, info in enumerate(layers):
        values = dict(zip(fmt.LAYER_STATS, last.layer_values[j]))
        # (MultiheadAttention uses its out_proj's weights without calling it)
        assert info.has_activation == (info.name in called), info.name
        if not info.has_activation:
            assert np.isnan(values["act_mean"])
            continue
        assert np.isfinite(values["act_mean"]) and np.isfinite(values["act_std"]), info.name
        assert 0 <= values["dead_frac"] <= 1
    np.testing.assert_allclose(last.global_values["learning_rate"], 1e-3)
    assert np.isfinite(last.global_values["loss"])


def test_rnn_units_and_examples_follow_the_batch_axis(tmp_path):
    """An LSTM without batch_first: examples are its axis 1, units the last."""
    model, kind = zoo()["lstm"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    outputs = {}
    model.rnn.register_forward_hook(keep_first(outputs, "rnn", lambda o: o[0]))
    g = torch.Generator().manual_seed(2)
    with tht.HealthMonitor(str(tmp_path), model, optimizer, activation_examples=4) as monitor:
        x, y = batch(kind, g)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        monitor.step(loss)
    (run,) = reader.read_logdir(str(tmp_path))
    j = [i.name for i in run.steps[0].layers].index("rnn")
    assert run.steps[0].layers[j].units == 16
    out = outputs["rnn"].transpose(0, 1).double().numpy()  # [batch, time, units]
    want = ref.activation_stats(ref.activation_sample(out, 4), (-1.0, 1.0))  # h = o * tanh(c)
    values = dict(zip(fmt.LAYER_STATS, run.steps[0].layer_values[j]))
    for k in fmt.ACTIVATION_STATS:
        np.testing.assert_allclose(values[k], want[k], rtol=1e-5, atol=1e-7, equal_nan=True, err_msg=k)


class PackedClassifier(nn.Module):
    """An LSTM (sequence first) over padded sequences of different lengths, packed."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.rnn = nn.LSTM(8, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens, lengths):  # tokens [time, batch]
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(tokens), lengths,
                                                   enforce_sorted=False)
        _, (h, _) = self.rnn(packed)
        return self.head(h[-1])


def test_a_packed_sequence_s_units_are_its_features(tmp_path):
    """An RNN fed a PackedSequence returns one: its `data` is [tokens,
    features] whatever batch_first says; units are the features (the same
    at every step, whatever the lengths), the examples its first tokens."""
    torch.manual_seed(0)
    model = PackedClassifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    outputs = {}
    model.rnn.register_forward_hook(keep_first(outputs, "rnn", lambda o: o[0].data))
    g = torch.Generator().manual_seed(3)
    with tht.HealthMonitor(str(tmp_path), model, optimizer, activation_examples=4,
                           dead_window=3) as monitor:
        for step in range(3):
            lengths = torch.randint(2, 9, (6,), generator=g)
            tokens = torch.randint(0, 50, (8, 6), generator=g)
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(tokens, lengths),
                                               torch.randint(0, 3, (6,), generator=g))
            loss.backward()
            optimizer.step()
            monitor.step(loss)
            if step == 0:
                first = outputs.pop("rnn").double().numpy()  # [tokens, units]
            outputs.clear()
    (run,) = reader.read_logdir(str(tmp_path))
    j = [i.name for i in run.steps[0].layers].index("rnn")
    assert [s.layers[j].units for s in run.steps] == [16, 16, 16]
    want = ref.activation_stats(ref.activation_sample(first, 4), (-1.0, 1.0))
    values = dict(zip(fmt.LAYER_STATS, run.steps[0].layer_values[j]))
    for k in fmt.ACTIVATION_STATS:
        np.testing.assert_allclose(values[k], want[k], rtol=1e-5, atol=1e-7, equal_nan=True, err_msg=k)
    # (the units the same at every step: the window of the third step is filled)
    assert np.isfinite(run.steps[2].layer_values[j][fmt.LAYER_STATS.index("dead_frac_window")])


def test_gradient_accumulation_gives_one_row_per_optimizer_step(tmp_path):
    model, kind = zoo()["cnn_bn"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(3)
    seen, first_outputs = [], []
    conv_out = {}
    model[0].register_forward_hook(keep_first(conv_out, "conv"))
    with tht.HealthMonitor(str(tmp_path), model, optimizer) as monitor:
        for _ in range(3):  # optimizer steps
            optimizer.zero_grad()
            conv_out.clear()
            for _ in range(4):  # micro-batches
                x, y = batch(kind, g, n=6)
                (nn.functional.cross_entropy(model(x), y) / 4).backward()
            first_outputs.append(conv_out["conv"])
            before, grads = snapshot(model, "param"), snapshot(model, "grad")
            optimizer.step()
            seen.append(dict(before=before, grads=grads, after=snapshot(model, "param")))
            monitor.step()
    (run,) = reader.read_logdir(str(tmp_path))
    assert [s.step for s in run.steps] == [1, 2, 3]
    check_columns(run, model, seen)
    # Activation statistics from the step's first micro-batch.
    for stats, out in zip(run.steps, first_outputs):
        a = np.moveaxis(out.double().numpy(), 1, -1)
        want = ref.activation_stats(ref.activation_sample(a, 8))
        values = dict(zip(fmt.LAYER_STATS, stats.layer_values[0]))
        np.testing.assert_allclose(values["act_mean"], want["act_mean"], rtol=1e-5, atol=1e-7)


def test_bf16_autocast_on_the_cpu(tmp_path):
    model, kind = zoo()["cnn_bn"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(4)
    with tht.HealthMonitor(str(tmp_path), model, optimizer) as monitor:
        for _ in range(2):
            x, y = batch(kind, g)
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
            assert out.dtype == torch.bfloat16
            loss = nn.functional.cross_entropy(out.float(), y)
            loss.backward()
            optimizer.step()
            monitor.step(loss)
    (run,) = reader.read_logdir(str(tmp_path))
    values = run.steps[-1].layer_values
    cols = [fmt.LAYER_STATS.index(k) for k in ("grad_norm", "act_std", "update_ratio")]
    assert np.isfinite(values[0, cols]).all()


def test_grad_scaler_statistics_are_of_the_unscaled_gradients(tmp_path):
    if not hasattr(torch, "amp") or not hasattr(torch.amp, "GradScaler"):
        pytest.skip("torch.amp.GradScaler needs a newer torch")
    model, kind = zoo()["mlp"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    g = torch.Generator().manual_seed(5)
    seen = []
    with tht.HealthMonitor(str(tmp_path), model, optimizer) as monitor:
        for _ in range(2):
            x, y = batch(kind, g)
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            before = snapshot(model, "param")
            scaler.step(optimizer)  # unscales the gradients, then steps
            seen.append(dict(before=before, grads=snapshot(model, "grad"),
                             after=snapshot(model, "param")))
            scaler.update()
            monitor.step(loss)
        # A step the scaler skips (its gradients overflow): the row says
        # nothing about gradients or weights, and no alert is raised.
        scaler.update(1e38)
        x, y = batch(kind, g)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss * 1e10).backward()
        scaler.step(optimizer)
        scaler.update()
        monitor.step(loss)
    (run,) = reader.read_logdir(str(tmp_path))
    check_columns(run, model, seen)
    skipped = run.steps[2]
    assert np.isnan(skipped.layer_values[:, fmt.LAYER_STATS.index("grad_norm")]).all()
    assert np.isnan(skipped.layer_values[:, fmt.LAYER_STATS.index("update_ratio")]).all()
    assert not [a for a in run.alerts if a.kind == "nan_inf"]


def _cpp_compiler():
    import shutil

    return shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


@pytest.mark.parametrize("backend", [
    "aot_eager",
    pytest.param("inductor", marks=pytest.mark.skipif(
        _cpp_compiler() is None, reason="inductor on a CPU needs a C++ compiler"))])
def test_torch_compile_adds_no_graph_break_or_recompilation(tmp_path, backend):
    """The same graphs with the monitor as without (none added, none
    recompiled), no graph break, the same weights: with the tracing backend
    that runs the graph as traced, and with the default one (inductor)."""
    from torch._dynamo.utils import counters

    def train(monitored):
        torch._dynamo.reset()
        counters.clear()
        model, kind = zoo()["cnn_bn"]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        compiled = torch.compile(model, backend=backend)
        monitor = (tht.HealthMonitor(str(tmp_path / "run"), compiled, optimizer, histogram_every=2)
                   if monitored else None)
        g = torch.Generator().manual_seed(6)
        graphs = []
        for _ in range(4):
            loss = train_step(compiled, optimizer, *batch(kind, g))
            if monitor is not None:
                monitor.step(loss)
            graphs.append(counters["stats"]["unique_graphs"])
        if monitor is not None:
            monitor.close()
        return graphs, sum(counters["graph_break"].values()), snapshot(model, "param")

    plain_graphs, plain_breaks, plain_weights = train(False)
    graphs, breaks, weights = train(True)
    assert breaks == plain_breaks == 0
    assert graphs == plain_graphs  # compiled once, never again
    for n in plain_weights:
        np.testing.assert_array_equal(weights[n], plain_weights[n])
    (run,) = reader.read_logdir(str(tmp_path))
    assert [s.step for s in run.steps] == [1, 2, 3, 4]
    act = fmt.LAYER_STATS.index("act_std")
    assert np.isfinite(run.steps[-1].layer_values[:, act]).all()


class SeveralSampledShapes(nn.Module):
    """Two convolutions and two sequence layers whose outputs are too large
    to keep whole (their positions sampled), each of a different shape."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.seq1 = nn.Linear(32, 96)
        self.seq2 = nn.Linear(96, 200)
        self.head = nn.Linear(200, 10)

    def forward(self, x):
        x = self.pool(self.conv2(self.act1(self.conv1(x))))  # [batch, 32, 4, 4]
        x = x.flatten(2).transpose(1, 2).repeat(1, 4, 1)  # [batch, 64 positions, 32]
        return self.head(self.seq2(self.seq1(x)).mean(dim=1))


def test_torch_compile_with_several_sampled_shapes_and_a_changing_batch(tmp_path):
    """Outputs of several shapes sampled under torch.compile (each index
    its own graph input; two of them once crashed the compilation), and
    batches of 12, then 10 (a dynamic batch size), then 5 (fewer than
    `activation_examples`): no graph break, no compilation once each size
    was seen, the same rows as without torch.compile."""
    from torch._dynamo.utils import counters

    sizes = [12, 12, 10, 10, 5, 12, 10, 5, 10]

    def train(compiled, logdir):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(3)
        model = SeveralSampledShapes()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        run_model = torch.compile(model, backend="aot_eager") if compiled else model
        monitor = tht.HealthMonitor(str(logdir), run_model, optimizer, histogram_every=0,
                                    detectors=None)
        g = torch.Generator().manual_seed(4)
        graphs = []
        for n in sizes:
            x = torch.randn(n, 3, 21, 21, generator=g)
            y = torch.randint(0, 10, (n,), generator=g)
            optimizer.zero_grad()
            nn.functional.cross_entropy(run_model(x), y).backward()
            optimizer.step()
            monitor.step()
            graphs.append(counters["stats"]["unique_graphs"])
        monitor.close()
        return graphs, sum(counters["graph_break"].values())

    graphs, breaks = train(True, tmp_path / "compiled")
    assert breaks == 0
    assert graphs[4:] == [graphs[4]] * (len(sizes) - 4)  # every size seen by the 5th step
    train(False, tmp_path / "eager")
    (compiled,) = reader.read_logdir(str(tmp_path / "compiled"))
    (eager,) = reader.read_logdir(str(tmp_path / "eager"))
    assert [s.step for s in compiled.steps] == list(range(1, len(sizes) + 1))
    assert [l.name for l in compiled.steps[0].layers] == [
        "conv1", "act1", "conv2", "seq1", "seq2", "head"]
    for c, e in zip(compiled.steps, eager.steps):
        np.testing.assert_allclose(c.layer_values, e.layer_values, rtol=1e-4, atol=1e-6,
                                   equal_nan=True, err_msg="step %d" % c.step)
    act = fmt.LAYER_STATS.index("act_std")
    assert np.isfinite(compiled.steps[-1].layer_values[:, act]).all()


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float_lr", "tensor_lr"])
def test_the_learning_rate_is_the_one_the_update_used(tmp_path, tensor_lr):
    """A scheduler stepped before `monitor.step()` (a common order) does not
    shift the logged rate to the next step's; also with the rate a tensor,
    which the scheduler changes in place."""
    model, kind = zoo()["mlp"]
    optimizer = torch.optim.SGD(model.parameters(), lr=torch.tensor(0.1) if tensor_lr else 0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    g = torch.Generator().manual_seed(12)
    with tht.HealthMonitor(str(tmp_path), model, optimizer, detectors=None) as monitor:
        for _ in range(3):
            loss = train_step(model, optimizer, *batch(kind, g))
            scheduler.step()
            monitor.step(loss)
    (run,) = reader.read_logdir(str(tmp_path))
    np.testing.assert_allclose([s.global_values["learning_rate"] for s in run.steps],
                               [0.1, 0.05, 0.025], rtol=1e-6)


@pytest.mark.parametrize("paused", [True, False], ids=["paused", "not_paused"])
def test_a_gan_discriminator_judging_fakes_for_the_generator(tmp_path, paused):
    """A GAN loop: the discriminator's forward in the generator's step is
    not its own step's. Paused (`monitor.paused()`), the discriminator's
    input statistics are those of its own first forward, on real data;
    not paused, that forward on fakes is taken for its next step's."""
    torch.manual_seed(13)
    disc = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    gen = nn.Sequential(nn.Linear(3, 6), nn.Tanh())
    opt_d = torch.optim.SGD(disc.parameters(), lr=0.05)
    opt_g = torch.optim.SGD(gen.parameters(), lr=0.05)
    bce = nn.functional.binary_cross_entropy_with_logits
    g = torch.Generator().manual_seed(14)
    reals = []
    with tht.HealthMonitor(str(tmp_path / "d"), disc, opt_d, detectors=None) as d_monitor:
        for _ in range(4):
            real = torch.randn(10, 6, generator=g) * 3.0 + 5.0  # far from the generator's tanh
            fake = gen(torch.randn(10, 3, generator=g))
            reals.append(real)
            opt_d.zero_grad()
            d_loss = bce(disc(real), torch.ones(10, 1)) + bce(disc(fake.detach()), torch.zeros(10, 1))
            d_loss.backward()
            opt_d.step()
            d_monitor.step(d_loss)
            opt_g.zero_grad()
            with d_monitor.paused() if paused else contextlib.nullcontext():
                g_loss = bce(disc(fake), torch.ones(10, 1))
            g_loss.backward()
            opt_g.step()
    (run,) = reader.read_logdir(str(tmp_path / "d"))
    means = [s.global_values["input_mean"] for s in run.steps]
    want = [ref.input_stats([r[:8].double().numpy()])["input_mean"] for r in reals]
    if paused:
        np.testing.assert_allclose(means, want, rtol=1e-5)
    else:  # from the second step on, the fakes' (|tanh| < 1) instead of the reals' (~5)
        np.testing.assert_allclose(means[0], want[0], rtol=1e-5)
        assert all(abs(m) < 1.0 for m in means[1:])


def test_outputs_and_weights_are_the_same_with_and_without_the_monitor(tmp_path):
    def train(monitored):
        model, kind = zoo()["cnn_bn"]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        monitor = tht.HealthMonitor(str(tmp_path), model, optimizer) if monitored else None
        g = torch.Generator().manual_seed(7)
        for _ in range(3):
            x, y = batch(kind, g)
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            if monitor:
                monitor.step(loss)
        if monitor:
            monitor.close()
        model.eval()
        with torch.no_grad():
            out = model(batch(kind, torch.Generator().manual_seed(8))[0])
        return out, snapshot(model, "param")

    out_plain, w_plain = train(False)
    out, w = train(True)
    torch.testing.assert_close(out, out_plain, rtol=0, atol=0)
    for n in w_plain:
        np.testing.assert_array_equal(w[n], w_plain[n])


def test_evaluation_under_no_grad_is_not_recorded(tmp_path):
    model, kind = zoo()["mlp"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(9)
    monitor = tht.HealthMonitor(str(tmp_path), model, optimizer)
    program = monitor._program
    x, y = batch(kind, g)
    with torch.no_grad():
        model(x)
    model.eval()
    model(x)  # eval mode with gradients on: not training either
    model.train()
    assert not [layer for layer in program.layers if layer.samples] and not program._inputs
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    monitor.step(loss)
    monitor.close()
    (run,) = reader.read_logdir(str(tmp_path))
    want = ref.input_stats([x[:8].double().numpy()])
    np.testing.assert_allclose(run.steps[0].global_values["input_mean"], want["input_mean"], rtol=1e-6)
    # the hooks are gone after close()
    assert not model[0]._forward_hooks and not optimizer._optimizer_step_pre_hooks


def test_stop_on_sets_stop_requested_and_alerts_are_kept(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    raised = []
    monitor = tht.HealthMonitor(str(tmp_path), model, optimizer, stop_on=["nan_inf"],
                                on_alert=raised.append, flush_every=1)
    x = torch.randn(8, 4)
    x[0, 0] = float("nan")
    for _ in range(40):
        optimizer.zero_grad()
        loss = model(x).sum()
        loss.backward()
        optimizer.step()
        monitor.step(loss)
        monitor.flush()
        if monitor.stop_requested:
            break
    monitor.close()
    assert monitor.stop_requested
    assert "nan_inf" in {a.kind for a in monitor.alerts}
    assert raised == monitor.alerts


@pytest.mark.filterwarnings("ignore:training_health. could not write:RuntimeWarning")
def test_flush_says_whether_the_steps_are_in_the_files(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the logdir's parent directory should be")
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = tht.HealthMonitor(str(blocked / "run"), model, optimizer, flush_every=100)
    assert monitor.flush() is True  # nothing to write yet
    for _ in range(3):
        optimizer.zero_grad()
        loss = model(torch.randn(8, 4)).sum()
        loss.backward()
        optimizer.step()
        monitor.step(loss)
    assert monitor.flush() is False  # the steps stay queued
    blocked.unlink()
    assert monitor.flush() is True
    (run,) = reader.read_logdir(str(tmp_path))  # (before close)
    assert [s.step for s in run.steps] == [1, 2, 3]
    monitor.close()


@pytest.mark.parametrize("kwargs,match", [
    (dict(model="not a module"), "torch.nn.Module"),
    (dict(optimizer=object()), "torch.optim.Optimizer"),
    (dict(every_n_batches=0), "every_n_batches"),
    (dict(layers=["no_such_layer"]), "matched no module"),
    (dict(stop_on="nan_inf"), "stop_on"),
    (dict(initial_step=-1), "initial_step"),
    (dict(initial_step=2.0), "initial_step"),
])
def test_bad_arguments_get_a_clear_error(tmp_path, kwargs, match):
    model = nn.Sequential(nn.Linear(4, 2))
    args = dict(logdir=str(tmp_path), model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        tht.HealthMonitor(**args)


def _train(monitor, model, optimizer, steps, generator):
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(torch.randn(8, 4, generator=generator)),
                                           torch.randint(0, 2, (8,), generator=generator))
        loss.backward()
        optimizer.step()
        monitor.step(loss)


def test_a_resumed_loop_numbers_its_steps_after_the_first_run(tmp_path):
    """A loop resumed from a checkpoint goes on numbering its steps: from the
    step count an Adam optimizer keeps (restored by load_state_dict), or
    from `initial_step` for SGD, which keeps none."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with tht.HealthMonitor(str(tmp_path / "adam"), model, optimizer, flush_every=2) as monitor:
        _train(monitor, model, optimizer, 3, g)
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}

    resumed = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    resumed.load_state_dict(checkpoint["model"])
    optimizer = torch.optim.Adam(resumed.parameters(), lr=1e-3)
    assert tht.optimizer_step_count(optimizer) == 0
    optimizer.load_state_dict(checkpoint["optimizer"])
    assert tht.optimizer_step_count(optimizer) == 3
    with tht.HealthMonitor(str(tmp_path / "adam"), resumed, optimizer, flush_every=2) as monitor:
        _train(monitor, resumed, optimizer, 2, g)
    (run,) = reader.read_logdir(str(tmp_path / "adam"))
    assert [s.step for s in run.steps] == [1, 2, 3, 4, 5]
    dead = fmt.LAYER_STATS.index("dead_frac_window")
    assert np.isfinite(run.steps[3].layer_values[1][dead])  # (the ReLU, at the first resumed step)

    sgd = torch.optim.SGD(resumed.parameters(), lr=0.1)
    assert tht.optimizer_step_count(sgd) == 0
    with tht.HealthMonitor(str(tmp_path / "sgd"), resumed, sgd, initial_step=10) as monitor:
        _train(monitor, resumed, sgd, 2, g)
    (run,) = reader.read_logdir(str(tmp_path / "sgd"))
    assert [s.step for s in run.steps] == [11, 12]


def _hook_method_names(model, optimizer):
    """The name of the method behind every hook on the modules and the optimizer."""
    hooks = [h for m in model.modules() for h in (*m._forward_hooks.values(),
                                                  *m._forward_pre_hooks.values())]
    hooks += [*optimizer._optimizer_step_pre_hooks.values(),
              *optimizer._optimizer_step_post_hooks.values()]
    return [(h.func if hasattr(h, "func") else h).__name__ for h in hooks]


def test_the_program_names_every_method_its_hooks_call(tmp_path):
    """`TorchProgram.HOOK_METHODS` lists the methods behind all its hooks (the
    overhead benchmark times those): none unlisted, none listed unused, and
    removing the hooks leaves none behind."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = tht.HealthMonitor(str(tmp_path / "run"), model, optimizer)
    names = _hook_method_names(model, optimizer)
    assert set(names) == set(monitor._program.HOOK_METHODS), names
    assert names.count("_on_output") == 3  # (one per monitored module)
    monitor.close()
    assert _hook_method_names(model, optimizer) == []


class KeywordInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, features=None, mask=None):
        return self.fc(features) * mask[:, None]


def test_input_statistics_of_keyword_arguments(tmp_path):
    """A model called with keyword arguments (`model(features=x, mask=m)`):
    the input columns are those of its floating-point inputs, the boolean
    mask left out."""
    torch.manual_seed(0)
    model = KeywordInputs()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(6, 4) * 3 + 1
    with tht.HealthMonitor(str(tmp_path), model, optimizer, activation_examples=None) as monitor:
        optimizer.zero_grad()
        model(features=x, mask=torch.ones(6, dtype=torch.bool)).square().mean().backward()
        optimizer.step()
        monitor.step()
    (run,) = reader.read_logdir(str(tmp_path))
    want = ref.input_stats([x.double().numpy()])
    got = run.steps[0].global_values
    for k in fmt.INPUT_STATS:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_accumulated_micro_batches_share_dead_units_and_are_sampled_once(tmp_path, monkeypatch):
    """With gradient accumulation a unit is alive when it fires in any
    micro-batch of the step; the activation sample is taken once a step (of
    its first micro-batch: the others' would go unused), and a later
    micro-batch's units are not reduced again once all have fired."""
    from training_health.capture import torch_ops

    calls = {"sample": 0, "units": 0}
    sample, units = torch_ops.Sampler.activation_sample, torch_ops.units_active

    def counted_sample(*args, **kwargs):
        calls["sample"] += 1
        return sample(*args, **kwargs)

    def counted_units(*args, **kwargs):
        calls["units"] += 1
        return units(*args, **kwargs)

    monkeypatch.setattr(torch_ops.Sampler, "activation_sample", counted_sample)
    monkeypatch.setattr(torch_ops, "units_active", counted_units)
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():  # unit i = relu(x_i)
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    micro_batches = {1: [[[1.0, -1.0]], [[-1.0, 1.0]]],  # each unit fires in one of the two
                     2: [[[1.0, 1.0]], [[-1.0, -1.0]]]}  # both fire in the first
    with tht.HealthMonitor(str(tmp_path), model, optimizer, detectors=None) as monitor:
        for step, xs in micro_batches.items():
            optimizer.zero_grad()
            for x in xs:
                model(torch.tensor(x)).sum().backward()
            optimizer.step()
            monitor.step()
            if step == 1:
                # (three layers sampled once each; the ReLU's units reduced
                # in both micro-batches, none having fired in all of the first)
                assert calls == {"sample": 3, "units": 2}, calls
                calls.update(sample=0, units=0)
    assert calls == {"sample": 3, "units": 1}, calls  # (the second micro-batch: nothing)
    (run,) = reader.read_logdir(str(tmp_path))
    dead = fmt.LAYER_STATS.index("dead_frac")
    relu = [l.name for l in run.steps[0].layers].index("1")
    assert [s.layer_values[relu][dead] for s in run.steps] == [0.0, 0.0]
