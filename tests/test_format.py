"""The on-disk contract, checked on real event files read back with
TensorBoard's own readers (event file loader, data provider) and with the
pandas snippet of docs/format.md."""

import glob
import json
import os
import re

import numpy as np
import pytest
from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard import context as tb_context
from tensorboard.compat.proto import summary_pb2, types_pb2
from tensorboard.util import tensor_util

from training_health import format as fmt
from training_health.records import Alert, LayerInfo
from training_health.io.run_writer import RunWriter

from conftest import REPO_ROOT, sample_layers

pytestmark = pytest.mark.compat

EXPECTED_SHAPES = {
    fmt.TAG_LAYERS: lambda run: (len(run.layers), len(fmt.LAYER_STATS)),
    fmt.TAG_GLOBAL: lambda run: (len(fmt.GLOBAL_STATS) + len(run.metric_names),),
    fmt.TAG_HISTOGRAMS: lambda run: (len(run.layers), len(fmt.HIST_SERIES), fmt.HIST_ROW),
    fmt.TAG_ALERTS: lambda run: (1,),
    fmt.TAG_EPOCHS: lambda run: (1,),
}


def _event_files(run_dir):
    files = sorted(glob.glob(os.path.join(str(run_dir), "events.out.tfevents.*")))
    assert files, "no event file in %s" % run_dir
    return files


def _values_by_tag(run_dir):
    """tag -> list of (step, Summary.Value) in file order, via EventFileLoader."""
    out = {}
    for path in _event_files(run_dir):
        for event in event_file_loader.EventFileLoader(path).Load():
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value))
    return out


def test_event_file_tags_dtypes_shapes_and_metadata(sample_run):
    by_tag = _values_by_tag(sample_run.path)
    # A run shorter than history_after writes every tag but the layer history.
    assert set(by_tag) == set(fmt.TAGS) - {fmt.TAG_LAYER_HISTORY}
    for tag, items in by_tag.items():
        first = items[0][1]
        assert first.metadata.plugin_data.plugin_name == fmt.PLUGIN_NAME
        assert first.metadata.data_class == summary_pb2.DATA_CLASS_TENSOR
        # metadata only on a tag's first value
        assert all(not v.HasField("metadata") for _, v in items[1:]), tag
        string = tag in (fmt.TAG_ALERTS, fmt.TAG_EPOCHS)
        expected_dtype = types_pb2.DT_STRING if string else types_pb2.DT_FLOAT
        for _, value in items:
            assert value.WhichOneof("value") == "tensor", tag
            assert value.tensor.dtype == expected_dtype, tag
            array = tensor_util.make_ndarray(value.tensor)
            assert array.shape == EXPECTED_SHAPES[tag](sample_run), tag


def test_values_round_trip_exactly_nan_included(sample_run):
    by_tag = _values_by_tag(sample_run.path)
    layer_items = by_tag[fmt.TAG_LAYERS]
    assert [s for s, _ in layer_items] == sample_run.steps
    for step, value in layer_items:
        got = tensor_util.make_ndarray(value.tensor)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, sample_run.layer_values[step])  # NaN == NaN here
    assert np.isnan(got[1, fmt.LAYER_STATS.index("grad_norm")])
    assert np.isnan(got[3, fmt.LAYER_STATS.index("act_mean")])
    assert [s for s, _ in by_tag[fmt.TAG_GLOBAL]] == sample_run.steps
    for step, value in by_tag[fmt.TAG_GLOBAL]:
        np.testing.assert_array_equal(tensor_util.make_ndarray(value.tensor), sample_run.global_values[step])
    assert [s for s, _ in by_tag[fmt.TAG_HISTOGRAMS]] == sorted(sample_run.histograms)
    for step, value in by_tag[fmt.TAG_HISTOGRAMS]:
        np.testing.assert_array_equal(tensor_util.make_ndarray(value.tensor), sample_run.histograms[step])
    (step, value), = by_tag[fmt.TAG_ALERTS]
    alerts = [Alert.from_json(d) for d in fmt.decode_alerts(tensor_util.make_ndarray(value.tensor))]
    assert alerts == sample_run.alerts[step]
    epochs = [(s, fmt.decode_epoch(tensor_util.make_ndarray(v.tensor))) for s, v in by_tag[fmt.TAG_EPOCHS]]
    assert [(s, e) for s, (e, _) in epochs] == [(e.step, e.epoch) for e in sample_run.epochs]
    for (_, (_, metrics)), written in zip(epochs, sample_run.epochs):
        np.testing.assert_equal(metrics, written.metrics)  # NaN == NaN, Inf kept
    assert np.isnan(epochs[-1][1][1]["val_loss"]) and epochs[-1][1][1]["val_accuracy"] == np.inf
    # plain JSON (no NaN/Infinity tokens) that any JSON parser reads
    text = tensor_util.make_ndarray(by_tag[fmt.TAG_EPOCHS][-1][1].tensor)[0].decode()
    assert json.loads(text, parse_constant=lambda c: pytest.fail("non-standard JSON %s" % c))


def test_decode_epoch_rejects_what_is_not_one_epoch():
    assert fmt.decode_epoch(np.array([fmt.encode_epoch(3, {"val_loss": -np.inf})], dtype=object)) == (
        3, {"val_loss": -np.inf})
    for bad in ([b'{"epoch": 1}'], [b'{"epoch": "1", "metrics": {}}'], [b'{"epoch": 1, "metrics": {"a": "x"}}'],
                [b"not json"], [b"{}", b"{}"], np.zeros(1, np.float32)):
        with pytest.raises(fmt.FormatError):
            fmt.decode_epoch(np.array(bad, dtype=object))


def test_metadata_parses_back_to_what_was_written(sample_run):
    by_tag = _values_by_tag(sample_run.path)
    parsed = {tag: fmt.parse_metadata(items[0][1].metadata.plugin_data.content) for tag, items in by_tag.items()}
    assert {tag: body["kind"] for tag, body in parsed.items()} == {
        fmt.TAG_LAYERS: "layers",
        fmt.TAG_GLOBAL: "global",
        fmt.TAG_HISTOGRAMS: "histograms",
        fmt.TAG_ALERTS: "alerts",
        fmt.TAG_EPOCHS: "epochs",
    }
    assert all(body["format_version"] == fmt.FORMAT_VERSION for body in parsed.values())
    layers = parsed[fmt.TAG_LAYERS]
    assert layers["stats"] == list(fmt.LAYER_STATS)
    assert tuple(layers["layers"]) == sample_run.layers
    assert all(isinstance(x, LayerInfo) for x in layers["layers"])
    assert layers["layers"][2].bounds == (0.0, 1.0)
    assert parsed[fmt.TAG_GLOBAL]["stats"] == list(fmt.GLOBAL_STATS) + list(sample_run.metric_names)
    hist = parsed[fmt.TAG_HISTOGRAMS]
    assert hist["layers"] == [layer.name for layer in sample_run.layers]
    assert hist["series"] == list(fmt.HIST_SERIES)
    assert hist["bins"] == fmt.HIST_BINS
    assert tuple(hist["grad_log10_range"]) == fmt.GRAD_LOG10_RANGE


def test_data_provider_lists_and_reads_every_step(sample_run, tmp_path):
    logdir = str(tmp_path / "logs")
    mux = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance={fmt.PLUGIN_NAME: 0})
    mux.AddRunsFromDirectory(logdir)
    mux.Reload()
    provider = tb_data_provider.MultiplexerDataProvider(mux, logdir)
    ctx = tb_context.RequestContext()
    listing = provider.list_tensors(ctx, experiment_id="", plugin_name=fmt.PLUGIN_NAME)
    assert set(listing) == {"run1"}
    assert set(listing["run1"]) == set(fmt.TAGS) - {fmt.TAG_LAYER_HISTORY}
    for tag, series in listing["run1"].items():
        assert fmt.parse_metadata(series.plugin_content)["format_version"] == fmt.FORMAT_VERSION
    assert listing["run1"][fmt.TAG_LAYERS].max_step == sample_run.steps[-1]
    data = provider.read_tensors(ctx, experiment_id="", plugin_name=fmt.PLUGIN_NAME, downsample=10000)
    layer_data = data["run1"][fmt.TAG_LAYERS]
    assert [d.step for d in layer_data] == sample_run.steps
    for datum in layer_data:
        assert datum.numpy.dtype == np.float32
        np.testing.assert_array_equal(datum.numpy, sample_run.layer_values[datum.step])
        assert datum.wall_time == 1000.0 + datum.step
    # nothing of ours lands in the scalars plugin (no simple_value)
    assert provider.list_scalars(ctx, experiment_id="", plugin_name="scalars") == {}


def test_float64_input_is_stored_as_float32():
    proto = fmt.tensor_value(np.array([1.0, 2.5], dtype=np.float64))
    assert proto.dtype == types_pb2.DT_FLOAT
    event = fmt.make_event(fmt.TAG_GLOBAL, 3, np.arange(4, dtype=np.float64))
    assert event.summary.value[0].tensor.dtype == types_pb2.DT_FLOAT
    assert event.step == 3


@pytest.mark.parametrize("value", [
    np.float32(3.5), 2.0, np.zeros((0,)), np.arange(84, dtype=np.float64).reshape(6, 14),
    np.array([[1, 2]], np.int64), np.arange(24, dtype=np.float32).reshape(2, 4, 3)[:, ::2],
    np.array([np.nan, np.inf, -0.0], np.float32), np.array([b"{}", b"[]"], dtype=object),
])
def test_tensor_value_is_what_tensorboard_would_write(value):
    # the direct float32 path must give exactly the bytes of TensorBoard's own builder
    array = np.asarray(value)
    expected = tensor_util.make_tensor_proto(
        array.astype(np.float32) if array.dtype.kind in "fiub" else array)
    assert fmt.tensor_value(value).SerializeToString() == expected.SerializeToString()


def _content(body):
    return json.dumps(body).encode("utf-8")


@pytest.mark.parametrize("version", [fmt.FORMAT_VERSION + 1, 99])
def test_newer_format_version_asks_to_upgrade(version):
    with pytest.raises(fmt.FormatError, match="upgrade training-health") as info:
        fmt.parse_metadata(_content({"format_version": version, "kind": "layers"}))
    assert str(version) in str(info.value)


@pytest.mark.parametrize("version", [0, -1, "1", 1.5, None])
def test_invalid_format_version_is_rejected(version):
    with pytest.raises(fmt.FormatError, match="format version"):
        fmt.parse_metadata(_content({"format_version": version, "kind": "layers"}))


@pytest.mark.parametrize("content", [b"not json", b"\xff\xfe", b"{", b""])
def test_non_json_content_is_rejected(content):
    with pytest.raises(fmt.FormatError, match="not JSON"):
        fmt.parse_metadata(content)


@pytest.mark.parametrize("body", [[1, 2], {"kind": "layers"}, "text"])
def test_json_without_version_is_rejected(body):
    with pytest.raises(fmt.FormatError, match="format_version"):
        fmt.parse_metadata(_content(body))


def test_format_error_is_a_value_error():
    assert issubclass(fmt.FormatError, ValueError)


def test_non_json_alert_is_rejected():
    with pytest.raises(fmt.FormatError, match="alert is not JSON"):
        fmt.decode_alerts(np.array([b"{oops"], dtype=object))


def test_global_names_must_start_with_global_stats():
    with pytest.raises(fmt.FormatError, match="GLOBAL_STATS"):
        fmt.global_metadata(["accuracy"] + list(fmt.GLOBAL_STATS))


def test_run_writer_enforces_increasing_steps(tmp_path):
    layers = sample_layers()
    writer = RunWriter(str(tmp_path / "run"), layers)
    shape = (len(layers), len(fmt.LAYER_STATS))
    glob_values = np.zeros(len(fmt.GLOBAL_STATS))
    writer.write_step(5, np.ones(shape), glob_values)
    for bad in (5, 4):
        with pytest.raises(ValueError, match="steps must only increase; received step %d after 5" % bad):
            writer.write_step(bad, np.full(shape, 2.0), glob_values)
    writer.write_step(6, np.full(shape, 3.0), glob_values)
    with pytest.raises(ValueError, match="layer_values must have shape"):
        writer.write_step(7, np.ones((1, 2)), glob_values)
    with pytest.raises(ValueError, match="global_values must have shape"):
        writer.write_step(7, np.ones(shape), np.zeros(3))
    writer.close()
    by_tag = _values_by_tag(tmp_path / "run")
    steps = [s for s, _ in by_tag[fmt.TAG_LAYERS]]
    assert steps == [5, 6]  # the refused steps wrote nothing
    assert [float(tensor_util.make_ndarray(v.tensor)[0, 0]) for _, v in by_tag[fmt.TAG_LAYERS]] == [1.0, 3.0]


def _doc():
    with open(os.path.join(REPO_ROOT, "docs", "format.md"), encoding="utf-8") as f:
        return f.read()


def _doc_table_names(doc, heading):
    section = doc.split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| (\d+) \| `(\w+)` \|", section, flags=re.M)


def test_doc_column_tables_match_the_code():
    doc = _doc()
    layer_rows = _doc_table_names(doc, "## `training_health/layers`")
    assert [name for _, name in layer_rows] == list(fmt.LAYER_STATS)
    assert [int(i) for i, _ in layer_rows] == list(range(len(fmt.LAYER_STATS)))
    global_rows = _doc_table_names(doc, "## `training_health/global`")
    assert [name for _, name in global_rows] == list(fmt.GLOBAL_STATS)
    for tag in fmt.TAGS:
        assert "`%s`" % tag in doc
    assert "FORMAT_VERSION = %d" % fmt.FORMAT_VERSION in doc
    assert "HIST_ROW = HIST_BINS + 2 = %d" % fmt.HIST_ROW in doc


def test_doc_pandas_snippet_reads_a_real_logdir(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", _doc(), flags=re.S)
    snippet = [b for b in blocks if "training_health.load(" in b]
    assert len(snippet) == 1, "docs/format.md must hold one training_health.load snippet"
    from conftest import write_sample_run

    stalled = write_sample_run(tmp_path / "runs" / "stalled", steps=(2, 4, 7))
    write_sample_run(tmp_path / "runs" / "healthy", steps=(1, 2))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(snippet[0], "docs/format.md", "exec"), namespace)
    assert namespace["data"].runs == ["healthy", "stalled"]
    dead = namespace["dead"]
    assert list(dead.index) == stalled.steps
    for i, layer in enumerate(stalled.layers):
        np.testing.assert_array_equal(
            dead[layer.name].to_numpy(dtype=np.float32),
            [stalled.layer_values[s][i, fmt.LAYER_STATS.index("dead_frac")] for s in stalled.steps])
    loss = namespace["loss"]
    np.testing.assert_array_equal(loss.to_numpy(dtype=np.float32),
                                  [stalled.global_values[s][0] for s in stalled.steps])
    assert list(namespace["open_alerts"].run) == ["healthy", "stalled"]


def test_package_reader_returns_what_was_written(sample_run, tmp_path):
    """The Python route named in docs/format.md."""
    from training_health.io.reader import read_logdir

    (run,) = read_logdir(str(tmp_path / "logs"))
    assert run.name == "run1"
    assert [s.step for s in run.steps] == sample_run.steps
    for stats in run.steps:
        assert tuple(stats.layers) == sample_run.layers
        assert tuple(stats.layer_stats) == fmt.LAYER_STATS
        np.testing.assert_array_equal(stats.layer_values, sample_run.layer_values[stats.step])
        names = list(fmt.GLOBAL_STATS) + list(sample_run.metric_names)
        assert list(stats.global_values) == names
        np.testing.assert_array_equal(
            np.array([stats.global_values[n] for n in names], dtype=np.float32), sample_run.global_values[stats.step]
        )
    assert run.alerts == sample_run.alerts[sample_run.steps[-1]]
