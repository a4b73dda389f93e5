"""A real Keras training run logging to s3:// (a real S3 server on 127.0.0.1), read by the CLI.

The stalled CNN of the seed report (benchmarks/scenarios) trains
with `HealthCallback("s3://bucket/run")`; event files roll over and appear
in the bucket while it trains; afterwards `training-health check
s3://bucket/run --json` finds the stall and `training-health watch --once`
shows the run, both as subprocesses reading the bucket directly.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from training_health.io import reader
from training_health.io import event_writer as writer_module

from test_remote_support import PYTHON, s3, s3_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli():
    exe = shutil.which("training-health")
    return [exe] if exe else [PYTHON, "-m", "training_health.cli"]


def test_stalled_cnn_logs_to_a_bucket_and_check_finds_the_stall(s3, monkeypatch):
    keras = pytest.importorskip("keras")
    from training_health.keras import HealthCallback

    sys.path.insert(0, REPO_ROOT)
    try:
        from benchmarks.scenarios import SCENARIOS
    finally:
        sys.path.remove(REPO_ROOT)
    server, bucket = s3
    # Roll over every second instead of every minute so that a run of a few
    # seconds spans several objects (the constants are the writer's defaults).
    monkeypatch.setattr(writer_module, "REMOTE_ROLL_SECS", 1.0)
    monkeypatch.setattr(writer_module, "REMOTE_FLUSH_SECS", 0.25)

    seen = []

    class ListBucket(keras.callbacks.Callback):
        """Lists the bucket at each epoch end, inside `fit`, after a pause.

        Training this model takes well under a second per epoch once warm;
        the pause (a roll-over interval plus several write cycles, with room
        for a slow, busy machine) stands for the time a real epoch takes.
        """

        def on_epoch_end(self, epoch, logs=None):
            time.sleep(3.0)
            seen.append(len(server.keys(bucket, "run/")))

    scenario = SCENARIOS["stalled_cnn"]
    keras.utils.set_random_seed(0)
    model, x, y, fit_kwargs = scenario.build()
    callback = HealthCallback("s3://%s/run" % bucket, histogram_every=0, flush_every=20)
    model.fit(x, y, callbacks=[callback, ListBucket()], verbose=0, **fit_kwargs)
    callback.close()
    keys = server.keys(bucket, "run/")

    assert seen[0] >= 1, "event files are in the bucket at the end of the first epoch: %s" % seen
    assert seen[0] < seen[1] < seen[2], "new objects keep appearing while training runs: %s" % seen
    assert len(keys) >= 3 and all("tfevents" in k for k in keys)

    env = dict(os.environ)  # S3_ENDPOINT and the dummy credentials of the fixture
    out = subprocess.run(cli() + ["check", "s3://%s/run" % bucket, "--json"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert len(report["runs"]) == 1
    kinds = {a["kind"] for a in report["runs"][0]["alerts"]}
    assert scenario.expected in kinds, kinds

    out = subprocess.run(cli() + ["watch", "s3://%s" % bucket, "--once"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    runs = reader.read_logdir("s3://%s/run" % bucket)
    assert len(runs[0].steps) == 3 * 100, "every batch of the 3 epochs, across all objects"
    last = runs[0].steps[-1].step
    status = [l for l in out.stdout.splitlines() if "steps/s" in l]
    assert len(status) == 1, out.stdout
    assert status[0].split()[1:4] == ["run", "step", str(last)], out.stdout
    assert "hint:" in out.stdout and scenario.expected in out.stdout
