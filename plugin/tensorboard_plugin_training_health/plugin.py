"""The Training Health TensorBoard plugin: routes over plain-data methods.

Each route is a thin `*_route` that parses the query, calls a `*_impl`
method returning plain data (dicts, lists, numbers, strings) and answers
through `http_util.Respond`. Bad arguments raise
`tensorboard.errors.InvalidArgumentError` (400), unknown runs, tags or
layers `NotFoundError` (404), logs of a newer format `UnreadableDataError`
(400); `_json_route` turns them into a JSON `{"error": ...}` answer.
See `http_api.md` for every route.
"""

import functools
import json
import logging
import os

import numpy as np
from tensorboard import errors, plugin_util
from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from training_health import format as fmt
from training_health.detectors import incidents
from training_health.records import Alert
from tensorboard_plugin_training_health import downsample, sweep
from tensorboard_plugin_training_health.reader import Reader, UnreadableDataError

log = logging.getLogger("training_health")

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC_FILES = {
    "/index.js": ("index.js", "text/javascript"),
    "/model.js": ("model.js", "text/javascript"),
    "/views.js": ("views.js", "text/javascript"),
    "/sweep.js": ("sweep.js", "text/javascript"),
    "/style.css": ("style.css", "text/css"),
}
MAX_COMPARE_RUNS = 200  # runs on one comparison chart

DEFAULT_WIDTH = 1000  # columns of a matrix / points of a series
MAX_WIDTH = 20000
DEFAULT_HISTOGRAMS = 200  # histogram snapshots returned for one layer


def _json_route(method):
    """Wraps a `(self, request) -> data` method into a JSON WSGI app."""

    @functools.wraps(method)
    @wrappers.Request.application
    def route(self, request):
        try:
            data = method(self, request)
        except errors.PublicError as e:
            return http_util.Respond(
                request, {"error": str(e)}, "application/json", code=e.http_code
            )
        # Data holds no NaN/Inf (see downsample.to_json_values); encoding
        # here skips Respond's per-element cleanse, which is slow on matrices.
        body = json.dumps(data, allow_nan=False, separators=(",", ":"))
        return http_util.Respond(request, body, "application/json")

    return route


def _arg(request, name, required=True):
    value = request.args.get(name)
    if value is None or value == "":
        if required:
            raise errors.InvalidArgumentError(
                "missing query parameter %r; add ?%s=... to the request" % (name, name)
            )
        return None
    return value


def _int_arg(request, name, default, lo, hi):
    value = _arg(request, name, required=False)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise errors.InvalidArgumentError(
            "query parameter %r must be an integer; received %r" % (name, value)
        ) from None
    if not lo <= number <= hi:
        raise errors.InvalidArgumentError(
            "query parameter %r must be between %d and %d; received %d" % (name, lo, hi, number)
        )
    return number


MAX_STEP = 2**63 - 1


def _step_range(request):
    """(start_step, end_step) from the query; either may be None."""
    start = _int_arg(request, "start_step", None, 0, MAX_STEP)
    end = _int_arg(request, "end_step", None, 0, MAX_STEP)
    if start is not None and end is not None and start > end:
        raise errors.InvalidArgumentError(
            "start_step must be <= end_step; received start_step=%d, end_step=%d" % (start, end)
        )
    return start, end


def _window(steps, values, start_step, end_step):
    """The samples with start_step <= step <= end_step (None: unbounded)."""
    lo = 0 if start_step is None else int(np.searchsorted(steps, start_step, "left"))
    hi = len(steps) if end_step is None else int(np.searchsorted(steps, end_step, "right"))
    return steps[lo:hi], values[lo:hi]


def _steps_json(steps):
    return [int(s) for s in steps]


class TrainingHealthPlugin(base_plugin.TBPlugin):
    """Serves per-layer health matrices, loss series, alerts and histograms.

    Args:
        context: a `base_plugin.TBContext`; only its `data_provider` and
            `sampling_hints` are used.

    Every `*_impl` method takes a `tensorboard.context.RequestContext` and
    an experiment id first, then the route's parameters as keyword
    arguments, and returns the JSON-ready answer documented in http_api.md.
    """

    plugin_name = fmt.PLUGIN_NAME

    def __init__(self, context):
        hints = getattr(context, "sampling_hints", None) or {}
        self._reader = Reader(context.data_provider, sample_limit=hints.get(fmt.PLUGIN_NAME) or 0)
        self._overview_rows = {}  # (experiment, run) -> (tag versions, overview row)

    def get_plugin_apps(self):
        return {
            "/runs": self.runs_route,
            "/layers": self.layers_route,
            "/matrix": self.matrix_route,
            "/series": self.series_route,
            "/layer": self.layer_route,
            "/alerts": self.alerts_route,
            "/histograms": self.histograms_route,
            "/epochs": self.epochs_route,
            "/overview": self.overview_route,
            "/compare": self.compare_route,
            "/index.js": self.static_route,
            "/model.js": self.static_route,
            "/views.js": self.static_route,
            "/sweep.js": self.static_route,
            "/style.css": self.static_route,
        }

    def is_active(self):
        # The tab is enabled by data: TensorBoard enables it when a run holds
        # summaries whose plugin name is in data_plugin_names(), before it
        # ever asks is_active(). Without such data the tab stays inactive.
        return False

    def data_plugin_names(self):
        return (fmt.PLUGIN_NAME,)

    def frontend_metadata(self):
        return base_plugin.FrontendMetadata(
            es_module_path="/index.js", tab_name="Training Health", disable_reload=True
        )

    # Static files ---------------------------------------------------------

    @wrappers.Request.application
    def static_route(self, request):
        name, content_type = STATIC_FILES[request.path[request.path.rindex("/"):]]
        with open(os.path.join(STATIC_DIR, name), "rb") as f:
            contents = f.read()
        return http_util.Respond(request, contents, content_type)

    # Routes ---------------------------------------------------------------

    def _ids(self, request):
        return plugin_util.context(request.environ), plugin_util.experiment_id(request.environ)

    @_json_route
    def runs_route(self, request):
        return self.runs_impl(*self._ids(request))

    @_json_route
    def layers_route(self, request):
        return self.layers_impl(*self._ids(request), run=_arg(request, "run"))

    @_json_route
    def matrix_route(self, request):
        return self.matrix_impl(
            *self._ids(request),
            run=_arg(request, "run"),
            stat=_arg(request, "stat"),
            width=_int_arg(request, "width", DEFAULT_WIDTH, 1, MAX_WIDTH),
            reduce=_arg(request, "reduce", required=False) or "mean",
            steps=_step_range(request),
        )

    @_json_route
    def series_route(self, request):
        return self.series_impl(
            *self._ids(request),
            run=_arg(request, "run"),
            width=_int_arg(request, "width", DEFAULT_WIDTH, 1, MAX_WIDTH),
            steps=_step_range(request),
        )

    @_json_route
    def layer_route(self, request):
        return self.layer_impl(
            *self._ids(request),
            run=_arg(request, "run"),
            layer=_arg(request, "layer"),
            width=_int_arg(request, "width", DEFAULT_WIDTH, 1, MAX_WIDTH),
            steps=_step_range(request),
        )

    @_json_route
    def alerts_route(self, request):
        return self.alerts_impl(*self._ids(request), run=_arg(request, "run"))

    @_json_route
    def histograms_route(self, request):
        return self.histograms_impl(
            *self._ids(request),
            run=_arg(request, "run"),
            layer=_arg(request, "layer"),
            limit=_int_arg(request, "limit", DEFAULT_HISTOGRAMS, 1, MAX_WIDTH),
        )

    @_json_route
    def epochs_route(self, request):
        return self.epochs_impl(*self._ids(request), run=_arg(request, "run"),
                                steps=_step_range(request))

    # Implementations: plain data in, plain data out ------------------------

    def runs_impl(self, ctx, experiment_id):
        """Runs holding Training Health data, sorted by name."""
        runs = []
        for run, tags in sorted(self._reader.list_runs(ctx, experiment_id).items()):
            entry = {
                "run": run,
                "last_step": max(int(ts.max_step) for ts in tags.values()),
                "last_wall_time": max(float(ts.max_wall_time) for ts in tags.values()),
                "has_layers": fmt.TAG_LAYERS in tags,
                "has_series": fmt.TAG_GLOBAL in tags,
                "has_alerts": fmt.TAG_ALERTS in tags,
                "has_histograms": fmt.TAG_HISTOGRAMS in tags,
                "has_epochs": fmt.TAG_EPOCHS in tags,
                "layers": 0,
                "error": None,
            }
            if fmt.TAG_LAYERS in tags:
                try:
                    entry["layers"] = len(self._reader.metadata(tags[fmt.TAG_LAYERS])["layers"])
                except UnreadableDataError as e:
                    entry["error"] = str(e)
            runs.append(entry)
        return {"runs": runs, "sample_limit": self._reader.sample_limit}

    def layers_impl(self, ctx, experiment_id, run):
        """The monitored layers of `run` and the statistic names."""
        time_series = self._reader.time_series(ctx, experiment_id, run, fmt.TAG_LAYERS)
        metadata = self._reader.metadata(time_series)
        last_step = int(time_series.max_step)
        tags = self._reader.list_runs(ctx, experiment_id).get(run, {})
        if fmt.TAG_LAYER_HISTORY in tags:  # a long run's newest layer data may be a summary
            last_step = max(last_step, int(tags[fmt.TAG_LAYER_HISTORY].max_step))
        return {
            "run": run,
            "format_version": metadata["format_version"],
            "stats": list(metadata["stats"]),
            "layers": [layer.to_json() for layer in metadata["layers"]],
            "frozen_unmonitored": [str(n) for n in metadata.get("frozen_unmonitored", ())],
            "last_step": last_step,
        }

    def _layer_series(self, ctx, experiment_id, run, reduce="mean"):
        return self._reader.read_layers(ctx, experiment_id, run, reduce)

    @staticmethod
    def _sampling(series):
        out = {
            "samples": int(len(series.steps)),
            "downsampled": bool(series.downsampled),
            "sample_limit": int(series.limit),
        }
        if getattr(series, "summarized_from", None) is not None:
            out["summarized_from"] = series.summarized_from
            out["history_block"] = series.history_block
        return out

    def matrix_impl(self, ctx, experiment_id, run, stat, width=DEFAULT_WIDTH, reduce="mean",
                    steps=(None, None)):
        """One statistic for every layer, reduced to at most `width` step columns.

        Returns `values` as rows (one per layer) of columns; column `i`
        covers steps `first_steps[i]`..`last_steps[i]`. `steps` is an
        optional (start_step, end_step) window, None for unbounded.
        """
        if reduce not in downsample.REDUCTIONS:
            raise errors.InvalidArgumentError(
                "reduce must be one of %s; received %r" % (", ".join(downsample.REDUCTIONS), reduce)
            )
        series = self._layer_series(ctx, experiment_id, run, reduce)
        stats = list(series.metadata["stats"])
        if stat not in stats:
            raise errors.InvalidArgumentError(
                "unknown statistic %r; use one of %s" % (stat, ", ".join(stats))
            )
        window, column = _window(series.steps, series.values[:, :, stats.index(stat)], *steps)
        first, last, reduced = downsample.reduce_columns(window, column, width, reduce)  # [C, L]
        finite = reduced[np.isfinite(reduced)]
        positive = finite[finite > 0]
        out = {
            "run": run,
            "stat": stat,
            "reduce": reduce,
            "layers": [layer.name for layer in series.metadata["layers"]],
            "first_steps": _steps_json(first),
            "last_steps": _steps_json(last),
            "values": downsample.to_json_values(reduced.T),
            "min": float(finite.min()) if finite.size else None,
            "max": float(finite.max()) if finite.size else None,
            "min_positive": float(positive.min()) if positive.size else None,
        }
        out.update(self._sampling(series))
        return out

    def series_impl(self, ctx, experiment_id, run, width=DEFAULT_WIDTH, steps=(None, None)):
        """Loss, global statistics and metrics over steps (bucket means)."""
        series = self._reader.read(ctx, experiment_id, run, fmt.TAG_GLOBAL)
        names = list(series.metadata["stats"])
        window, values = _window(series.steps, series.values, *steps)
        first, last, reduced = downsample.reduce_columns(window, values, width)
        columns = downsample.to_json_values(reduced.T)
        out = {
            "run": run,
            "names": names,
            "metrics": names[len(fmt.GLOBAL_STATS):],
            "first_steps": _steps_json(first),
            "last_steps": _steps_json(last),
            "values": dict(zip(names, columns)) if len(first) else {n: [] for n in names},
        }
        out.update(self._sampling(series))
        return out

    def _layer_index(self, metadata, run, layer):
        names = [info.name for info in metadata["layers"]]
        if layer not in names:
            raise errors.NotFoundError("run %r has no layer %r" % (run, layer))
        return names.index(layer)

    def layer_impl(self, ctx, experiment_id, run, layer, width=DEFAULT_WIDTH, steps=(None, None)):
        """Every statistic of one layer over steps (bucket means)."""
        series = self._layer_series(ctx, experiment_id, run)
        index = self._layer_index(series.metadata, run, layer)
        stats = list(series.metadata["stats"])
        window, values = _window(series.steps, series.values[:, index, :], *steps)
        first, last, reduced = downsample.reduce_columns(window, values, width)
        columns = downsample.to_json_values(reduced.T)
        out = {
            "run": run,
            "layer": series.metadata["layers"][index].to_json(),
            "stats": stats,
            "first_steps": _steps_json(first),
            "last_steps": _steps_json(last),
            "values": dict(zip(stats, columns)) if len(first) else {s: [] for s in stats},
        }
        out.update(self._sampling(series))
        return out

    def alerts_impl(self, ctx, experiment_id, run, tags=None):
        """Every alert record of `run` in step order (an empty list if none).

        `tags`: the run's entry of `Reader.list_runs` when the caller has
        it (the overview: one listing for every run). Defaults to None.
        """
        if tags is None:
            tags = self._reader.list_runs(ctx, experiment_id).get(run)
        if tags is None:
            raise errors.NotFoundError("no Training Health data for run %r" % (run,))
        if fmt.TAG_ALERTS not in tags:  # nothing was ever raised
            return {"run": run, "alerts": [], "samples": 0, "downsampled": False,
                    "sample_limit": self._reader.sample_limit}
        series = self._reader.read(ctx, experiment_id, run, fmt.TAG_ALERTS)
        alerts = []
        for step, value in zip(series.steps, series.values):
            try:
                records = fmt.decode_alerts(value)
            except fmt.FormatError as e:  # a damaged record: the run's other alerts are still shown
                log.warning("training_health: run %r: the alerts at step %d are not JSON (%s); skipped",
                            run, int(step), e)
                continue
            for record in records:
                if not isinstance(record, dict):
                    continue
                alerts.append(_clean_alert(record, int(step)))
        alerts.sort(key=lambda a: a["step"])
        out = {"run": run, "alerts": _with_incidents(alerts)}
        out.update(self._sampling(series))
        return out

    def epochs_impl(self, ctx, experiment_id, run, steps=(None, None)):
        """The finished epochs of `run`: each epoch's last step, number and
        metrics (`loss`, training metrics, `val_*` when it was validated).

        `steps` is an optional (start_step, end_step) window, None for
        unbounded. A metric an epoch did not report is null there.
        """
        series = self._reader.read(ctx, experiment_id, run, fmt.TAG_EPOCHS)
        rows = []
        for step, value in zip(*_window(series.steps, np.arange(len(series.steps)), *steps)):
            try:
                rows.append((int(step),) + fmt.decode_epoch(series.values[value]))
            except fmt.FormatError as e:  # a damaged record: the other epochs are still shown
                log.warning("training_health: run %r: the epoch at step %d is unreadable (%s); "
                            "skipped", run, int(step), e)
        names = list(dict.fromkeys(["loss"] + [n for _, _, metrics in rows for n in metrics]))
        if not any("loss" in metrics for _, _, metrics in rows):
            names.remove("loss")
        columns = downsample.to_json_values(
            np.array([[metrics.get(n, np.nan) for n in names] for _, _, metrics in rows],
                     dtype=np.float64).reshape(len(rows), len(names)).T)
        out = {
            "run": run,
            "steps": [step for step, _, _ in rows],
            "epochs": [epoch for _, epoch, _ in rows],
            "names": names,
            "values": dict(zip(names, columns)),
        }
        out.update(self._sampling(series))
        return out

    def histograms_impl(self, ctx, experiment_id, run, layer, limit=DEFAULT_HISTOGRAMS):
        """Gradient and activation histograms of one layer over time."""
        series = self._reader.read(ctx, experiment_id, run, fmt.TAG_HISTOGRAMS)
        metadata = series.metadata
        names = list(metadata.get("layers", ()))
        if layer not in names:
            raise errors.NotFoundError("run %r has no histograms for layer %r" % (run, layer))
        index = names.index(layer)
        picked = downsample.pick_samples(series.steps, limit)
        rows = series.values[picked, index]  # [K, 2, HIST_ROW]
        out = {
            "run": run,
            "layer": layer,
            "steps": _steps_json(series.steps[picked]),
            "bins": int(metadata.get("bins", fmt.HIST_BINS)),
            "grad_log10_range": list(metadata.get("grad_log10_range", fmt.GRAD_LOG10_RANGE)),
            # gradient rows: [zero_frac, nonfinite_frac, bin fractions of log10|g|...]
            "gradient": downsample.to_json_values(rows[:, 0, :]),
            # activation rows: [min, max, bin fractions between min and max...]
            "activation": downsample.to_json_values(rows[:, 1, :]),
        }
        out.update(self._sampling(series))
        return out

    # Many runs ---------------------------------------------------------------

    @_json_route
    def overview_route(self, request):
        return self.overview_impl(
            *self._ids(request),
            points=_int_arg(request, "points", sweep.SPARK_POINTS, 1, sweep.MAX_SPARK_POINTS),
        )

    @_json_route
    def compare_route(self, request):
        return self.compare_impl(
            *self._ids(request),
            runs=request.args.getlist("run"),
            stat=_arg(request, "stat"),
            layer=_arg(request, "layer", required=False),
            width=_int_arg(request, "width", DEFAULT_WIDTH, 1, MAX_WIDTH),
            steps=_step_range(request),
        )

    def overview_impl(self, ctx, experiment_id, points=sweep.SPARK_POINTS):
        """One row per run: health status, worst open alert, last loss, steps, loss sparkline.

        A row is recomputed only when one of the run's tags got new data.
        """
        listing = self._reader.list_runs(ctx, experiment_id)
        rows = []
        for run, tags in sorted(listing.items()):
            version = (points,) + tuple(sorted(
                (tag, int(ts.max_step), float(ts.max_wall_time)) for tag, ts in tags.items()))
            key = (experiment_id, run)
            hit = self._overview_rows.get(key)
            if hit is None or hit[0] != version:
                hit = (version, self._overview_row(ctx, experiment_id, run, tags, points))
                self._overview_rows[key] = hit
            rows.append(hit[1])
        for key in [k for k in self._overview_rows if k[0] == experiment_id and k[1] not in listing]:
            del self._overview_rows[key]
        return {"runs": rows, "statuses": list(sweep.STATUSES), "sample_limit": self._reader.sample_limit}

    def _overview_row(self, ctx, experiment_id, run, tags, points):
        try:
            layers = (len(self._reader.metadata(tags[fmt.TAG_LAYERS])["layers"])
                      if fmt.TAG_LAYERS in tags else 0)
            series = (self._reader.read(ctx, experiment_id, run, fmt.TAG_GLOBAL)
                      if fmt.TAG_GLOBAL in tags else None)
            alerts = self.alerts_impl(ctx, experiment_id, run, tags)["alerts"]
        except UnreadableDataError as e:
            return sweep.error_row(run, str(e))
        return sweep.overview_row(run, alerts, series, layers, points)

    def compare_impl(self, ctx, experiment_id, runs, stat, layer=None, width=DEFAULT_WIDTH,
                     steps=(None, None)):
        """One statistic of one layer (or a global one, e.g. the loss) across runs.

        `layer` None compares a global statistic or metric (`series` names),
        else a column of the layer matrix. A run without that layer or
        statistic gets an entry with `error` set and no values.
        """
        runs = list(dict.fromkeys(runs))
        if not runs:
            raise errors.InvalidArgumentError("missing query parameter 'run'; add ?run=A&run=B...")
        if len(runs) > MAX_COMPARE_RUNS:
            raise errors.InvalidArgumentError(
                "at most %d runs can be compared; received %d" % (MAX_COMPARE_RUNS, len(runs)))
        listing = self._reader.list_runs(ctx, experiment_id)
        for run in runs:
            if run not in listing:
                raise errors.NotFoundError("no Training Health data for run %r" % (run,))
        tag = fmt.TAG_GLOBAL if layer is None else fmt.TAG_LAYERS
        entries, known_stats, layer_found = [], {}, False
        for run in runs:
            if tag not in listing[run]:
                entries.append(_compare_error(run, "run %r logged no %s" % (run, tag)))
                continue
            series = (self._reader.read(ctx, experiment_id, run, tag) if layer is None
                      else self._layer_series(ctx, experiment_id, run))
            names = list(series.metadata["stats"])
            known_stats.update(dict.fromkeys(names))
            if layer is None:
                index = (slice(None),)
            else:
                layer_names = [info.name for info in series.metadata["layers"]]
                if layer not in layer_names:
                    entries.append(_compare_error(run, "run %r has no layer %r" % (run, layer)))
                    continue
                layer_found = True
                index = (slice(None), layer_names.index(layer))
            if stat not in names:
                entries.append(_compare_error(run, "run %r logged no %r" % (run, stat)))
                continue
            values = series.values[index + (names.index(stat),)]
            entry = sweep.compare_entry(run, *_window(series.steps, values, *steps), width)
            entry.update(self._sampling(series))
            entries.append(entry)
        if layer is not None and not layer_found:
            raise errors.NotFoundError("none of the runs has a layer %r" % (layer,))
        if known_stats and stat not in known_stats:
            raise errors.InvalidArgumentError("unknown statistic %r%s; use one of %s" % (
                stat, "" if layer is None else " of a layer", ", ".join(known_stats)))
        return {"stat": stat, "layer": layer, "reduce": "mean", "runs": entries,
                "sample_limit": self._reader.sample_limit}


def _with_incidents(alerts):
    """The alerts (clean dicts in step order) with their incidents.

    A run logged by this version has `incident` and `caused_by` in every
    record (the logger grouped them as it raised them). Records written
    before incidents existed are grouped here, the same way
    (`detectors.incidents`); records of a kind this version does not know
    are left ungrouped.
    """
    if all(isinstance(a["incident"], int) for a in alerts):
        return alerts
    try:
        records = [Alert.from_json(a) for a in alerts]
    except ValueError:  # a kind from a newer version: shown, not grouped
        return alerts
    grouped = incidents.group(records)
    # group() puts causes first within a step; the dicts follow that order
    by_key = {}
    for a in alerts:
        by_key.setdefault((a["kind"], a["step"], a["layer"], a["cleared"]), []).append(a)
    out = []
    for g in grouped:
        a = by_key[(g.kind, g.step, g.layer, g.cleared)].pop(0)
        out.append(dict(a, incident=g.incident, caused_by=g.caused_by))
    return out


def _compare_error(run, message):
    return {"run": run, "first_steps": [], "last_steps": [], "values": [], "error": message}


def _clean_alert(record, step):
    """An alert dict with exactly the fields the UI shows, all plain types."""

    def text(key):
        value = record.get(key)
        return "" if value is None else str(value)

    layer = record.get("layer")
    try:
        alert_step = int(record.get("step", step))
    except (TypeError, ValueError, OverflowError):
        alert_step = step
    incident = record.get("incident")
    caused_by = record.get("caused_by")
    return {
        "kind": text("kind"),
        "step": alert_step,
        "layer": None if layer is None else str(layer),
        "severity": text("severity") or "warning",
        "message": text("message"),
        "hint": text("hint"),
        "cleared": bool(record.get("cleared", False)),
        "incident": incident if isinstance(incident, int) and not isinstance(incident, bool) else None,
        "caused_by": None if caused_by is None else str(caused_by),
    }
