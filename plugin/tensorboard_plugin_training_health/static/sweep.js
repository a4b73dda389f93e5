// Many runs: the run overview (one row per run, sortable and filterable,
// rows select the runs whose views are drawn) and the comparison of one
// statistic across the selected runs. DOM and canvas; data comes in.
//
// Every string from data (run names, alert text, layer names) is inserted
// with textContent or as a canvas string, never parsed as HTML.

import {Latest, num} from './model.js';
import {LineChart, SEVERITY_COLOR, StepAxis, el, formatStep, formatValue, sizeCanvas} from './views.js';

/** Health statuses, worst first (the overview route's `status`). */
export const STATUS_ORDER = ['error', 'critical', 'warning', 'ok'];
const STATUS_COLOR = {critical: SEVERITY_COLOR.critical, warning: SEVERITY_COLOR.warning,
                      ok: '#2e7d32', error: '#6a1b9a'};
const SPARK_WIDTH = 120;
const SPARK_HEIGHT = 22;

/** Columns of the overview: key, header, sort value of a row. */
const OVERVIEW_COLUMNS = [
  {key: 'run', title: 'Run', value: (r) => r.run},
  {key: 'status', title: 'Health', value: (r) => STATUS_ORDER.indexOf(r.status)},
  {key: 'worst', title: 'Worst open alert', value: (r) => (r.worst ? r.worst.step : Infinity)},
  {key: 'last_loss', title: 'Last loss', value: (r) => lossValue(r.last_loss)},
  {key: 'steps', title: 'Steps logged', value: (r) => r.steps},
  {key: 'spark', title: 'Loss', value: null},
];

function lossValue(value) {
  const x = num(value);
  return Number.isNaN(x) ? Infinity : x;
}

/** A distinct color per line of a comparison (golden-angle hues). */
export function runColor(index) {
  return `hsl(${Math.round((index * 137.508) % 360)}, 70%, 40%)`;
}

/** The case-insensitive regular expression of a filter text, or null when it does not parse. */
export function nameFilter(text) {
  try {
    return new RegExp(text, 'i');
  } catch (e) {
    return null;
  }
}

/**
 * The run overview: one row per run (health status = worst open alert,
 * last loss, steps logged, a loss sparkline), sortable by any column,
 * filterable by status and by a name regular expression. Checking rows
 * calls `onSelect(names)`.
 */
export class RunOverview {
  constructor({onSelect}) {
    this.onSelect = onSelect;
    this.rows = [];
    this.selected = new Set();
    this.sort = {key: 'status', descending: false};
    this.statuses = new Set(STATUS_ORDER);
    this.filterText = '';
    this.statusBoxes = el('div', {className: 'th-ov-statuses'});
    this.nameBox = el('input', {className: 'th-ov-name', attrs: {
      type: 'search', placeholder: 'Filter runs by name (regular expression)',
      'aria-label': 'Filter runs by name (regular expression)'}});
    this.nameBox.addEventListener('input', () => {
      this.filterText = this.nameBox.value;
      this.drawBody();
    });
    this.filterProblem = el('span', {className: 'th-problem th-ov-problem', attrs: {'aria-live': 'polite'}});
    this.count = el('span', {className: 'th-ov-count'});
    this.head = el('tr');
    this.body = el('tbody');
    this.node = el('section', {className: 'th-overview'},
        el('h2', {className: 'th-section-title', text: 'Runs'}, this.count),
        el('div', {className: 'th-ov-controls'}, this.statusBoxes, this.nameBox, this.filterProblem,
            el('button', {className: 'th-button th-small th-ov-select-shown', text: 'Select shown',
                          on: {click: () => this.setSelection(this.shown().map((r) => r.run))}}),
            el('button', {className: 'th-button th-small th-ov-clear', text: 'Clear selection',
                          on: {click: () => this.setSelection([])}})),
        el('div', {className: 'th-ov-scroll'},
            el('table', {className: 'th-ov-table'}, el('thead', {}, this.head), this.body)));
  }

  /** New rows (the overview route's `runs`) and the current selection. */
  update(rows, selected) {
    this.rows = rows;
    this.selected = new Set(selected);
    this.drawStatusBoxes();
    this.drawHead();
    this.drawBody();
  }

  setSelection(names) {
    this.selected = new Set(names);
    this.drawBody();
    this.onSelect(this.rows.map((r) => r.run).filter((name) => this.selected.has(name)));
  }

  toggle(name) {
    const next = new Set(this.selected);
    if (next.has(name)) next.delete(name); else next.add(name);
    this.setSelection([...next]);
  }

  drawStatusBoxes() {
    const counts = {};
    for (const r of this.rows) counts[r.status] = (counts[r.status] || 0) + 1;
    const boxes = STATUS_ORDER.filter((s) => counts[s] || s !== 'error').map((status) => {
      const box = el('input', {attrs: {type: 'checkbox'}, dataset: {status}});
      box.checked = this.statuses.has(status);
      box.addEventListener('change', () => {
        if (box.checked) this.statuses.add(status); else this.statuses.delete(status);
        this.drawBody();
      });
      return el('label', {className: `th-ov-status-filter th-status-${status}`}, box,
          el('span', {className: 'th-ov-dot'}), ` ${status} (${counts[status] || 0})`);
    });
    this.statusBoxes.replaceChildren(...boxes);
  }

  drawHead() {
    const cells = [el('th', {className: 'th-ov-check'})];
    for (const column of OVERVIEW_COLUMNS) {
      if (!column.value) {
        cells.push(el('th', {text: column.title}));
        continue;
      }
      const active = this.sort.key === column.key;
      const button = el('button', {className: 'th-ov-sort', text: column.title, dataset: {key: column.key},
                                   on: {click: () => {
                                     this.sort = {key: column.key, descending: active && !this.sort.descending};
                                     this.drawHead();
                                     this.drawBody();
                                   }}});
      cells.push(el('th', {attrs: {'aria-sort': active ? (this.sort.descending ? 'descending' : 'ascending') : 'none'}},
          button, active ? (this.sort.descending ? ' ▾' : ' ▴') : null));
    }
    this.head.replaceChildren(...cells);
  }

  /** Rows passing the filters, in the chosen order. */
  shown() {
    const pattern = nameFilter(this.filterText);
    this.filterProblem.textContent = pattern ? '' : 'Not a regular expression: showing no run.';
    const column = OVERVIEW_COLUMNS.find((c) => c.key === this.sort.key);
    const sign = this.sort.descending ? -1 : 1;
    const byName = (a, b) => (a.run < b.run ? -1 : a.run > b.run ? 1 : 0);
    return this.rows
        .filter((r) => pattern && this.statuses.has(r.status) && pattern.test(r.run))
        .sort((a, b) => {
          const x = column.value(a);
          const y = column.value(b);
          const order = typeof x === 'string' ? byName(a, b) : (x === y ? 0 : x < y ? -1 : 1);
          return sign * order || byName(a, b);
        });
  }

  drawBody() {
    const rows = this.shown();
    this.count.textContent = `${rows.length} of ${this.rows.length} shown · ${this.selected.size} selected`;
    this.body.replaceChildren(...rows.map((r) => this.drawRow(r)));
    this.node.dataset.shown = String(rows.length);
  }

  drawRow(r) {
    const box = el('input', {attrs: {type: 'checkbox', 'aria-label': `Select run ${r.run}`}});
    box.checked = this.selected.has(r.run);
    box.addEventListener('click', (e) => e.stopPropagation());
    box.addEventListener('change', () => this.toggle(r.run));
    const worst = r.worst ?
        el('span', {className: 'th-ov-worst', title: r.worst.message},
            el('span', {className: 'th-ov-kind', text: r.worst.kind.replace(/_/g, ' ')}),
            ` ${r.worst.layer === null ? 'whole model' : r.worst.layer} · step ${formatStep(r.worst.step)}`,
            r.open_alerts > 1 ? el('span', {className: 'th-ov-more', text: ` (+${r.open_alerts - 1} more)`}) : null) :
        el('span', {className: 'th-ov-none', text: r.error ? r.error : '—'});
    const spark = el('canvas', {className: 'th-ov-spark', attrs: {role: 'img', 'aria-label': `loss of ${r.run}`}});
    drawSparkline(spark, r.spark, STATUS_COLOR[r.status] || '#1565c0');
    const row = el('tr', {className: this.selected.has(r.run) ? 'th-ov-row th-ov-selected' : 'th-ov-row',
                          dataset: {run: r.run, status: r.status}},
        el('td', {className: 'th-ov-check'}, box),
        el('td', {className: 'th-ov-run', text: r.run, title: r.run}),
        el('td', {className: 'th-ov-status'}, el('span', {className: `th-ov-pill th-status-${r.status}`, text: r.status})),
        el('td', {}, worst),
        el('td', {className: 'th-ov-num', text: r.last_loss === null ? '—' : formatValue(r.last_loss)}),
        el('td', {className: 'th-ov-num', text: formatStep(r.steps)}),
        el('td', {}, spark));
    row.addEventListener('click', () => this.toggle(r.run));
    return row;
  }
}

/** Draws a loss sparkline (the overview's `spark`) into a small canvas. */
export function drawSparkline(canvas, spark, color) {
  const ctx = sizeCanvas(canvas, SPARK_WIDTH, SPARK_HEIGHT);
  const values = spark.values.map(num);
  const finite = values.filter(Number.isFinite);
  if (!finite.length) return;
  const lo = Math.min(...finite);
  const hi = Math.max(...finite);
  const first = spark.first_steps[0];
  const span = Math.max(1, spark.last_steps[spark.last_steps.length - 1] - first);
  const x = (i) => 1 + ((spark.first_steps[i] - first) / span) * (SPARK_WIDTH - 2);
  const y = (v) => (hi > lo ? 2 + (1 - (v - lo) / (hi - lo)) * (SPARK_HEIGHT - 4) : SPARK_HEIGHT / 2);
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.3;
  ctx.beginPath();
  let pen = false;
  values.forEach((v, i) => {
    if (!Number.isFinite(v)) {
      pen = false;
      return;
    }
    if (pen) ctx.lineTo(x(i), y(v)); else ctx.moveTo(x(i), y(v));
    pen = true;
  });
  ctx.stroke();
}

/**
 * "Compare runs": one statistic of one layer, or a whole-model statistic
 * such as the loss, across the selected runs on one chart.
 */
export class CompareRuns {
  constructor({model, tooltip}) {
    this.model = model;
    this.tooltip = tooltip;
    this.latest = new Latest();
    this.stat = 'loss';
    this.layer = null;
    this.statSelect = el('select', {className: 'th-cmp-stat', attrs: {'aria-label': 'Statistic to compare'}});
    this.layerSelect = el('select', {className: 'th-cmp-layer', attrs: {'aria-label': 'Layer to compare'}});
    this.statSelect.addEventListener('change', () => {
      const [scope, stat] = JSON.parse(this.statSelect.value);
      this.stat = stat;
      this.layer = scope === 'layer' ? (this.layer || this.layerSelect.value || null) : null;
      this.load();
    });
    this.layerSelect.addEventListener('change', () => {
      this.layer = this.layerSelect.value;
      this.load();
    });
    this.chartSlot = el('div', {className: 'th-cmp-chart'});
    this.legend = el('div', {className: 'th-cmp-legend'});
    this.notes = el('div', {className: 'th-cmp-notes'});
    this.node = el('section', {className: 'th-compare'},
        el('h2', {className: 'th-section-title', text: 'Compare runs'}),
        el('div', {className: 'th-cmp-controls'},
            el('label', {}, 'Statistic ', this.statSelect), el('label', {}, 'Layer ', this.layerSelect)),
        this.chartSlot, this.legend, this.notes);
  }

  /**
   * The selected runs and the names they logged.
   * @param runs run names, in the selection's order.
   * @param globalNames whole-model statistic names (the series route's `names`).
   * @param layerStats layer statistic names; `layers`: layer names (union over the runs).
   */
  update(runs, globalNames, layerStats, layers, width) {
    this.runs = runs;
    this.width = width;
    if (this.layer !== null && !layers.includes(this.layer)) this.layer = layers[0] || null;
    if (this.layer === null && !globalNames.includes(this.stat)) this.stat = globalNames[0] || 'loss';
    const option = (scope, stat) => {
      const o = el('option', {text: stat.replace(/_/g, ' '), attrs: {value: JSON.stringify([scope, stat])}});
      o.selected = scope === (this.layer === null ? 'model' : 'layer') && stat === this.stat;
      return o;
    };
    this.statSelect.replaceChildren(
        el('optgroup', {attrs: {label: 'Whole model'}}, ...globalNames.map((s) => option('model', s))),
        el('optgroup', {attrs: {label: 'One layer'}}, ...layerStats.map((s) => option('layer', s))));
    this.layerSelect.replaceChildren(...layers.map((name) => {
      const o = el('option', {text: name, attrs: {value: name}});
      o.selected = name === this.layer;
      return o;
    }));
    this.layerSelect.disabled = this.layer === null;
    return this.load();
  }

  async load() {
    this.layerSelect.disabled = this.layer === null;
    const token = this.latest.next();
    this.node.dataset.loading = 'true';
    let body;
    try {
      body = await this.model.compare(this.runs, this.stat, this.layer, this.width);
    } catch (e) {
      if (!this.latest.isCurrent(token)) return;
      this.chartSlot.replaceChildren(el('p', {className: 'th-problem', text: String(e.message || e)}));
      this.legend.replaceChildren();
      this.notes.replaceChildren();
      this.node.dataset.loading = 'false';
      return;
    }
    if (!this.latest.isCurrent(token)) return;
    this.draw(body);
    this.node.dataset.loading = 'false';
  }

  draw(body) {
    const lines = body.runs.map((entry, i) => ({
      name: entry.run, steps: entry.first_steps, values: entry.values, color: runColor(i), error: entry.error,
    }));
    let lo = Infinity;
    let hi = -Infinity;
    for (const line of lines) {
      if (!line.steps.length) continue;
      lo = Math.min(lo, line.steps[0]);
      hi = Math.max(hi, line.steps[line.steps.length - 1]);
    }
    const what = body.layer === null ? body.stat : `${body.stat} of ${body.layer}`;
    const chart = new LineChart({title: what.replace(/_/g, ' '), height: 220, tooltip: this.tooltip});
    this.chartSlot.replaceChildren(chart.node);
    chart.draw(lines.filter((l) => !l.error), new StepAxis(lo === Infinity ? 0 : lo, hi === -Infinity ? 1 : hi, this.width),
        {log: 'auto'});
    this.node.dataset.stat = body.stat;
    this.node.dataset.layer = body.layer === null ? '' : body.layer;
    this.node.dataset.lines = String(lines.filter((l) => !l.error).length);
    this.legend.replaceChildren(...lines.filter((l) => !l.error).map((l) =>
      el('span', {className: 'th-legend-item', dataset: {run: l.name}},
          compareSwatch(l.color), el('span', {text: l.name}))));
    this.notes.replaceChildren(...lines.filter((l) => l.error).map((l) =>
      el('p', {className: 'th-note', text: l.error})));
  }
}

function compareSwatch(color) {
  const node = el('span', {className: 'th-swatch'});
  node.style.background = color;
  return node;
}
