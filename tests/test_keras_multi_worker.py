"""HealthCallback under MultiWorkerMirroredStrategy: two real worker
processes on 127.0.0.1 (TF_CONFIG, CPU, tests/thtest_keras_mwms.py), both
given the same logdir. The chief alone writes and raises alerts, and what it
writes is the statistics of the whole global step, equal to one process
training on the whole batch; a worker that dies mid-run leaves the chief's
data up to then intact and readable, and the chief ends with an error
instead of waiting for it."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from conftest import REPO_ROOT  # noqa: E402
from training_health import format as fmt  # noqa: E402
from training_health.io import reader  # noqa: E402

import thtest_events  # noqa: E402
import thtest_keras_mwms as mwms  # noqa: E402

SCRIPT = os.path.join(REPO_ROOT, "tests", "thtest_keras_mwms.py")


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run_workers(logdir, mode="fit", die_at=None, deadline_s=240):
    """Runs the two workers to their end (killed after `deadline_s`);
    returns [(process, output, the JSON line it printed or None)]."""
    ports = ",".join(map(str, free_ports(mwms.WORKERS)))
    extra = [] if die_at is None else [str(die_at)]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    procs = [subprocess.Popen([sys.executable, SCRIPT, str(i), ports, str(logdir), mode] + extra,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for i in range(mwms.WORKERS)]
    results = []
    for p in procs:
        try:
            out = p.communicate(timeout=deadline_s)[0]
        except subprocess.TimeoutExpired:
            p.kill()
            out = p.communicate()[0] + "\n[killed by the test after %d s]" % deadline_s
        lines = [l for l in out.splitlines() if l.startswith('{"worker"')]
        results.append((p, out, json.loads(lines[-1]) if lines else None))
    return results


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference run: one process, the whole global batch per step."""
    logdir = tmp_path_factory.mktemp("single") / "run"
    mwms.train_single(str(logdir))
    (run,) = reader.read_logdir(str(logdir))
    return run, thtest_events.read_run(str(logdir))


def assert_same_steps(got, want, global_names=list(fmt.GLOBAL_STATS) + ["accuracy"]):
    """got, want: lists of StepStats, the same steps."""
    assert [s.step for s in got] == [s.step for s in want]
    assert got[0].layers == want[0].layers  # names, units, which outputs were captured
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.layer_values, w.layer_values, rtol=2e-4, atol=1e-6,
                                   equal_nan=True, err_msg="step %d" % g.step)
        for k in global_names:
            np.testing.assert_allclose(g.global_values[k], w.global_values[k], rtol=2e-4,
                                       atol=1e-6, err_msg="%s at step %d" % (k, g.step))


def test_two_workers_write_the_statistics_of_the_whole_step(tmp_path, single):
    logdir = tmp_path / "run"  # the same path for both workers, as users write it
    (chief, chief_out, chief_said), (other, other_out, other_said) = run_workers(logdir)
    assert [chief.returncode, other.returncode] == [0, 0], (chief_out[-3000:], other_out[-3000:])
    assert chief_said == dict(worker=0, chief=True, writes=True, alerts=1, on_alert=1)
    assert other_said == dict(worker=1, chief=False, writes=False, alerts=0, on_alert=0)
    assert "dead_units" in chief_out and "dead_units" not in other_out  # logged once
    # One event file, the chief's (the writer names its files with the process id).
    (name,) = os.listdir(logdir)
    assert ".%d." % chief.pid in name, name

    want, want_events = single
    (run,) = reader.read_logdir(str(logdir))
    assert [s.step for s in run.steps] == [s.step for s in want.steps] == list(range(mwms.STEPS))
    assert_same_steps(run.steps, want.steps)
    # Activations are those of the whole global batch (activation_examples=None):
    # every worker's share, not the chief's alone.
    act = fmt.LAYER_STATS.index("act_mean")
    assert np.isfinite(run.steps[-1].layer_values[:, act]).all()
    assert [(a.kind, a.step, a.layer) for a in run.alerts] == \
        [(a.kind, a.step, a.layer) for a in want.alerts] == [("dead_units", 1, "dead")]
    # Gradient and activation histograms too (every step here).
    hist = thtest_events.read_run(str(logdir))[fmt.TAG_HISTOGRAMS]
    want_hist = want_events[fmt.TAG_HISTOGRAMS]
    assert [s for s, _, _ in hist] == [s for s, _, _ in want_hist] == list(range(mwms.STEPS))
    for (step, got, _), (_, expected, _) in zip(hist, want_hist):
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-5, err_msg="step %d" % step)


def test_a_worker_that_dies_leaves_the_chiefs_data_intact(tmp_path, single, python_exe):
    logdir = tmp_path / "run"
    (chief, chief_out, chief_said), (other, other_out, _) = run_workers(logdir, die_at=1,
                                                                        deadline_s=120)
    assert other.returncode == 3 and "worker 1 exits at batch 1" in other_out, other_out[-3000:]
    # The chief's next collective fails at once (the dead peer's connection
    # is reset; no collective timeout is set): fit raises UnavailableError
    # and the chief exits on its own, having written what it had.
    assert "killed by the test" not in chief_out
    assert chief.returncode == 1 and chief_said is None, chief_out[-3000:]
    assert "UnavailableError" in chief_out, chief_out[-3000:]

    (run,) = reader.read_logdir(str(logdir))
    assert [s.step for s in run.steps] == [0, 1]  # the steps both workers finished
    want, _ = single
    assert_same_steps(run.steps, want.steps[:2])
    assert [(a.kind, a.step, a.layer) for a in run.alerts] == [("dead_units", 1, "dead")]
    check = subprocess.run([python_exe, "-m", "training_health.cli", "check", str(logdir), "--json"],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 1, check.stderr  # 1: the run has an alert; no damage (2)
    (result,) = json.loads(check.stdout)["runs"]
    assert [(a["kind"], a["step"]) for a in result["alerts"]] == [("dead_units", 1)]


def test_custom_loop_two_workers_write_the_statistics_of_the_whole_step(tmp_path, single):
    """training_health.tf.HealthMonitor in a custom loop (which needs no
    Keras workaround): the same rows as the single-process `fit`."""
    logdir = tmp_path / "run"
    (chief, chief_out, chief_said), (other, other_out, other_said) = run_workers(logdir, "loop")
    assert [chief.returncode, other.returncode] == [0, 0], (chief_out[-3000:], other_out[-3000:])
    assert chief_said == dict(worker=0, chief=True, writes=True, alerts=1, on_alert=1)
    assert other_said == dict(worker=1, chief=False, writes=False, alerts=0, on_alert=0)
    (name,) = os.listdir(logdir)
    assert ".%d." % chief.pid in name, name
    want, _ = single
    (run,) = reader.read_logdir(str(logdir))
    assert_same_steps(run.steps, want.steps, global_names=fmt.GLOBAL_STATS)
    assert [(a.kind, a.step, a.layer) for a in run.alerts] == [("dead_units", 1, "dead")]
