// Entry of the Training Health tab. TensorBoard's plugin iframe imports this
// module and calls render() with no arguments; an offline report may call
// render({source}) with an InlineSource instead.

import {
  DataError, HEATMAP_STATS, LOG_STATS, Latest, Model, defaultSource, groupIncidents, orderAlerts,
} from './model.js';
import {
  FROZEN_NOTE, HistogramStrip, Heatmap, LineChart, SEVERITY_COLOR, StepAxis, Tooltip, alertPanel,
  describeLayer, el, emptyState, formatStep, runSelector,
} from './views.js';
import {CompareRuns, RunOverview} from './sweep.js';

const POLL_SECONDS = 15;
const MANY_RUNS = 8; // above this many runs the tab opens with the run overview
const LABEL_WIDTH = 170; // px of the layer-name column left of every chart
const STYLE_MARK = 'data-training-health-style';

/**
 * Draws the tab into `root` and starts polling.
 *
 * @param {object} options
 *   root: element to draw into. Defaults to document.body.
 *   source: a DataSource (FetchSource or InlineSource). Defaults to
 *     inline data when `window.TRAINING_HEALTH_INLINE` is set, else HTTP.
 *   pollSeconds: auto-refresh interval. Defaults to 15.
 * @returns the App (for tests and reports).
 */
export async function render(options = {}) {
  addStyle();
  const app = new App({
    root: options.root || document.body,
    model: new Model(options.source || defaultSource()),
    pollSeconds: options.pollSeconds || POLL_SECONDS,
  });
  await app.start();
  return app;
}

function addStyle() {
  if (document.querySelector(`[${STYLE_MARK}]`)) return;
  const link = el('link', {attrs: {rel: 'stylesheet', href: './style.css', [STYLE_MARK]: ''}});
  document.head.append(link);
}

function errorText(e) {
  if (e instanceof DataError) return e.status ? `${e.message} (HTTP ${e.status})` : e.message;
  return String(e && e.message ? e.message : e);
}

class App {
  constructor({root, model, pollSeconds}) {
    this.root = root;
    this.model = model;
    this.pollSeconds = pollSeconds;
    this.tooltip = new Tooltip();
    this.runs = [];
    this.selected = null; // null until the first list of runs arrived
    this.versions = new Map(); // run -> "last_step/last_wall_time" drawn
    this.views = new Map(); // run -> RunView
    this.focus = null; // {run, step, layer}
    this.zooms = new Map(); // run -> [firstStep, lastStep] shown
    this.selectionLatest = new Latest();
    this.runsLatest = new Latest();
    this.timer = null;
  }

  async start() {
    this.root.classList.add('th-root');
    this.selectorSlot = el('div', {className: 'th-selector-slot'});
    this.status = el('span', {className: 'th-status', attrs: {'aria-live': 'polite'}});
    this.pollBox = el('input', {attrs: {type: 'checkbox', id: 'th-poll'}});
    this.pollBox.checked = this.model.live;
    this.pollBox.addEventListener('change', () => this.setPolling(this.pollBox.checked));
    const controls = el('div', {className: 'th-controls'},
        this.model.live ? el('label', {className: 'th-poll', title: 'Check for new data regularly'},
            this.pollBox, ` Auto-refresh every ${this.pollSeconds} s`) : null,
        this.model.live ? el('button', {className: 'th-button', text: 'Refresh now',
                                        on: {click: () => this.refresh()}}) : null,
        this.status);
    this.focusBar = el('div', {className: 'th-focus', attrs: {'aria-live': 'polite'}});
    this.alertSlot = el('div', {className: 'th-alert-slot'});
    this.overviewSlot = el('div', {className: 'th-overview-slot'});
    this.compareSlot = el('div', {className: 'th-compare-slot'});
    this.compare = new CompareRuns({model: this.model, tooltip: this.tooltip});
    this.main = el('main', {className: 'th-main'});
    this.root.replaceChildren(
        el('header', {className: 'th-header'},
            el('h1', {className: 'th-title', text: 'Training Health'}), this.selectorSlot, controls),
        this.focusBar, this.overviewSlot, this.alertSlot, this.compareSlot, this.main, this.tooltip.node);
    window.addEventListener('resize', () => {
      clearTimeout(this.resizeTimer);
      this.resizeTimer = setTimeout(() => this.loadSelection(), 250);
    });
    await this.refresh();
    this.setPolling(this.model.live);
  }

  setPolling(on) {
    clearInterval(this.timer);
    this.timer = on ? setInterval(() => this.refresh(), this.pollSeconds * 1000) : null;
    this.pollBox.checked = on;
    this.root.dataset.polling = on ? 'on' : 'off';
  }

  setStatus(text) {
    this.status.textContent = text;
  }

  /** Fetches the run list; reloads the selection when something changed. */
  async refresh() {
    const token = this.runsLatest.next();
    let body;
    try {
      body = await this.model.runs();
    } catch (e) {
      if (!this.runsLatest.isCurrent(token)) return;
      if (!this.runs.length) this.showEmpty(`Could not list runs: ${errorText(e)}`);
      this.setStatus(`Could not refresh: ${errorText(e)}`);
      return;
    }
    if (!this.runsLatest.isCurrent(token)) return;
    this.runs = body.runs;
    this.setStatus(`Updated ${new Date().toLocaleTimeString()}`);
    if (!this.runs.length) {
      this.showEmpty(null);
      return;
    }
    const names = this.runs.map((r) => r.run);
    const many = this.runs.length > MANY_RUNS;
    if (this.selected === null || this.root.dataset.empty === 'true') {
      this.selected = many ? [] : names.slice(); // many runs: the overview picks
    }
    this.selected = this.selected.filter((name) => names.includes(name));
    this.root.dataset.empty = 'false';
    if (!(many && await this.showOverview(token))) {
      if (!this.runsLatest.isCurrent(token)) return;
      this.overviewSlot.replaceChildren();
      this.root.dataset.overview = 'off';
      this.selectorSlot.replaceChildren(
          runSelector(this.runs, this.selected, (chosen) => this.select(chosen)));
    }
    if (!this.runsLatest.isCurrent(token)) return;
    const changed = this.selected.some((name) => this.versions.get(name) !== this.version(name)) ||
        this.selected.length !== this.views.size || this.root.dataset.rendered === undefined;
    if (changed) await this.loadSelection();
  }

  /**
   * Shows the run overview instead of the run checkboxes; false when the
   * source has no overview (e.g. an offline report), true once drawn.
   */
  async showOverview(token) {
    let body;
    try {
      body = await this.model.overview();
    } catch (e) {
      return false;
    }
    if (!this.runsLatest.isCurrent(token)) return true;
    if (!this.overview) this.overview = new RunOverview({onSelect: (chosen) => this.select(chosen)});
    this.overview.update(body.runs, this.selected);
    if (this.overview.node.parentNode !== this.overviewSlot) this.overviewSlot.replaceChildren(this.overview.node);
    this.selectorSlot.replaceChildren(el('span', {className: 'th-label', text: `${body.runs.length} runs`}));
    this.root.dataset.overview = 'drawn';
    return true;
  }

  /** "Compare runs" over the loaded runs (two or more). */
  drawCompare(bundles, width) {
    const loaded = bundles.filter((b) => b.layers || b.series);
    if (loaded.length < 2) {
      this.compareSlot.replaceChildren();
      return;
    }
    const union = (lists) => [...new Set([].concat(...lists))];
    const globalNames = union(loaded.map((b) => (b.series ? b.series.names : [])));
    const layerStats = union(loaded.map((b) => (b.layers ? b.layers.stats : [])));
    const layers = union(loaded.map((b) => (b.layers ? b.layers.layers.map((l) => l.name) : [])));
    if (this.compare.node.parentNode !== this.compareSlot) this.compareSlot.replaceChildren(this.compare.node);
    this.compare.update(loaded.map((b) => b.run), globalNames, layerStats, layers, width);
  }

  version(run) {
    const r = this.runs.find((x) => x.run === run);
    return r ? `${r.last_step}/${r.last_wall_time}` : '';
  }

  showEmpty(problem) {
    this.root.dataset.empty = 'true';
    this.selectorSlot.replaceChildren();
    this.alertSlot.replaceChildren();
    this.overviewSlot.replaceChildren();
    this.compareSlot.replaceChildren();
    this.focusBar.replaceChildren();
    this.views.clear();
    this.main.replaceChildren(emptyState(problem));
  }

  select(chosen) {
    this.selected = chosen;
    this.loadSelection();
  }

  plotWidth() {
    const width = this.main.clientWidth || this.root.clientWidth || 900;
    return Math.max(240, Math.floor(width - LABEL_WIDTH - 24));
  }

  /** Loads and draws every selected run; drops answers of an older selection. */
  async loadSelection() {
    if (!this.selected || this.root.dataset.empty === 'true') return;
    const token = this.selectionLatest.next();
    const runs = this.selected.slice();
    const width = this.plotWidth();
    this.root.dataset.loading = 'true';
    const bundles = await Promise.all(runs.map((run) => this.loadRun(run, width)));
    if (!this.selectionLatest.isCurrent(token)) return; // the selection changed meanwhile
    this.root.dataset.loading = 'false';
    const old = this.views;
    this.views = new Map();
    const sections = [];
    for (const bundle of bundles) {
      const view = new RunView(this, bundle, width);
      const previous = old.get(bundle.run);
      if (previous && previous.detailLayer) view.openDetail(previous.detailLayer, false);
      this.views.set(bundle.run, view);
      this.versions.set(bundle.run, bundle.version);
      sections.push(view.node);
    }
    if (!sections.length) {
      sections.push(el('p', {className: 'th-hint-empty', text: 'Select a run above to see its health.'}));
    }
    this.main.replaceChildren(...sections);
    this.drawCompare(bundles, width);
    const alertsByRun = bundles.filter((b) => b.alerts).map((b) => [b.run, b.alerts.alerts]);
    this.alertSlot.replaceChildren(
        alertPanel(groupIncidents(orderAlerts(alertsByRun)), (a) => this.pickAlert(a)));
    if (this.focus && !this.views.has(this.focus.run)) this.focus = null;
    this.applyFocus();
    this.root.dataset.rendered = String(token);
  }

  async loadRun(run, width) {
    const zoom = this.zooms.get(run) || null;
    const bundle = {run, version: this.version(run), error: null, zoom};
    const info = this.runs.find((r) => r.run === run) || {};
    const guard = (promise) => promise.catch((e) => {
      bundle.error = bundle.error || errorText(e);
      return null;
    });
    const [layers, series, alerts, epochs, ...matrices] = await Promise.all([
      guard(this.model.layers(run)),
      info.has_series === false ? null : guard(this.model.series(run, width, zoom)),
      guard(this.model.alerts(run)),
      info.has_epochs ? guard(this.model.epochs(run, zoom)) : null,
      ...HEATMAP_STATS.map((spec) => guard(this.model.matrix(run, spec.stat, width, zoom))),
    ]);
    Object.assign(bundle, {info, layers, series, alerts, epochs, matrices});
    return bundle;
  }

  pickAlert(alert) {
    this.setFocus({run: alert.run, step: alert.step, layer: alert.layer}, true);
  }

  /** Shows only steps lo..hi of `run` (null: all steps). */
  zoom(run, range) {
    if (range) this.zooms.set(run, range); else this.zooms.delete(run);
    return this.loadSelection();
  }

  /** Moves every view to `focus` ({run, step, layer}); opens the layer's detail. */
  async setFocus(focus, scroll) {
    this.focus = focus;
    const zoom = this.zooms.get(focus.run);
    if (zoom && (focus.step < zoom[0] || focus.step > zoom[1])) await this.zoom(focus.run, null);
    this.applyFocus();
    const view = this.views.get(focus.run);
    if (view && focus.layer !== null && focus.layer !== undefined) view.openDetail(focus.layer, true);
    if (view && scroll) view.node.scrollIntoView({block: 'start'});
  }

  applyFocus() {
    const f = this.focus;
    if (!f) {
      this.focusBar.replaceChildren();
      this.root.dataset.focusStep = '';
      this.root.dataset.focusLayer = '';
    } else {
      this.focusBar.replaceChildren(
          el('span', {className: 'th-label', text: 'Focus'}),
          el('span', {className: 'th-focus-text',
                      text: `${f.run} · ${f.layer === null ? 'whole model' : f.layer} · step ${formatStep(f.step)}`}),
          el('button', {className: 'th-button th-small', text: 'Clear',
                        on: {click: () => {
                          this.focus = null;
                          this.applyFocus();
                        }}}));
      this.root.dataset.focusStep = String(f.step);
      this.root.dataset.focusLayer = f.layer === null ? '' : f.layer;
    }
    for (const [run, view] of this.views) view.setFocus(f && f.run === run ? f : null);
  }
}

/** One run: loss chart, heatmaps and (on demand) a layer's detail. */
class RunView {
  constructor(app, bundle, width) {
    this.app = app;
    this.bundle = bundle;
    this.run = bundle.run;
    this.width = width;
    this.detailLatest = new Latest();
    this.detailLayer = null;
    this.charts = [];
    this.node = el('section', {className: 'th-run-section', dataset: {run: bundle.run}});
    this.build();
  }

  stepRange() {
    if (this.bundle.zoom) return this.bundle.zoom;
    let lo = Infinity;
    let hi = -Infinity;
    const all = [this.bundle.series, ...(this.bundle.matrices || [])].filter(Boolean);
    for (const d of all) {
      if (!d.first_steps.length) continue;
      lo = Math.min(lo, d.first_steps[0]);
      hi = Math.max(hi, d.last_steps[d.last_steps.length - 1]);
    }
    return lo === Infinity ? [0, 1] : [lo, hi];
  }

  samplingNotes() {
    const notes = [];
    const all = [this.bundle.series, this.bundle.alerts, ...(this.bundle.matrices || [])].filter(Boolean);
    const capped = all.find((d) => d.downsampled);
    if (capped) {
      notes.push(`Downsampled: TensorBoard kept ${capped.samples.toLocaleString('en-US')} values per tag ` +
          `of this run (its sample limit), so some logged steps are not shown. Start TensorBoard ` +
          `with --samples_per_plugin=training_health=0 to keep every step.`);
    }
    const m = (this.bundle.matrices || []).find(Boolean);
    if (m && m.summarized_from != null) {
      notes.push(`Long run: layer statistics from step ${formatStep(m.summarized_from)} on are ` +
          `stored as one summary per ${formatStep(m.history_block)} steps (min, mean, max), each ` +
          `shown at its block's last step; the steps around alerts and the last steps are exact. ` +
          `Loss and global statistics are exact at every step.`);
    }
    if (m && !this.bundle.zoom && m.first_steps.length < m.samples) {
      notes.push(`${m.samples.toLocaleString('en-US')} stored steps shown in ${m.first_steps.length} ` +
          `columns; each column is the ${m.reduce} of its steps.`);
    }
    return notes;
  }

  build() {
    const b = this.bundle;
    const frozen = new Set(b.layers ? b.layers.layers.filter((l) => l.frozen).map((l) => l.name) : []);
    const unmeasured = b.layers ? (b.layers.frozen_unmonitored || []).length : 0;
    const name = b.layers ? `${b.layers.layers.length} layers` + (frozen.size ? `, ${frozen.size} frozen` : '') +
        (unmeasured ? ` (${unmeasured} frozen layer${unmeasured === 1 ? '' : 's'} not measured: ` +
            `name them in layers= to measure them)` : '') : '';
    const zoom = b.zoom ?
        el('span', {className: 'th-zoom'},
            `Steps ${formatStep(b.zoom[0])}–${formatStep(b.zoom[1])}`,
            el('button', {className: 'th-button th-small th-zoom-reset', text: 'Show all steps',
                          on: {click: () => this.app.zoom(this.run, null)}})) :
        el('span', {className: 'th-zoom', text: 'Drag across a chart to zoom into steps.'});
    const head = el('div', {className: 'th-run-head'},
        el('h2', {className: 'th-run-title', text: this.run}),
        el('span', {className: 'th-run-meta', text: name}), zoom);
    this.node.append(head);
    if (b.info && b.info.error) {
      this.node.append(el('p', {className: 'th-problem', text: b.info.error}));
      return;
    }
    if (b.error) this.node.append(el('p', {className: 'th-problem', text: `Some data could not be loaded: ${b.error}`}));
    for (const note of this.samplingNotes()) {
      this.node.append(el('p', {className: 'th-note th-sampling', text: note}));
    }
    const [lo, hi] = this.stepRange();
    this.axis = new StepAxis(lo, hi, this.width);
    const onZoom = (from, to) => this.app.zoom(this.run, [from, to]);
    const pick = (step) => this.app.setFocus({
      run: this.run, step, layer: this.app.focus && this.app.focus.run === this.run ? this.app.focus.layer : null,
    }, false);
    const alerts = b.alerts ? b.alerts.alerts.filter((a) => !a.cleared) : [];
    const markers = alerts.map((a) => ({
      step: a.step, color: SEVERITY_COLOR[a.severity] || SEVERITY_COLOR.warning,
      label: `${a.severity}: ${a.kind.replace(/_/g, ' ')}${a.layer === null ? '' : ` in ${a.layer}`}`,
    }));
    if (b.series) {
      const s = b.series;
      // The epochs' losses and validation metrics, at each epoch's last step.
      const e = b.epochs && b.epochs.steps.length ? b.epochs : null;
      const epochSeries = (names, label) => (e ? names.filter((n) => e.names.includes(n)) : []).map(
          (n) => ({name: label(n), steps: e.steps, values: e.values[n], dots: true}));
      const valMetrics = e ? e.names.filter((n) => n.startsWith('val_') && n !== 'val_loss') : [];
      const loss = new LineChart({
        title: e ? 'Loss (per batch, and per epoch at its last step)' : 'Loss (per batch)',
        height: 170, tooltip: this.app.tooltip, onPick: pick, onZoom});
      this.node.append(row(el('div', {className: 'th-side-note', text: 'Alerts are marked on the loss.'}), loss.node));
      loss.draw([{name: 'loss', steps: s.first_steps, values: s.values.loss},
        ...epochSeries(['loss'], () => 'epoch loss'), ...epochSeries(['val_loss'], (n) => n)], this.axis,
      {markers, log: 'auto'});
      this.charts.push(loss);
      if (s.metrics.length || valMetrics.length) {
        const names = [...s.metrics, ...valMetrics];
        const metrics = new LineChart({title: `Metrics: ${names.join(', ')}`, height: 110,
                                       tooltip: this.app.tooltip, onPick: pick, onZoom});
        this.node.append(row(null, metrics.node));
        metrics.draw([...s.metrics.map((m) => ({name: m, steps: s.first_steps, values: s.values[m]})),
          ...epochSeries(valMetrics, (n) => n)], this.axis, {});
        this.charts.push(metrics);
      }
    }
    this.heatmaps = [];
    HEATMAP_STATS.forEach((spec, i) => {
      const matrix = b.matrices && b.matrices[i];
      if (!matrix) return;
      const heatmap = new Heatmap({
        spec, tooltip: this.app.tooltip, onZoom,
        onPick: ({layer, step}) => this.app.setFocus({run: this.run, layer, step: step === null ? hi : step}, false),
      });
      heatmap.draw(matrix, this.axis, null, frozen);
      this.heatmaps.push(heatmap);
      this.node.append(heatmap.node);
    });
    this.detailSlot = el('div', {className: 'th-detail-slot'});
    this.node.append(this.detailSlot);
  }

  setFocus(focus) {
    this.focus = focus;
    const step = focus ? focus.step : null;
    for (const chart of this.charts) chart.setFocus(step);
    for (const heatmap of this.heatmaps || []) heatmap.setFocus(focus);
    for (const chart of this.detailCharts || []) chart.setFocus(step);
  }

  /** Loads and draws the detail of one layer; an older request's answer is dropped. */
  async openDetail(layer, scroll) {
    this.detailLayer = layer;
    const token = this.detailLatest.next();
    const info = this.bundle.info || {};
    const total = this.width + LABEL_WIDTH - 24;
    this.smallColumns = Math.max(2, Math.min(5, Math.floor(total / 250)));
    const smallWidth = Math.floor((total - 12 * (this.smallColumns - 1)) / this.smallColumns);
    const model = this.app.model;
    let data;
    let histograms = null;
    let problem = null;
    try {
      [data, histograms] = await Promise.all([
        model.layer(this.run, layer, smallWidth, this.bundle.zoom),
        info.has_histograms ? model.histograms(this.run, layer, 200).catch((e) => {
          problem = errorText(e);
          return null;
        }) : null,
      ]);
    } catch (e) {
      if (!this.detailLatest.isCurrent(token)) return;
      this.detailSlot.replaceChildren(el('p', {className: 'th-problem', text: errorText(e)}));
      return;
    }
    if (!this.detailLatest.isCurrent(token)) return; // another layer was picked meanwhile
    this.drawDetail(data, histograms, problem, smallWidth);
    if (scroll) this.detailSlot.scrollIntoView({block: 'nearest'});
  }

  drawDetail(data, histograms, problem, smallWidth) {
    const step = this.focus ? this.focus.step : null;
    const smallAxis = new StepAxis(this.axis.lo, this.axis.hi, smallWidth);
    this.detailCharts = [];
    const grid = el('div', {className: 'th-small-multiples'});
    grid.style.gridTemplateColumns = `repeat(${this.smallColumns}, max-content)`;
    for (const stat of data.stats) {
      const chart = new LineChart({
        title: stat.replace(/_/g, ' ') + (LOG_STATS.has(stat) ? ' (log)' : ''),
        height: 88, compact: true, tooltip: this.app.tooltip,
        onPick: (s) => this.app.setFocus({run: this.run, layer: data.layer.name, step: s}, false),
      });
      grid.append(chart.node);
      chart.draw([{name: stat, steps: data.first_steps, values: data.values[stat]}], smallAxis,
          {log: LOG_STATS.has(stat) || 'auto', focusStep: step});
      this.detailCharts.push(chart);
    }
    const parts = [
      el('div', {className: 'th-detail-head'},
          el('h3', {className: 'th-detail-title'}, 'Layer ', el('span', {className: 'th-detail-name', text: data.layer.name})),
          el('span', {className: 'th-run-meta', text: describeLayer(data.layer),
                      title: data.layer.frozen ? FROZEN_NOTE : undefined}),
          el('button', {className: 'th-button th-small', text: 'Close', on: {click: () => this.closeDetail()}})),
      grid,
    ];
    if (histograms) {
      const histAxis = new StepAxis(this.axis.lo, this.axis.hi, this.width + LABEL_WIDTH);
      for (const kind of ['gradient', 'activation']) {
        const strip = new HistogramStrip({kind, tooltip: this.app.tooltip});
        strip.draw(histograms, histAxis, step);
        parts.push(strip.node);
        this.detailCharts.push(strip);
      }
    } else if (problem) {
      parts.push(el('p', {className: 'th-problem', text: problem}));
    } else {
      parts.push(el('p', {className: 'th-note', text: 'No histograms were logged for this run.'}));
    }
    this.detailSlot.replaceChildren(el('section', {className: 'th-detail', dataset: {layer: data.layer.name}}, ...parts));
  }

  closeDetail() {
    this.detailLatest.next();
    this.detailLayer = null;
    this.detailCharts = [];
    this.detailSlot.replaceChildren();
  }
}

function row(side, chart) {
  return el('div', {className: 'th-row'}, el('div', {className: 'th-row-side'}, side), chart);
}
