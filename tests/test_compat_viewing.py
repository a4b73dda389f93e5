"""The viewing side across versions: runs written with one environment's
TensorFlow, Keras and tensorboard, served by another environment's
`tensorboard`, and the tab drawn in a real headless Chromium.

The other environment is the Python at TRAINING_HEALTH_OTHER_PYTHON, with
training-health installed there (CI points it at the oldest supported stack:
see .ci/run). Both ways are tested: the other environment's tensorboard over
the demo's runs trained here, and this environment's tensorboard over the
demo's runs trained there (with `training-health demo`). Without the variable
the tests are skipped.
"""

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from training_health import format as fmt

import test_plugin_support as support

OTHER_PYTHON = os.environ.get("TRAINING_HEALTH_OTHER_PYTHON", "")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not OTHER_PYTHON, reason="set TRAINING_HEALTH_OTHER_PYTHON to another "
                       "environment's Python (CI: the oldest supported stack)"),
]


def versions(python):
    """{package: version} that `training-health --version` prints for `python`."""
    result = subprocess.run([python, "-m", "training_health.cli", "--version"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return dict(line.split()[:2] for line in result.stdout.splitlines()
                if "not installed" not in line)


@pytest.fixture(scope="module")
def written_here(tmp_path_factory):
    return support.demo_logdir(tmp_path_factory)


@pytest.fixture(scope="module")
def written_there(tmp_path_factory):
    root = tmp_path_factory.mktemp("other") / "logs"
    result = subprocess.run(
        [OTHER_PYTHON, "-m", "training_health.cli", "demo", "--logdir", str(root), "--epochs", "2"],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stdout + result.stderr
    return root


@pytest.fixture(scope="module")
def browser():
    from test_browser_tab import CHROMIUM, playwright_api

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


def get_json(base, path):
    url = "%s/data/plugin/%s/%s" % (base, fmt.PLUGIN_NAME, path)
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def check_served_tab(browser, base):
    """The served data and the drawn tab of the demo's two runs."""
    with urllib.request.urlopen(base + "/data/plugins_listing", timeout=30) as response:
        assert json.loads(response.read())[fmt.PLUGIN_NAME]["enabled"] is True
    runs = {r["run"]: r for r in get_json(base, "runs")["runs"]}
    assert {support.DEMO_STALLED, support.DEMO_HEALTHY} <= set(runs)
    stalled = runs[support.DEMO_STALLED]
    assert stalled["has_layers"] and stalled["has_alerts"] and stalled["has_histograms"]
    assert not stalled["error"]
    layers = [layer["name"] for layer in get_json(base, "layers?run=stalled_cnn")["layers"]]
    assert "conv2d" in layers
    matrix = get_json(base, "matrix?run=stalled_cnn&stat=dead_frac&width=50")
    assert matrix["values"][layers.index("conv2d")][-1] == pytest.approx(1.0)  # its ReLUs died
    alerts = get_json(base, "alerts?run=stalled_cnn")["alerts"]
    assert any(a["kind"] == "dead_units" and a["layer"] == "conv2d" for a in alerts)
    assert get_json(base, "alerts?run=healthy_cnn")["alerts"] == []

    from test_browser_tab import ENTRY, STALLED, Page
    from thtest_canvas import PIXELS_JS

    page = Page(browser, base + ENTRY)
    try:
        page.wait_rendered()
        sections = page.page.eval_on_selector_all(".th-run-section", "s => s.map(x => x.dataset.run)")
        assert sections[:2] == [support.DEMO_HEALTHY, support.DEMO_STALLED]
        canvas = page.page.query_selector(STALLED + " .th-heatmap-canvas[data-stat=dead_frac]")
        assert canvas.evaluate(PIXELS_JS)["painted"] > 0.6
        assert page.page.query_selector(".th-alert[data-kind=dead_units][data-run=stalled_cnn]")
        assert page.errors == [] and page.dialogs == []
    finally:
        page.close()


@pytest.mark.parametrize("load_fast", [False, True], ids=["python", "rust"])
def test_other_tensorboard_serves_runs_written_here(written_here, browser, load_fast):
    with support.tensorboard_process(written_here, load_fast, python=OTHER_PYTHON) as base:
        check_served_tab(browser, base)


def test_tensorboard_here_serves_runs_written_there(written_there, browser):
    with support.tensorboard_process(written_there, load_fast=False) as base:
        check_served_tab(browser, base)


def test_the_two_environments_differ():
    # What the tests above compare: say which versions met.
    here, there = versions(sys.executable), versions(OTHER_PYTHON)
    print("here:", here, "\nthere:", there)
    assert here["tensorboard"] != there["tensorboard"] or here["tensorflow"] != there["tensorflow"]
