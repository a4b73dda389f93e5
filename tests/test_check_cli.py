"""`training-health check` in a subprocess, on real event files: exit codes,
the exact JSON shape, replayed and logged alerts deduplicated, human tables,
errors on stderr, no TensorFlow import."""

import json
import subprocess

import numpy as np
import pytest

from test_detectors import stalled_cnn_stream, stream
from training_health import format as fmt
from training_health.detectors import DetectorSuite
from training_health.records import Alert
from training_health.io.run_writer import RunWriter

pytestmark = pytest.mark.compat

ALERT_KEYS = ["kind", "step", "layer", "severity", "message", "hint", "incident", "caused_by"]


def write_stats(path, steps, logged_alerts=()):
    """Writes StepStats (from test_detectors' streams) as a real run."""
    first = steps[0]
    names = list(first.global_values)
    writer = RunWriter(str(path), first.layers, metric_names=names[len(fmt.GLOBAL_STATS):])
    by_step = {}
    for alert in logged_alerts:
        by_step.setdefault(alert.step, []).append(alert)
    for s in steps:
        writer.write_step(s.step, s.layer_values,
                          np.array([s.global_values[n] for n in names], dtype=np.float32))
        writer.write_alerts(s.step, by_step.get(s.step, []))
    writer.close()


def check(python, *args):
    return subprocess.run([python, "-m", "training_health.cli", "check", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_healthy_logdir_exits_0(python_exe, tmp_path):
    write_stats(tmp_path / "logs" / "healthy", stream(300))
    result = check(python_exe, tmp_path / "logs")
    assert result.returncode == 0, result.stderr
    assert "healthy: OK (300 steps, no alerts)" in result.stdout
    as_json = check(python_exe, tmp_path / "logs", "--json")
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout) == {"runs": [{"run": "healthy", "alerts": []}]}


def test_buggy_run_exits_1_with_exact_json(python_exe, tmp_path):
    steps = stalled_cnn_stream()
    write_stats(tmp_path / "logs" / "frozen", steps)
    write_stats(tmp_path / "logs" / "healthy", stream(300))
    result = check(python_exe, tmp_path / "logs", "--json")
    assert result.returncode == 1, result.stderr
    body = json.loads(result.stdout)
    assert list(body) == ["runs"]
    assert [r["run"] for r in body["runs"]] == ["frozen", "healthy"]
    for run in body["runs"]:
        assert list(run) == ["run", "alerts"]
        for alert in run["alerts"]:
            assert list(alert) == ALERT_KEYS
            assert isinstance(alert["step"], int)
            assert alert["layer"] is None or isinstance(alert["layer"], str)
            assert alert["severity"] in ("warning", "critical")
            assert isinstance(alert["incident"], int)
            assert alert["caused_by"] is None or isinstance(alert["caused_by"], str)
    stalled = body["runs"][0]["alerts"]
    # one incident: the dead conv layer, the constant output and the stall follow from it
    root = "dead_units@%d/conv" % stalled[0]["step"]
    assert [(a["kind"], a["incident"], a["caused_by"]) for a in stalled] == [
        ("dead_units", 1, None), ("saturation", 1, root), ("stalled", 1, root)]
    # the same alerts as replaying the detectors in-process over the same steps
    expected = [a for a in DetectorSuite().replay(steps) if not a.cleared]
    assert sorted((a["kind"], a["step"], a["layer"]) for a in stalled) == sorted(
        (a.kind, a.step, a.layer) for a in expected)
    stall = [a for a in stalled if a["kind"] == "stalled"][0]
    assert "inputs range 0..255" in stall["hint"]
    assert body["runs"][1]["alerts"] == []


def test_logged_alerts_are_listed_and_duplicates_merged(python_exe, tmp_path):
    steps = stalled_cnn_stream()
    replayed = [a for a in DetectorSuite().replay(steps) if not a.cleared]
    online_copy = replayed[0]  # the online detectors logged the same finding
    extra = Alert("oscillating_loss", 150, None, "warning", "logged by a custom detector", "h")
    cleared = Alert("stalled", 160, None, "warning", "closed", "", cleared=True)
    write_stats(tmp_path / "run", steps, [online_copy, extra, cleared])
    result = check(python_exe, tmp_path / "run", "--json")
    assert result.returncode == 1
    alerts = json.loads(result.stdout)["runs"][0]["alerts"]
    keys = [(a["kind"], a["step"], a["layer"]) for a in alerts]
    assert len(keys) == len(set(keys)) == len(replayed) + 1  # one copy each, no cleared record
    assert ("oscillating_loss", 150, None) in keys
    assert [a["step"] for a in alerts] == sorted(a["step"] for a in alerts)


def test_human_output_is_a_table_per_run(python_exe, tmp_path):
    write_stats(tmp_path / "logs" / "frozen", stalled_cnn_stream())
    result = check(python_exe, tmp_path / "logs")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("frozen: 3 alerts in 1 incident (200 steps)")
    assert lines[1].split() == ["STEP", "SEVERITY", "KIND", "LAYER"]
    # the incident's first alert with its message and hint, then one line per consequence
    assert lines[2].split()[1:4] == ["critical", "dead_units", "conv"]
    assert lines[4].strip().startswith("hint: ")
    assert lines[5].strip().startswith("then step 58 critical saturation in out: output layer out")
    assert lines[6].strip().startswith("then step 59 critical stalled: loss ")
    assert len(lines) == 7 and sum("hint: " in line for line in lines) == 1


def test_missing_logdir_exits_2_with_message(python_exe, tmp_path):
    result = check(python_exe, tmp_path / "nope")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "no such log directory" in result.stderr and "nope" in result.stderr


def test_logdir_without_health_data_exits_2(python_exe, tmp_path):
    (tmp_path / "empty").mkdir()
    result = check(python_exe, tmp_path / "empty")
    assert result.returncode == 2
    assert "no Training Health data" in result.stderr


def test_unreadable_data_exits_2(python_exe, tmp_path):
    # Data of a newer format version (damaged bytes are skipped instead:
    # test_damaged_files.py).
    steps = stream(20)
    names = list(steps[0].global_values)
    writer = RunWriter(str(tmp_path / "run"), steps[0].layers, metric_names=names[len(fmt.GLOBAL_STATS):])
    metadata = fmt.layers_metadata(steps[0].layers)
    content = json.loads(metadata.plugin_data.content)
    content["format_version"] = fmt.FORMAT_VERSION + 1
    metadata.plugin_data.content = json.dumps(content).encode()
    writer.writer.describe(fmt.TAG_LAYERS, metadata)
    writer.write_step(0, steps[0].layer_values,
                      np.array([steps[0].global_values[n] for n in names], dtype=np.float32))
    writer.close()
    result = check(python_exe, tmp_path / "run")
    assert result.returncode == 2
    assert "upgrade training-health" in result.stderr


def test_check_does_not_import_tensorflow(python_exe, tmp_path):
    write_stats(tmp_path / "run", stalled_cnn_stream())
    code = (
        "import sys\n"
        "sys.modules['tensorflow'] = None  # importing it now raises ImportError\n"
        "from training_health import cli\n"
        "rc = cli.main(['check', sys.argv[1], '--json'])\n"
        "assert 'keras' not in sys.modules\n"
        "sys.exit(rc)\n"
    )
    result = subprocess.run([python_exe, "-c", code, str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["runs"][0]["alerts"]
