"""DistributedDataParallel: two real processes on 127.0.0.1 (gloo); rank 0
writes, and what it writes is the statistics of the whole step, equal to a
single process training on the whole batch (tests/thtest_torch_ddp.py)."""

import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import REPO_ROOT  # noqa: E402
from training_health import format as fmt  # noqa: E402
from training_health.io import reader  # noqa: E402

import thtest_torch_ddp as ddp  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(logdirs, *mode):
    """Both ranks of tests/thtest_torch_ddp.py: (return codes, outputs);
    a process still running after 240 s is killed (a hang)."""
    port = free_port()
    script = os.path.join(REPO_ROOT, "tests", "thtest_torch_ddp.py")
    procs = [subprocess.Popen([sys.executable, script, str(rank), "2", str(port), logdirs[rank],
                               *mode],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=240)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        outs = [p.communicate()[0] for p in procs]
    return [p.returncode for p in procs], outs


def test_two_processes_write_the_statistics_of_the_whole_step(tmp_path):
    logdirs = [str(tmp_path / "ddp"), str(tmp_path / "rank1_must_stay_empty")]
    codes, outs = run_two_processes(logdirs)
    assert codes == [0, 0], outs
    assert "rank 0 done, writes: True" in outs[0] and "rank 1 done, writes: False" in outs[1]
    assert not os.path.exists(logdirs[1])  # only rank 0 writes

    ddp.train(ddp.make_model(), str(tmp_path / "single"))  # the whole batch in one process
    (run,) = reader.read_logdir(logdirs[0])
    (single,) = reader.read_logdir(str(tmp_path / "single"))
    assert [s.step for s in run.steps] == [s.step for s in single.steps] == [1, 2, 3]
    assert [l.name for l in run.steps[0].layers] == [l.name for l in single.steps[0].layers]
    for got, want in zip(run.steps, single.steps):
        np.testing.assert_allclose(got.layer_values, want.layer_values, rtol=2e-4, atol=1e-6,
                                   equal_nan=True, err_msg="step %d" % got.step)
        for k in fmt.GLOBAL_STATS:
            np.testing.assert_allclose(got.global_values[k], want.global_values[k], rtol=2e-4,
                                       atol=1e-6, err_msg=k)
    # The check compares something: activations of the whole batch, not of one share.
    act = fmt.LAYER_STATS.index("act_mean")
    assert np.isfinite(run.steps[-1].layer_values[:, act]).all()


def test_a_stop_on_alert_stops_every_process_at_the_same_step(tmp_path):
    """Rank 0 alone raises the alert (only it sees the NaN inputs... and
    only it runs the detectors); every process leaves the loop at the same
    step, the next agreement (every flush_every = 2 steps), and none waits
    for the others in a collective."""
    logdirs = [str(tmp_path / "ddp"), str(tmp_path / "rank1")]
    codes, outs = run_two_processes(logdirs, "stop")
    assert codes == [0, 0], outs
    steps = [re.search(r"rank %d left the loop after step (\d+)" % r, out) for r, out in
             enumerate(outs)]
    assert all(steps), outs
    left = {int(m[1]) for m in steps}
    assert len(left) == 1, outs
    (step,) = left
    assert ddp.NAN_STEP < step < ddp.STOP_STEPS and step % 2 == 0, outs
    assert "nan_inf at step %d" % ddp.NAN_STEP in outs[0], outs[0]
    (run,) = reader.read_logdir(logdirs[0])
    assert [s.step for s in run.steps] == list(range(1, step + 1))
