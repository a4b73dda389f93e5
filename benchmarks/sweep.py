"""A sweep in the Training Health tab: the run overview's latency and draw time.

Writes a logdir of `--runs` runs x `--layers` layers x `--steps` logged
steps with the format's writer (`RunWriter`, real event files, no
training: each run's loss decays at its own rate, some runs raise
warning or critical alerts, some clear them), serves it with a real
`tensorboard` process, then times

- the `overview` route over HTTP (gzip accepted, as a browser asks),
  warm: the median of `--repeats` requests after a first one;
- the overview page in headless Chromium (`/usr/bin/chromium`, or
  TRAINING_HEALTH_CHROMIUM): from navigating to the tab to its overview
  table drawn, the median of `--draws` fresh pages.

The last line is exactly `runs=R overview_route_ms=X overview_draw_ms=Y`.

Usage:
  python benchmarks/sweep.py                         # 100 runs x 50 layers x 5000 steps
  python benchmarks/sweep.py --logdir /tmp/sweep     # keep (or reuse) the logs there
"""

import argparse
import gzip
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request

import numpy as np

from training_health import format as fmt
from training_health.io.run_writer import RunWriter
from training_health.records import Alert, LayerInfo

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))

import test_plugin_support as support  # noqa: E402  (tensorboard_process)

CHROMIUM = os.environ.get("TRAINING_HEALTH_CHROMIUM", "/usr/bin/chromium")
ENTRY = "/data/plugin_entry.html?name=" + fmt.PLUGIN_NAME


def run_name(index):
    return "lr_%03d" % index


def write_run(path, index, n_layers, n_steps):
    """One run; every fourth warns, every seventh goes critical (every other one of those clears)."""
    rng = np.random.default_rng(index)
    layers = [LayerInfo("dense_%02d" % i, "Dense", "relu", None, 128, True, True) for i in range(n_layers)]
    writer = RunWriter(path, layers, metric_names=("accuracy",))
    base = rng.random((n_layers, len(fmt.LAYER_STATS))).astype(np.float32)
    glob = np.zeros(len(fmt.GLOBAL_STATS) + 1, dtype=np.float32)
    rate = 0.2 + 2.0 * rng.random()
    alerts = {}
    if index % 4 == 1:
        alerts[n_steps // 3] = [Alert("dead_units", n_steps // 3, layers[n_layers // 2].name, "warning",
                                      "benchmark warning", "none")]
    if index % 7 == 3:
        step = n_steps // 2
        alerts.setdefault(step, []).append(Alert("exploding_gradients", step, layers[0].name, "critical",
                                                 "benchmark critical", "none"))
        if index % 14 == 3:
            alerts[step + 10] = [Alert("exploding_gradients", step + 10, layers[0].name, "critical",
                                       "over", "", cleared=True)]
    for step in range(n_steps):
        glob[0] = 2.3 / (1 + rate * step / 1000.0)
        writer.write_step(step, base * np.float32(1 + 0.01 * (step % 7)), glob, wall_time=1.0e9 + step)
        if step in alerts:
            writer.write_alerts(step, alerts[step], wall_time=1.0e9 + step)
    writer.close()


def write_sweep(logdir, n_runs, n_layers, n_steps):
    """Writes the sweep under `logdir`; returns the seconds spent."""
    start = time.perf_counter()
    for index in range(n_runs):
        write_run(os.path.join(logdir, run_name(index)), index, n_layers, n_steps)
    return time.perf_counter() - start


def get(base, path):
    request = urllib.request.Request("%s/data/plugin/%s/%s" % (base, fmt.PLUGIN_NAME, path),
                                     headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=120) as response:
        body = response.read()
        if response.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
    return json.loads(body)


def wait_loaded(base, n_runs, last_step, timeout):
    """Waits until TensorBoard serves every run up to its last step."""
    deadline = time.monotonic() + timeout
    while True:
        runs = get(base, "runs")["runs"]
        if len(runs) == n_runs and all(r["last_step"] >= last_step for r in runs):
            return
        if time.monotonic() > deadline:
            raise RuntimeError("tensorboard served %d of %d runs after %ds" % (len(runs), n_runs, timeout))
        time.sleep(1.0)


def time_route(base, repeats):
    """(cold_ms, warm median ms, the answer)."""
    start = time.perf_counter()
    body = get(base, "overview")
    cold = (time.perf_counter() - start) * 1000
    warm = []
    for _ in range(repeats):
        start = time.perf_counter()
        get(base, "overview")
        warm.append((time.perf_counter() - start) * 1000)
    return cold, statistics.median(warm), body


def time_draw(base, draws, n_runs):
    """Median ms from navigating to the tab to its overview drawn, over fresh pages."""
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            for _ in range(draws):
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                start = time.perf_counter()
                page.goto(base + ENTRY)
                page.wait_for_selector("body[data-overview=drawn]", timeout=60000)
                times.append((time.perf_counter() - start) * 1000)
                rows = page.eval_on_selector_all(".th-ov-row", "rows => rows.length")
                if rows != n_runs:
                    raise RuntimeError("the overview drew %d rows for %d runs" % (rows, n_runs))
                page.close()
        finally:
            browser.close()
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="runs. Defaults to 100.")
    parser.add_argument("--layers", type=int, default=50, help="layers per run. Defaults to 50.")
    parser.add_argument("--steps", type=int, default=5000, help="logged steps per run. Defaults to 5000.")
    parser.add_argument("--repeats", type=int, default=20, help="warm overview requests. Defaults to 20.")
    parser.add_argument("--draws", type=int, default=5, help="pages drawn in Chromium. Defaults to 5.")
    parser.add_argument("--load_fast", choices=("true", "false"), default="true",
                        help="TensorBoard's backend (true: its Rust data server). Defaults to true.")
    parser.add_argument("--logdir", help="reuse or keep the logs here. Defaults to a temp dir, removed after.")
    parser.add_argument("--timeout", type=int, default=1800,
                        help="seconds TensorBoard may take to load the sweep. Defaults to 1800.")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.layers < 1 or args.steps < 2:
        parser.error("--runs, --layers must be >= 1 and --steps >= 2; received %d, %d, %d"
                     % (args.runs, args.layers, args.steps))
    logdir = args.logdir or tempfile.mkdtemp(prefix="th-sweep-")
    try:
        if not os.path.isdir(os.path.join(logdir, run_name(args.runs - 1))):
            print("written in %.1f s" % write_sweep(logdir, args.runs, args.layers, args.steps))
        with support.tensorboard_process(logdir, load_fast=args.load_fast == "true",
                                         timeout=args.timeout) as base:
            start = time.perf_counter()
            wait_loaded(base, args.runs, args.steps - 1, args.timeout)
            print("tensorboard loaded the sweep in %.1f s (after its first run)" % (time.perf_counter() - start))
            cold, warm, body = time_route(base, args.repeats)
            statuses = {}
            for row in body["runs"]:
                statuses[row["status"]] = statuses.get(row["status"], 0) + 1
            print("overview route: cold %.1f ms, warm median %.1f ms over %d requests; statuses %s"
                  % (cold, warm, args.repeats, json.dumps(statuses, sort_keys=True)))
            draw = time_draw(base, args.draws, args.runs)
            print("overview page drawn in Chromium: median %.0f ms over %d pages" % (draw, args.draws))
    finally:
        if not args.logdir:
            shutil.rmtree(logdir, ignore_errors=True)
    print("runs=%d overview_route_ms=%.1f overview_draw_ms=%.0f" % (args.runs, warm, draw))


if __name__ == "__main__":
    main()
