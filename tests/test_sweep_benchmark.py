"""The sweep benchmark runs end to end on a tiny sweep and prints its
contract line (what it measures is not asserted, only that it measures)."""

import os
import re
import sys
import tempfile

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

import sweep  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LAST_LINE = re.compile(r"runs=(\d+) overview_route_ms=(\d+\.\d) overview_draw_ms=(\d+)")


def test_benchmark_prints_its_contract_line(capsys, tmp_path, monkeypatch):
    pytest.importorskip("playwright.sync_api")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the script's logs go
    sweep.main(["--runs", "9", "--layers", "2", "--steps", "20", "--repeats", "2", "--draws", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    match = LAST_LINE.fullmatch(lines[-1])
    assert match, lines[-1]
    assert int(match[1]) == 9 and float(match[2]) > 0 and int(match[3]) > 0
    assert any(line.startswith("overview route: cold") and '"ok"' in line for line in lines)
    # Its logs were written under the temporary folder and removed at the end.
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("th-sweep-")] == []
