"""A million-step run of a deep model: bytes on disk, the tab's matrix route, `check`.

Simulates the step stream a capture hands its writer -- `--steps` logged
steps of a `--layers`-layer model, a histogram every 100 steps, a handful
of alert episodes (raised, then cleared) -- through the real `RunWriter`
at the captures' defaults (`history_after`, `history_block`: layer rows
of the first 10000 steps and of the blocks around alerts and at the end
in full, other blocks as min/mean/max summaries). No training: the
statistics drift slowly with noise, as a long run's do.

Then it measures

- the bytes of the run's event files (and what every step at full
  resolution would have taken: the same stream written with
  `history_after=None` for `--full-steps` steps, scaled);
- the tab's `matrix` route on the run, served by a real `tensorboard`
  process (`--load_fast` backend), cold and warm (median of `--repeats`);
- `training-health check` on the run, as a subprocess (seconds).

The last line is exactly
`steps=S layers=L bytes=B matrix_route_ms=X check_s=Y`.

Usage:
  python benchmarks/long_run.py                      # 1,000,000 steps x 150 layers
  python benchmarks/long_run.py --logdir /tmp/long   # keep (or reuse) the run there
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from training_health import format as fmt
from training_health.io.history import HISTORY_AFTER, HISTORY_BLOCK
from training_health.io.run_writer import RunWriter
from training_health.records import Alert, LayerInfo

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))

import test_plugin_support as support  # noqa: E402  (tensorboard_process)
from sweep import get  # noqa: E402  (a plugin route over HTTP, gzip accepted)

RUN = "long"
HISTOGRAM_EVERY = 100  # the captures' default
FLUSH_EVERY = 1000  # steps between waits for the writer (its queue holds 100000 events)


# A healthy ReLU layer's statistics, roughly (values move by a few percent
# from step to step and drift down slowly, as the loss does).
HEALTHY_ROW = dict(
    grad_norm=0.05, grad_max_abs=0.01, grad_zero_frac=0.0, grad_nonfinite=0.0,
    weight_norm=8.0, update_ratio=1e-3,
    act_mean=0.4, act_std=0.6, act_example_std=0.5, act_zero_frac=0.5,
    act_saturated_frac=np.nan, act_nonfinite=0.0, dead_frac=0.0, dead_frac_window=0.0,
)
HEALTHY_GLOBAL = dict(
    loss=2.3, grad_norm=0.6, grad_nonfinite=0.0, input_mean=0.0, input_std=1.0,
    input_min=-3.0, input_max=3.0, input_nonfinite=0.0, learning_rate=1e-3,
)


def layer_infos(n_layers):
    return [LayerInfo("block%03d/conv" % i, "Conv2D", "relu", None, 64, True, True, i == n_layers - 1)
            for i in range(n_layers)]


def alert_steps(n_steps, episodes=8):
    """{step: [Alert]}: `episodes` dead-unit episodes, each cleared 500 steps later."""
    out = {}
    for k in range(episodes):
        step = (k + 1) * n_steps // (episodes + 1)
        layer = "block%03d/conv" % (k * 7)
        out[step] = [Alert("dead_units", step, layer, "warning", "simulated episode", "none")]
        out[step + 500] = [Alert("dead_units", step + 500, layer, "warning", "over", "",
                                 cleared=True)]
    return out


def write_run(path, n_steps, n_layers, history_after=HISTORY_AFTER, history_block=HISTORY_BLOCK):
    """Writes the simulated run; returns the seconds spent."""
    layers = layer_infos(n_layers)
    writer = RunWriter(path, layers, metric_names=("accuracy",), history_after=history_after,
                       history_block=history_block)
    rng = np.random.default_rng(0)
    base = np.tile(np.array([HEALTHY_ROW[name] for name in fmt.LAYER_STATS], np.float32),
                   (n_layers, 1))
    noise = rng.normal(1.0, 0.02, size=(64, n_layers, len(fmt.LAYER_STATS))).astype(np.float32)
    hist = rng.random((n_layers, len(fmt.HIST_SERIES), fmt.HIST_ROW)).astype(np.float32)
    glob = np.array([HEALTHY_GLOBAL[name] for name in fmt.GLOBAL_STATS] + [0.5], np.float32)
    alerts = alert_steps(n_steps)
    start = time.perf_counter()
    for step in range(n_steps):
        drift = np.float32(1.0 / (1.0 + step / 200000.0))
        glob[0] = 2.3 * drift * noise[step % 64, 0, 0]
        writer.write_step(step, base * noise[step % 64], glob, wall_time=1.0e9 + step)
        if step in alerts:
            writer.write_alerts(step, alerts[step], wall_time=1.0e9 + step)
        if step % HISTOGRAM_EVERY == 0:
            writer.write_histograms(step, hist, wall_time=1.0e9 + step)
        if step % FLUSH_EVERY == FLUSH_EVERY - 1:
            writer.flush()  # a capture hands over its rows a few times a minute, not all at once
    writer.close()
    return time.perf_counter() - start


def run_bytes(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def wait_loaded(base, last_step, timeout):
    deadline = time.monotonic() + timeout
    while True:
        runs = get(base, "runs")["runs"]
        if runs and runs[0]["last_step"] >= last_step:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("tensorboard did not load the run up to step %d in %ds" % (last_step, timeout))
        time.sleep(2.0)


def time_matrix(base, repeats):
    """(cold ms, warm median ms, the answer) of the matrix route for dead_frac."""
    path = "matrix?run=%s&stat=dead_frac" % RUN
    start = time.perf_counter()
    body = get(base, path)
    cold = (time.perf_counter() - start) * 1000
    warm = []
    for _ in range(repeats):
        start = time.perf_counter()
        get(base, path)
        warm.append((time.perf_counter() - start) * 1000)
    return cold, statistics.median(warm), body


def time_check(logdir):
    """(seconds, exit status, first output line) of `training-health check LOGDIR`."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "training_health.cli", "check", logdir],
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise RuntimeError("training-health check failed (%d): %s" % (done.returncode, done.stderr[-2000:]))
    return seconds, done.returncode, (done.stdout.splitlines() or [""])[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1_000_000, help="logged steps. Defaults to 1000000.")
    parser.add_argument("--layers", type=int, default=150, help="layers. Defaults to 150.")
    parser.add_argument("--full-steps", type=int, default=20_000,
                        help="steps written at full resolution to estimate the undownsampled "
                             "size. Defaults to 20000.")
    parser.add_argument("--history-after", type=int, default=HISTORY_AFTER,
                        help="the writer's history_after. Defaults to the captures' default, %d."
                        % HISTORY_AFTER)
    parser.add_argument("--history-block", type=int, default=HISTORY_BLOCK,
                        help="the writer's history_block. Defaults to the captures' default, %d."
                        % HISTORY_BLOCK)
    parser.add_argument("--repeats", type=int, default=10, help="warm matrix requests. Defaults to 10.")
    parser.add_argument("--load_fast", choices=("true", "false"), default="true",
                        help="TensorBoard's backend (true: its Rust data server). Defaults to true.")
    parser.add_argument("--logdir", help="reuse or keep the run here. Defaults to a temp dir, removed after.")
    parser.add_argument("--timeout", type=int, default=3600,
                        help="seconds TensorBoard may take to load the run. Defaults to 3600.")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.layers < 1 or args.full_steps < 1:
        parser.error("--steps must be >= 2, --layers and --full-steps >= 1; received %d, %d, %d"
                     % (args.steps, args.layers, args.full_steps))
    logdir = args.logdir or tempfile.mkdtemp(prefix="th-long-")
    path = os.path.join(logdir, RUN)
    try:
        if not os.path.isdir(path):
            seconds = write_run(path, args.steps, args.layers, args.history_after, args.history_block)
            print("wrote %d steps x %d layers in %.1f s (%.1f us a step)"
                  % (args.steps, args.layers, seconds, 1e6 * seconds / args.steps))
        size = run_bytes(path)
        full_path = os.path.join(tempfile.mkdtemp(prefix="th-long-full-"), RUN)
        try:
            full_steps = min(args.full_steps, args.steps)
            write_run(full_path, full_steps, args.layers, history_after=None)
            full = run_bytes(full_path) * args.steps / full_steps
        finally:
            shutil.rmtree(os.path.dirname(full_path), ignore_errors=True)
        print("bytes on disk %d (%.1f MB; every step in full would be about %.0f MB: %.1fx less)"
              % (size, size / 1e6, full / 1e6, full / size))
        start = time.perf_counter()
        with support.tensorboard_process(logdir, load_fast=args.load_fast == "true",
                                         timeout=args.timeout) as base:
            wait_loaded(base, args.steps - 1, args.timeout)
            print("tensorboard started and loaded the run in %.1f s" % (time.perf_counter() - start))
            cold, warm, body = time_matrix(base, args.repeats)
            print("matrix route: cold %.1f ms, warm median %.1f ms over %d requests; %d layers x %d "
                  "columns covering steps %s..%s from %d samples"
                  % (cold, warm, args.repeats, len(body["values"]), len(body["first_steps"]),
                     body["first_steps"][0] if body["first_steps"] else None,
                     body["last_steps"][-1] if body["last_steps"] else None, body["samples"]))
        check_s, status, first_line = time_check(logdir)
        print("training-health check: %.1f s, exit status %d: %s" % (check_s, status, first_line))
    finally:
        if not args.logdir:
            shutil.rmtree(logdir, ignore_errors=True)
    print("steps=%d layers=%d bytes=%d matrix_route_ms=%.1f check_s=%.1f"
          % (args.steps, args.layers, size, warm, check_s))


if __name__ == "__main__":
    main()
