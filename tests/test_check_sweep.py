"""`training-health check` on a sweep (several runs): one summary line per
run first, worst first (status, steps, alerts, worst alert), then the
per-run tables; a single run prints no summary."""

from test_check_cli import check, write_stats
from test_detectors import stalled_cnn_stream, stream
from training_health.records import Alert


def test_sweep_prints_one_line_per_run_worst_first(python_exe, tmp_path):
    logs = tmp_path / "logs"
    write_stats(logs / "a_healthy", stream(300))
    write_stats(logs / "b_stalled", stalled_cnn_stream())
    warned = Alert("oscillating_loss", 150, None, "warning", "the loss oscillates", "lower it")
    write_stats(logs / "c_wobbly", stream(300), [warned])
    result = check(python_exe, logs)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "3 runs: 1 critical, 1 warning, 1 OK"
    assert lines[1].split() == ["STATUS", "RUN", "STEPS", "ALERTS", "WORST", "ALERT"]
    critical, warning, ok = (line.split() for line in lines[2:5])
    assert critical[:4] == ["CRITICAL", "b_stalled", "200", "3"]
    assert critical[4] == "step" and critical[6:] == ["dead_units", "in", "conv"]
    assert warning == ["WARNING", "c_wobbly", "300", "1", "step", "150", "oscillating_loss"]
    assert ok == ["OK", "a_healthy", "300", "0", "-"]
    assert lines[5] == ""
    # then the details, run by run in name order
    assert lines[6] == "a_healthy: OK (300 steps, no alerts)"
    assert lines[7].startswith("b_stalled: 3 alerts")
    assert any(line.startswith("c_wobbly: 1 alert") for line in lines[8:])


def test_one_run_has_no_summary(python_exe, tmp_path):
    write_stats(tmp_path / "logs" / "healthy", stream(300))
    result = check(python_exe, tmp_path / "logs")
    assert result.stdout.splitlines() == ["healthy: OK (300 steps, no alerts)"]
