"""Backend tests: real event files -> data provider -> TensorBoardWSGI -> HTTP.

The plugin is served by TensorBoard's own WSGI application over a
`MultiplexerDataProvider`, as TensorBoard tests its plugins, and every route
is called through werkzeug's test client, including bad and unknown
arguments.
"""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend import application
from tensorboard.backend.event_processing import data_provider as mux_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from werkzeug import test as werkzeug_test

from training_health import format as fmt
from tensorboard_plugin_training_health import DEFAULT_SAMPLES, TrainingHealthLoader
from tensorboard_plugin_training_health import plugin as health_plugin
from training_health.records import LayerInfo
from training_health.io.run_writer import RunWriter

import test_plugin_support as support

pytestmark = pytest.mark.compat

BASE = "/data/plugin/%s" % fmt.PLUGIN_NAME


def make_client(logdir, samples=0):
    multiplexer = plugin_event_multiplexer.EventMultiplexer(
        tensor_size_guidance={fmt.PLUGIN_NAME: samples}
    )
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = mux_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    context = base_plugin.TBContext(
        logdir=str(logdir),
        data_provider=provider,
        sampling_hints={fmt.PLUGIN_NAME: samples},
    )
    plugin = TrainingHealthLoader().load(context)
    app = application.TensorBoardWSGI([plugin], data_provider=provider)
    return werkzeug_test.Client(app), plugin


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    support.write_synthetic_logdir(str(root))
    return root


@pytest.fixture(scope="module")
def client(logdir):
    return make_client(logdir)[0]


def get_json(client, path, status=200):
    response = client.get(BASE + path)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.get_data(as_text=True))


def test_entry_module_does_not_import_tensorflow():
    code = (
        "import sys, tensorboard_plugin_training_health as p; "
        "print(p.TrainingHealthLoader.__name__, 'tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["TrainingHealthLoader", "False"]


def test_fix_flags_raises_default_but_user_value_wins():
    loader = TrainingHealthLoader()
    flags = argparse.Namespace(samples_per_plugin={})
    loader.fix_flags(flags)
    assert flags.samples_per_plugin == {fmt.PLUGIN_NAME: DEFAULT_SAMPLES}
    flags = argparse.Namespace(samples_per_plugin={fmt.PLUGIN_NAME: 0, "scalars": 5})
    loader.fix_flags(flags)
    assert flags.samples_per_plugin == {fmt.PLUGIN_NAME: 0, "scalars": 5}
    with pytest.raises(ValueError, match="non-negative int"):
        TrainingHealthLoader(default_samples=-1)


def test_tab_enabled_by_data_and_frontend_metadata(client, tmp_path):
    listing = json.loads(client.get("/data/plugins_listing").get_data())
    entry = listing[fmt.PLUGIN_NAME]
    assert entry["enabled"] is True
    assert entry["tab_name"] == "Training Health"
    assert entry["loading_mechanism"] == {"type": "IFRAME", "module_path": BASE + "/index.js"}
    empty_client, plugin = make_client(tmp_path)
    assert plugin.is_active() is False
    listing = json.loads(empty_client.get("/data/plugins_listing").get_data())
    assert listing[fmt.PLUGIN_NAME]["enabled"] is False


def test_runs(client):
    body = get_json(client, "/runs")
    runs = {r["run"]: r for r in body["runs"]}
    assert sorted(runs) == sorted([support.STALLED_RUN, support.HEALTHY_RUN, support.XSS_RUN])
    stalled = runs[support.STALLED_RUN]
    assert stalled["layers"] == 5 and stalled["last_step"] == 299
    assert stalled["has_alerts"] and stalled["has_histograms"] and stalled["error"] is None
    assert runs[support.HEALTHY_RUN]["has_alerts"] is False


def test_layers(client):
    body = get_json(client, "/layers?run=" + support.STALLED_RUN)
    assert [l["name"] for l in body["layers"]] == ["conv1", "conv2", "pool", "dense1", "probs"]
    assert body["stats"] == list(fmt.LAYER_STATS)
    assert body["layers"][4]["bounds"] == [0.0, 1.0]
    assert body["format_version"] == fmt.FORMAT_VERSION


def test_matrix_full_resolution_matches_written_values(client):
    body = get_json(client, "/matrix?run=%s&stat=update_ratio&width=5000" % support.STALLED_RUN)
    assert body["layers"][1] == "conv2"
    assert len(body["first_steps"]) == 300 and body["first_steps"] == body["last_steps"]
    conv2 = body["values"][1]
    assert all(v == 0.0 for v in conv2[support.STALL_STEP:])  # flat after the stall
    assert all(v > 0 for v in conv2[: support.STALL_STEP])
    assert all(v is None for v in body["values"][2])  # pool: no weights, not measured
    assert body["samples"] == 300 and body["downsampled"] is False


def test_matrix_downsampled_to_width(client):
    body = get_json(client, "/matrix?run=%s&stat=dead_frac&width=30" % support.STALLED_RUN)
    assert len(body["first_steps"]) == 30
    assert body["first_steps"][0] == 0 and body["last_steps"][-1] == 299
    assert body["first_steps"][1] == body["last_steps"][0] + 1  # buckets tile the steps
    dense1 = body["values"][3]
    assert dense1[0] == 0.0 and dense1[-1] == pytest.approx(0.8)  # dies over time
    assert body["max"] == pytest.approx(0.8) and body["min"] == 0.0
    mx = get_json(client, "/matrix?run=%s&stat=dead_frac&width=2&reduce=max" % support.STALLED_RUN)
    assert mx["values"][3][0] == pytest.approx(0.0) and mx["values"][3][1] == pytest.approx(0.8)


def test_step_window(client):
    body = get_json(client, "/matrix?run=%s&stat=update_ratio&start_step=100&end_step=149&width=5000"
                    % support.STALLED_RUN)
    assert body["first_steps"] == list(range(100, 150))
    conv2 = body["values"][1]
    assert all(v > 0 for v in conv2[:20]) and all(v == 0 for v in conv2[20:])  # stall at 120
    body = get_json(client, "/matrix?run=%s&stat=dead_frac&start_step=200&width=10" % support.STALLED_RUN)
    assert body["first_steps"][0] == 200 and body["last_steps"][-1] == 299
    assert len(body["first_steps"]) == 10
    series = get_json(client, "/series?run=%s&end_step=9" % support.STALLED_RUN)
    assert series["last_steps"] == list(range(10))
    layer = get_json(client, "/layer?run=%s&layer=conv2&start_step=290" % support.STALLED_RUN)
    assert layer["first_steps"] == list(range(290, 300))
    empty = get_json(client, "/matrix?run=%s&stat=dead_frac&start_step=5000" % support.STALLED_RUN)
    assert empty["first_steps"] == [] and empty["values"] == [[]] * 5 and empty["max"] is None


def test_series(client):
    body = get_json(client, "/series?run=%s" % support.STALLED_RUN)
    assert body["names"][: len(fmt.GLOBAL_STATS)] == list(fmt.GLOBAL_STATS)
    assert body["metrics"] == ["accuracy"]
    loss = body["values"]["loss"]
    assert len(loss) == 300 and loss[0] > 2.5 and 1.1 < loss[-1] < 1.5
    small = get_json(client, "/series?run=%s&width=10" % support.HEALTHY_RUN)
    assert len(small["first_steps"]) == 10 and small["last_steps"][-1] == 398


def test_layer_detail(client):
    body = get_json(client, "/layer?run=%s&layer=conv2" % support.STALLED_RUN)
    assert body["layer"]["name"] == "conv2" and body["layer"]["type"] == "Conv2D"
    assert set(body["values"]) == set(fmt.LAYER_STATS)
    assert body["values"]["grad_norm"][-1] == pytest.approx(1e-9, rel=0.2)


def test_alerts(client):
    body = get_json(client, "/alerts?run=" + support.STALLED_RUN)
    kinds = [(a["kind"], a["step"], a["layer"], a["severity"]) for a in body["alerts"]]
    assert kinds == [("stalled", support.STALL_STEP, "conv2", "critical"),
                     ("dead_units", 210, "dense1", "warning")]
    assert body["alerts"][0]["hint"] == support.STALL_HINT
    assert body["alerts"][0]["cleared"] is False
    # a stall does not lead to dead units: two incidents, grouped by the server
    # (the records were written without incident fields)
    assert [(a["incident"], a["caused_by"]) for a in body["alerts"]] == [(1, None), (2, None)]
    assert get_json(client, "/alerts?run=" + support.HEALTHY_RUN)["alerts"] == []


def test_alert_records_get_their_incidents():
    from training_health.detectors import incidents
    from training_health.records import Alert

    sequence = [Alert("nan_inf", 3, None, "critical", "m", "h"),
                Alert("exploding_gradients", 3, "d1", "critical", "m", "h"),
                Alert("dead_units", 20, "d0", "warning", "m", "h"),
                Alert("dead_units", 90, "d0", "warning", "m", "", cleared=True)]
    # written before incidents existed: no incident fields at all
    old = [health_plugin._clean_alert({k: v for k, v in a.to_json().items()
                                       if k not in ("incident", "caused_by")}, a.step)
           for a in sequence]
    grouped = health_plugin._with_incidents(old)
    assert [(a["kind"], a["incident"], a["caused_by"]) for a in grouped] == [
        ("exploding_gradients", 1, None), ("nan_inf", 1, "exploding_gradients@3/d1"),
        ("dead_units", 1, "exploding_gradients@3/d1"),
        ("dead_units", 1, "exploding_gradients@3/d1")]
    # written by the logger with its incidents: kept as written (here a
    # downsampled view without the root still names it)
    logged = [health_plugin._clean_alert(a.to_json(), a.step)
              for a in incidents.group(sequence)[1:]]
    assert health_plugin._with_incidents(logged) == logged
    assert logged[0]["caused_by"] == "exploding_gradients@3/d1"
    # a kind this version does not know: shown, not grouped
    future = old + [dict(old[0], kind="from_the_future", step=40)]
    assert [a["incident"] for a in health_plugin._with_incidents(future)] == [None] * 5


def test_histograms(client):
    body = get_json(client, "/histograms?run=%s&layer=conv2" % support.STALLED_RUN)
    assert body["steps"] == list(range(0, 300, 25))
    assert body["bins"] == fmt.HIST_BINS and body["grad_log10_range"] == list(fmt.GRAD_LOG10_RANGE)
    assert len(body["gradient"][0]) == fmt.HIST_ROW
    assert sum(body["gradient"][0][2:]) == pytest.approx(1.0, abs=1e-3)
    assert body["activation"][0][1] == 3.0  # max of layer index 1 = 2 + 1
    few = get_json(client, "/histograms?run=%s&layer=conv2&limit=3" % support.STALLED_RUN)
    assert few["steps"] == [0, 150, 275]


def test_xss_names_are_returned_verbatim(client):
    body = get_json(client, "/layers?run=" + support.XSS_RUN)
    assert body["layers"][0]["name"] == support.XSS_LAYER
    alerts = get_json(client, "/alerts?run=" + support.XSS_RUN)["alerts"]
    assert alerts[0]["layer"] == support.XSS_LAYER


def test_epochs(client):
    runs = {r["run"]: r for r in get_json(client, "/runs")["runs"]}
    assert runs[support.XSS_RUN]["has_epochs"] and not runs[support.STALLED_RUN]["has_epochs"]
    body = get_json(client, "/epochs?run=" + support.XSS_RUN)
    assert body["steps"] == [9, 19, 29, 39] and body["epochs"] == [1, 2, 3, 4]
    assert body["names"] == ["loss", "val_loss", support.XSS_METRIC]  # the name verbatim
    assert body["values"] == {"loss": [0.3, 0.1, 0.05, 0.02], "val_loss": [0.5, None, 0.8, 1.2],
                              support.XSS_METRIC: [0.6, None, 0.7, "Infinity"]}
    assert body["samples"] == 4 and body["downsampled"] is False
    window = get_json(client, "/epochs?run=%s&start_step=10&end_step=30" % support.XSS_RUN)
    assert window["steps"] == [19, 29] and window["values"]["val_loss"] == [None, 0.8]


@pytest.mark.parametrize("path, status, fragment", [
    ("/layers", 400, "missing query parameter 'run'"),
    ("/epochs", 400, "missing query parameter 'run'"),
    ("/epochs?run=xss_names&start_step=x", 400, "'start_step' must be an integer"),
    ("/epochs?run=nope", 404, "no Training Health data for run 'nope'"),
    ("/epochs?run=stalled_cnn", 404, "has no 'training_health/epochs'"),
    ("/matrix?run=stalled_cnn", 400, "missing query parameter 'stat'"),
    ("/matrix?run=stalled_cnn&stat=nope", 400, "unknown statistic 'nope'"),
    ("/matrix?run=stalled_cnn&stat=grad_norm&width=abc", 400, "must be an integer"),
    ("/matrix?run=stalled_cnn&stat=grad_norm&width=0", 400, "between 1 and"),
    ("/matrix?run=stalled_cnn&stat=grad_norm&reduce=median", 400, "reduce must be one of"),
    ("/series?run=stalled_cnn&width=-3", 400, "between 1 and"),
    ("/matrix?run=stalled_cnn&stat=dead_frac&start_step=9&end_step=3", 400,
     "start_step must be <= end_step; received start_step=9, end_step=3"),
    ("/series?run=stalled_cnn&start_step=-1", 400, "'start_step' must be between 0 and"),
    ("/layer?run=stalled_cnn&layer=conv2&end_step=x", 400, "'end_step' must be an integer"),
    ("/layer?run=stalled_cnn", 400, "missing query parameter 'layer'"),
    ("/histograms?run=stalled_cnn&layer=conv2&limit=x", 400, "must be an integer"),
    ("/layers?run=nope", 404, "no Training Health data for run 'nope'"),
    ("/matrix?run=nope&stat=grad_norm", 404, "nope"),
    ("/series?run=nope", 404, "nope"),
    ("/alerts?run=nope", 404, "no Training Health data for run 'nope'"),
    ("/layer?run=stalled_cnn&layer=nope", 404, "has no layer 'nope'"),
    ("/histograms?run=stalled_cnn&layer=nope", 404, "no histograms for layer 'nope'"),
    ("/histograms?run=healthy_mlp&layer=dense_0", 404, "has no 'training_health/histograms'"),
])
def test_bad_and_unknown_arguments(client, path, status, fragment):
    body = get_json(client, path, status=status)
    assert fragment in body["error"]


def test_static_files_served(client):
    for name, content_type in [("index.js", "text/javascript"), ("model.js", "text/javascript"),
                               ("views.js", "text/javascript"), ("style.css", "text/css")]:
        response = client.get(BASE + "/" + name)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith(content_type)
        assert len(response.get_data()) > 500
    source = client.get(BASE + "/index.js").get_data(as_text=True)
    assert "export function render" in source or "export async function render" in source


def test_newer_format_version_is_a_clear_400(tmp_path):
    layers = (LayerInfo("d", "Dense", "relu", None, 4, True, True),)
    writer = RunWriter(str(tmp_path / "future"), layers)
    metadata = fmt.layers_metadata(layers)
    content = json.loads(metadata.plugin_data.content)
    content["format_version"] = fmt.FORMAT_VERSION + 1
    metadata.plugin_data.content = json.dumps(content).encode()
    writer.writer.describe(fmt.TAG_LAYERS, metadata)
    writer.write_step(1, np.zeros((1, len(fmt.LAYER_STATS))), np.zeros(len(fmt.GLOBAL_STATS)))
    writer.close()
    client, _ = make_client(tmp_path)
    runs = get_json(client, "/runs")["runs"]
    assert "upgrade training-health" in runs[0]["error"]
    body = get_json(client, "/matrix?run=future&stat=grad_norm", status=400)
    assert "unknown Training Health format version" in body["error"]


def test_sample_limit_reported_as_downsampled(tmp_path):
    support.write_healthy_mlp(str(tmp_path / "run"), steps=200)
    client, _ = make_client(tmp_path, samples=50)
    body = get_json(client, "/matrix?run=run&stat=grad_norm")
    assert body["samples"] == 50 and body["downsampled"] is True and body["sample_limit"] == 50
    assert body["last_steps"][-1] == 398  # TensorBoard always keeps the newest value


def test_cache_sees_new_data(tmp_path):
    layers = (LayerInfo("d", "Dense", "relu", None, 4, True, True),)
    multiplexer = plugin_event_multiplexer.EventMultiplexer(
        tensor_size_guidance={fmt.PLUGIN_NAME: 0})
    writer = RunWriter(str(tmp_path / "live"), layers)
    row = np.ones((1, len(fmt.LAYER_STATS)))
    writer.write_step(1, row, np.zeros(len(fmt.GLOBAL_STATS)))
    writer.flush()
    multiplexer.AddRunsFromDirectory(str(tmp_path))
    multiplexer.Reload()
    provider = mux_provider.MultiplexerDataProvider(multiplexer, str(tmp_path))
    plugin = TrainingHealthLoader().load(base_plugin.TBContext(data_provider=provider))
    client = werkzeug_test.Client(application.TensorBoardWSGI([plugin], data_provider=provider))
    assert get_json(client, "/matrix?run=live&stat=grad_norm")["last_steps"] == [1]
    writer.write_step(2, row * 2, np.zeros(len(fmt.GLOBAL_STATS)))
    writer.close()
    multiplexer.Reload()
    body = get_json(client, "/matrix?run=live&stat=grad_norm")
    assert body["last_steps"] == [1, 2] and body["values"] == [[1.0, 2.0]]
