"""Shared helpers of the plugin tests: synthetic runs and a real TensorBoard.

The runs are written with the logger's own `RunWriter`, so they are real
event files in the on-disk format. `test_*` functions at the end check that
the fixtures read back as intended (a broken fixture would make every other
plugin test meaningless).
"""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np

from training_health import format as fmt
from training_health.records import Alert, LayerInfo
from training_health.io.run_writer import RunWriter

XSS_LAYER = "<img src=x onerror=alert(1)>"
XSS_METRIC = "val_<img src=x onerror=alert(2)>"
# (step, epoch, metrics) of the XSS run's epochs: the second was not validated.
XSS_EPOCHS = (
    (9, 1, {"loss": 0.3, "val_loss": 0.5, XSS_METRIC: 0.6}),
    (19, 2, {"loss": 0.1}),
    (29, 3, {"loss": 0.05, "val_loss": 0.8, XSS_METRIC: 0.7}),
    (39, 4, {"loss": 0.02, "val_loss": 1.2, XSS_METRIC: float("inf")}),
)
STALLED_RUN = "stalled_cnn"
HEALTHY_RUN = "healthy_mlp"
XSS_RUN = "xss_names"
STALL_STEP = 120
STALL_LAYER = "conv2"
DEAD_LAYER = "dense1"
STALL_HINT = "Check that conv2 is trainable and that its gradient reaches it."


def _row(**stats):
    row = np.full(len(fmt.LAYER_STATS), np.nan, dtype=np.float32)
    for name, value in stats.items():
        row[fmt.LAYER_STATS.index(name)] = value
    return row


def _conv_like(rng, step, scale, stuck=False, dead=0.0, units=16):
    grad = scale * np.exp(-step / 400.0) * (1 + 0.1 * rng.standard_normal())
    ratio = 1e-3 * (1 + 0.2 * rng.standard_normal())
    if stuck:
        grad, ratio = 1e-9 * (1 + 0.1 * rng.random()), 0.0
    return _row(
        grad_norm=grad,
        grad_max_abs=grad / 3,
        grad_zero_frac=0.02 + dead * 0.9,
        grad_nonfinite=0,
        weight_norm=4.0 + step * 1e-3,
        update_ratio=ratio,
        act_mean=0.3 - dead * 0.25,
        act_std=0.5 * (1 - dead) + 0.01,
        act_example_std=0.3 * (1 - dead) + 0.01,
        act_zero_frac=0.4 + dead * 0.55,
        act_saturated_frac=0.0,
        act_nonfinite=0,
        dead_frac=dead,
        dead_frac_window=max(dead - 0.05, 0.0),
    )


def _histograms(rng, n_layers, stalled_index=None):
    """Gradient peaks near |g| ~ 1e-3; a stuck layer's near 1e-10."""
    hist = np.zeros((n_layers, 2, fmt.HIST_ROW), dtype=np.float32)
    centers = np.linspace(0, 1, fmt.HIST_BINS)
    for i in range(n_layers):
        peak = 0.55 if i != stalled_index else 0.12
        g = np.exp(-((centers - peak - 0.02 * rng.standard_normal()) ** 2) / 0.01)
        hist[i, 0, 0] = 0.02
        hist[i, 0, 2:] = g / g.sum()
        a = np.exp(-((centers - 0.3) ** 2) / 0.05)
        hist[i, 1, 0], hist[i, 1, 1] = 0.0, 2.0 + i
        hist[i, 1, 2:] = a / a.sum()
    return hist


def write_stalled_cnn(logdir, steps=300, seed=0):
    """A CNN whose `conv2` stops learning at STALL_STEP and whose `dense1` dies."""
    rng = np.random.default_rng(seed)
    layers = (
        LayerInfo("conv1", "Conv2D", "relu", None, 16, True, True),
        LayerInfo("conv2", "Conv2D", "relu", None, 32, True, True),
        LayerInfo("pool", "MaxPooling2D", "linear", None, 32, False, True),
        LayerInfo("dense1", "Dense", "relu", None, 64, True, True),
        LayerInfo("probs", "Dense", "softmax", (0.0, 1.0), 10, True, True),
    )
    writer = RunWriter(logdir, layers, metric_names=("accuracy",))
    for step in range(steps):
        dead = min(max((step - 150) / 100.0, 0.0), 0.8)
        matrix = np.stack([
            _conv_like(rng, step, 0.8),
            _conv_like(rng, step, 0.5, stuck=step >= STALL_STEP),
            _row(act_mean=0.4, act_std=0.6, act_example_std=0.3, act_zero_frac=0.3,
                 act_saturated_frac=0.0, act_nonfinite=0, dead_frac=0.0, dead_frac_window=0.0),
            _conv_like(rng, step, 0.3, dead=dead, units=64),
            _row(grad_norm=0.2, grad_max_abs=0.05, grad_zero_frac=0.0, grad_nonfinite=0,
                 weight_norm=2.0, update_ratio=2e-3, act_mean=0.1, act_std=0.25,
                 act_example_std=0.2, act_zero_frac=0.0,
                 act_saturated_frac=min(0.05 + step / 600.0, 0.6), act_nonfinite=0,
                 dead_frac=0.0, dead_frac_window=0.0),
        ])
        loss = 2.3 * np.exp(-step / 80.0) + 0.9 + 0.05 * rng.standard_normal()
        if step >= STALL_STEP:
            loss = 1.3 + 0.05 * rng.standard_normal()
        glob = [loss, 1.0, 0, 0.0, 1.0, -1.0, 1.0, 0, 1e-3, min(0.1 + step / 300.0, 0.55)]
        writer.write_step(step, matrix, glob, wall_time=1000.0 + step)
        if step % 25 == 0:
            stuck = 1 if step >= STALL_STEP else None
            writer.write_histograms(step, _histograms(rng, len(layers), stalled_index=stuck),
                                    wall_time=1000.0 + step)
        if step == STALL_STEP + 20:
            writer.write_alerts(step, [Alert(
                "stalled", STALL_STEP, STALL_LAYER, "critical",
                "conv2 stopped learning at step %d: update ratio 0 and gradient norm "
                "1e-9 for 20 steps while the loss is flat at 1.30" % STALL_STEP,
                STALL_HINT,
            )], wall_time=1000.0 + step)
        if step == 220:
            writer.write_alerts(step, [Alert(
                "dead_units", 210, DEAD_LAYER, "warning",
                "dense1: 60% of units output <= 0 on every example for 50 batches",
                "Lower the learning rate or use LeakyReLU; check the initialization.",
            )], wall_time=1000.0 + step)
    writer.close()
    return layers


def write_healthy_mlp(logdir, steps=200, seed=1):
    rng = np.random.default_rng(seed)
    layers = tuple(LayerInfo("dense_%d" % i, "Dense", "relu", None, 32, True, True)
                   for i in range(3))
    writer = RunWriter(logdir, layers)
    for step in range(0, steps * 2, 2):  # logged every other step
        matrix = np.stack([_conv_like(rng, step, 0.4 + i) for i in range(3)])
        loss = 1.5 * np.exp(-step / 100.0) + 0.1
        writer.write_step(step, matrix, [loss, 1.0, 0, 0, 1, -1, 1, 0, 1e-3],
                          wall_time=2000.0 + step)
    writer.close()
    return layers


def write_xss_run(logdir):
    layers = (
        LayerInfo(XSS_LAYER, "Dense", "relu", None, 8, True, True),
        LayerInfo("plain", "Dense", "relu", None, 8, True, True),
    )
    writer = RunWriter(logdir, layers)
    rng = np.random.default_rng(2)
    for step in range(40):
        matrix = np.stack([_conv_like(rng, step, 0.5), _conv_like(rng, step, 0.2)])
        writer.write_step(step, matrix, [1.0 / (step + 1), 1, 0, 0, 1, -1, 1, 0, 1e-3],
                          wall_time=3000.0 + step)
    writer.write_histograms(39, _histograms(rng, 2), wall_time=3039.0)
    for step, epoch, metrics in XSS_EPOCHS:
        writer.write_epoch(step, epoch, metrics, wall_time=3000.0 + step)
    writer.write_alerts(30, [Alert(
        "dead_units", 30, XSS_LAYER, "warning",
        "<b>bold?</b> units of " + XSS_LAYER + " died",
        "<script>window.__xss = 1</script> lower the learning rate",
    )], wall_time=3030.0)
    writer.close()
    return layers


def write_synthetic_logdir(root):
    """Three runs under `root` (one per subdirectory); returns their names."""
    write_stalled_cnn(os.path.join(root, STALLED_RUN))
    write_healthy_mlp(os.path.join(root, HEALTHY_RUN))
    write_xss_run(os.path.join(root, XSS_RUN))
    return (STALLED_RUN, HEALTHY_RUN, XSS_RUN)


DEMO_STALLED = "stalled_cnn"  # run names written by training_health.cli.demo
DEMO_HEALTHY = "healthy_cnn"
_DEMO_LOGS = {}


def demo_logdir(tmp_path_factory):
    """The demo's logs plus the synthetic XSS run, written once per test session.

    `training_health.cli.demo.write_demo_runs` trains the stalled CNN and
    its healthy twin with the real Keras capture (2 epochs keep it short).
    Tests must not leave other runs behind in this folder.
    """
    if "path" not in _DEMO_LOGS:
        from training_health.cli import demo

        root = tmp_path_factory.mktemp("demo") / "logs"
        demo.write_demo_runs(str(root), epochs=2)
        write_xss_run(str(root / XSS_RUN))
        _DEMO_LOGS["path"] = root
    return _DEMO_LOGS["path"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Run as `python -c`: makes every import of TensorFlow/Keras fail, then starts
# TensorBoard's own main (what a viewing machine without TensorFlow runs).
_NO_TF_MAIN = (
    "import sys\n"
    "for name in ('tensorflow', 'keras', 'tf_keras'):\n"
    "    sys.modules[name] = None\n"
    "from tensorboard import main\n"
    "sys.argv[0] = 'tensorboard'\n"
    "main.run_main()\n"
)


@contextlib.contextmanager
def tensorboard_process(logdir, load_fast, extra_args=(), timeout=90.0, block_tensorflow=False,
                        path_prefix="", python=sys.executable):
    """Runs `tensorboard` on 127.0.0.1 and yields its base URL; kills it after.

    Waits (at most `timeout` seconds) until the server answers and has
    loaded Training Health data, then yields. With `block_tensorflow`,
    TensorFlow cannot be imported in the server process. A `path_prefix`
    (e.g. "/tb") is passed to TensorBoard and included in the yielded URL.
    `python` is the interpreter (so the environment, with its own
    tensorboard) that runs the server.
    """
    port = free_port()
    log_path = os.path.join(str(logdir), "..", "tensorboard-%d.log" % port)
    entry = ["-c", _NO_TF_MAIN] if block_tensorflow else ["-m", "tensorboard.main"]
    command = [python] + entry + [
        "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port),
        "--load_fast", "true" if load_fast else "false", "--reload_interval", "1",
    ] + list(extra_args) + (["--path_prefix", path_prefix] if path_prefix else [])
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base = "http://127.0.0.1:%d%s" % (port, path_prefix)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError("tensorboard exited early:\n" + _tail(log_path))
            try:
                with urllib.request.urlopen(base + "/data/plugins_listing", timeout=5) as r:
                    if b'"training_health"' in r.read():
                        with urllib.request.urlopen(
                            base + "/data/plugin/training_health/runs", timeout=10
                        ) as runs:
                            if b'"run"' in runs.read():
                                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("tensorboard did not serve data in time:\n" + _tail(log_path))
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _tail(path):
    with open(path, "rb") as f:
        return f.read()[-3000:].decode("utf-8", "replace")


def test_fixture_runs_read_back(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    write_synthetic_logdir(str(tmp_path))
    acc = event_accumulator.EventAccumulator(
        str(tmp_path / STALLED_RUN), size_guidance={event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    layers = acc.Tensors(fmt.TAG_LAYERS)
    assert len(layers) == 300
    content = acc.SummaryMetadata(fmt.TAG_LAYERS).plugin_data.content
    names = [info.name for info in fmt.parse_metadata(content)["layers"]]
    assert names == ["conv1", "conv2", "pool", "dense1", "probs"]
    from tensorboard.util import tensor_util

    late = tensor_util.make_ndarray(layers[-1].tensor_proto)
    assert late[1, fmt.LAYER_STATS.index("update_ratio")] == 0.0  # conv2 stuck
    assert np.isnan(late[2, fmt.LAYER_STATS.index("grad_norm")])  # pool has no weights
    alerts = acc.Tensors(fmt.TAG_ALERTS)
    decoded = fmt.decode_alerts(tensor_util.make_ndarray(alerts[0].tensor_proto))
    assert decoded[0]["hint"] == STALL_HINT and decoded[0]["layer"] == STALL_LAYER
    assert len(acc.Tensors(fmt.TAG_HISTOGRAMS)) == 12
