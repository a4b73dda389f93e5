"""The overhead benchmark script runs end to end and prints its contract line
(a tiny run: what it measures is not asserted, only that it measures)."""

import os
import re
import sys
import tempfile

from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

import overhead  # noqa: E402

LAST_LINE = re.compile(r"health_callback_vs_plain=(\d+\.\d\d) keras_tensorboard_vs_plain=(\d+\.\d\d) "
                       r"bytes_per_layer_step=(\d+)")


def test_benchmark_prints_ratios_and_bytes(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the script's logs go
    overhead.main(["--rounds", "1", "--steps", "4", "--instances", "1", "--model", "small"])
    lines = capsys.readouterr().out.strip().splitlines()
    match = LAST_LINE.fullmatch(lines[-1])
    assert match, lines[-1]
    health, keras_tb, size = float(match[1]), float(match[2]), int(match[3])
    assert health > 0 and keras_tb > 0 and size > 0
    # Every variant's time and the per-instance medians were printed too.
    for name in ("plain", "health", "keras_tb"):
        assert any(line.startswith(name) and "ms/step wall" in line for line in lines), name
    assert any(line.startswith("monitored layers: 5, steps logged in timed rounds: 4") for line in lines)
    # Its event files were written under the temporary folder and removed at the end.
    assert list(tmp_path.iterdir()) == []
