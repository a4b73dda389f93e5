"""Latency of the Training Health tab's data routes on a large run.

Writes one run of `--layers` layers x `--steps` logged steps with the
logger's RunWriter (real event files), serves it, and times the routes a
page load asks for: /matrix (one heatmap), /series (the loss) and /layer
(one layer's detail). "cold" is the first request (the plugin reads and
stacks the data); "warm" repeats it on the same server.

Servers (--server, repeatable):
  inprocess  TensorBoard's WSGI app over the Python data provider, as in
             TensorBoard's own tests (no HTTP).
  python     a real `tensorboard --load_fast=false` process, over HTTP.
  rust       a real `tensorboard --load_fast=true` process, over HTTP.

Usage:
  python benchmarks/plugin_latency.py                      # 50 x 100000, inprocess + rust
  python benchmarks/plugin_latency.py --steps 20000 --server python
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

from training_health import format as fmt
from tensorboard_plugin_training_health import DEFAULT_SAMPLES, TrainingHealthLoader
from training_health.records import Alert, LayerInfo
from training_health.io.run_writer import RunWriter

RUN = "big_run"


def write_run(logdir, n_layers, n_steps, seed=0):
    """A run of `n_layers` Dense layers over `n_steps` steps; returns seconds spent."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    layers = [LayerInfo(layer_name(i), "Dense", "relu", None, 128, True, True)
              for i in range(n_layers)]
    writer = RunWriter(os.path.join(logdir, RUN), layers, metric_names=("accuracy",))
    base = rng.random((n_layers, len(fmt.LAYER_STATS))).astype(np.float32)
    glob = np.zeros(len(fmt.GLOBAL_STATS) + 1, dtype=np.float32)
    for step in range(n_steps):
        noise = 1 + 0.05 * rng.standard_normal(base.shape).astype(np.float32)
        glob[0] = 2.0 / (1 + step / 1000.0)
        writer.write_step(step, base * noise, glob, wall_time=1.0e9 + step)
        if step % 1000 == 0:
            hist = np.full((n_layers, 2, fmt.HIST_ROW), 1.0 / fmt.HIST_BINS, dtype=np.float32)
            writer.write_histograms(step, hist, wall_time=1.0e9 + step)
        if step == n_steps // 2:
            writer.write_alerts(step, [Alert("stalled", step, layers[3].name, "critical",
                                             "benchmark alert", "none")])
        if step % 20000 == 0:
            writer.flush()
    writer.close()
    return time.perf_counter() - start


def layer_name(index):
    return "dense_%02d" % index


def paths(n_layers):
    """(route, path) of what a page load asks: one heatmap, the loss, one layer."""
    return (
        ("matrix", "matrix?run=%s&stat=grad_norm&width=1000" % RUN),
        ("series", "series?run=%s&width=1000" % RUN),
        ("layer", "layer?run=%s&layer=%s&width=400" % (RUN, layer_name(n_layers // 2))),
    )


def time_requests(get, repeats, n_layers):
    """{route: {"cold_s", "warm_median_s", "warm_p95_s", "bytes"}}."""
    out = {}
    for name, path in paths(n_layers):
        start = time.perf_counter()
        body = get(path)
        cold = time.perf_counter() - start
        warm = []
        for _ in range(repeats):
            start = time.perf_counter()
            get(path)
            warm.append(time.perf_counter() - start)
        warm.sort()
        out[name] = {
            "cold_s": round(cold, 4),
            "warm_median_s": round(statistics.median(warm), 4),
            "warm_p95_s": round(warm[int(0.95 * (len(warm) - 1))], 4),
            "bytes": len(body),  # as sent (gzip over HTTP)
        }
    return out


def bench_inprocess(logdir, repeats, n_layers):
    from tensorboard.backend import application
    from tensorboard.backend.event_processing import data_provider as mux_provider
    from tensorboard.backend.event_processing import plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from werkzeug import test as werkzeug_test

    start = time.perf_counter()
    multiplexer = plugin_event_multiplexer.EventMultiplexer(
        tensor_size_guidance={fmt.PLUGIN_NAME: DEFAULT_SAMPLES})
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    load_s = time.perf_counter() - start
    provider = mux_provider.MultiplexerDataProvider(multiplexer, logdir)
    context = base_plugin.TBContext(logdir=logdir, data_provider=provider,
                                    sampling_hints={fmt.PLUGIN_NAME: DEFAULT_SAMPLES})
    plugin = TrainingHealthLoader().load(context)
    client = werkzeug_test.Client(application.TensorBoardWSGI([plugin], data_provider=provider))

    def get(path):
        response = client.get("/data/plugin/%s/%s" % (fmt.PLUGIN_NAME, path))
        if response.status_code != 200:
            raise RuntimeError("%s answered %d: %s" % (path, response.status_code, response.data[:200]))
        return response.get_data()

    result = time_requests(get, repeats, n_layers)
    result["load_s"] = round(load_s, 2)
    return result


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_process(logdir, load_fast, repeats, timeout, n_layers, last_step):
    port = free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1",
               "--port", str(port), "--load_fast", "true" if load_fast else "false"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = "http://127.0.0.1:%d/data/plugin/%s/" % (port, fmt.PLUGIN_NAME)
    try:
        start = time.perf_counter()
        deadline = start + timeout
        while True:  # ready when the whole run is loaded (its last step is served)
            try:
                with urllib.request.urlopen(base + "runs", timeout=10) as r:
                    runs = json.loads(r.read())["runs"]
                if runs and runs[0]["last_step"] >= last_step:
                    break
            except OSError:
                pass
            if time.perf_counter() > deadline or proc.poll() is not None:
                raise RuntimeError("tensorboard did not load the run within %ds" % timeout)
            time.sleep(0.5)
        load_s = time.perf_counter() - start

        def get(path):  # as a browser asks: gzip accepted
            request = urllib.request.Request(base + path, headers={"Accept-Encoding": "gzip"})
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.read()

        result = time_requests(get, repeats, n_layers)
        result["load_s"] = round(load_s, 2)
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=50, help="layers. Defaults to 50.")
    parser.add_argument("--steps", type=int, default=100000, help="logged steps. Defaults to 100000.")
    parser.add_argument("--repeats", type=int, default=20, help="warm requests per route. Defaults to 20.")
    parser.add_argument("--server", action="append", choices=("inprocess", "python", "rust"),
                        help="servers to time (repeatable). Defaults to inprocess and rust.")
    parser.add_argument("--logdir", help="reuse or keep the logs here. Defaults to a temp dir, removed after.")
    parser.add_argument("--timeout", type=int, default=900,
                        help="seconds a tensorboard process may take to load. Defaults to 900.")
    args = parser.parse_args(argv)
    if args.layers < 1 or args.steps < 2:
        parser.error("--layers must be >= 1 and --steps >= 2; received %d and %d"
                     % (args.layers, args.steps))
    servers = args.server or ["inprocess", "rust"]
    logdir = args.logdir or tempfile.mkdtemp(prefix="th-bench-")
    report = {"layers": args.layers, "steps": args.steps, "sample_limit": DEFAULT_SAMPLES,
              "cpu_count": os.cpu_count()}
    try:
        if not os.path.isdir(os.path.join(logdir, RUN)):
            report["write_s"] = round(write_run(logdir, args.layers, args.steps), 3)
        for server in servers:
            print("timing %s ..." % server, file=sys.stderr)
            if server == "inprocess":
                report[server] = bench_inprocess(logdir, args.repeats, args.layers)
            else:
                report[server] = bench_process(
                    logdir, server == "rust", args.repeats, args.timeout, args.layers, args.steps - 1)
    finally:
        if not args.logdir:
            shutil.rmtree(logdir, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
