"""The reader against real event files written by RunWriter: every step back
with its values, logged alerts, several files per run, truncated and empty
files, unknown versions, incremental polls, URLs through fsspec."""

import glob
import json
import os

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import summary_pb2

from conftest import write_sample_run
from training_health import format as fmt
from training_health.io import reader
from training_health.records import Alert, LayerInfo
from training_health.io.run_writer import RunWriter
from training_health.io.event_writer import EventWriter

pytestmark = pytest.mark.compat

LAYERS = (
    LayerInfo("conv", "Conv2D", "relu", None, 8, True, True),
    LayerInfo("out", "Dense", "softmax", (0.0, 1.0), 3, True, True),
)
N_GLOBAL = len(fmt.GLOBAL_STATS) + 1  # + "accuracy"


def values_for(step):
    """Deterministic layer matrix and global vector of a step."""
    layer = np.arange(len(LAYERS) * len(fmt.LAYER_STATS), dtype=np.float32).reshape(
        len(LAYERS), len(fmt.LAYER_STATS)) + step
    glob = np.arange(N_GLOBAL, dtype=np.float32) * 0.5 + step
    return layer, glob


def write_run(path, steps, alerts=None, close=True):
    writer = RunWriter(str(path), LAYERS, metric_names=("accuracy",))
    for step in steps:
        layer, glob = values_for(step)
        writer.write_step(step, layer, glob, wall_time=1.0 + step)
        for alert in (alerts or {}).get(step, []):
            writer.write_alerts(step, [alert])
    if close:
        writer.close()
    else:
        writer.flush()
    return writer


def event_files(path):
    return sorted(glob.glob(os.path.join(str(path), "*tfevents*")))


def test_every_step_and_value_comes_back(sample_run, tmp_path):
    runs = reader.read_logdir(tmp_path / "logs")
    assert [r.name for r in runs] == ["run1"]
    run = runs[0]
    assert [s.step for s in run.steps] == sample_run.steps
    for stats in run.steps:
        np.testing.assert_array_equal(stats.layer_values, sample_run.layer_values[stats.step])
        names = list(fmt.GLOBAL_STATS) + ["accuracy"]
        assert list(stats.global_values) == names
        np.testing.assert_array_equal(
            np.array(list(stats.global_values.values()), dtype=np.float32),
            sample_run.global_values[stats.step])
        assert stats.layers == sample_run.layers
        assert stats.layer_stats == fmt.LAYER_STATS
    # NaN ("not measured") survives the round trip
    assert np.isnan(run.steps[0].value(1, "grad_norm"))
    assert run.alerts == sample_run.alerts[sample_run.steps[-1]]


def test_thousands_of_steps_are_all_read_not_a_sample(tmp_path):
    write_run(tmp_path / "r", range(0, 3000))
    (run,) = reader.read_logdir(tmp_path / "r")
    assert [s.step for s in run.steps] == list(range(3000))
    assert run.name == "."  # the logdir itself is the run


def test_non_finite_values_are_kept(tmp_path):
    writer = RunWriter(str(tmp_path / "r"), LAYERS, metric_names=("accuracy",))
    layer, glob = values_for(1)
    layer[0, fmt.LAYER_STATS.index("act_mean")] = np.inf
    glob[fmt.GLOBAL_STATS.index("loss")] = np.nan
    writer.write_step(1, layer, glob)
    writer.close()
    (run,) = reader.read_logdir(tmp_path)
    assert np.isinf(run.steps[0].value(0, "act_mean"))
    assert np.isnan(run.steps[0].global_values["loss"])


def test_several_event_files_of_one_run_are_one_sequence(tmp_path):
    run_dir = tmp_path / "logs" / "run"
    write_run(run_dir, [1, 2, 3])
    write_run(run_dir, [4, 5], alerts={5: [Alert("stalled", 5, None, "warning", "m", "h")]})
    assert len(event_files(run_dir)) == 2
    (run,) = reader.read_logdir(tmp_path / "logs")
    assert [s.step for s in run.steps] == [1, 2, 3, 4, 5]
    assert [(a.kind, a.step) for a in run.alerts] == [("stalled", 5)]


def test_runs_are_directories_with_our_data(tmp_path):
    write_run(tmp_path / "logs" / "a", [1])
    write_run(tmp_path / "logs" / "nested" / "b", [1, 2])
    # a directory whose event file holds only someone else's tags is not a run
    other = EventWriter(str(tmp_path / "logs" / "scalars_only"))
    other.write(fmt.make_event("loss", 1, np.float32(0.5)))
    other.close()
    runs = reader.read_logdir(tmp_path / "logs")
    assert [(r.name, len(r.steps)) for r in runs] == [("a", 1), ("nested/b", 2)]
    assert sorted(reader.list_runs(tmp_path / "logs")) == ["a", "nested/b", "scalars_only"]


def test_empty_event_file_and_empty_logdir(tmp_path):
    empty = tmp_path / "logs" / "empty"
    empty.mkdir(parents=True)
    (empty / "events.out.tfevents.1.host.1.0.training_health").write_bytes(b"")
    assert reader.read_logdir(tmp_path / "logs") == []
    (tmp_path / "nothing").mkdir()
    assert reader.read_logdir(tmp_path / "nothing") == []


def test_missing_logdir_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        reader.read_logdir(tmp_path / "does-not-exist")


def test_truncated_last_record_is_left_for_the_next_poll(tmp_path):
    write_run(tmp_path / "r", [1, 2, 3])
    (path,) = event_files(tmp_path / "r")
    data = open(path, "rb").read()
    cut = len(data) - 7  # inside the last record (the global vector of step 3)
    with open(path, "wb") as f:
        f.write(data[:cut])
    run_reader = reader.RunReader(str(tmp_path / "r"))
    first = run_reader.poll()
    assert [s.step for s in first.steps] == [1, 2]  # step 3 waits for its second half
    with open(path, "ab") as f:
        f.write(data[cut:])  # the writer finishes the record
    second = run_reader.poll()
    assert [s.step for s in second.steps] == [3]
    np.testing.assert_array_equal(second.steps[0].layer_values, values_for(3)[0])


def test_truncated_file_read_once_with_final_keeps_the_half_step(tmp_path):
    write_run(tmp_path / "r", [1, 2, 3])
    (path,) = event_files(tmp_path / "r")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:-7])
    (run,) = reader.read_logdir(tmp_path)
    assert [s.step for s in run.steps] == [1, 2, 3]
    assert run.steps[-1].global_values == {}  # its global vector never arrived
    assert run.steps[-1].layer_values.shape == (2, len(fmt.LAYER_STATS))


def test_unknown_format_version_is_a_clear_error(tmp_path):
    content = json.dumps({"format_version": fmt.FORMAT_VERSION + 1, "kind": "layers",
                          "stats": [], "layers": []}).encode()
    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=fmt.PLUGIN_NAME, content=content),
        data_class=summary_pb2.DATA_CLASS_TENSOR)
    writer = EventWriter(str(tmp_path / "future"))
    writer.write(fmt.make_event(fmt.TAG_LAYERS, 1, np.zeros((0, 3), np.float32), metadata))
    writer.close()
    with pytest.raises(fmt.UnknownVersionError, match="unknown Training Health format version 2"):
        reader.read_logdir(tmp_path)


def test_incremental_polls_return_only_new_steps_and_alerts(tmp_path):
    writer = RunWriter(str(tmp_path / "live"), LAYERS, metric_names=("accuracy",))
    run_reader = reader.RunReader(str(tmp_path / "live"), name="live")
    assert run_reader.poll().steps == [] and not run_reader.has_data
    for step in (1, 2):
        writer.write_step(step, *values_for(step))
    writer.flush()
    update = run_reader.poll()
    assert [s.step for s in update.steps] == [1, 2]
    assert sorted(update.wall_times) == [1, 2] and all(t > 1e9 for t in update.wall_times.values())
    assert run_reader.poll().steps == []  # nothing new
    alert = Alert("dead_units", 3, "conv", "warning", "m", "h")
    writer.write_step(3, *values_for(3))
    writer.write_alerts(3, [alert])
    writer.flush()
    update = run_reader.poll()
    assert [s.step for s in update.steps] == [3] and update.alerts == [alert]
    assert run_reader.has_data and run_reader.layers == LAYERS
    assert run_reader.metric_names == ("accuracy",)
    writer.close()


def test_records_match_tensorboards_own_loader(sample_run):
    (path,) = event_files(sample_run.path)
    data = open(path, "rb").read()
    ours, consumed, damage = reader.split_records(data, path)
    assert consumed == len(data) and damage == []
    theirs = list(event_file_loader.RawEventFileLoader(path).Load())
    assert ours == theirs


def test_url_logdir_through_fsspec(tmp_path):
    pytest.importorskip("fsspec")
    url = "memory://reader-test/logs"
    write_run(url + "/run1", [1, 2, 3])
    runs = reader.read_logdir(url)
    assert [(r.name, [s.step for s in r.steps]) for r in runs] == [("run1", [1, 2, 3])]
    np.testing.assert_array_equal(runs[0].steps[1].layer_values, values_for(2)[0])


def test_sample_run_fixture_through_conftest_writer(tmp_path):
    # the shared fixture's writer, with other steps: histograms are skipped,
    # layers and global values pair up by step
    written = write_sample_run(tmp_path / "logs" / "x", steps=(10, 20, 30))
    (run,) = reader.read_logdir(tmp_path / "logs")
    assert [s.step for s in run.steps] == [10, 20, 30]
    np.testing.assert_array_equal(run.steps[2].layer_values, written.layer_values[30])
