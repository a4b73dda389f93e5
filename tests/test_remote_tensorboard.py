"""A `tensorboard` process serving the Training Health tab from a bucket, and through a tunnel.

Documented ways (docs/remote.md, README "Training on a remote box"):
- a viewing machine without TensorFlow: plain `tensorboard --logdir s3://...`
  with `S3_ENDPOINT` (TensorBoard's own file layer, boto3);
- a machine with TensorFlow: `python -m training_health.io.remote --logdir s3://...`;
- TensorBoard on the training box bound to 127.0.0.1, reached through an SSH
  tunnel (`ssh -L`). Here a TCP forwarder on 127.0.0.1 stands in for the
  tunnel: it forwards a local port to the box's port, as `ssh -L` does.

Each test writes a run whose event files rolled over several times and
checks that TensorBoard reads them as one run: runs listing, plugin
listing, and the plugin's own routes (`plugin/tensorboard_plugin_training_health/http_api.md`).
"""

import json
import os
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from training_health import format as fmt
from training_health.records import Alert, LayerInfo
from training_health.io.run_writer import RunWriter
from training_health.io.event_writer import EventWriter

from test_remote_support import (  # noqa: F401  (fixtures)
    PYTHON,
    Proxy,
    no_tensorflow_dir,
    s3,
    s3_server,
    start_tensorboard,
    stop_process,
    wait_until,
)

pytestmark = pytest.mark.slow

LAYERS = (
    LayerInfo("conv", "Conv2D", "relu", None, 8, True, True),
    LayerInfo("out", "Dense", "softmax", (0.0, 1.0), 10, True, True),
)
STEPS = list(range(1, 31))
ALERT = Alert("dead_units", 30, "conv", "warning", "90% of conv's units are dead",
              "normalize the inputs")


def grad_norm(step):
    return [0.1 * step, 0.2 * step]


def write_run(logdir, roll_secs=0.3):
    """A run whose steps span several event files; returns the EventWriter's file names."""
    writer = EventWriter(logdir, flush_secs=0.1, roll_secs=roll_secs)
    run = RunWriter(logdir, LAYERS, writer=writer)
    for step in STEPS:
        layer_values = np.zeros((len(LAYERS), len(fmt.LAYER_STATS)), np.float32)
        layer_values[:, fmt.LAYER_STATS.index("grad_norm")] = grad_norm(step)
        run.write_step(step, layer_values, np.full(len(fmt.GLOBAL_STATS), 0.5, np.float32),
                       wall_time=1000.0 + step)
        if step % 10 == 0:
            assert run.flush()
            time.sleep(roll_secs + 0.05)
    run.write_alerts(ALERT.step, [ALERT], wall_time=1000.0 + ALERT.step)
    run.close()
    return writer.files


def get_json(base, path, **params):
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def plugin_route(base, route, **params):
    return get_json(base, "/data/plugin/%s/%s" % (fmt.PLUGIN_NAME, route), **params)


def assert_serves_the_run(base, run_name):
    """The tab's data for `run_name` is served, with every step of every rolled file."""

    def run_listed():
        return run_name in get_json(base, "/data/runs")

    wait_until(run_listed, 60, interval=0.5, what="tensorboard to list %s" % run_name)
    assert get_json(base, "/data/plugins_listing")[fmt.PLUGIN_NAME]["enabled"] is True

    def all_steps_loaded():
        runs = plugin_route(base, "runs")["runs"]
        entry = [r for r in runs if r["run"] == run_name]
        return entry and entry[0]["last_step"] == STEPS[-1] and entry[0]["has_alerts"]

    wait_until(all_steps_loaded, 60, interval=0.5, what="every step to be loaded")
    matrix = plugin_route(base, "matrix", run=run_name, stat="grad_norm")
    assert matrix["layers"] == [layer.name for layer in LAYERS]
    assert matrix["first_steps"] == STEPS, "steps of all rolled files, once each, in order"
    np.testing.assert_allclose(np.array(matrix["values"]).T, [grad_norm(s) for s in STEPS], rtol=1e-5)
    alerts = plugin_route(base, "alerts", run=run_name)["alerts"]
    assert [(a["kind"], a["step"], a["layer"], a["hint"]) for a in alerts] == [
        (ALERT.kind, ALERT.step, ALERT.layer, ALERT.hint)]
    with urllib.request.urlopen(base + "/data/plugin/%s/index.js" % fmt.PLUGIN_NAME, timeout=10) as r:
        assert b"render" in r.read()


def viewer_env(server):
    """The environment of a laptop that views the bucket: dummy credentials, the endpoint."""
    env = dict(os.environ)
    env.update(S3_ENDPOINT=server.endpoint, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    return env


def test_tensorboard_without_tensorflow_reads_a_bucket(s3, tmp_path):
    server, bucket = s3
    files = write_run("s3://%s/runs/run1" % bucket)
    assert len(files) >= 3
    env = viewer_env(server)
    env["PYTHONPATH"] = no_tensorflow_dir(tmp_path)  # a machine where TensorFlow is not installed
    proc, base = start_tensorboard(
        [PYTHON, "-m", "tensorboard.main", "--logdir", "s3://%s/runs" % bucket], env,
        tmp_path / "tb.log")
    try:
        assert_serves_the_run(base, "run1")
    finally:
        stop_process(proc)
    assert b"TensorFlow installation not found" in (tmp_path / "tb.log").read_bytes()


def test_training_health_remote_runs_tensorboard_on_a_bucket_with_tensorflow_installed(s3, tmp_path):
    server, bucket = s3
    write_run("s3://%s/runs/run1" % bucket)
    proc, base = start_tensorboard(
        [PYTHON, "-m", "training_health.io.remote", "--logdir", "s3://%s/runs" % bucket],
        viewer_env(server), tmp_path / "tb.log")
    try:
        assert_serves_the_run(base, "run1")
    finally:
        stop_process(proc)


def test_tensorboard_on_the_box_reached_through_a_forwarded_port(tmp_path):
    logdir = tmp_path / "runs"
    write_run(str(logdir / "run1"), roll_secs=0.3)
    proc, box = start_tensorboard([PYTHON, "-m", "tensorboard.main", "--logdir", str(logdir)],
                                  dict(os.environ), tmp_path / "tb.log", timeout=120)
    tunnel = Proxy(int(box.rsplit(":", 1)[1]))  # stands in for: ssh -L PORT:127.0.0.1:6006 box
    try:
        assert tunnel.endpoint != box
        assert_serves_the_run(tunnel.endpoint, "run1")
    finally:
        tunnel.close()
        stop_process(proc)


def test_tensorboard_follows_a_bucket_run_while_it_writes_and_rolls_over(s3, tmp_path):
    server, bucket = s3
    url = "s3://%s/runs/live" % bucket
    writer = EventWriter(url, flush_secs=0.1, roll_secs=0.3)
    run = RunWriter(url, LAYERS, writer=writer)

    def write_steps(steps):
        for step in steps:
            layer_values = np.zeros((len(LAYERS), len(fmt.LAYER_STATS)), np.float32)
            layer_values[:, fmt.LAYER_STATS.index("grad_norm")] = grad_norm(step)
            run.write_step(step, layer_values, np.full(len(fmt.GLOBAL_STATS), 0.5, np.float32),
                           wall_time=1000.0 + step)
            if step % 5 == 0:
                assert run.flush()
                time.sleep(0.35)

    def shown_steps():
        runs = [r for r in plugin_route(base, "runs")["runs"] if r["run"] == "live"]
        if not runs:
            return []
        return plugin_route(base, "matrix", run="live", stat="grad_norm")["first_steps"]

    write_steps(range(1, 11))
    env = viewer_env(server)
    env["PYTHONPATH"] = no_tensorflow_dir(tmp_path)
    proc, base = start_tensorboard(
        [PYTHON, "-m", "tensorboard.main", "--logdir", "s3://%s/runs" % bucket], env,
        tmp_path / "tb.log")
    try:
        wait_until(lambda: shown_steps() == list(range(1, 11)), 60, interval=0.5,
                   what="the first 10 steps")
        files_before = len(writer.files)
        write_steps(range(11, 31))
        assert len(writer.files) > files_before + 2, "the run rolled over while being watched"
        wait_until(lambda: shown_steps() == list(range(1, 31)), 60, interval=0.5,
                   what="the steps of the objects written after TensorBoard started")
    finally:
        stop_process(proc)
        run.close()
