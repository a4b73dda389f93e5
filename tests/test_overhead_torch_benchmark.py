"""benchmarks/overhead_torch.py runs end to end on a small setting and prints
its contract line (the timings themselves are the benchmark's business,
never asserted here)."""

import os
import re
import sys
import tempfile

import pytest

pytest.importorskip("torch")

from conftest import REPO_ROOT  # noqa: E402

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

import overhead_torch  # noqa: E402

LAST_LINE = re.compile(r"health_monitor_vs_plain=(\d+\.\d\d) summarywriter_vs_plain=(\d+\.\d\d) "
                       r"bytes_per_layer_step=(\d+)")


def test_benchmark_prints_ratios_and_bytes(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the script's logs go
    overhead_torch.main(["--rounds", "1", "--steps", "2", "--instances", "1", "--batch", "4",
                         "--models", "transformer", "--device", "cpu"])
    lines = capsys.readouterr().out.strip().splitlines()
    match = LAST_LINE.fullmatch(lines[-1])
    assert match, lines[-1]
    assert float(match[1]) > 0 and float(match[2]) > 0 and int(match[3]) > 0
    for name in ("plain", "health", "summarywriter", "itemlogger"):
        assert any(line.strip().startswith(name) and "ms/step" in line for line in lines), name
    assert any("monitored layers: 26" in line for line in lines)
    assert list(tmp_path.iterdir()) == []  # its event files were removed
