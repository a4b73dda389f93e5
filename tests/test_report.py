"""`training-health report`: one self-contained HTML file, opened from disk with no network.

The page itself is built by the plugin's `inline.offline_page` (tested with
the plugin); here the CLI around it is tested end to end.

The report is written by the real CLI (a subprocess) from real event files,
then opened as a file:// URL in headless Chromium (the system's
/usr/bin/chromium through Playwright) with every request that is not
file:, blob: or data: aborted. Heatmaps must be drawn (painted canvases)
and the logged alerts listed with their hints; clicking one opens the
layer detail with its histograms, as in the tab.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from training_health import format as fmt
from tensorboard_plugin_training_health import inline
from training_health.records import Alert, LayerInfo
from training_health.io.run_writer import RunWriter

from test_remote_support import s3, s3_server  # noqa: F401  (fixtures)
from thtest_canvas import PIXELS_JS  # noqa: E402

pytestmark = pytest.mark.compat

CHROMIUM = os.environ.get("TRAINING_HEALTH_CHROMIUM", "/usr/bin/chromium")
LAYERS = (
    LayerInfo("conv", "Conv2D", "relu", None, 8, True, True),
    LayerInfo("dense", "Dense", "relu", None, 16, True, True),
    LayerInfo("out", "Dense", "softmax", (0.0, 1.0), 10, True, True),
)
N_STEPS = 400
ALERT = Alert("dead_units", 250, "conv", "critical", "100% of conv's units are dead",
              "inputs range 0..255: scale them to about [-1, 1]")


def cli():
    exe = shutil.which("training-health")
    return [exe] if exe else [sys.executable, "-m", "training_health.cli"]


def write_run(path, seed, alert=None):
    rng = np.random.default_rng(seed)
    writer = RunWriter(str(path), LAYERS, metric_names=("accuracy",))
    for step in range(1, N_STEPS + 1):
        values = rng.random((len(LAYERS), len(fmt.LAYER_STATS))).astype(np.float32) + 0.01
        values[:, fmt.LAYER_STATS.index("grad_norm")] *= np.array([1.0, 10.0, 100.0]) / step
        globals_ = rng.random(len(fmt.GLOBAL_STATS) + 1).astype(np.float32)
        writer.write_step(step, values, globals_, wall_time=1000.0 + step)
        if step % 100 == 0:
            hist = rng.random((len(LAYERS), len(fmt.HIST_SERIES), fmt.HIST_ROW)).astype(np.float32)
            writer.write_histograms(step, hist, wall_time=1000.0 + step)
    if alert is not None:
        writer.write_alerts(alert.step, [alert], wall_time=1000.0 + alert.step)
    writer.close()


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report") / "runs"
    write_run(root / "stalled", seed=1, alert=ALERT)
    write_run(root / "healthy", seed=2)
    return root


def inline_data(page_text):
    match = re.search(r"window\.TRAINING_HEALTH_INLINE = (.*?);</script>", page_text, re.S)
    assert match, "the data is inline in the page"
    return json.loads(match.group(1))


def run_report(logdir, output, *extra):
    return subprocess.run(cli() + ["report", str(logdir), "-o", str(output)] + list(extra),
                          capture_output=True, text=True, timeout=120)


def test_report_is_one_self_contained_downsampled_file(logdir, tmp_path):
    output = tmp_path / "out" / "report.html"
    out = run_report(logdir, output, "--points", "100")
    assert out.returncode == 0, out.stderr
    assert os.listdir(tmp_path / "out") == ["report.html"]
    assert out.stdout.startswith("wrote %s (" % output) and "2 runs: healthy, stalled" in out.stdout
    text = output.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|@import", text), "nothing is loaded from elsewhere"
    assert inline.bundle() in text.replace("<\\/script", "</script"), "the tab's own modules"
    data = inline_data(text)
    assert [r["run"] for r in data["runs"]["runs"]] == ["healthy", "stalled"]
    matrix = data["matrix?run=stalled&stat=grad_norm"]
    assert len(matrix["first_steps"]) == 100, "400 steps averaged into 100 columns"
    assert matrix["first_steps"][0] == 1 and matrix["last_steps"][-1] == N_STEPS
    alerts = data["alerts?run=stalled"]["alerts"]
    assert [(a["kind"], a["step"], a["hint"]) for a in alerts] == [(ALERT.kind, ALERT.step, ALERT.hint)]
    assert os.stat(output).st_mode & 0o044, "the report is readable by others, like any written file"

    assert data["histograms?layer=conv&run=stalled"]["steps"] == [100, 200, 300, 400]
    thin = tmp_path / "thin.html"
    assert run_report(logdir, thin, "--points", "100", "--histograms", "2").returncode == 0
    assert inline_data(thin.read_text(encoding="utf-8"))["histograms?layer=conv&run=stalled"][
        "steps"] == [100, 400], "evenly spaced snapshots, first and last kept"

    one = tmp_path / "one.html"
    assert run_report(logdir, one, "--run", "healthy").returncode == 0
    assert [r["run"] for r in inline_data(one.read_text(encoding="utf-8"))["runs"]["runs"]] == ["healthy"]
    unknown = run_report(logdir, tmp_path / "none.html", "--run", "nope")
    assert unknown.returncode == 2 and "nope" in unknown.stderr and "Traceback" not in unknown.stderr

    wide = tmp_path / "wide.html"
    assert run_report(logdir, wide, "--points", "400").returncode == 0
    assert os.path.getsize(output) < os.path.getsize(wide), "fewer points, smaller file"


def test_report_errors_are_one_line_without_traceback(tmp_path):
    missing = run_report(tmp_path / "nope", tmp_path / "r.html")
    assert missing.returncode == 2 and "no such log directory" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = run_report(tmp_path / "empty", tmp_path / "r.html")
    assert empty.returncode == 2 and "no Training Health data" in empty.stderr
    bad = run_report(tmp_path / "empty", tmp_path / "r.html", "--points", "0")
    assert bad.returncode == 2 and "points must be a positive int; received 0" in bad.stderr
    bad_hist = run_report(tmp_path / "empty", tmp_path / "r.html", "--histograms", "-1")
    assert bad_hist.returncode == 2 and "histograms must be a positive int; received -1" in bad_hist.stderr
    for out in (missing, empty, bad, bad_hist):
        assert "Traceback" not in out.stderr
    assert not (tmp_path / "r.html").exists()


def test_report_of_a_bucket(s3, tmp_path):
    server, bucket = s3
    write_run("s3://%s/runs/stalled" % bucket, seed=1, alert=ALERT)
    output = tmp_path / "report.html"
    out = run_report("s3://%s/runs" % bucket, output, "--points", "50")
    assert out.returncode == 0, out.stderr
    data = inline_data(output.read_text(encoding="utf-8"))
    assert [r["run"] for r in data["runs"]["runs"]] == ["stalled"]
    assert len(data["matrix?run=stalled&stat=dead_frac"]["first_steps"]) == 50


@pytest.mark.browser
@pytest.mark.slow
def test_report_renders_from_disk_offline_in_chromium(logdir, tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.fail("Chromium not found at %s (install Debian's chromium package)" % CHROMIUM)
    on_box = tmp_path / "box" / "report.html"
    assert run_report(logdir, on_box).returncode == 0
    output = tmp_path / "laptop" / "report.html"  # copied home alone, like `scp box:report.html .`
    output.parent.mkdir()
    shutil.copy(on_box, output)

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            blocked, errors = [], []

            def offline(route):
                if route.request.url.startswith(("file:", "blob:", "data:")):
                    route.continue_()
                else:
                    blocked.append(route.request.url)
                    route.abort()

            page.route("**/*", offline)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(output.as_uri())
            page.wait_for_selector("body[data-rendered]", timeout=30000)
            page.wait_for_function("document.body.dataset.loading === 'false'", timeout=30000)
            sections = page.eval_on_selector_all(".th-run-section", "s => s.map(x => x.dataset.run)")
            assert sections == ["healthy", "stalled"]
            for run in sections:
                canvases = page.query_selector_all(
                    ".th-run-section[data-run=%s] .th-heatmap-canvas" % run)
                assert len(canvases) == 5
                for canvas in canvases:
                    pixels = canvas.evaluate(PIXELS_JS)
                    assert pixels["painted"] > 0.5 and pixels["colors"] > 3, (run, pixels)

            alert = page.query_selector(".th-alert[data-kind=dead_units]")
            assert alert is not None
            assert ALERT.message in alert.inner_text()
            assert ALERT.hint in alert.inner_text()
            alert.click()
            page.wait_for_selector(".th-detail[data-layer=conv] .th-hist-canvas", timeout=10000)

            assert errors == []
            assert blocked == [], "the report asked the network for %s" % blocked
            # the block is in force: a request the page makes now is aborted
            probe = "http://127.0.0.1:9/probe"
            result = page.evaluate("(u) => fetch(u).then(() => 'fetched', () => 'failed')", probe)
            assert result == "failed" and blocked == [probe]
        finally:
            browser.close()
