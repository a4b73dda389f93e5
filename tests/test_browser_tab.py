"""The tab in a real headless Chromium against a real `tensorboard` process.

The logs are the demo's (the stalled CNN and its healthy twin,
trained with the real Keras capture) plus a synthetic run whose layer is
named `<img src=x onerror=alert(1)>`.

Chromium is the system's (`/usr/bin/chromium`, override with
TRAINING_HEALTH_CHROMIUM), driven by Playwright; no browser is downloaded.
Set TRAINING_HEALTH_SCREENSHOTS=<dir> to save the overview and layer-detail
screenshots there (docs/ holds the committed ones).
"""

import functools
import http.server
import json
import os
import shutil
import threading
import urllib.request

import numpy as np
import pytest

from training_health import format as fmt
from tensorboard_plugin_training_health import inline
from tensorboard_plugin_training_health import plugin as health_plugin

import test_plugin_support as support
from thtest_canvas import PIXELS_JS  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("TRAINING_HEALTH_CHROMIUM", "/usr/bin/chromium")
ENTRY = "/data/plugin_entry.html?name=" + fmt.PLUGIN_NAME
RED_JS = """(sel) => {
  const c = document.querySelector(sel);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const xs = [];
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] > 200 && d[i + 1] < 80 && d[i + 2] < 110) xs.push((i / 4) % c.width);
  }
  return {count: xs.length, min: Math.min(...xs), max: Math.max(...xs), width: c.width};
}"""

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    return support.demo_logdir(tmp_path_factory)


@pytest.fixture(scope="module")
def server(logdir):
    with support.tensorboard_process(logdir, load_fast=False) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail("Chromium not found at %s (install Debian's chromium package)" % CHROMIUM)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


class Page:
    """A page with its dialogs and script errors recorded."""

    def __init__(self, browser, url, width=1400):
        self.dialogs, self.errors = [], []
        self.page = browser.new_page(viewport={"width": width, "height": 1000})
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url)

    def wait_rendered(self):
        self.page.wait_for_selector("body[data-rendered]", timeout=30000)
        self.page.wait_for_function("document.body.dataset.loading === 'false'", timeout=30000)

    def close(self):
        self.page.close()


@pytest.fixture
def tab(browser, server):
    page = Page(browser, server + ENTRY)
    page.wait_rendered()
    yield page
    assert page.errors == []
    page.close()


def get_json(base, path):
    with urllib.request.urlopen("%s/data/plugin/%s/%s" % (base, fmt.PLUGIN_NAME, path),
                                timeout=30) as response:
        return json.loads(response.read())


STALLED = ".th-run-section[data-run=%s]" % support.DEMO_STALLED


def reveal(page, selector):
    """The alert element at `selector`, its incident unfolded first when it is
    a consequence (folded away under its incident's first alert)."""
    item = page.query_selector(selector)
    folded = item.evaluate("n => { const d = n.closest('details'); return d !== null && !d.open; }")
    if folded:
        item.evaluate_handle("n => n.closest('details').querySelector('summary')").as_element().click()
    assert item.is_visible()
    return item


def test_heatmaps_are_drawn(tab, server):
    page = tab.page
    sections = page.eval_on_selector_all(".th-run-section", "s => s.map(x => x.dataset.run)")
    assert sections == [support.DEMO_HEALTHY, support.DEMO_STALLED, support.XSS_RUN]
    canvases = page.query_selector_all(STALLED + " .th-heatmap-canvas")
    stats = [c.get_attribute("data-stat") for c in canvases]
    assert stats == ["grad_norm", "update_ratio", "dead_frac", "act_saturated_frac", "act_std"]
    colors = []
    for canvas in canvases:
        pixels = canvas.evaluate(PIXELS_JS)
        assert pixels["painted"] > 0.6, pixels  # the layer rows are filled
        colors.append(pixels["colors"])
    assert max(colors) >= 10  # and show a real color range, not one flat fill
    legend = page.inner_text(STALLED + " .th-heatmap[data-stat=grad_norm] .th-legend")
    assert "log scale" in legend and "not measured" in legend
    labels = page.eval_on_selector_all(
        STALLED + " .th-heatmap[data-stat=grad_norm] .th-layer-label",
        "ls => ls.map(l => l.textContent)")
    served = get_json(server, "layers?run=" + support.DEMO_STALLED)["layers"]
    assert labels == [layer["name"] for layer in served] and "conv2d" in labels


def test_hover_reads_out_layer_step_value(tab, server):
    page = tab.page
    names = [layer["name"] for layer in get_json(server, "layers?run=" + support.DEMO_STALLED)["layers"]]
    row = names.index("conv2d")
    canvas = page.query_selector(STALLED + " .th-heatmap-canvas[data-stat=dead_frac]")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    row_height = 20  # a few layers: views.js gives each row 20 px (its cap)
    y = box["y"] + (row + 0.5) * row_height
    page.mouse.move(box["x"] + box["width"] - 1, y)
    lines = page.inner_text(".th-tooltip").splitlines()
    last_step = get_json(server, "layers?run=" + support.DEMO_STALLED)["last_step"]
    assert lines == ["layer conv2d", "step %d" % last_step, "Dead-unit fraction: 1"]  # all died
    page.mouse.move(box["x"] + 1, y)
    lines = page.inner_text(".th-tooltip").splitlines()
    assert lines[0] == "layer conv2d" and lines[1] == "step 0"
    assert 0 <= float(lines[2].split(": ")[1]) <= 1


def test_stall_alert_is_listed_with_hint_and_click_moves_the_view(tab, server):
    page = tab.page
    served = get_json(server, "alerts?run=" + support.DEMO_STALLED)["alerts"]
    stall = next(a for a in served if a["kind"] == "stalled" and not a["cleared"])
    # The stall follows from the dead conv layer: the incident shows the dead
    # units with message and hint; the stall is one line folded under it.
    root = next(a for a in served if a["incident"] == stall["incident"] and a["caused_by"] is None)
    assert root["kind"] == "dead_units" and stall["caused_by"].startswith("dead_units@")
    incident = page.query_selector(".th-incident[data-run=%s][data-incident='%d']"
                                   % (support.DEMO_STALLED, stall["incident"]))
    head = incident.query_selector(":scope > .th-alert")
    assert head.get_attribute("data-kind") == "dead_units"
    assert root["message"] in head.inner_text() and "Try: " + root["hint"] in head.inner_text()
    selector = ".th-consequence[data-kind=stalled][data-run=%s]" % support.DEMO_STALLED
    assert not page.query_selector(selector).is_visible()  # folded
    item = reveal(page, selector)
    text = item.inner_text()
    assert stall["message"].split("; ")[0] in text and stall["hint"] not in text
    assert "step %d" % stall["step"] in text
    heatmap = STALLED + " .th-heatmap-canvas[data-stat=grad_norm]"
    assert page.evaluate(RED_JS, heatmap)["count"] == 0  # no cursor yet

    item.click()
    page.wait_for_function("document.body.dataset.focusStep === '%d'" % stall["step"])
    layer = stall["layer"] or ""
    assert page.evaluate("document.body.dataset.focusLayer") == layer
    where = stall["layer"] if stall["layer"] else "whole model"
    assert "%s · %s · step %d" % (support.DEMO_STALLED, where, stall["step"]) in page.inner_text(".th-focus")
    series = get_json(server, "series?run=%s&width=5000" % support.DEMO_STALLED)
    lo, hi = series["first_steps"][0], series["last_steps"][-1]
    red = page.evaluate(RED_JS, heatmap)
    expected_x = (stall["step"] - lo) / (hi - lo) * (red["width"] - 1)
    assert red["count"] > 0 and abs(red["min"] - expected_x) <= 3  # the cursor is at the step
    assert page.evaluate("window.scrollY") > 0  # the page moved to the run


def test_layer_alert_click_opens_the_layer(tab, server):
    page = tab.page
    served = get_json(server, "alerts?run=" + support.DEMO_STALLED)["alerts"]
    alert = next(a for a in served if a["layer"] == "conv2d" and not a["cleared"])
    reveal(page, ".th-alert[data-kind=%s][data-run=%s][data-layer=conv2d]"
           % (alert["kind"], support.DEMO_STALLED)).click()
    page.wait_for_selector(STALLED + " .th-detail[data-layer=conv2d] .th-hist-canvas")
    assert page.evaluate("document.body.dataset.focusLayer") == "conv2d"
    focused = page.eval_on_selector_all(STALLED + " .th-layer-label.th-focused",
                                        "ls => ls.map(l => l.textContent)")
    assert set(focused) == {"conv2d"}
    detail = page.query_selector(STALLED + " .th-detail")
    assert len(detail.query_selector_all(".th-line-canvas")) == len(fmt.LAYER_STATS)
    assert len(detail.query_selector_all(".th-hist-canvas")) == 2
    for canvas in detail.query_selector_all(".th-hist-canvas"):
        assert canvas.evaluate(PIXELS_JS)["colors"] >= 5
    save_screenshot(page, "screenshot-layer.png")


def test_drag_zooms_and_an_alert_outside_the_zoom_shows_all_steps(tab, server):
    page = tab.page
    series = get_json(server, "series?run=%s&width=5000" % support.DEMO_STALLED)
    lo, hi = series["first_steps"][0], series["last_steps"][-1]
    canvas = page.query_selector(STALLED + " .th-heatmap-canvas[data-stat=grad_norm]")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    y = box["y"] + 10
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.mouse.move(box["x"] + 0.6 * box["width"], y)
    page.mouse.down()
    page.mouse.move(box["x"] + 0.75 * box["width"], y, steps=5)
    page.mouse.move(box["x"] + 0.9 * box["width"], y, steps=5)
    page.mouse.up()
    page.wait_for_selector(STALLED + " .th-zoom-reset")
    page.wait_for_function("document.body.dataset.loading === 'false'")
    text = page.inner_text(STALLED + " .th-zoom")
    first, last = [int(v.replace(",", "")) for v in text.split()[1].split("–")]
    assert abs(first - (lo + 0.6 * (hi - lo))) <= 2 and abs(last - (lo + 0.9 * (hi - lo))) <= 2
    assert page.evaluate("document.body.dataset.focusStep") == ""  # a drag is not a click
    # The zoomed views were fetched for the window, at full width.
    asked = [u for u in requests if "/matrix?" in u and "run=stalled_cnn" in u]
    assert asked and all("start_step=%d&" % first in u and "end_step=%d&" % last in u for u in asked)
    stall = next(a for a in get_json(server, "alerts?run=" + support.DEMO_STALLED)["alerts"]
                 if a["kind"] == "stalled")
    assert not first <= stall["step"] <= last
    reveal(page, ".th-alert[data-kind=stalled][data-run=%s]" % support.DEMO_STALLED).click()
    page.wait_for_function("document.body.dataset.focusStep === '%d'" % stall["step"])
    page.wait_for_selector(STALLED + " .th-zoom-reset", state="detached")
    assert "Drag across a chart" in page.inner_text(STALLED + " .th-zoom")


def test_xss_layer_name_is_shown_as_text(tab):
    page = tab.page
    labels = page.eval_on_selector_all(
        ".th-run-section[data-run=xss_names] .th-heatmap[data-stat=grad_norm] .th-layer-label",
        "ls => ls.map(l => l.textContent)")
    assert labels == [support.XSS_LAYER, "plain"]
    alert = page.query_selector(".th-alert[data-kind=dead_units] >> text=xss_names")
    assert alert is not None
    assert "<b>bold?</b>" in page.inner_text(".th-alert-list")
    assert "<script>window.__xss = 1</script>" in page.inner_text(".th-alert-list")
    page.click(".th-run-section[data-run=xss_names] .th-layer-label >> nth=0")
    page.wait_for_selector(".th-run-section[data-run=xss_names] .th-detail")
    assert page.inner_text(".th-run-section[data-run=xss_names] .th-detail-name") == support.XSS_LAYER
    assert page.evaluate("document.querySelectorAll('img, b, script:not([type])').length") == 0
    assert page.evaluate("window.__xss") is None
    assert tab.dialogs == []
    assert_epochs_drawn(page)


XSS_SECTION = ".th-run-section[data-run=xss_names]"
GREEN_JS = """(c) => {
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (Math.abs(d[i] - 46) < 30 && Math.abs(d[i + 1] - 125) < 30 && Math.abs(d[i + 2] - 50) < 30) n++;
  }
  return n;
}"""


def assert_epochs_drawn(page):
    """The XSS run's epochs beside its loss: the epoch loss and val_loss
    (drawn in the third series colour, #2e7d32), its val metric named as text;
    the demo's Keras run (no validation data) has its epoch loss only."""
    legends = page.eval_on_selector_all(
        XSS_SECTION + " .th-line", "ls => ls.map(l => [...l.querySelectorAll('.th-legend-item')]"
        ".map(i => i.textContent))")
    assert legends[0] == ["loss", "epoch loss", "val_loss"]
    assert legends[1] == [] and support.XSS_METRIC in page.inner_text(XSS_SECTION + " .th-line >> nth=1")
    assert page.query_selector(XSS_SECTION + " .th-line-canvas").evaluate(GREEN_JS) > 20
    legend = page.eval_on_selector_all(STALLED + " .th-series-legend .th-legend-item",
                                       "ls => ls.map(l => l.textContent)")
    assert legend == ["loss", "epoch loss"]  # a fit without validation data: no val_loss


def test_selection_changes_drop_stale_answers(tab):
    page = tab.page
    box = ".th-run-list input[data-run=%s]"
    # Several changes in a row, faster than the answers arrive.
    page.click(box % support.DEMO_HEALTHY)
    page.click(box % support.DEMO_STALLED)
    page.click(box % support.XSS_RUN)
    page.click(box % support.DEMO_STALLED)
    page.wait_for_function("document.body.dataset.loading === 'false'")
    page.wait_for_timeout(500)
    sections = page.eval_on_selector_all(".th-run-section", "s => s.map(x => x.dataset.run)")
    assert sections == [support.DEMO_STALLED]
    alerts_runs = page.eval_on_selector_all(".th-alert-where", "s => s.map(x => x.textContent)")
    assert alerts_runs and all(a.startswith("stalled_cnn") for a in alerts_runs)


def test_refresh_finds_new_run_and_polling_toggles(tab, logdir):
    page = tab.page
    assert page.evaluate("document.body.dataset.polling") == "on"
    late = logdir / "zz_late_run"
    support.write_healthy_mlp(str(late), steps=20)
    try:
        for _ in range(40):
            page.click("text=Refresh now")
            if page.query_selector(".th-run-list input[data-run=zz_late_run]"):
                break
            page.wait_for_timeout(500)
        assert page.query_selector(".th-run-list input[data-run=zz_late_run]") is not None
    finally:
        shutil.rmtree(late)  # the demo logs are shared with other test modules
    page.click("#th-poll")
    assert page.evaluate("document.body.dataset.polling") == "off"


def test_polling_picks_up_a_new_run_by_itself(tab, logdir):
    page = tab.page
    # Draw the tab again with a 1 s interval (TensorBoard calls render() with none).
    page.evaluate("async () => { await (await import('./index.js')).render({pollSeconds: 1}); }")
    page.wait_for_selector("text=Auto-refresh every 1 s")
    late = logdir / "zz_polled_run"
    support.write_healthy_mlp(str(late), steps=10)
    try:
        page.wait_for_selector(".th-run-list input[data-run=zz_polled_run]", timeout=30000)
    finally:
        shutil.rmtree(late)  # the demo logs are shared with other test modules


def test_full_tensorboard_page_has_the_tab(browser, server):
    page = Page(browser, server + "/#" + fmt.PLUGIN_NAME)
    try:
        page.page.wait_for_selector("text=Training Health", timeout=30000)
        frame = None
        for _ in range(60):
            frame = next((f for f in page.page.frames if "plugin_entry" in f.url), None)
            if frame is not None:
                break
            page.page.wait_for_timeout(500)
        assert frame is not None
        frame.wait_for_selector(".th-run-section", timeout=30000)
        assert frame.query_selector(".th-alert") is not None
        out = os.environ.get("TRAINING_HEALTH_SCREENSHOTS")
        if out:
            frame.wait_for_function("document.body.dataset.loading === 'false'")
            page.page.wait_for_timeout(500)
            os.makedirs(out, exist_ok=True)
            page.page.screenshot(path=os.path.join(out, "screenshot-overview.png"))
    finally:
        page.close()


def test_tab_works_under_a_path_prefix(browser, logdir):
    """Relative fetches reach the routes when TensorBoard serves under --path_prefix."""
    with support.tensorboard_process(logdir, load_fast=False, path_prefix="/tb/here") as base:
        assert base.endswith("/tb/here")
        page = Page(browser, base + ENTRY)
        page.wait_rendered()
        sections = page.page.eval_on_selector_all(".th-run-section", "s => s.map(x => x.dataset.run)")
        assert sections == [support.DEMO_HEALTHY, support.DEMO_STALLED, support.XSS_RUN]
        assert page.page.query_selector(".th-alert") is not None
        assert page.errors == []
        page.close()


def test_page_says_when_tensorboard_downsampled(browser, logdir):
    extra = ["--samples_per_plugin", "%s=50" % fmt.PLUGIN_NAME]
    with support.tensorboard_process(logdir, load_fast=True, extra_args=extra) as base:
        page = Page(browser, base + ENTRY)
        page.wait_rendered()
        notes = page.page.inner_text(".th-run-section[data-run=stalled_cnn]")
        assert "Downsampled: TensorBoard kept 50 values per tag" in notes
        assert "--samples_per_plugin=training_health=0" in notes
        # A run under the limit carries no such note.
        assert "Downsampled" not in page.page.inner_text(".th-run-section[data-run=xss_names]")
        assert page.errors == []
        page.close()


def test_page_says_which_steps_of_a_long_run_are_block_summaries(browser, tmp_path):
    from test_history import AFTER, BLOCK, write_long_run

    write_long_run(tmp_path / "long")
    with support.tensorboard_process(str(tmp_path), load_fast=False) as base:
        page = Page(browser, base + ENTRY)
        page.wait_rendered()
        notes = page.page.inner_text(".th-run-section[data-run=long]")
        assert ("Long run: layer statistics from step %d on are stored as one summary per %d "
                "steps" % (AFTER, BLOCK)) in notes
        assert page.page.query_selector(".th-run-section[data-run=long] canvas") is not None
        assert page.errors == []
        page.close()


def test_empty_logdir_shows_the_one_line(browser, tmp_path):
    (tmp_path / "empty").mkdir()
    # tensorboard_process waits for data; an empty logdir has none, so wait on the page.
    import subprocess
    import sys
    import time

    port = support.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path / "empty"),
         "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        page = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                page = Page(browser, "http://127.0.0.1:%d%s" % (port, ENTRY))
                break
            except playwright_api.Error:
                time.sleep(0.5)
        assert page is not None
        page.page.wait_for_selector(".th-empty", timeout=30000)
        code = page.page.inner_text(".th-empty code")
        assert code == ('model.fit(x, y, callbacks=[training_health.keras.HealthCallback'
                        '("runs/my_run")])')
        page.close()
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _snapshot(logdir, runs):
    from tensorboard.backend.event_processing import data_provider as mux_provider
    from tensorboard.backend.event_processing import plugin_event_multiplexer
    from tensorboard.plugins import base_plugin

    multiplexer = plugin_event_multiplexer.EventMultiplexer(
        tensor_size_guidance={fmt.PLUGIN_NAME: 0})
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = mux_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    plugin = health_plugin.TrainingHealthPlugin(base_plugin.TBContext(data_provider=provider))
    return inline.snapshot(plugin, runs=runs, width=600)


def test_self_contained_offline_page_opens_from_disk(browser, logdir, tmp_path):
    """inline.offline_page(): code, style and data in one file, opened with file://."""
    data = _snapshot(logdir, [support.DEMO_STALLED, support.XSS_RUN])
    path = tmp_path / "report.html"
    path.write_text(inline.offline_page(data, title="<report>"), encoding="utf-8")
    page = Page(browser, path.as_uri())
    requests = []
    page.page.on("request", lambda r: requests.append(r.url))
    page.wait_rendered()
    assert page.page.title() == "<report>"
    sections = page.page.eval_on_selector_all(".th-run-section", "s => s.map(x => x.dataset.run)")
    assert sections == [support.DEMO_STALLED, support.XSS_RUN]
    canvas = page.page.query_selector(".th-run-section[data-run=stalled_cnn] .th-heatmap-canvas")
    assert canvas.evaluate(PIXELS_JS)["painted"] > 0.6
    labels = page.page.eval_on_selector_all(
        ".th-run-section[data-run=xss_names] .th-heatmap[data-stat=grad_norm] .th-layer-label",
        "ls => ls.map(l => l.textContent)")
    assert labels == [support.XSS_LAYER, "plain"]
    assert_epochs_drawn(page.page)  # the report holds the epochs too
    page.page.click(".th-alert[data-run=stalled_cnn][data-layer=conv2d] >> nth=0")
    page.page.wait_for_selector(".th-detail[data-layer=conv2d] .th-hist-canvas")
    assert requests == []  # nothing fetched: not even the stylesheet
    assert page.page.evaluate("getComputedStyle(document.querySelector('.th-header')).position") == "sticky"
    assert page.dialogs == [] and page.errors == []
    page.close()


def test_offline_page_with_inline_data(browser, logdir, tmp_path):
    """The same modules draw from data embedded in the page, with no server routes."""
    data = _snapshot(logdir, [support.DEMO_STALLED, support.XSS_RUN])
    site = tmp_path / "report"
    shutil.copytree(health_plugin.STATIC_DIR, site)
    (site / "report.html").write_text(
        "<!doctype html><html><head><meta charset=utf-8></head><body>"
        "<script>window.TRAINING_HEALTH_INLINE = %s;</script>"
        "<script type=module>import {render} from './index.js'; render();</script>"
        "</body></html>" % inline.script_json(data), encoding="utf-8")
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        page = Page(browser, "http://127.0.0.1:%d/report.html" % httpd.server_address[1])
        requests = []
        page.page.on("request", lambda r: requests.append(r.url))
        page.wait_rendered()
        sections = page.page.eval_on_selector_all(".th-run-section", "s => s.map(x => x.dataset.run)")
        assert sections == [support.DEMO_STALLED, support.XSS_RUN]
        assert page.page.query_selector("#th-poll") is None  # nothing to poll offline
        page.page.click(".th-alert[data-run=stalled_cnn][data-layer=conv2d] >> nth=0")
        page.page.wait_for_selector(".th-detail[data-layer=conv2d] .th-hist-canvas")
        assert not [u for u in requests if "/data/" in u or u.endswith(("runs", "matrix"))]
        # Python's keys are the keys model.js looks up, for awkward names too.
        params = {"run": "a b&c=d/é", "layer": support.XSS_LAYER, "width": 7, "z": "~!*()'"}
        js_key = page.page.evaluate(
            "async (p) => (await import('./model.js')).queryKey('layer', p)", params)
        assert js_key == inline.query_key("layer", params)
        assert page.dialogs == [] and page.errors == []
        page.close()
    finally:
        httpd.shutdown()


FROZEN_LAYER = "<b>base_conv</b>"


def write_frozen_base_run(path):
    """A frozen convolution (named like HTML), its ReLU layer, a trainable head."""
    from training_health.io.run_writer import RunWriter
    from training_health.records import LayerInfo

    layers = (LayerInfo(FROZEN_LAYER, "Conv2D", "relu", None, 16, False, True, frozen=True),
              LayerInfo("base_relu", "ReLU", "relu", None, 16, False, True),
              LayerInfo("head", "Dense", "softmax", (0.0, 1.0), 3, True, True, is_output=True))
    # Two more frozen layers were left out (the default), named in the metadata.
    writer = RunWriter(path, layers, frozen_unmonitored=("<i>base_pool</i>", "base_dense"))
    not_measured = [fmt.LAYER_STATS.index(s) for s in fmt.LAYER_STATS
                    if s.startswith("grad_") or s in ("weight_norm", "update_ratio")]
    for step in range(30):
        values = np.full((3, len(fmt.LAYER_STATS)), 0.1 + step / 100, np.float32)
        values[:2, not_measured] = np.nan
        writer.write_step(step, values, [1.0 / (step + 1), 1, 0, 0, 1, -1, 1, 0, 1e-3],
                          wall_time=4000.0 + step)
    writer.close()


def test_frozen_layers_are_marked_frozen(browser, tmp_path):
    """Row labels, run head and layer detail mark a frozen layer "frozen",
    not "no weights"; its HTML-like name stays text."""
    write_frozen_base_run(str(tmp_path / "logs" / "transfer"))
    with support.tensorboard_process(tmp_path / "logs", load_fast=False) as base:
        served = get_json(base, "layers?run=transfer")["layers"]
        assert [layer["frozen"] for layer in served] == [True, False, False]
        assert get_json(base, "layers?run=transfer")["frozen_unmonitored"] == [
            "<i>base_pool</i>", "base_dense"]
        page = Page(browser, base + ENTRY)
        page.wait_rendered()
        p = page.page
        section = ".th-run-section[data-run=transfer]"
        assert p.inner_text(section + " .th-run-head .th-run-meta") == (
            "3 layers, 1 frozen (2 frozen layers not measured: name them in layers= to measure them)")
        labels = p.eval_on_selector_all(
            section + " .th-heatmap[data-stat=grad_norm] .th-layer-label",
            "ls => ls.map(l => [l.dataset.layer, l.querySelector('.th-frozen-mark') !== null, "
            "l.textContent])")
        assert labels == [[FROZEN_LAYER, True, "frozen" + FROZEN_LAYER], ["base_relu", False, "base_relu"],
                          ["head", False, "head"]]
        p.click(section + " .th-heatmap[data-stat=grad_norm] .th-layer-label >> nth=0")
        p.wait_for_selector(section + " .th-detail")
        assert p.inner_text(section + " .th-detail-name") == FROZEN_LAYER
        meta = p.inner_text(section + " .th-detail-head .th-run-meta")
        assert meta == "Conv2D · relu · 16 units · frozen"
        assert p.query_selector(section + " .th-layer-label.th-focused").get_attribute("data-layer") == FROZEN_LAYER
        p.click(section + " .th-heatmap[data-stat=grad_norm] .th-layer-label >> nth=1")
        p.wait_for_selector(section + " .th-detail[data-layer=base_relu]")
        assert p.inner_text(section + " .th-detail-head .th-run-meta") == "ReLU · relu · 16 units · no weights"
        assert p.evaluate("document.querySelectorAll('b').length") == 0
        assert page.dialogs == [] and page.errors == []
        page.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = dict(http.server.SimpleHTTPRequestHandler.extensions_map,
                          **{".js": "text/javascript"})

    def log_message(self, *args):
        pass


def save_screenshot(page, name):
    out = os.environ.get("TRAINING_HEALTH_SCREENSHOTS")
    if not out:
        return
    os.makedirs(out, exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": 1400})
    page.wait_for_timeout(800)  # the page redraws for the new size
    detail = page.query_selector(STALLED + " .th-detail")
    header = page.evaluate("() => document.querySelector('.th-header').offsetHeight")
    page.evaluate("(el) => window.scrollTo(0, el.getBoundingClientRect().top + window.scrollY - %d)"
                  % (header + 8), detail)
    page.wait_for_timeout(300)
    box = detail.bounding_box()
    page.screenshot(path=os.path.join(out, name), clip={
        "x": 0, "y": 0, "width": 1400, "height": min(1400, box["y"] + box["height"] + 12)})
