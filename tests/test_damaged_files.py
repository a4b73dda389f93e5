"""Damaged event files through every reader: flipped bytes, a bad length and
garbage between records are skipped with one warning naming the file and the
offset, reading resumes at the next valid record, and alerts come from
everything readable (`reader`, `check`, `watch`, `report`); the Training
Health tab shows what TensorBoard's own readers read and never fails.

The files are real event files written by `RunWriter` and damaged on disk.
"""

import glob
import json
import logging
import os
import random
import struct
import subprocess

import numpy as np
import pytest

from conftest import write_sample_run
from test_check_cli import write_stats
from test_detectors import stalled_cnn_stream
from training_health.cli import main as cli_main
from training_health.cli.check import check_run
from training_health.io import reader
from training_health.io.crc32c import record

import test_plugin_support as support
from test_remote_support import wait_until

STEPS = tuple(range(1, 41))
# The record damaged: the layer matrix of step 20 (record 0 is the file's
# header, step 1 has three records with its histograms, later steps two).
DAMAGED_RECORD, DAMAGED_STEP = 40, 20


def event_file(run_dir):
    (path,) = glob.glob(os.path.join(str(run_dir), "*tfevents*"))
    return path


def record_offsets(data):
    """Offsets of every record of an undamaged file (framing: length, its
    checksum, data, its checksum)."""
    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        (length,) = struct.unpack_from("<Q", data, pos)
        pos += 16 + length
    assert pos == len(data)
    return offsets


def flip_data_byte(data, at):
    data[at + 20] ^= 0xFF  # inside the record's data: its data checksum fails
    return data, at


def bad_length(data, at):
    data[at] ^= 0x01  # the length: its checksum fails
    return data, at


def garbage_between(data, at):
    return data[:at] + bytes(random.Random(3).randrange(256) for _ in range(100)) + data[at:], at


DAMAGE = {"flipped_bytes": flip_data_byte, "bad_length": bad_length, "garbage": garbage_between}


def damage_file(path, how, index=DAMAGED_RECORD, *more):
    """Damages record `index` of the undamaged event file at `path` with
    `how`, and more (how, index) pairs; returns the offsets of the damage
    (the first one alone when there is no more)."""
    data = bytearray(open(path, "rb").read())
    offsets = record_offsets(bytes(data))
    places = sorted([(index, how)] + [(i, h) for h, i in more], reverse=True)  # last first: offsets hold
    ats = []
    for i, damage in places:
        data, at = damage(data, offsets[i])
        ats.append(at)
    with open(path, "wb") as f:
        f.write(bytes(data))
    return ats[0] if not more else ats


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if "damaged bytes" in r.getMessage()]


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_reader_skips_the_damage_with_one_warning_and_reads_on(tmp_path, caplog, kind):
    run = write_sample_run(tmp_path / "logs" / "run1", steps=STEPS)
    path = event_file(run.path)
    at = damage_file(path, DAMAGE[kind])
    caplog.set_level(logging.WARNING, "training_health")
    (data,) = reader.read_logdir(tmp_path / "logs")
    assert [s.step for s in data.steps] == list(STEPS)
    for stats in data.steps:
        if kind != "garbage" and stats.step == DAMAGED_STEP:
            assert stats.layers == ()  # its layer matrix was the damaged record
            continue
        np.testing.assert_array_equal(stats.layer_values, run.layer_values[stats.step])
    assert data.alerts == run.alerts[STEPS[-1]]  # logged after the damage, still read
    (warning,) = warnings_of(caplog)
    assert path in warning and "at byte %d of" % at in warning


def test_several_damaged_places_one_warning_each(tmp_path, caplog):
    run = write_sample_run(tmp_path / "r", steps=STEPS)
    path = event_file(run.path)
    damage_file(path, garbage_between, 70, (flip_data_byte, 50), (bad_length, 10))
    caplog.set_level(logging.WARNING, "training_health")
    (data,) = reader.read_logdir(tmp_path / "r")
    assert [s.step for s in data.steps] == list(STEPS)
    assert len(warnings_of(caplog)) == 3


def test_live_reader_resumes_after_garbage_when_the_writer_appends(tmp_path, caplog):
    run = write_sample_run(tmp_path / "r", steps=STEPS)
    path = event_file(run.path)
    data = open(path, "rb").read()
    offsets = record_offsets(data)
    cut = offsets[30]  # the layer matrix of step 15
    # a torn record (its first 20 bytes) left by a failed write, then the
    # writer goes on appending whole records
    with open(path, "wb") as f:
        f.write(data[:cut] + data[offsets[30]:offsets[30] + 20])
    live = reader.RunReader(str(tmp_path / "r"))
    caplog.set_level(logging.WARNING, "training_health")
    first = live.poll()
    assert [s.step for s in first.steps] == list(range(1, 15))
    assert warnings_of(caplog) == []  # could still be a record being written
    with open(path, "ab") as f:
        f.write(data[offsets[32]:])  # step 16 on
    second = live.poll(final=True)
    assert [s.step for s in second.steps] == list(range(16, 41))
    (warning,) = warnings_of(caplog)
    assert "20 damaged bytes at byte %d" % cut in warning


def test_foreign_records_and_values_that_do_not_match_are_skipped(tmp_path, caplog):
    run = write_sample_run(tmp_path / "r", steps=STEPS)
    path = event_file(run.path)
    data = open(path, "rb").read()
    at = record_offsets(data)[20]
    foreign = record(b"\x07not an event proto \xff\xff") + record(b"")
    with open(path, "wb") as f:
        f.write(data[:at] + foreign + data[at:])
    caplog.set_level(logging.WARNING, "training_health")
    (read,) = reader.read_logdir(tmp_path / "r")
    assert [s.step for s in read.steps] == list(STEPS)
    assert any("is not an event" in m for m in (r.getMessage() for r in caplog.records))
    from tensorboard_plugin_training_health import report

    (entry,) = report.snapshot(str(tmp_path / "r"))["runs"]["runs"]  # TensorBoard's reader raises on them
    assert entry["last_step"] == 40


def test_check_replays_alerts_from_everything_readable(tmp_path, python_exe):
    steps = stalled_cnn_stream()
    write_stats(tmp_path / "logs" / "frozen", steps)
    path = event_file(tmp_path / "logs" / "frozen")
    expected = check_run(reader.read_logdir(tmp_path / "logs")[0])
    assert expected
    n = len(record_offsets(open(path, "rb").read()))
    ats = damage_file(path, garbage_between, n - 3, (flip_data_byte, n // 2))
    result = subprocess.run([python_exe, "-m", "training_health.cli", "check", str(tmp_path / "logs"), "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    alerts = json.loads(result.stdout)["runs"][0]["alerts"]
    assert [(a["kind"], a["step"], a["layer"]) for a in alerts] == [
        (a.kind, a.step, a.layer) for a in expected]
    for at in ats:
        assert "at byte %d of %s" % (at, path) in result.stderr
    assert result.stderr.count("damaged bytes") == 2


def test_watch_once_reads_past_the_damage(tmp_path, capsys):
    run = write_sample_run(tmp_path / "logs" / "run1", steps=STEPS)
    damage_file(event_file(run.path), bad_length)
    assert cli_main(["watch", str(tmp_path / "logs"), "--once"]) == 0
    out = capsys.readouterr().out
    assert "run1" in out and "step 40" in out and "error" not in out


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_report_reads_past_the_damage(tmp_path, kind):
    from tensorboard_plugin_training_health import report

    run = write_sample_run(tmp_path / "logs" / "run1", steps=STEPS)
    damage_file(event_file(run.path), DAMAGE[kind])
    data = report.snapshot(str(tmp_path / "logs"))
    (entry,) = data["runs"]["runs"]
    assert entry["last_step"] == 40 and entry["has_alerts"]
    assert data["series?run=run1"]["last_steps"][-1] == 40
    assert len(data["alerts?run=run1"]["alerts"]) == 1
    assert os.path.getsize(event_file(run.path)) > 0  # the original is left as it was


def test_tab_serves_what_tensorboards_python_reader_reads(tmp_path):
    """TensorBoard's Python reader (--load_fast=false) stops reading a file at
    its first damaged record: the tab shows the steps before it, no error."""
    from test_plugin_backend import get_json, make_client

    run = write_sample_run(tmp_path / "logs" / "run1", steps=STEPS)
    damage_file(event_file(run.path), bad_length)
    client, _ = make_client(tmp_path / "logs")
    (entry,) = get_json(client, "/runs")["runs"]
    assert entry["last_step"] == DAMAGED_STEP - 1
    series = get_json(client, "/series?run=run1")
    assert series["last_steps"][-1] == DAMAGED_STEP - 1
    get_json(client, "/matrix?run=run1&stat=grad_norm")


@pytest.mark.slow
def test_tab_on_tensorboards_default_backend(tmp_path):
    """TensorBoard's data server (--load_fast=true) skips a record whose data
    checksum fails and stops a file at a bad length or garbage; the tab shows
    what it read, without error."""
    import urllib.request

    for kind in sorted(DAMAGE):
        run = write_sample_run(tmp_path / "logs" / kind, steps=STEPS)
        damage_file(event_file(run.path), DAMAGE[kind])
    with support.tensorboard_process(tmp_path / "logs", load_fast=True) as base:
        def last_step(kind):
            url = base + "/data/plugin/training_health/series?run=" + kind
            with urllib.request.urlopen(url, timeout=30) as answer:
                assert answer.status == 200
                return json.loads(answer.read())["last_steps"][-1]

        wait_until(lambda: last_step("flipped_bytes") == 40, 60, what="the data server to read")
        assert last_step("bad_length") == DAMAGED_STEP - 1
        assert last_step("garbage") == DAMAGED_STEP - 1


def test_tab_skips_an_alert_record_that_is_not_json(tmp_path):
    from test_plugin_backend import get_json, make_client
    from training_health import format as fmt
    from training_health.io.run_writer import RunWriter

    run = write_sample_run(tmp_path / "logs" / "run1", steps=STEPS)
    writer = RunWriter(str(tmp_path / "logs" / "run1"), run.layers, run.metric_names)
    writer.writer.write(fmt.make_event(fmt.TAG_ALERTS, 41, np.array([b"\xff not json"], dtype=object)))
    writer.writer.write(fmt.make_event(fmt.TAG_ALERTS, 42, np.array(
        [b'{"kind": "stalled", "step": Infinity, "severity": "warning"}'], dtype=object)))
    writer.close()
    client, _ = make_client(tmp_path / "logs")
    alerts = get_json(client, "/alerts?run=run1")["alerts"]
    assert [(a["kind"], a["step"]) for a in alerts] == [("dead_units", 40), ("stalled", 42)]
