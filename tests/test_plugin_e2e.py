"""End to end: a real `tensorboard` process with each backend serves the tab.

Starts `python -m tensorboard.main` on 127.0.0.1 over real event files, with
`--load_fast=false` (Python backend) and `--load_fast=true` (Rust data
server), and calls the plugin's routes over HTTP.
"""

import json
import urllib.error
import urllib.request

import pytest

from training_health import format as fmt
from training_health.plugin import DEFAULT_SAMPLES

import test_plugin_support as support

pytestmark = pytest.mark.slow


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
    root = tmp_path_factory.mktemp("e2e") / "logs"
    root.mkdir()
    support.write_synthetic_logdir(str(root))
    return root


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
        assert sorted(r["run"] for r in runs["runs"]) == sorted(
            [support.FROZEN_RUN, support.HEALTHY_RUN, support.XSS_RUN])
        assert runs["sample_limit"] == DEFAULT_SAMPLES  # the loader's fix_flags took effect

        status, matrix = route(base, "matrix?run=frozen_cnn&stat=grad_norm&width=100")
        assert status == 200 and len(matrix["first_steps"]) == 100
        # Both backends' own defaults (10 / 100 values per tag) would drop most
        # of the 300 steps; the raised default keeps them all.
        assert matrix["samples"] == 300 and matrix["downsampled"] is False
        assert matrix["values"][1][-1] == pytest.approx(1e-9, rel=0.2)  # conv2 frozen

        status, series = route(base, "series?run=frozen_cnn")
        assert status == 200 and len(series["values"]["loss"]) == 300

        status, alerts = route(base, "alerts?run=frozen_cnn")
        assert alerts["alerts"][0]["hint"] == support.STALL_HINT

        status, hist = route(base, "histograms?run=frozen_cnn&layer=conv2&limit=5")
        assert status == 200 and hist["steps"][-1] == 275

        status, layer = route(base, "layer?run=xss_names&layer=" +
                              urllib.request.quote(support.XSS_LAYER, safe=""))
        assert status == 200 and layer["layer"]["name"] == support.XSS_LAYER

        assert route(base, "matrix?run=frozen_cnn&stat=bogus")[0] == 400
        assert route(base, "matrix?run=frozen_cnn&stat=grad_norm&width=x")[0] == 400
        assert route(base, "alerts?run=missing")[0] == 404
        assert route(base, "histograms?run=healthy_mlp&layer=dense_0")[0] == 404

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
        status, matrix = route(base, "matrix?run=frozen_cnn&stat=dead_frac")
        assert status == 200
        assert matrix["samples"] == 40 and matrix["downsampled"] is True
        assert matrix["sample_limit"] == 40
        assert matrix["last_steps"][-1] == 299  # the newest step is always kept
