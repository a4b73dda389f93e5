// Data access of the Training Health tab. No DOM here.
//
// Every view asks a DataSource for a route and its query parameters. Two
// sources exist: FetchSource asks the plugin's HTTP routes (inside
// TensorBoard), InlineSource reads answers embedded in the page (a
// self-contained offline report sets `window.TRAINING_HEALTH_INLINE`, an
// object keyed by `queryKey(route, params)`). The views cannot tell them apart.

/** Statistics drawn as layer x step heatmaps, in display order. */
export const HEATMAP_STATS = [
  {stat: 'grad_norm', title: 'Gradient norm', scale: 'log',
   help: 'L2 norm of the layer\'s gradients. Dark: vanishing; bright: large.'},
  {stat: 'update_ratio', title: 'Update ratio ‖ΔW‖/‖W‖', scale: 'log',
   help: 'Around 1e-3 is typical. Near 0: the layer is not learning (frozen or stalled).'},
  {stat: 'dead_frac', title: 'Dead-unit fraction', scale: 'linear', domain: [0, 1],
   help: 'Fraction of units <= 0 for every example of the batch.'},
  {stat: 'act_saturated_frac', title: 'Saturation', scale: 'linear', domain: [0, 1],
   help: 'Fraction of outputs at a bound of a bounded activation.'},
  {stat: 'act_std', title: 'Activation std', scale: 'linear',
   help: 'Spread of the layer\'s output. Near 0: the layer outputs a constant.'},
];

/** Statistics drawn on a log scale wherever they appear. */
export const LOG_STATS = new Set(['grad_norm', 'grad_max_abs', 'update_ratio', 'weight_norm']);

/** An error answer of a route (`status` 400/404/...) or of the network (0). */
export class DataError extends Error {
  constructor(status, message) {
    super(message);
    this.name = 'DataError';
    this.status = status;
  }
}

/**
 * The canonical key of a request: `route?k=v&...` with keys sorted; an
 * array value repeats its key (`run=a&run=b`), in the array's order.
 */
export function queryKey(route, params = {}) {
  const keys = Object.keys(params).filter((k) => params[k] !== undefined && params[k] !== null);
  keys.sort();
  const pair = (k, v) => encodeURIComponent(k) + '=' + encodeURIComponent(String(v));
  const query = keys
      .map((k) => (Array.isArray(params[k]) ? params[k].map((v) => pair(k, v)).join('&') : pair(k, params[k])))
      .join('&');
  return query ? `${route}?${query}` : route;
}

/** Asks the plugin's routes over HTTP, relative to the page (`./runs`...). */
export class FetchSource {
  /** @param {string} base URL prefix of the routes. Defaults to './'. */
  constructor(base = './') {
    this.base = base;
    this.live = true; // new data may arrive: polling makes sense
  }

  async get(route, params = {}) {
    let response;
    try {
      response = await fetch(this.base + queryKey(route, params), {credentials: 'same-origin'});
    } catch (e) {
      throw new DataError(0, `Could not reach TensorBoard (${e.message}).`);
    }
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    if (!response.ok) {
      const detail = body && body.error ? body.error : response.statusText;
      throw new DataError(response.status, detail);
    }
    return body;
  }
}

/** Query parameters that only shape an answer for the view; see InlineSource. */
export const VIEW_PARAMS = ['width', 'limit', 'start_step', 'end_step'];

/**
 * Reads answers embedded in the page.
 *
 * `data` maps `queryKey(route, params)` to the JSON answer. A view asks for
 * a width that depends on the window (and a step range when zoomed); when
 * the exact key is absent the source retries without VIEW_PARAMS, so a
 * report stores one answer per route, run and statistic.
 */
export class InlineSource {
  constructor(data) {
    if (!data || typeof data !== 'object') {
      throw new TypeError('InlineSource needs an object keyed by queryKey(route, params); ' +
                          `received ${typeof data}`);
    }
    this.data = data;
    this.live = false;
  }

  async get(route, params = {}) {
    const exact = queryKey(route, params);
    if (Object.prototype.hasOwnProperty.call(this.data, exact)) return this.data[exact];
    const loose = Object.assign({}, params);
    for (const name of VIEW_PARAMS) delete loose[name];
    const key = queryKey(route, loose);
    if (Object.prototype.hasOwnProperty.call(this.data, key)) return this.data[key];
    throw new DataError(404, `This report holds no data for ${exact}.`);
  }
}

/** The source for this page: inline data when the page embeds it, else HTTP. */
export function defaultSource(win = globalThis) {
  if (win && win.TRAINING_HEALTH_INLINE) return new InlineSource(win.TRAINING_HEALTH_INLINE);
  return new FetchSource();
}

/**
 * Hands out tokens so that only the newest request of a kind is used.
 *
 * `const t = latest.next(); const d = await ...; if (!latest.isCurrent(t)) return;`
 */
export class Latest {
  constructor() {
    this.current = 0;
  }
  next() {
    this.current += 1;
    return this.current;
  }
  isCurrent(token) {
    return token === this.current;
  }
}

/** Typed calls of every route (see http_api.md). */
export class Model {
  constructor(source = defaultSource()) {
    this.source = source;
  }
  get live() {
    return Boolean(this.source.live);
  }
  runs() {
    return this.source.get('runs');
  }
  layers(run) {
    return this.source.get('layers', {run});
  }
  /** `window`: optional [startStep, endStep] to zoom into. */
  matrix(run, stat, width, window = null) {
    return this.source.get('matrix', Object.assign({run, stat, width}, windowParams(window)));
  }
  series(run, width, window = null) {
    return this.source.get('series', Object.assign({run, width}, windowParams(window)));
  }
  layer(run, layer, width, window = null) {
    return this.source.get('layer', Object.assign({run, layer, width}, windowParams(window)));
  }
  alerts(run) {
    return this.source.get('alerts', {run});
  }
  /** The finished epochs: last steps, numbers, `loss` and the `val_*` metrics. */
  epochs(run, window = null) {
    return this.source.get('epochs', Object.assign({run}, windowParams(window)));
  }
  histograms(run, layer, limit) {
    return this.source.get('histograms', {run, layer, limit});
  }
  /** One row per run: health status, worst open alert, last loss, steps, loss sparkline. */
  overview() {
    return this.source.get('overview');
  }
  /** `stat` of `layer` (null: a whole-model statistic such as the loss) across `runs`. */
  compare(runs, stat, layer, width, window = null) {
    return this.source.get('compare', Object.assign({run: runs, stat, layer, width}, windowParams(window)));
  }
}

function windowParams(window) {
  if (!window) return {};
  return {start_step: Math.max(0, Math.floor(window[0])), end_step: Math.max(0, Math.ceil(window[1]))};
}

/** A JSON number, "Infinity"/"-Infinity" or null (not measured) as a JS number or NaN. */
export function num(value) {
  if (value === null || value === undefined) return NaN;
  return typeof value === 'number' ? value : Number(value);
}

const SEVERITY_RANK = {critical: 2, warning: 1};

/**
 * Alerts of several runs, most severe first, then newest first. A cleared
 * record marks the matching earlier alert (same run, kind, layer) as
 * cleared at its step instead of being listed itself.
 */
export function orderAlerts(alertsByRun) {
  const out = [];
  for (const [run, alerts] of alertsByRun) {
    const open = [];
    for (const a of alerts) {
      if (a.cleared) {
        const match = open.filter((o) => o.kind === a.kind && o.layer === a.layer &&
                                         o.clearedAt === null && o.step <= a.step).pop();
        if (match) match.clearedAt = a.step;
        continue;
      }
      const entry = Object.assign({run, clearedAt: null}, a);
      open.push(entry);
      out.push(entry);
    }
  }
  out.sort((a, b) => {
    const activeA = a.clearedAt === null ? 1 : 0;
    const activeB = b.clearedAt === null ? 1 : 0;
    return (activeB - activeA) ||
        ((SEVERITY_RANK[b.severity] || 0) - (SEVERITY_RANK[a.severity] || 0)) ||
        (b.step - a.step);
  });
  return out;
}

/**
 * Alerts in `orderAlerts` order grouped into incidents:
 * [{root, consequences}]. An alert joins the incident of its run with the
 * same `incident` number (the server sends one with every alert; one
 * without is an incident of its own); the root is the alert without
 * `caused_by` (the earliest member when the root was not sent), the
 * consequences are in step order. Incidents come in the order of their
 * most pressing member, as `orderAlerts` ranked them.
 */
export function groupIncidents(alerts) {
  const groups = new Map();
  const out = [];
  for (const a of alerts) {
    const key = a.incident === null || a.incident === undefined ? null : `${a.run}\u0000${a.incident}`;
    let group = key === null ? undefined : groups.get(key);
    if (!group) {
      group = {root: null, consequences: []};
      out.push(group);
      if (key !== null) groups.set(key, group);
    }
    if (!a.caused_by && group.root === null) group.root = a;
    else group.consequences.push(a);
  }
  for (const group of out) {
    group.consequences.sort((a, b) => a.step - b.step);
    if (group.root === null) group.root = group.consequences.shift();
  }
  return out;
}
