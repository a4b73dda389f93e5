"""The tab on a sweep, in a real headless Chromium against a real
`tensorboard` process: with more than eight runs it opens with the run
overview (no run checkboxes), sorts and filters it, shows the views of the
rows selected, and compares one statistic across them on one chart.

The logs: twelve runs written by RunWriter (benchmarks/sweep.py's writer),
one of them named `<img src=x onerror=alert(1)>`.
"""

import json
import os
import sys
import urllib.request

import pytest

from training_health import format as fmt

import test_plugin_support as support
from test_browser_tab import browser  # noqa: F401  (the Chromium fixture)
from conftest import REPO_ROOT
from thtest_canvas import PIXELS_JS

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

import sweep as sweep_benchmark  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]

pytest.importorskip("playwright.sync_api")

ENTRY = "/data/plugin_entry.html?name=" + fmt.PLUGIN_NAME
RUNS = 11
STEPS = 60
XSS_RUN = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("sweep")
    for index in range(RUNS):
        sweep_benchmark.write_run(str(logdir / sweep_benchmark.run_name(index)), index, 3, STEPS)
    sweep_benchmark.write_run(str(logdir / XSS_RUN), 7, 3, STEPS)
    with support.tensorboard_process(logdir, load_fast=False) as base:
        sweep_benchmark.wait_loaded(base, RUNS + 1, STEPS - 1, 60)
        yield base


@pytest.fixture
def page(browser, server):
    dialogs, errors = [], []
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + ENTRY)
    page.wait_for_selector("body[data-overview=drawn]", timeout=30000)
    page.wait_for_selector("body[data-rendered]", timeout=30000)
    yield page
    assert errors == [] and dialogs == []
    page.close()


def overview(server):
    with urllib.request.urlopen("%s/data/plugin/%s/overview" % (server, fmt.PLUGIN_NAME), timeout=30) as r:
        return json.loads(r.read())["runs"]


def shown_runs(page):
    return page.eval_on_selector_all(".th-ov-row", "rows => rows.map(r => r.dataset.run)")


def test_many_runs_open_with_the_overview_and_no_checkbox_list(page, server):
    rows = overview(server)
    assert len(rows) == RUNS + 1
    assert page.query_selector(".th-run-list") is None  # no checkbox per run in the header
    assert page.query_selector_all(".th-run-section") == []  # nothing selected yet
    # Worst first: critical, then warning, then ok (then by name).
    order = ["error", "critical", "warning", "ok"]
    expected = sorted(rows, key=lambda r: (order.index(r["status"]), r["run"]))
    assert shown_runs(page) == [r["run"] for r in expected]
    statuses = page.eval_on_selector_all(".th-ov-row", "rows => rows.map(r => r.dataset.status)")
    assert statuses == [r["status"] for r in expected] and "critical" in statuses and "ok" in statuses
    # A row shows its worst open alert, last loss and steps, and a drawn sparkline.
    critical = next(r for r in expected if r["status"] == "critical")
    text = page.inner_text(".th-ov-row[data-run='%s']" % critical["run"])
    assert critical["worst"]["kind"].replace("_", " ") in text.lower()
    assert "step %s" % format(critical["worst"]["step"], ",") in text and str(STEPS) in text
    spark = page.query_selector(".th-ov-row[data-run='%s'] .th-ov-spark" % critical["run"])
    assert spark.evaluate(PIXELS_JS)["painted"] > 0.02
    # The run named like HTML is text.
    assert XSS_RUN in page.eval_on_selector_all(".th-ov-run", "cells => cells.map(c => c.textContent)")
    assert page.query_selector(".th-ov-run img") is None


def test_sort_and_filter(page, server):
    names = sorted(r["run"] for r in overview(server))
    page.click(".th-ov-sort[data-key=run]")
    assert shown_runs(page) == names
    page.click(".th-ov-sort[data-key=run]")
    assert shown_runs(page) == names[::-1]
    page.click(".th-ov-sort[data-key=steps]")
    assert page.get_attribute("th[aria-sort=ascending] .th-ov-sort", "data-key") == "steps"
    # by status: leave out the healthy runs
    page.uncheck(".th-ov-status-filter input[data-status=ok]")
    rows = overview(server)
    assert sorted(shown_runs(page)) == sorted(r["run"] for r in rows if r["status"] != "ok")
    page.check(".th-ov-status-filter input[data-status=ok]")
    # by name: a regular expression, case-insensitive
    page.fill(".th-ov-name", r"^LR_00[0-4]$")
    assert sorted(shown_runs(page)) == ["lr_000", "lr_001", "lr_002", "lr_003", "lr_004"]
    page.fill(".th-ov-name", "(")
    assert shown_runs(page) == [] and "Not a regular expression" in page.inner_text(".th-ov-problem")
    page.fill(".th-ov-name", "onerror")
    assert shown_runs(page) == [XSS_RUN]


def test_selected_rows_show_their_views_and_compare_them(page, server):
    page.fill(".th-ov-name", "^lr_00[12]$")
    page.click(".th-ov-select-shown")
    page.wait_for_function("document.querySelectorAll('.th-run-section').length === 2")
    page.wait_for_function("document.body.dataset.loading === 'false'")
    sections = page.eval_on_selector_all(".th-run-section", "s => s.map(x => x.dataset.run)")
    assert sections == ["lr_001", "lr_002"]
    # Compare runs: the loss of both on one chart, one legend entry each.
    page.wait_for_selector(".th-compare[data-loading=false][data-lines='2']")
    assert page.get_attribute(".th-compare", "data-stat") == "loss"
    legend = page.eval_on_selector_all(".th-cmp-legend .th-legend-item", "s => s.map(x => x.dataset.run)")
    assert legend == ["lr_001", "lr_002"]
    assert page.query_selector(".th-compare canvas").evaluate(PIXELS_JS)["colors"] >= 3
    # One statistic of one layer.
    page.select_option(".th-cmp-stat", json.dumps(["layer", "grad_norm"], separators=(",", ":")))
    page.wait_for_selector(".th-compare[data-loading=false][data-stat=grad_norm][data-layer=dense_00]")
    page.select_option(".th-cmp-layer", "dense_02")
    page.wait_for_selector(".th-compare[data-loading=false][data-layer=dense_02][data-lines='2']")
    # Clicking a selected row deselects it: one view, no comparison.
    page.fill(".th-ov-name", "")
    page.click(".th-ov-row[data-run=lr_002] .th-ov-run")
    page.wait_for_function("document.querySelectorAll('.th-run-section').length === 1")
    assert page.query_selector(".th-compare") is None


def test_the_xss_run_selected_is_text_everywhere(page):
    page.fill(".th-ov-name", "onerror|lr_000")
    page.click(".th-ov-select-shown")
    page.wait_for_selector(".th-compare[data-loading=false][data-lines='2']")
    titles = page.eval_on_selector_all(".th-run-title", "s => s.map(x => x.textContent)")
    assert XSS_RUN in titles
    legend = page.eval_on_selector_all(".th-cmp-legend .th-legend-item", "s => s.map(x => x.textContent)")
    assert XSS_RUN in legend
    assert page.query_selector(".th-root img") is None
