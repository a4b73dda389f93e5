"""The motivating stall, trained with PyTorch: raw 0..255 pixels, one ReLU
filter as large as the image, SGD (`training-health demo --framework torch`).

`training-health check --json` (a real subprocess) reports the stall with a
hint about the input scale while the healthy twin stays silent, and the
Training Health tab in a real TensorBoard, in headless Chromium, shows the
PyTorch run's heatmaps and its stall alert: a PyTorch run reads like a
Keras one.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from conftest import REPO_ROOT  # noqa: E402
from training_health import format as fmt  # noqa: E402
from training_health.cli import demo  # noqa: E402

import test_plugin_support as support  # noqa: E402


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("torch_demo") / "logs"
    results = demo.write_torch_demo_runs(str(root), epochs=2)
    stalled_accuracy = results["stalled_cnn"][1]
    assert stalled_accuracy[-1] == pytest.approx(0.4565, abs=0.01)  # stuck at the majority class
    return root


def test_check_json_reports_the_stall_with_its_hint(logdir, python_exe):
    result = subprocess.run([python_exe, "-m", "training_health.cli", "check", "--json", str(logdir)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr  # alerts found
    report = json.loads(result.stdout)
    runs = {r["run"]: r for r in report["runs"]}
    assert runs["healthy_cnn"]["alerts"] == []
    stalled = runs["stalled_cnn"]["alerts"]
    stall = next(a for a in stalled if a["kind"] == "stalled")
    assert "inputs range 0..25" in stall["hint"] and "scale them" in stall["hint"]
    assert "conv2d" in stall["message"]  # named by the module's path


@pytest.mark.browser
@pytest.mark.slow
def test_the_tab_shows_the_pytorch_run_and_its_stall(logdir):
    playwright_api = pytest.importorskip("playwright.sync_api")
    chromium = os.environ.get("TRAINING_HEALTH_CHROMIUM", "/usr/bin/chromium")
    if not os.path.exists(chromium):
        pytest.fail("Chromium not found at %s (install Debian's chromium package)" % chromium)
    with support.tensorboard_process(logdir, load_fast=False) as base, \
            playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/data/plugin_entry.html?name=" + fmt.PLUGIN_NAME)
        page.wait_for_selector("body[data-rendered]", timeout=30000)
        page.wait_for_function("document.body.dataset.loading === 'false'", timeout=30000)
        section = ".th-run-section[data-run=stalled_cnn]"
        assert page.query_selector(section + " .th-heatmap-canvas[data-stat=grad_norm]")
        stall = page.query_selector(".th-alert[data-kind=stalled][data-run=stalled_cnn]")
        assert stall is not None
        if not stall.is_visible():  # folded under the incident's first alert
            stall.evaluate_handle("n => n.closest('details').querySelector('summary')").as_element().click()
        text = stall.inner_text()
        assert "Stalled" in text and "stalled_cnn · whole model · step" in text
        assert "Try: inputs range 0..25" in text
        assert not page.query_selector(".th-alert[data-run=healthy_cnn]")
        # the layers carry their PyTorch module paths
        body = page.inner_text(section)
        assert "conv2d" in body and "relu" in body
        browser.close()
        assert errors == []
