"""Answers of every route for given runs, keyed as the front end asks for them.

An offline report embeds the result as `window.TRAINING_HEALTH_INLINE`; the
tab's `InlineSource` (static/model.js) then reads it instead of fetching.
Keys follow `queryKey()` in model.js: `route?k=v&...` with keys sorted and
values percent-encoded like JavaScript's `encodeURIComponent`. Answers that
depend on the view's width are stored without `width`/`limit` in the key;
the InlineSource falls back to that key.
"""

import json
import os
import re
from urllib.parse import quote

from tensorboard import errors

from tensorboard_plugin_training_health.plugin import DEFAULT_HISTOGRAMS, DEFAULT_WIDTH, STATIC_DIR

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
        if entry["has_epochs"]:
            out[query_key("epochs", {"run": run})] = plugin.epochs_impl(ctx, experiment_id, run)
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


# The tab's modules in dependency order. Each imports the others only with
# `import {...} from './name.js';` statements, which bundle() removes.
MODULES = ("model.js", "views.js", "sweep.js", "index.js")
_IMPORT = re.compile(r"^import\s*\{[^}]*\}\s*from\s*'\./[\w]+\.js';[ \t]*\n", re.M)
_EXPORT = re.compile(r"^export\s+(?=(async\s+)?function|class|const|let)", re.M)


def bundle():
    """The tab's ES modules as one module script (for a page with no server).

    The modules share no top-level names, so their bodies can run in one
    scope once their relative imports and `export` keywords are removed.
    """
    parts = []
    for name in MODULES:
        with open(os.path.join(STATIC_DIR, name), encoding="utf-8") as f:
            source = f.read()
        source = _EXPORT.sub("", _IMPORT.sub("", source))
        if re.search(r"^\s*(import|export)\b", source, re.M):
            raise ValueError(
                "%s has an import/export bundle() cannot inline; use single "
                "`import {...} from './x.js';` statements and `export` declarations" % name
            )
        parts.append("// ---- %s\n%s" % (name, source))
    return "\n".join(parts)


def offline_page(data, title="Training Health"):
    """A self-contained HTML page showing `data` (a snapshot()) with the tab's own code.

    Needs no server and no network: the modules, the stylesheet and the
    data are inline. Open it from disk in any current browser.
    """
    with open(os.path.join(STATIC_DIR, "style.css"), encoding="utf-8") as f:
        css = f.read()
    script = bundle().replace("</script", "<\\/script")
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        "<title>%s</title>\n<style data-training-health-style>\n%s</style>\n"
        "<script>window.TRAINING_HEALTH_INLINE = %s;</script>\n"
        "</head><body>\n<script type=module>\n%s\nrender();\n</script>\n</body></html>\n"
        % (_html_text(title), css, script_json(data), script)
    )


def _html_text(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
