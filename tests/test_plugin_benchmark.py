"""The latency benchmark script runs and reports what it measured (tiny run)."""

import os
import sys

from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

import plugin_latency  # noqa: E402


def test_benchmark_reports_every_route(tmp_path, capsys):
    report = plugin_latency.main(["--layers", "4", "--steps", "300", "--repeats", "3",
                                  "--server", "inprocess", "--logdir", str(tmp_path)])
    assert report["layers"] == 4 and report["steps"] == 300 and report["write_s"] > 0
    timings = report["inprocess"]
    for route in ("matrix", "series", "layer"):
        assert 0 < timings[route]["warm_median_s"] <= timings[route]["warm_p95_s"]
        assert timings[route]["bytes"] > 100
    assert '"inprocess"' in capsys.readouterr().out
    # A second call reuses the logs instead of writing them again.
    again = plugin_latency.main(["--layers", "4", "--steps", "300", "--repeats", "1",
                                 "--server", "inprocess", "--logdir", str(tmp_path)])
    assert "write_s" not in again
