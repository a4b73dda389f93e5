"""The long-run benchmark runs end to end on a small run and prints its
contract line (what it measures is not asserted, only that it measures)."""

import os
import re
import sys
import tempfile

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

import long_run  # noqa: E402

pytestmark = pytest.mark.slow

LAST_LINE = re.compile(r"steps=(\d+) layers=(\d+) bytes=(\d+) matrix_route_ms=(\d+\.\d) check_s=(\d+\.\d)")


def test_benchmark_prints_its_contract_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the script's logs go
    long_run.main(["--steps", "3000", "--layers", "3", "--full-steps", "500", "--repeats", "2",
                   "--history-after", "1000", "--history-block", "20"])
    lines = capsys.readouterr().out.strip().splitlines()
    match = LAST_LINE.fullmatch(lines[-1])
    assert match, lines[-1]
    assert (int(match[1]), int(match[2])) == (3000, 3)
    assert int(match[3]) > 0 and float(match[4]) > 0 and float(match[5]) > 0
    matrix = [line for line in lines if line.startswith("matrix route:")]
    assert matrix and "covering steps 0..2999" in matrix[0], lines
    # The simulated alert episodes are found; the summarized stretch is said.
    assert any(line.startswith("training-health check:") and "exit status 1" in line
               for line in lines), lines
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("th-long")] == []
