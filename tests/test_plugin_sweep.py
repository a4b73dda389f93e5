"""The overview and compare routes on a small sweep of real runs (written by
RunWriter, served by TensorBoard's WSGI app over its data provider): each
run's status is its worst open alert, the last loss and sparkline are the
logged loss, compare returns one statistic across the chosen runs, and bad
arguments are 400/404."""

import json

import numpy as np
import pytest
from tensorboard import context
from tensorboard.backend.event_processing import data_provider as mux_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.plugins import base_plugin

from training_health import format as fmt
from training_health.io.event_writer import EventWriter
from training_health.io.run_writer import RunWriter
from training_health.records import Alert, LayerInfo
from tensorboard_plugin_training_health import TrainingHealthLoader, downsample

from test_plugin_backend import get_json, make_client

LAYERS = (LayerInfo("conv", "Conv2D", "relu", None, 8, True, True),
          LayerInfo("dense", "Dense", "softmax", (0.0, 1.0), 10, True, True))
STEPS = 60


def loss_of(seed, step):
    return 2.0 * (1 + seed) / (1 + step)


def grad_norm_of(seed, layer, step):
    return float(seed + 1 + layer + step / 100.0)


def write_run(path, seed, alerts=(), layers=LAYERS, steps=STEPS):
    writer = RunWriter(str(path), layers, metric_names=("accuracy",))
    column = fmt.LAYER_STATS.index("grad_norm")
    for step in range(steps):
        matrix = np.full((len(layers), len(fmt.LAYER_STATS)), 0.5, dtype=np.float32)
        for i in range(len(layers)):
            matrix[i, column] = grad_norm_of(seed, i, step)
        glob = np.zeros(len(fmt.GLOBAL_STATS) + 1, dtype=np.float32)
        glob[0] = loss_of(seed, step)
        writer.write_step(step, matrix, glob, wall_time=100.0 + step)
        for alert in alerts:
            if alert.step == step:
                writer.write_alerts(step, [alert], wall_time=100.0 + step)
    writer.close()


def alert(kind, step, severity, layer=None, cleared=False):
    return Alert(kind, step, layer, severity, "%s at %d" % (kind, step), "hint", cleared=cleared)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    write_run(root / "a_ok", 0)
    write_run(root / "b_critical", 1, [alert("dead_units", 10, "warning", "conv"),
                                       alert("nan_inf", 20, "critical"),
                                       alert("exploding_gradients", 30, "critical", "dense")])
    write_run(root / "c_cleared", 2, [alert("stalled", 5, "critical", "conv"),
                                      alert("stalled", 25, "critical", "conv", cleared=True),
                                      alert("saturation", 40, "warning", "dense")])
    write_run(root / "d_small", 3, layers=LAYERS[:1], steps=10)
    return root


@pytest.fixture(scope="module")
def client(sweep):
    return make_client(sweep)[0]


def test_overview_has_one_row_per_run_with_status_and_worst_open_alert(client):
    body = get_json(client, "/overview")
    assert body["statuses"] == ["ok", "warning", "critical", "error"]
    rows = {row["run"]: row for row in body["runs"]}
    assert list(rows) == ["a_ok", "b_critical", "c_cleared", "d_small"]
    assert rows["a_ok"]["status"] == "ok" and rows["a_ok"]["worst"] is None
    # Two critical alerts: the earliest is the worst; the warning does not count.
    worst = rows["b_critical"]["worst"]
    assert rows["b_critical"]["status"] == "critical"
    assert (worst["kind"], worst["step"], worst["layer"]) == ("nan_inf", 20, None)
    assert rows["b_critical"]["open_alerts"] == 3 and rows["b_critical"]["alerts"] == 3
    # The critical stall was cleared at step 25: only the warning is open.
    cleared = rows["c_cleared"]
    assert cleared["status"] == "warning" and cleared["worst"]["kind"] == "saturation"
    assert cleared["open_alerts"] == 1 and cleared["alerts"] == 2
    for seed, name in enumerate(rows):
        row = rows[name]
        steps = 10 if name == "d_small" else STEPS
        assert row["steps"] == steps and row["last_step"] == steps - 1
        assert row["last_loss"] == pytest.approx(loss_of(seed, steps - 1), rel=1e-4)
        assert row["layers"] == (1 if name == "d_small" else 2)
        assert row["error"] is None


def test_overview_sparkline_is_the_loss_in_bucket_means(client):
    body = get_json(client, "/overview?points=7")
    row = body["runs"][1]
    spark = row["spark"]
    steps = np.arange(STEPS)
    first, last, means = downsample.reduce_columns(steps, [loss_of(1, s) for s in steps], 7)
    assert spark["first_steps"] == first.tolist() and spark["last_steps"] == last.tolist()
    np.testing.assert_allclose(spark["values"], means, rtol=1e-4)
    assert len(spark["values"]) <= 7


@pytest.mark.parametrize("query", ["points=0", "points=x", "points=100000"])
def test_overview_bad_points_is_400(client, query):
    assert "points" in get_json(client, "/overview?" + query, status=400)["error"]


def test_an_unreadable_run_is_an_error_row(tmp_path):
    write_run(tmp_path / "live", 0, steps=5)
    # A run written by a newer format: an "error" row, the others still listed.
    metadata = fmt.global_metadata(fmt.GLOBAL_STATS)
    content = json.loads(metadata.plugin_data.content)
    content["format_version"] = fmt.FORMAT_VERSION + 1
    metadata.plugin_data.content = json.dumps(content).encode()
    writer = EventWriter(str(tmp_path / "future"))
    writer.write(fmt.make_event(fmt.TAG_GLOBAL, 1, np.zeros(len(fmt.GLOBAL_STATS)), metadata=metadata))
    writer.close()
    client, _ = make_client(tmp_path)
    rows = {r["run"]: r for r in get_json(client, "/overview")["runs"]}
    assert rows["future"]["status"] == "error" and "upgrade training-health" in rows["future"]["error"]
    assert rows["live"]["status"] == "ok" and rows["live"]["last_step"] == 4


def test_overview_row_is_recomputed_when_a_run_grows(tmp_path):
    multiplexer = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance={fmt.PLUGIN_NAME: 0})
    writer = RunWriter(str(tmp_path / "grow"), LAYERS, metric_names=("accuracy",))
    glob = np.zeros(len(fmt.GLOBAL_STATS) + 1, dtype=np.float32)
    matrix = np.zeros((2, len(fmt.LAYER_STATS)), dtype=np.float32)
    for step in range(3):
        writer.write_step(step, matrix, glob + step)
    writer.flush()
    multiplexer.AddRunsFromDirectory(str(tmp_path))
    multiplexer.Reload()
    provider = mux_provider.MultiplexerDataProvider(multiplexer, str(tmp_path))
    plugin = TrainingHealthLoader().load(base_plugin.TBContext(logdir=str(tmp_path), data_provider=provider))
    ctx = context.RequestContext()
    assert plugin.overview_impl(ctx, "")["runs"][0]["last_loss"] == 2.0
    writer.write_step(3, matrix, glob + 7)
    writer.write_alerts(3, [alert("nan_inf", 3, "critical")])
    writer.close()
    multiplexer.Reload()
    row = plugin.overview_impl(ctx, "")["runs"][0]
    assert (row["last_step"], row["last_loss"], row["status"]) == (3, 7.0, "critical")


def test_compare_loss_across_runs(client):
    body = get_json(client, "/compare?stat=loss&run=b_critical&run=a_ok&width=1000")
    assert (body["stat"], body["layer"], body["reduce"]) == ("loss", None, "mean")
    assert [e["run"] for e in body["runs"]] == ["b_critical", "a_ok"]  # in the asked order
    for seed, entry in ((1, body["runs"][0]), (0, body["runs"][1])):
        assert entry["error"] is None and entry["first_steps"] == list(range(STEPS))
        np.testing.assert_allclose(entry["values"], [loss_of(seed, s) for s in range(STEPS)], rtol=1e-4)


def test_compare_one_layer_statistic_with_a_step_window(client):
    body = get_json(client, "/compare?stat=grad_norm&layer=dense&run=a_ok&run=c_cleared"
                            "&start_step=10&end_step=19&width=5")
    for seed, entry in ((0, body["runs"][0]), (2, body["runs"][1])):
        assert entry["first_steps"] == [10, 12, 14, 16, 18] and entry["last_steps"] == [11, 13, 15, 17, 19]
        expected = [(grad_norm_of(seed, 1, s) + grad_norm_of(seed, 1, s + 1)) / 2 for s in range(10, 20, 2)]
        np.testing.assert_allclose(entry["values"], expected, rtol=1e-4)
        assert entry["samples"] == STEPS


def test_compare_a_run_without_the_layer_gets_an_error_entry(client):
    body = get_json(client, "/compare?stat=grad_norm&layer=dense&run=a_ok&run=d_small")
    assert body["runs"][1] == {"run": "d_small", "first_steps": [], "last_steps": [], "values": [],
                               "error": "run 'd_small' has no layer 'dense'"}
    assert len(body["runs"][0]["values"]) == STEPS


@pytest.mark.parametrize("query, status, words", [
    ("stat=loss", 400, "'run'"),
    ("run=a_ok", 400, "'stat'"),
    ("stat=nope&run=a_ok", 400, "unknown statistic 'nope'"),
    ("stat=loss&layer=conv&run=a_ok", 400, "unknown statistic 'loss' of a layer"),
    ("stat=loss&run=a_ok&run=missing", 404, "no Training Health data for run 'missing'"),
    ("stat=grad_norm&layer=nope&run=a_ok", 404, "none of the runs has a layer 'nope'"),
    ("stat=loss&run=a_ok&width=0", 400, "'width'"),
    ("stat=loss&run=a_ok&start_step=5&end_step=1", 400, "start_step must be <= end_step"),
])
def test_compare_bad_arguments(client, query, status, words):
    assert words in get_json(client, "/compare?" + query, status=status)["error"]


def test_compare_too_many_runs_is_400(client):
    query = "&".join("run=r%d" % i for i in range(201))
    assert "at most 200 runs" in get_json(client, "/compare?stat=loss&" + query, status=400)["error"]
