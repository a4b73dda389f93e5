// Drawing of the Training Health tab: DOM and canvas, no fetching.
//
// Every string that comes from data (run, layer, alert text) is inserted
// with textContent or as a canvas string, never parsed as HTML.

import {num} from './model.js';

// ---------------------------------------------------------------- DOM helpers

/**
 * Creates an element. `props`: className, text, title, attrs (object),
 * on (event -> handler), dataset (object). Children: nodes or strings.
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  if (props.className) node.className = props.className;
  if (props.text !== undefined) node.textContent = String(props.text);
  if (props.title !== undefined) node.title = String(props.title);
  for (const [k, v] of Object.entries(props.attrs || {})) node.setAttribute(k, String(v));
  for (const [k, v] of Object.entries(props.dataset || {})) node.dataset[k] = String(v);
  for (const [k, v] of Object.entries(props.on || {})) node.addEventListener(k, v);
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return node;
}

/** Formats a number for read-outs: 0, 0.0123, 1.23e-7, 12345. */
export function formatValue(v) {
  if (v === null || v === undefined) return 'not measured';
  const x = num(v);
  if (Number.isNaN(x)) return 'not measured';
  if (!Number.isFinite(x)) return x > 0 ? '+Inf' : '-Inf';
  if (x === 0) return '0';
  const a = Math.abs(x);
  if (a < 1e-3 || a >= 1e5) return x.toExponential(2);
  return String(Number(x.toPrecision(4)));
}

export function formatStep(step) {
  return Number(step).toLocaleString('en-US');
}

// ---------------------------------------------------------------- colors

// A dark-to-bright sequential palette (blue, teal, green, yellow).
const PALETTE = [
  [24, 22, 66], [41, 64, 128], [33, 120, 142], [40, 170, 126], [140, 205, 72], [250, 228, 60],
];
export const NOT_MEASURED_RGB = [226, 228, 232];
export const NON_FINITE_RGB = [226, 40, 160];

export function paletteColor(t) {
  const x = Math.min(Math.max(t, 0), 1) * (PALETTE.length - 1);
  const i = Math.min(Math.floor(x), PALETTE.length - 2);
  const f = x - i;
  const a = PALETTE[i];
  const b = PALETTE[i + 1];
  return [0, 1, 2].map((k) => Math.round(a[k] + (b[k] - a[k]) * f));
}

const rgb = (c) => `rgb(${c[0]},${c[1]},${c[2]})`;
export const SEVERITY_COLOR = {critical: '#d32f2f', warning: '#ef8f00'};
const SERIES_COLORS = ['#1565c0', '#ef6c00', '#2e7d32', '#6a1b9a', '#00838f', '#ad1457'];

/**
 * Maps values to [0, 1]. kind "log" uses log10 of positive values (0 and
 * negatives map to 0); `domain` fixes the range, else it comes from data.
 */
export class ColorScale {
  constructor(kind, lo, hi) {
    this.kind = kind;
    this.lo = lo;
    this.hi = hi;
  }
  static fromMatrix(spec, matrix) {
    if (spec.domain) return new ColorScale('linear', spec.domain[0], spec.domain[1]);
    if (spec.scale === 'log') {
      const lo = matrix.min_positive !== null ? matrix.min_positive : 1e-12;
      const hi = matrix.max !== null && matrix.max > 0 ? matrix.max : lo * 10;
      return new ColorScale('log', Math.log10(lo), Math.log10(Math.max(hi, lo * 1.0001)));
    }
    const lo = matrix.min !== null ? matrix.min : 0;
    const hi = matrix.max !== null ? matrix.max : 1;
    return new ColorScale('linear', lo, hi > lo ? hi : lo + 1);
  }
  t(v) {
    let x = v;
    if (this.kind === 'log') {
      if (!(v > 0)) return 0;
      x = Math.log10(v);
    }
    return (x - this.lo) / (this.hi - this.lo || 1);
  }
  color(v) {
    if (Number.isNaN(v)) return NOT_MEASURED_RGB;
    if (!Number.isFinite(v)) return NON_FINITE_RGB;
    return paletteColor(this.t(v));
  }
  label(end) {
    const x = end === 'lo' ? this.lo : this.hi;
    return this.kind === 'log' ? formatValue(10 ** x) : formatValue(x);
  }
}

// ---------------------------------------------------------------- canvas

/** Sizes a canvas for the device's pixel ratio; returns its 2d context in CSS px. */
export function sizeCanvas(canvas, width, height) {
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.max(1, Math.round(width * ratio));
  canvas.height = Math.max(1, Math.round(height * ratio));
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext('2d');
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  return ctx;
}

/** Maps steps in [lo, hi] to x in [0, width). */
export class StepAxis {
  constructor(lo, hi, width) {
    this.lo = lo;
    this.hi = hi > lo ? hi : lo + 1;
    this.width = width;
  }
  x(step) {
    return ((step - this.lo) / (this.hi - this.lo)) * (this.width - 1);
  }
  step(x) {
    return this.lo + (x / (this.width - 1)) * (this.hi - this.lo);
  }
  ticks(count = 6) {
    const span = this.hi - this.lo;
    const raw = span / count;
    const mag = 10 ** Math.floor(Math.log10(raw || 1));
    const nice = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((m) => m >= raw) || raw;
    const out = [];
    for (let s = Math.ceil(this.lo / nice) * nice; s <= this.hi; s += nice) out.push(s);
    return out;
  }
}

function drawStepTicks(ctx, axis, y, height) {
  ctx.fillStyle = '#5f6368';
  ctx.font = '10px system-ui, sans-serif';
  ctx.textBaseline = 'top';
  for (const s of axis.ticks()) {
    const x = axis.x(s);
    ctx.fillRect(Math.round(x), y, 1, 3);
    ctx.textAlign = x < 20 ? 'left' : x > axis.width - 30 ? 'right' : 'center';
    ctx.fillText(formatStep(Math.round(s)), x, y + 4, 80);
  }
  void height;
}

function lastIndexAtOrBefore(sorted, value) {
  let lo = 0;
  let hi = sorted.length - 1;
  if (hi < 0 || sorted[0] > value) return -1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (sorted[mid] <= value) lo = mid; else hi = mid - 1;
  }
  return lo;
}

/** The column (index into first_steps) shown at `step`, or -1. */
export function columnAt(firstSteps, step) {
  return lastIndexAtOrBefore(firstSteps, step);
}

/**
 * Lets the user drag across `canvas` to pick a step range.
 *
 * `getAxis()` returns the canvas's StepAxis; `onZoom(loStep, hiStep)` is
 * called when a drag of at least 6 px ends. Returns a function telling
 * whether the last pointer-up ended a drag (the click that follows a drag
 * is not a pick).
 */
export function brush(canvas, getAxis, onZoom) {
  let dragged = false;
  const band = el('div', {className: 'th-brush'});
  const xOf = (e) => Math.min(Math.max(e.clientX - canvas.getBoundingClientRect().left, 0),
                              canvas.clientWidth);
  canvas.addEventListener('mousedown', (down) => {
    if (down.button !== 0 || !getAxis()) return;
    down.preventDefault();
    const start = xOf(down);
    dragged = false;
    // Listen on the window only while the button is down, so nothing is
    // left behind when the chart is redrawn.
    const move = (e) => {
      const x = xOf(e);
      if (Math.abs(x - start) < 6) return;
      if (!band.isConnected) canvas.parentElement.append(band);
      band.style.left = `${canvas.offsetLeft + Math.min(start, x)}px`;
      band.style.top = `${canvas.offsetTop}px`;
      band.style.width = `${Math.abs(x - start)}px`;
      band.style.height = `${canvas.clientHeight}px`;
    };
    const up = (e) => {
      window.removeEventListener('mousemove', move);
      window.removeEventListener('mouseup', up);
      band.remove();
      const x = xOf(e);
      dragged = Math.abs(x - start) >= 6;
      if (!dragged) return;
      const axis = getAxis();
      onZoom(Math.round(axis.step(Math.min(start, x))), Math.round(axis.step(Math.max(start, x))));
    };
    window.addEventListener('mousemove', move);
    window.addEventListener('mouseup', up);
  });
  return () => dragged;
}

/** A floating read-out that follows the pointer; text only. Append `node` to the page. */
export class Tooltip {
  constructor() {
    this.node = el('div', {className: 'th-tooltip', attrs: {role: 'status'}});
    this.node.hidden = true;
  }
  show(event, lines) {
    this.node.replaceChildren(...lines.map((line, i) =>
      el('div', {className: i === 0 ? 'th-tooltip-title' : '', text: line})));
    this.node.hidden = false;
    const pad = 14;
    const w = this.node.offsetWidth;
    const h = this.node.offsetHeight;
    let left = event.clientX + pad;
    let top = event.clientY + pad;
    if (left + w > window.innerWidth - 4) left = event.clientX - w - pad;
    if (top + h > window.innerHeight - 4) top = event.clientY - h - pad;
    this.node.style.left = `${Math.max(4, left)}px`;
    this.node.style.top = `${Math.max(4, top)}px`;
  }
  hide() {
    this.node.hidden = true;
  }
}

// ---------------------------------------------------------------- heatmap

/** What "frozen" means, where a layer is marked so. */
export const FROZEN_NOTE = 'frozen: its weights are not trained, so it has no gradient or update by design';

/**
 * A layer x step heatmap of one statistic with layer labels, a legend and
 * a hover read-out. `onPick({layer, step})` is called on click.
 */
export class Heatmap {
  constructor({spec, tooltip, onPick, onZoom}) {
    this.spec = spec;
    this.tooltip = tooltip;
    this.onPick = onPick;
    this.canvas = el('canvas', {className: 'th-heatmap-canvas', dataset: {stat: spec.stat},
                                attrs: {role: 'img', 'aria-label': `${spec.title} per layer and step`}});
    this.labels = el('div', {className: 'th-layer-labels'});
    this.legend = el('div', {className: 'th-legend'});
    this.node = el('div', {className: 'th-heatmap', dataset: {stat: spec.stat}},
        el('div', {className: 'th-chart-head'},
            el('span', {className: 'th-chart-title', text: spec.title}),
            el('span', {className: 'th-chart-help', text: spec.help}),
            this.legend),
        el('div', {className: 'th-heatmap-body'}, this.labels, this.canvas));
    this.canvas.addEventListener('mousemove', (e) => this._hover(e));
    this.canvas.addEventListener('mouseleave', () => this.tooltip.hide());
    const dragged = onZoom ? brush(this.canvas, () => this.axis, onZoom) : () => false;
    this.canvas.addEventListener('click', (e) => {
      const hit = this._hit(e);
      if (hit && this.onPick && !dragged()) this.onPick({layer: hit.layer, step: hit.step});
    });
  }

  /**
   * Draws `matrix` (a /matrix answer) over the step axis `axis`; the rows
   * of the layers named in `frozen` (a Set) are marked frozen.
   */
  draw(matrix, axis, focus, frozen = new Set()) {
    this.matrix = matrix;
    this.frozen = frozen;
    this.axis = axis;
    this.focus = focus || null;
    const layers = matrix.layers;
    const n = Math.max(layers.length, 1);
    this.rowH = Math.max(4, Math.min(20, Math.floor(220 / n)));
    const plotH = n * this.rowH;
    this.plotH = plotH;
    this.scale = ColorScale.fromMatrix(this.spec, matrix);
    this.values = matrix.values.map((row) => row.map(num));
    this._drawLabels(layers);
    this._drawLegend();
    this._render();
  }

  /** Moves the cursor and the highlighted row without new data. */
  setFocus(focus) {
    this.focus = focus || null;
    if (this.matrix) {
      this._render();
      this._markLabel();
    }
  }

  _drawLabels(layers) {
    const every = this.rowH >= 11 ? 1 : Math.ceil(11 / this.rowH);
    this.labels.style.height = `${this.plotH}px`;
    this.labels.replaceChildren(...layers.map((name, i) => {
      const frozen = this.frozen.has(name);
      const label = el('div', {className: 'th-layer-label', title: frozen ? `${name} (${FROZEN_NOTE})` : name,
                               dataset: {index: i, layer: name}},
          frozen ? el('span', {className: 'th-frozen-mark', text: 'frozen'}) : null, name);
      // Rows thinner than a line of text get a label every few rows, centered on its row.
      const height = Math.max(this.rowH, 12);
      label.style.top = `${i * this.rowH - (height - this.rowH) / 2}px`;
      label.style.height = `${height}px`;
      label.style.lineHeight = `${height}px`;
      if (i % every !== 0) label.classList.add('th-hidden-label');
      label.addEventListener('click', () => this.onPick &&
          this.onPick({layer: name, step: this.focus ? this.focus.step : null}));
      return label;
    }));
    this._markLabel();
  }

  _markLabel() {
    const layer = this.focus ? this.focus.layer : null;
    for (const label of this.labels.children) {
      label.classList.toggle('th-focused', label.dataset.layer === layer);
    }
  }

  _drawLegend() {
    const bar = el('canvas', {className: 'th-legend-bar'});
    const ctx = sizeCanvas(bar, 120, 10);
    for (let x = 0; x < 120; x++) {
      ctx.fillStyle = rgb(paletteColor(x / 119));
      ctx.fillRect(x, 0, 1, 10);
    }
    const swatch = (color, text) => {
      const box = el('span', {className: 'th-swatch'});
      box.style.background = rgb(color);
      return el('span', {className: 'th-legend-item'}, box, text);
    };
    this.legend.replaceChildren(
        el('span', {className: 'th-legend-num', text: this.scale.label('lo')}),
        bar,
        el('span', {className: 'th-legend-num', text: this.scale.label('hi')}),
        el('span', {className: 'th-legend-scale', text: this.scale.kind === 'log' ? 'log scale' : ''}),
        swatch(NOT_MEASURED_RGB, 'not measured'),
        swatch(NON_FINITE_RGB, 'NaN/Inf'));
  }

  _render() {
    const axis = this.axis;
    const width = axis.width;
    const height = this.plotH + 18;
    const ctx = sizeCanvas(this.canvas, width, height);
    const firstSteps = this.matrix.first_steps;
    const rows = this.values.length;
    const image = ctx.createImageData(width, Math.max(rows, 1));
    this.columnOfX = new Int32Array(width);
    for (let x = 0; x < width; x++) {
      this.columnOfX[x] = columnAt(firstSteps, axis.step(x + 0.5));
    }
    for (let r = 0; r < rows; r++) {
      const row = this.values[r];
      for (let x = 0; x < width; x++) {
        const c = this.columnOfX[x];
        const color = c < 0 ? [255, 255, 255] : this.scale.color(row[c]);
        const o = (r * width + x) * 4;
        image.data[o] = color[0];
        image.data[o + 1] = color[1];
        image.data[o + 2] = color[2];
        image.data[o + 3] = 255;
      }
    }
    // Scale the 1-pixel-per-row image to the rows' height, without smoothing.
    const scratch = document.createElement('canvas');
    scratch.width = width;
    scratch.height = Math.max(rows, 1);
    scratch.getContext('2d').putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(scratch, 0, 0, width, this.plotH);
    ctx.strokeStyle = 'rgba(255,255,255,0.35)';
    ctx.lineWidth = 1;
    if (this.rowH >= 8) {
      for (let r = 1; r < rows; r++) {
        ctx.beginPath();
        ctx.moveTo(0, r * this.rowH + 0.5);
        ctx.lineTo(width, r * this.rowH + 0.5);
        ctx.stroke();
      }
    }
    if (this.focus) drawFocus(ctx, axis, this.focus.step, 0, this.plotH);
    if (this.focus && this.focus.layer !== null) {
      const r = this.matrix.layers.indexOf(this.focus.layer);
      if (r >= 0) {
        ctx.strokeStyle = '#ff1744';
        ctx.lineWidth = 2;
        ctx.strokeRect(1, r * this.rowH + 1, width - 2, this.rowH - 2);
      }
    }
    drawStepTicks(ctx, axis, this.plotH + 1, 18);
  }

  _hit(event) {
    if (!this.matrix) return null;
    const rect = this.canvas.getBoundingClientRect();
    const x = Math.floor(event.clientX - rect.left);
    const y = event.clientY - rect.top;
    const r = Math.floor(y / this.rowH);
    if (x < 0 || x >= this.axis.width || r < 0 || r >= this.values.length) return null;
    const c = this.columnOfX[x];
    if (c < 0) return null;
    return {
      layer: this.matrix.layers[r],
      row: r,
      column: c,
      step: this.matrix.first_steps[c],
      lastStep: this.matrix.last_steps[c],
      value: this.values[r][c],
    };
  }

  _hover(event) {
    const hit = this._hit(event);
    if (!hit) {
      this.tooltip.hide();
      return;
    }
    const steps = hit.step === hit.lastStep ?
        `step ${formatStep(hit.step)}` :
        `steps ${formatStep(hit.step)}–${formatStep(hit.lastStep)} (${this.matrix.reduce})`;
    this.tooltip.show(event, [
      `layer ${hit.layer}${this.frozen.has(hit.layer) ? ' (frozen)' : ''}`,
      steps,
      `${this.spec.title}: ${formatValue(hit.value)}`,
    ]);
  }
}

function drawFocus(ctx, axis, step, top, bottom) {
  if (step === null || step === undefined) return;
  const x = Math.round(axis.x(step)) + 0.5;
  ctx.save();
  ctx.strokeStyle = '#ff1744';
  ctx.lineWidth = 1.5;
  ctx.setLineDash([4, 3]);
  ctx.beginPath();
  ctx.moveTo(x, top);
  ctx.lineTo(x, bottom);
  ctx.stroke();
  ctx.restore();
}

// ---------------------------------------------------------------- line chart

/**
 * A line chart of one or more series over steps, with alert markers, a
 * focus cursor and a hover read-out. `onPick(step)` is called on click.
 */
export class LineChart {
  constructor({title, height = 160, tooltip, onPick, onZoom, compact = false}) {
    this.title = title;
    this.height = height;
    this.tooltip = tooltip;
    this.onPick = onPick;
    this.compact = compact;
    this.canvas = el('canvas', {className: 'th-line-canvas', attrs: {role: 'img', 'aria-label': title}});
    this.titleNode = el('span', {className: 'th-chart-title', text: title});
    this.legend = el('span', {className: 'th-legend th-series-legend'});
    this.node = el('div', {className: compact ? 'th-line th-compact' : 'th-line'},
        el('div', {className: 'th-chart-head'}, this.titleNode, this.legend),
        this.canvas);
    this.canvas.addEventListener('mousemove', (e) => this._hover(e));
    this.canvas.addEventListener('mouseleave', () => this.tooltip.hide());
    const dragged = onZoom ? brush(this.canvas, () => this.axis, onZoom) : () => false;
    this.canvas.addEventListener('click', (e) => {
      if (!this.axis || !this.onPick || dragged()) return;
      const rect = this.canvas.getBoundingClientRect();
      this.onPick(Math.round(this.axis.step(e.clientX - rect.left)));
    });
  }

  /**
   * @param series [{name, steps, values, color, dots}] (values as from JSON;
   *   `dots`: also mark each point, for sparse series such as epoch ends).
   *   With two or more series a legend names them.
   * @param axis StepAxis.
   * @param options {log (true, false or 'auto': log when values span > 2 decades),
   *   markers: [{step, color, label}], focusStep}
   */
  draw(series, axis, options = {}) {
    this.series = series.map((s, i) => ({
      name: s.name, steps: s.steps, values: s.values.map(num),
      color: s.color || SERIES_COLORS[i % SERIES_COLORS.length], dots: Boolean(s.dots),
    }));
    this.axis = axis;
    this.options = options;
    this.legend.replaceChildren(...(this.series.length > 1 ? this.series.map((s) => {
      const box = el('span', {className: 'th-swatch'});
      box.style.background = s.color;
      return el('span', {className: 'th-legend-item', dataset: {series: s.name}}, box, s.name);
    }) : []));
    this._render();
  }

  setFocus(step) {
    if (!this.series) return;
    this.options = Object.assign({}, this.options, {focusStep: step});
    this._render();
  }

  /** True when the positive values span more than two decades (a log axis reads better). */
  _wideRange() {
    let lo = Infinity;
    let hi = 0;
    for (const s of this.series) {
      for (const v of s.values) {
        if (!Number.isFinite(v)) continue;
        if (v <= 0) return false;
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
    }
    return lo !== Infinity && hi / lo > 100;
  }

  _yRange() {
    let lo = Infinity;
    let hi = -Infinity;
    for (const s of this.series) {
      for (const v of s.values) {
        if (!Number.isFinite(v) || (this.log && v <= 0)) continue;
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
    }
    if (lo === Infinity) return null;
    if (this.log) {
      lo = Math.log10(lo);
      hi = Math.log10(hi);
    }
    this.dataRange = [lo, hi];
    this.constant = hi - lo < 1e-12 ? (this.log ? 10 ** lo : lo) : null;
    if (this.constant !== null) {
      const pad = Math.abs(lo) * 0.1 || 0.5;
      lo -= pad;
      hi += pad;
    }
    const pad = (hi - lo) * 0.06;
    return [lo - pad, hi + pad];
  }

  _render() {
    const axis = this.axis;
    const top = this.compact ? 4 : 10;
    const bottom = this.compact ? 14 : 18;
    const plotH = this.height - top - bottom;
    const ctx = sizeCanvas(this.canvas, axis.width, this.height);
    this.log = this.options.log === 'auto' ? this._wideRange() : Boolean(this.options.log);
    this.titleNode.textContent = this.title +
        (this.options.log === 'auto' && this.log ? ' (log scale)' : '');
    const range = this._yRange();
    this.range = range;
    ctx.fillStyle = '#fafbfc';
    ctx.fillRect(0, top, axis.width, plotH);
    const y = (v) => {
      const x = this.log ? Math.log10(v) : v;
      return top + plotH - ((x - range[0]) / (range[1] - range[0])) * plotH;
    };
    for (const m of this.options.markers || []) {
      const x = Math.round(axis.x(m.step)) + 0.5;
      ctx.strokeStyle = m.color;
      ctx.globalAlpha = 0.8;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + plotH);
      ctx.stroke();
      ctx.globalAlpha = 1;
      ctx.fillStyle = m.color;
      ctx.beginPath();
      ctx.moveTo(x - 5, top);
      ctx.lineTo(x + 5, top);
      ctx.lineTo(x, top + 7);
      ctx.fill();
    }
    if (range) {
      ctx.font = '10px system-ui, sans-serif';
      ctx.textAlign = 'left';
      ctx.textBaseline = 'middle';
      const ticks = this.compact ? 2 : 4;
      for (let i = 0; i <= ticks; i++) {
        const v = range[0] + ((range[1] - range[0]) * i) / ticks;
        const py = top + plotH - (plotH * i) / ticks;
        ctx.strokeStyle = '#e3e6ea';
        ctx.lineWidth = 1;
        ctx.beginPath();
        ctx.moveTo(0, Math.round(py) + 0.5);
        ctx.lineTo(axis.width, Math.round(py) + 0.5);
        ctx.stroke();
        // Full charts label their inner grid lines; compact ones the data's min and max.
        if (this.compact || i === 0 || i === ticks || this.constant !== null) continue;
        this._label(ctx, formatValue(this.log ? 10 ** v : v), py);
      }
      if (this.compact && this.constant === null) {
        const [lo, hi] = this.dataRange;
        const value = (x) => formatValue(this.log ? 10 ** x : x);
        this._label(ctx, value(hi), y(this.log ? 10 ** hi : hi) + 6);
        this._label(ctx, value(lo), y(this.log ? 10 ** lo : lo) - 6);
      }
      if (this.constant !== null) {
        const text = `constant ${formatValue(this.constant)}`;
        ctx.fillStyle = '#5f6368';
        ctx.fillText(text, 3, top + plotH / 2 - 8);
      }
      for (const s of this.series) {
        ctx.strokeStyle = s.color;
        ctx.lineWidth = this.compact ? 1.2 : 1.6;
        ctx.beginPath();
        let pen = false;
        for (let i = 0; i < s.steps.length; i++) {
          const v = s.values[i];
          if (!Number.isFinite(v)) {
            pen = false;
            continue;
          }
          const px = axis.x(s.steps[i]);
          const py = this.log && v <= 0 ? top + plotH : y(v); // 0 sits on the floor of a log chart
          if (pen) ctx.lineTo(px, py); else ctx.moveTo(px, py);
          pen = true;
        }
        ctx.stroke();
        if (s.dots) {
          ctx.fillStyle = s.color;
          for (let i = 0; i < s.steps.length; i++) {
            const v = s.values[i];
            if (!Number.isFinite(v)) continue;
            ctx.beginPath();
            ctx.arc(axis.x(s.steps[i]), this.log && v <= 0 ? top + plotH : y(v), 2.5, 0, 2 * Math.PI);
            ctx.fill();
          }
        }
      }
    } else {
      ctx.fillStyle = '#80868b';
      ctx.font = '11px system-ui, sans-serif';
      ctx.textAlign = 'center';
      ctx.textBaseline = 'middle';
      ctx.fillText('not measured', axis.width / 2, top + plotH / 2);
    }
    drawFocus(ctx, axis, this.options.focusStep, top, top + plotH);
    drawStepTicks(ctx, axis, top + plotH + 1, bottom);
  }

  _label(ctx, text, y) {
    ctx.fillStyle = 'rgba(250,251,252,0.85)';
    ctx.fillRect(1, y - 6, ctx.measureText(text).width + 4, 12);
    ctx.fillStyle = '#5f6368';
    ctx.fillText(text, 3, y);
  }

  _hover(event) {
    if (!this.axis) return;
    const rect = this.canvas.getBoundingClientRect();
    const step = this.axis.step(event.clientX - rect.left);
    const lines = [];
    let shownStep = null;
    for (const s of this.series) {
      const i = lastIndexAtOrBefore(s.steps, step);
      if (i < 0) continue;
      if (shownStep === null) shownStep = s.steps[i];
      lines.push(`${s.name}: ${formatValue(s.values[i])}`);
    }
    if (shownStep === null) {
      this.tooltip.hide();
      return;
    }
    const near = (this.options.markers || []).filter(
        (m) => Math.abs(this.axis.x(m.step) - (event.clientX - rect.left)) <= 4);
    for (const m of near) lines.push(m.label);
    this.tooltip.show(event, [`step ${formatStep(shownStep)}`, ...lines]);
  }
}

// ---------------------------------------------------------------- histograms

/**
 * Histograms of one layer over time: x = step, y = bin, color = fraction of
 * the snapshot in the bin. `kind` is "gradient" (bins of log10|g| in
 * `range`) or "activation" (bins between each snapshot's min and max).
 */
export class HistogramStrip {
  constructor({kind, tooltip}) {
    this.kind = kind;
    this.tooltip = tooltip;
    const title = kind === 'gradient' ? 'Gradient histogram (log10 |g|)' :
        'Activation histogram (between each snapshot\'s min and max)';
    this.canvas = el('canvas', {className: 'th-hist-canvas', dataset: {kind},
                                attrs: {role: 'img', 'aria-label': title}});
    this.node = el('div', {className: 'th-hist'},
        el('div', {className: 'th-chart-head'}, el('span', {className: 'th-chart-title', text: title})),
        this.canvas);
    this.canvas.addEventListener('mousemove', (e) => this._hover(e));
    this.canvas.addEventListener('mouseleave', () => this.tooltip.hide());
  }

  draw(data, axis, focusStep) {
    this.data = data;
    this.axis = axis;
    this.rows = data[this.kind].map((row) => row.map(num));
    this.focusStep = focusStep;
    this._render();
  }

  setFocus(step) {
    if (!this.data) return;
    this.focusStep = step;
    this._render();
  }

  _render() {
    const axis = this.axis;
    const bins = this.data.bins;
    const plotH = 120;
    this.plotH = plotH;
    // Gradients: a band for exact zeros at the bottom and one for NaN/Inf at
    // the top, around the log10|g| bins (a dead layer shows as a bright zero band).
    this.zeroBand = this.kind === 'gradient' ? 10 : 0;
    this.nonfiniteBand = this.kind === 'gradient' ? 10 : 0;
    const binsTop = this.nonfiniteBand;
    const binsH = plotH - this.zeroBand - this.nonfiniteBand;
    this.binsTop = binsTop;
    this.binsH = binsH;
    const ctx = sizeCanvas(this.canvas, axis.width, plotH + 18);
    ctx.fillStyle = '#f1f3f4';
    ctx.fillRect(0, 0, axis.width, plotH);
    const steps = this.data.steps;
    const binH = binsH / bins;
    for (let k = 0; k < steps.length; k++) {
      const row = this.rows[k];
      const x0 = axis.x(steps[k]);
      const x1 = k + 1 < steps.length ? axis.x(steps[k + 1]) : axis.width;
      const w = Math.max(1, x1 - x0);
      const fractions = row.slice(2);
      const extra = this.kind === 'gradient' ? [row[0], row[1]] : [];
      const peak = Math.max(...fractions.concat(extra).filter(Number.isFinite), 1e-12);
      const paint = (f, y, h) => {
        if (!(f / peak > 0.005)) return; // leave near-empty cells as background
        ctx.fillStyle = rgb(paletteColor(Math.sqrt(f / peak)));
        ctx.fillRect(x0, y, w, h);
      };
      for (let b = 0; b < bins; b++) {
        paint(fractions[b], binsTop + binsH - (b + 1) * binH, Math.ceil(binH));
      }
      if (this.kind === 'gradient') {
        paint(row[0], plotH - this.zeroBand, this.zeroBand);
        paint(row[1], 0, this.nonfiniteBand);
      }
    }
    ctx.font = '10px system-ui, sans-serif';
    ctx.textAlign = 'left';
    ctx.fillStyle = '#202124';
    if (this.kind === 'gradient') {
      const [lo, hi] = this.data.grad_log10_range;
      ctx.strokeStyle = '#dadce0';
      ctx.lineWidth = 1;
      for (const y of [binsTop, binsTop + binsH]) {
        ctx.beginPath();
        ctx.moveTo(0, y + 0.5);
        ctx.lineTo(axis.width, y + 0.5);
        ctx.stroke();
      }
      ctx.textBaseline = 'top';
      ctx.fillText(`1e${hi}`, 3, binsTop + 2);
      ctx.textBaseline = 'bottom';
      ctx.fillText(`1e${lo}`, 3, binsTop + binsH - 1);
      ctx.textAlign = 'right';
      ctx.textBaseline = 'middle';
      ctx.fillText('NaN/Inf', axis.width - 3, this.nonfiniteBand / 2);
      ctx.fillText('exactly 0', axis.width - 3, plotH - this.zeroBand / 2);
    }
    drawFocus(ctx, axis, this.focusStep, 0, plotH);
    drawStepTicks(ctx, axis, plotH + 1, 18);
  }

  _hover(event) {
    const rect = this.canvas.getBoundingClientRect();
    const x = event.clientX - rect.left;
    const y = event.clientY - rect.top;
    const k = lastIndexAtOrBefore(this.data.steps, this.axis.step(x));
    if (k < 0 || y > this.plotH) {
      this.tooltip.hide();
      return;
    }
    const bins = this.data.bins;
    const row = this.rows[k];
    const lines = [`step ${formatStep(this.data.steps[k])}`];
    if (this.kind === 'gradient' && y >= this.plotH - this.zeroBand) {
      lines.push(`exactly zero: ${formatValue(row[0])}`);
    } else if (this.kind === 'gradient' && y < this.nonfiniteBand) {
      lines.push(`NaN/Inf: ${formatValue(row[1])}`);
    } else {
      const fromBottom = this.binsTop + this.binsH - y;
      const b = Math.min(bins - 1, Math.max(0, Math.floor(fromBottom / (this.binsH / bins))));
      if (this.kind === 'gradient') {
        const [lo, hi] = this.data.grad_log10_range;
        const w = (hi - lo) / bins;
        lines.push(`|g| in 1e${(lo + b * w).toFixed(1)} … 1e${(lo + (b + 1) * w).toFixed(1)}`);
      } else {
        const w = (row[1] - row[0]) / bins;
        lines.push(`value in ${formatValue(row[0] + b * w)} … ${formatValue(row[0] + (b + 1) * w)}`);
        lines.push(`range ${formatValue(row[0])} … ${formatValue(row[1])}`);
      }
      lines.push(`fraction: ${formatValue(row[2 + b])}`);
    }
    this.tooltip.show(event, lines);
  }

}

// ---------------------------------------------------------------- panels

/** Run checkboxes; `onChange(selectedNames)` after each change. */
export function runSelector(runs, selected, onChange) {
  const chosen = new Set(selected);
  const list = el('div', {className: 'th-run-list'});
  for (const run of runs) {
    const box = el('input', {attrs: {type: 'checkbox'}, dataset: {run: run.run}});
    box.checked = chosen.has(run.run);
    box.addEventListener('change', () => {
      if (box.checked) chosen.add(run.run); else chosen.delete(run.run);
      onChange(runs.map((r) => r.run).filter((name) => chosen.has(name)));
    });
    const note = run.error ? el('span', {className: 'th-run-error', text: ' (unreadable)', title: run.error}) : null;
    list.append(el('label', {className: 'th-run', title: run.run}, box,
        el('span', {className: 'th-run-name', text: run.run}), note));
  }
  return el('div', {className: 'th-runs'}, el('span', {className: 'th-label', text: 'Runs'}), list);
}

/** One alert as a clickable element (`onPick(alert)` on click or Enter/Space). */
function alertItem(tag, a, onPick, className, ...children) {
  const item = el(tag, {
    className: `th-alert th-${a.severity === 'critical' ? 'critical' : 'warning'}` +
        (a.clearedAt !== null ? ' th-cleared' : '') + className,
    attrs: {tabindex: 0, role: 'button'},
    dataset: {kind: a.kind, step: a.step, run: a.run, layer: a.layer === null ? '' : a.layer},
  }, ...children);
  item.addEventListener('click', () => onPick(a));
  item.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      onPick(a);
    }
  });
  return item;
}

function alertWhere(a) {
  return `${a.run} · ${a.layer === null ? 'whole model' : a.layer} · step ${formatStep(a.step)}`;
}

/**
 * The alert panel: one entry per incident (`groupIncidents`), its first
 * alert with message and hint, and, folded under it, one short line per
 * alert that follows from it. `onPick(alert)` when an alert is clicked or
 * activated by keyboard.
 */
export function alertPanel(incidents, onPick) {
  const alerts = incidents.flatMap((i) => [i.root, ...i.consequences]);
  const active = alerts.filter((a) => a.clearedAt === null);
  const critical = active.filter((a) => a.severity === 'critical').length;
  const summary = alerts.length === 0 ? 'No alerts in the selected runs.' :
      `${active.length} active alert${active.length === 1 ? '' : 's'}` +
      (critical ? ` (${critical} critical)` : '') +
      (alerts.length > active.length ? `, ${alerts.length - active.length} cleared` : '') +
      ` in ${incidents.length} incident${incidents.length === 1 ? '' : 's'}`;
  const items = incidents.map(({root, consequences}) => {
    const a = root;
    const head = alertItem('div', a, onPick, '',
        el('div', {className: 'th-alert-head'},
            el('span', {className: 'th-badge', text: a.severity}),
            el('span', {className: 'th-alert-kind', text: a.kind.replace(/_/g, ' ')}),
            el('span', {className: 'th-alert-where', text: alertWhere(a)}),
            a.clearedAt !== null ?
                el('span', {className: 'th-alert-cleared', text: `cleared at step ${formatStep(a.clearedAt)}`}) : null),
        el('div', {className: 'th-alert-message', text: a.message}),
        a.hint ? el('div', {className: 'th-alert-hint'},
            el('span', {className: 'th-hint-label', text: 'Try: '}),
            el('span', {className: 'th-hint-text', text: a.hint})) : null);
    const more = consequences.length ? el('details', {className: 'th-incident-more'},
        el('summary', {text: `${consequences.length} more alert${consequences.length === 1 ? '' : 's'} ` +
                             `follow${consequences.length === 1 ? 's' : ''} from it`}),
        el('ul', {className: 'th-consequences'}, ...consequences.map((c) => alertItem('li', c, onPick,
            ' th-consequence',
            el('span', {className: 'th-badge', text: c.severity}),
            el('span', {className: 'th-alert-kind', text: c.kind.replace(/_/g, ' ')}),
            el('span', {className: 'th-alert-where', text: alertWhere(c)}),
            el('span', {className: 'th-alert-message', text: c.message.split('; ')[0]}))))) : null;
    return el('li', {className: 'th-incident', dataset: {run: a.run, incident: a.incident ?? ''}},
        head, more);
  });
  return el('section', {className: 'th-alerts'},
      el('h2', {className: 'th-section-title', text: 'Alerts'},
          el('span', {className: 'th-alert-summary', text: summary})),
      items.length ? el('ul', {className: 'th-alert-list'}, ...items) : null);
}

/** Shown when the logdir has no Training Health data. */
export function emptyState(problem) {
  return el('section', {className: 'th-empty'},
      el('h2', {text: 'No Training Health data yet'}),
      el('p', {text: 'Add one callback to the model.fit call you already have:'}),
      el('pre', {className: 'th-code'}, el('code', {
        text: 'model.fit(x, y, callbacks=[training_health.keras.HealthCallback("runs/my_run")])',
      })),
      el('p', {text: 'then start TensorBoard on the parent folder: '},
          el('code', {text: 'tensorboard --logdir runs'}),
          '. This page checks for new data while auto-refresh is on.'),
      problem ? el('p', {className: 'th-problem', text: problem}) : null);
}

/** LayerInfo as a short description: "Conv2D · relu · 32 units". */
export function describeLayer(info) {
  const parts = [info.type || 'layer'];
  if (info.activation) parts.push(info.activation);
  if (info.units) parts.push(`${info.units} units`);
  if (info.frozen) parts.push('frozen');
  else if (!info.has_weights) parts.push('no weights');
  return parts.join(' · ');
}

