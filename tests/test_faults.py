"""The fault-injection suite (benchmarks/faults.py) with smaller counts: real
PyTorch and Keras training processes killed with SIGKILL at random moments;
a real PyTorch training process through a full disk, an unwritable or
removed logdir and a bucket outage; fuzzed event files and requests through
every reader and route. Seeded and bounded."""

import os
import random
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, REPO_ROOT)
from benchmarks import faults  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def quiet():
    with faults.quiet_logging():  # (levels put back: later tests read these logs)
        yield


def test_kill_9_of_pytorch_and_keras_training_loses_no_flushed_step(tmp_path):
    # A PyTorch loop, then a Keras fit, killed at random moments in one
    # logdir, then a PyTorch run to its end there.
    lines = []
    figures = faults.kill_trials(2, random.Random(0), str(tmp_path), lines.append, keras_every=2)
    text = "\n".join(lines)
    assert figures == (2, 0, 0, 0), text  # trials, lost flushed steps, reader errors, unclean starts
    assert "(torch, killed" in lines[0] and "(keras, killed" in lines[1], text
    assert all(int(re.search(r"flushed steps \d+\.\.(\d+)", line).group(1)) > 0 for line in lines[:2]), text
    # the next run in the same logdir went cleanly, and every step of it reads back
    assert lines[2].startswith("  clean run  2 (torch") and "flushed steps 1..60, readable of this process 60" \
        in lines[2], text


def _mount_or_skip(tmp_path):
    if not faults.can_mount(str(tmp_path)):
        pytest.skip("mounting a tmpfs needs root")


@pytest.mark.parametrize("case", ["full_disk", "unwritable", "removed", "bucket_outage"])
def test_pytorch_training_finishes_with_the_warnings_and_nothing_written_is_lost(tmp_path, case):
    # exit status 0, no traceback, exactly the expected warnings of the
    # logger, every step not lost by design read back whole by every reader,
    # writing resumed after the disk or the bucket came back (see each case)
    if case in ("full_disk", "unwritable"):
        _mount_or_skip(tmp_path)
    if case == "bucket_outage":
        pytest.importorskip("moto.server")
        pytest.importorskip("s3fs")
    lines = []
    ok, reader_errors, missing = getattr(faults, case)(str(tmp_path), lines.append)
    assert ok and reader_errors == 0 and missing == 0, "\n".join(lines)


def test_fuzzed_files_and_requests_never_crash_a_reader_or_answer_500(tmp_path):
    lines = []
    inputs, uncaught = faults.fuzz(str(tmp_path), 40, 400, random.Random(1), lines.append)
    assert inputs == 40 + 4 * 20 + 400
    assert uncaught == 0, "\n".join(lines)


def test_benchmark_prints_its_contract_line(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "benchmarks", "faults.py"), "--kill-trials", "1",
         "--fuzz-files", "2", "--fuzz-requests", "10", "--skip-faults", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"kill_trials=1 lost_flushed_steps=0 reader_errors=0 fuzz_inputs=\d+ uncaught=0", last), \
        result.stdout[-3000:]
