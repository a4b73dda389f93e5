"""Answers of every route for given runs, keyed as the front end asks for them.

An offline report embeds the result as `window.TRAINING_HEALTH_INLINE`; the
tab's `InlineSource` (static/model.js) then reads it instead of fetching.
Keys follow `queryKey()` in model.js: `route?k=v&...` with keys sorted and
values percent-encoded like JavaScript's `encodeURIComponent`. Answers that
depend on the view's width are stored without `width`/`limit` in the key;
the InlineSource falls back to that key.
"""

import json
from urllib.parse import quote

from tensorboard import errors

from training_health.plugin.health_plugin import DEFAULT_HISTOGRAMS, DEFAULT_WIDTH

# The statistics model.js draws as heatmaps (HEATMAP_STATS there), in order.
HEATMAP_STATS = ("grad_norm", "update_ratio", "dead_frac", "act_saturated_frac", "act_std")


def query_key(route, params=None):
    """The key model.js's `queryKey(route, params)` builds for the same request."""
    params = {k: v for k, v in (params or {}).items() if v is not None}
    if not params:
        return route
    encode = lambda value: quote(str(value), safe="-_.!~*'()")  # noqa: E731
    return route + "?" + "&".join(
        "%s=%s" % (encode(k), encode(params[k])) for k in sorted(params)
    )


def snapshot(plugin, ctx=None, experiment_id="", runs=None, width=DEFAULT_WIDTH):
    """Every answer the tab needs for `runs`, as {query_key: answer}.

    Args:
        plugin: a TrainingHealthPlugin.
        ctx: a `tensorboard.context.RequestContext`. Defaults to an empty one.
        experiment_id: the experiment to read. Defaults to "".
        runs: names of the runs to include. Defaults to every run with data.
        width: columns of matrices and points of series. Defaults to
            DEFAULT_WIDTH (1000).
    """
    if ctx is None:
        from tensorboard import context

        ctx = context.RequestContext()
    if not isinstance(width, int) or width < 1:
        raise ValueError("width must be a positive int; received %r" % (width,))
    listing = plugin.runs_impl(ctx, experiment_id)
    known = [entry["run"] for entry in listing["runs"]]
    if runs is None:
        runs = known
    unknown = sorted(set(runs) - set(known))
    if unknown:
        raise ValueError("runs %s have no Training Health data; runs with data: %s" % (unknown, known))
    listing["runs"] = [entry for entry in listing["runs"] if entry["run"] in runs]
    out = {query_key("runs"): listing}
    for entry in listing["runs"]:
        run = entry["run"]
        out[query_key("alerts", {"run": run})] = plugin.alerts_impl(ctx, experiment_id, run)
        if entry["has_series"]:
            out[query_key("series", {"run": run})] = plugin.series_impl(ctx, experiment_id, run, width)
        if not entry["has_layers"] or entry["error"]:
            continue
        layers = plugin.layers_impl(ctx, experiment_id, run)
        out[query_key("layers", {"run": run})] = layers
        for stat in HEATMAP_STATS:
            out[query_key("matrix", {"run": run, "stat": stat})] = plugin.matrix_impl(
                ctx, experiment_id, run, stat, width
            )
        for info in layers["layers"]:
            name = info["name"]
            out[query_key("layer", {"run": run, "layer": name})] = plugin.layer_impl(
                ctx, experiment_id, run, name, width
            )
            if entry["has_histograms"]:
                try:
                    out[query_key("histograms", {"run": run, "layer": name})] = (
                        plugin.histograms_impl(ctx, experiment_id, run, name, DEFAULT_HISTOGRAMS)
                    )
                except errors.NotFoundError:
                    pass  # this layer has no histograms
    return out


def script_json(data):
    """`data` as JSON that is safe inside an HTML <script> element.

    `<`, `>` and `&` are written as \\u escapes, so a run or layer named
    `</script><img ...>` cannot end the script element early.
    """
    text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
