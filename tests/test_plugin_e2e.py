"""End to end: a real `tensorboard` process with each backend serves the tab.

Starts `python -m tensorboard.main` on 127.0.0.1 over the demo's logs (the
stalled CNN and its healthy twin, trained with the real Keras
capture) plus a synthetic run with a hostile layer name, with
`--load_fast=false` (Python backend) and `--load_fast=true` (Rust data
server), and calls the plugin's routes over HTTP.
"""

import json
import urllib.error
import urllib.request

import pytest

from training_health import format as fmt
from tensorboard_plugin_training_health import DEFAULT_SAMPLES

import test_plugin_support as support

pytestmark = [pytest.mark.slow, pytest.mark.compat]


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def route(base, path):
    status, content_type, body = fetch("%s/data/plugin/%s/%s" % (base, fmt.PLUGIN_NAME, path))
    return status, json.loads(body) if "json" in content_type else body


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    return support.demo_logdir(tmp_path_factory)


@pytest.mark.parametrize("load_fast, block_tensorflow", [(False, False), (True, False), (False, True)],
                         ids=["python", "rust", "python-without-tensorflow"])
def test_real_tensorboard_serves_tab(logdir, load_fast, block_tensorflow):
    with support.tensorboard_process(logdir, load_fast, block_tensorflow=block_tensorflow) as base:
        status, _, body = fetch(base + "/data/plugins_listing")
        listing = json.loads(body)[fmt.PLUGIN_NAME]
        assert status == 200 and listing["enabled"] is True
        assert listing["tab_name"] == "Training Health"

        status, runs = route(base, "runs")
        assert status == 200
        names = {r["run"] for r in runs["runs"]}
        assert {support.DEMO_STALLED, support.DEMO_HEALTHY, support.XSS_RUN} <= names
        assert runs["sample_limit"] == DEFAULT_SAMPLES  # the loader's fix_flags took effect
        stalled = next(r for r in runs["runs"] if r["run"] == support.DEMO_STALLED)
        assert stalled["has_alerts"] and stalled["has_histograms"]

        status, layers = route(base, "layers?run=stalled_cnn")
        names = [layer["name"] for layer in layers["layers"]]
        assert status == 200 and "conv2d" in names

        status, matrix = route(base, "matrix?run=stalled_cnn&stat=dead_frac&width=50")
        assert status == 200 and matrix["layers"] == names
        assert 0 < len(matrix["first_steps"]) <= 50
        # Both backends' own defaults (10 / 100 values per tag) would drop most
        # of the demo's steps; the raised default keeps them all.
        status, series = route(base, "series?run=stalled_cnn&width=5000")
        assert status == 200 and series["samples"] == len(series["first_steps"]) > 100
        assert matrix["samples"] == series["samples"] and matrix["downsampled"] is False
        assert matrix["values"][names.index("conv2d")][-1] == pytest.approx(1.0)  # its ReLUs died

        status, alerts = route(base, "alerts?run=stalled_cnn")
        stalled = [a for a in alerts["alerts"] if a["kind"] == "stalled" and not a["cleared"]]
        assert status == 200 and stalled and stalled[0]["hint"]

        status, hist = route(base, "histograms?run=stalled_cnn&layer=conv2d&limit=5")
        assert status == 200 and 0 < len(hist["steps"]) <= 5
        assert len(hist["gradient"][0]) == fmt.HIST_ROW

        status, layer = route(base, "layer?run=xss_names&layer=" +
                              urllib.request.quote(support.XSS_LAYER, safe=""))
        assert status == 200 and layer["layer"]["name"] == support.XSS_LAYER

        assert route(base, "matrix?run=stalled_cnn&stat=bogus")[0] == 400
        assert route(base, "matrix?run=stalled_cnn&stat=grad_norm&width=x")[0] == 400
        assert route(base, "alerts?run=missing")[0] == 404
        assert route(base, "layer?run=stalled_cnn&layer=missing")[0] == 404

        status, content_type, source = fetch(base + "/data/plugin/training_health/index.js")
        assert status == 200 and content_type.startswith("text/javascript")
        assert b"export async function render" in source
    if block_tensorflow:  # the server really ran without TensorFlow
        port = base.rsplit(":", 1)[1]
        with open(logdir.parent / ("tensorboard-%s.log" % port), encoding="utf-8") as f:
            assert "TensorFlow installation not found" in f.read()


def test_user_sample_limit_wins_and_is_reported(logdir):
    extra = ["--samples_per_plugin", "%s=40" % fmt.PLUGIN_NAME]
    with support.tensorboard_process(logdir, True, extra_args=extra) as base:
        status, matrix = route(base, "matrix?run=stalled_cnn&stat=dead_frac")
        assert status == 200
        assert matrix["samples"] == 40 and matrix["downsampled"] is True
        assert matrix["sample_limit"] == 40
        _, layers = route(base, "layers?run=stalled_cnn")
        assert matrix["last_steps"][-1] == layers["last_step"]  # the newest step is always kept
