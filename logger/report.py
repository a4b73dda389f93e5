"""`training-health report LOGDIR -o report.html`: one self-contained HTML file.

The report shows the same views as the Training Health tab because it runs
the tab's own front-end modules (``plugin/static/*.js``, embedded verbatim)
on the tab's own route answers (`training_health.plugin.inline.snapshot`),
embedded as ``window.TRAINING_HEALTH_INLINE``; `model.js` then reads them
through its `InlineSource` instead of fetching. Nothing is fetched: the file
opens offline, from disk, in any current browser.

Browsers do not load ES modules from ``file://`` URLs, so a small loader in
the page turns each embedded module into a ``blob:`` URL (dependencies
first) and points the modules' relative imports (``'./model.js'``) at
those URLs; the module sources themselves are unchanged. The style sheet is
inlined with the mark `index.js` looks for, so it is not fetched either.

Series are downsampled by the plugin to `--points` columns per chart
(bucket means, as the tab does for wide ranges) and histograms to
`--histograms` evenly spaced snapshots per layer.
"""

import datetime
import html
import json
import os
import re
import sys
import tempfile

EXIT_OK, EXIT_ERROR = 0, 2
DEFAULT_POINTS = 500
DEFAULT_HISTOGRAMS = 50  # snapshots per layer; the tab asks for up to 200

# Relative imports of an ES module: `from './x.js'`, `import './x.js'`, `import('./x.js')`.
IMPORT_RE = re.compile(r"""(\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)(['"])\./([A-Za-z0-9_.-]+\.js)\2""")
ENTRY_MODULE = "index.js"
STYLE_FILE = "style.css"

# Runs in the page: embedded module sources -> blob: URLs, then render().
_LOADER_JS = r"""
(function () {
  var sources = JSON.parse(document.getElementById('th-modules').textContent);
  var order = JSON.parse(document.getElementById('th-module-order').textContent);
  var pattern = new RegExp(%(pattern)s, 'g');
  var urls = {};
  function fail(error) {
    var box = document.getElementById('th-report-error');
    box.textContent = 'This report could not be drawn: ' + (error && error.message ? error.message : error);
    box.hidden = false;
  }
  try {
    order.forEach(function (name) {
      var code = sources[name].replace(pattern, function (match, lead, quote, dep) {
        if (!urls[dep]) throw new Error(name + ' imports ./' + dep + ', which this report does not hold');
        return lead + quote + urls[dep] + quote;
      });
      urls[name] = URL.createObjectURL(new Blob([code], {type: 'text/javascript'}));
    });
  } catch (e) {
    fail(e);
    return;
  }
  import(urls[%(entry)s])
    .then(function (m) { return m.render({root: document.getElementById('th-report')}); })
    .catch(fail);
})();
"""

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%(title)s</title>
<style data-training-health-style>
%(style)s
</style>
<style>
.th-report-head {font: 13px sans-serif; color: #555; padding: 8px 16px; border-bottom: 1px solid #ddd;}
.th-report-error {font: 14px sans-serif; color: #b00020; padding: 16px;}
</style>
</head>
<body>
<div class="th-report-head">%(head)s</div>
<div id="th-report-error" class="th-report-error" hidden></div>
<div id="th-report"></div>
<script>window.TRAINING_HEALTH_INLINE = %(data)s;</script>
<script type="application/json" id="th-modules">%(modules)s</script>
<script type="application/json" id="th-module-order">%(order)s</script>
<script>%(loader)s</script>
</body>
</html>
"""


def add_arguments(parser):
    """Adds the `report` arguments to an argparse parser."""
    parser.add_argument("logdir", help="log directory or URL holding one or more runs")
    parser.add_argument("-o", "--output", default="report.html",
                        help="HTML file to write (default: report.html)")
    parser.add_argument("--points", type=int, default=DEFAULT_POINTS,
                        help="columns per heatmap and points per chart; longer runs are "
                             "averaged into this many buckets (default: %d)" % DEFAULT_POINTS)
    parser.add_argument("--histograms", type=int, default=DEFAULT_HISTOGRAMS,
                        help="histogram snapshots kept per layer, evenly spaced "
                             "(default: %d)" % DEFAULT_HISTOGRAMS)
    parser.add_argument("--run", action="append", dest="runs", metavar="RUN",
                        help="include only this run (repeatable; default: every run)")


def module_order(sources):
    """The embedded modules in dependency order (each after what it imports).

    Args:
        sources: dict file name -> JavaScript source of every module.

    Raises:
        ValueError: a module imports a file that is not in `sources`, or the
            imports form a cycle.
    """
    order, state = [], {}

    def visit(name, chain):
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ValueError("the front-end modules import each other in a cycle: %s"
                             % " -> ".join(chain + [name]))
        state[name] = "visiting"
        for match in IMPORT_RE.finditer(sources[name]):
            dep = match.group(3)
            if dep not in sources:
                raise ValueError("%s imports ./%s, which is not among the plugin's static files %s"
                                 % (name, dep, sorted(sources)))
            visit(dep, chain + [name])
        state[name] = "done"
        order.append(name)

    for name in sorted(sources):
        visit(name, [])
    return order


def read_static():
    """(module sources {name: text}, style sheet text) of the tab's front end."""
    from training_health.plugin import health_plugin

    static_dir = health_plugin.STATIC_DIR
    sources = {}
    for name in sorted(os.listdir(static_dir)):
        if name.endswith(".js"):
            with open(os.path.join(static_dir, name), encoding="utf-8") as f:
                sources[name] = f.read()
    if ENTRY_MODULE not in sources:
        raise FileNotFoundError("the tab's %s is missing from %s; reinstall training-health"
                                % (ENTRY_MODULE, static_dir))
    with open(os.path.join(static_dir, STYLE_FILE), encoding="utf-8") as f:
        style = f.read()
    return sources, style


def _local_copy(logdir, dest):
    """Copies the event files of a URL logdir into `dest` (same run layout); returns `dest`."""
    from training_health import remote

    for run, files in remote.list_event_files(logdir).items():
        run_dir = dest if run == "." else os.path.join(dest, *run.split("/"))
        os.makedirs(run_dir, exist_ok=True)
        for url in files:
            with open(os.path.join(run_dir, url.rsplit("/", 1)[-1]), "wb") as f:
                f.write(remote.read_bytes(url))
    return dest


def snapshot(logdir, points=DEFAULT_POINTS, runs=None, histograms=DEFAULT_HISTOGRAMS):
    """The tab's route answers for `logdir`, as `inline.snapshot` gives them.

    Args:
        logdir: local directory or URL (its event files are copied to a
            temporary directory first).
        points: columns per heatmap and points per chart. Defaults to
            DEFAULT_POINTS.
        runs: names of the runs to include. Defaults to None (every run with
            Training Health data).
        histograms: histogram snapshots kept per layer. Defaults to
            DEFAULT_HISTOGRAMS.

    Raises:
        FileNotFoundError: `logdir` does not exist.
        ValueError: `points` or `histograms` is not a positive int, or an
            unknown run was asked.
    """
    from training_health import format as fmt
    from training_health import remote

    if not isinstance(points, int) or points < 1:
        raise ValueError("points must be a positive int; received %r" % (points,))
    if not isinstance(histograms, int) or histograms < 1:
        raise ValueError("histograms must be a positive int; received %r" % (histograms,))
    if remote.is_url(logdir):
        with tempfile.TemporaryDirectory(prefix="training-health-report-") as tmp:
            return snapshot(_local_copy(logdir, tmp), points, runs, histograms)
    path = remote.local_path(logdir)
    if not os.path.isdir(path):
        raise FileNotFoundError("no such log directory: %r" % str(logdir))
    from tensorboard.backend.event_processing import data_provider
    from tensorboard.context import RequestContext
    from tensorboard.backend.event_processing import plugin_event_multiplexer
    from tensorboard.plugins import base_plugin

    from training_health.plugin import TrainingHealthLoader, inline

    multiplexer = plugin_event_multiplexer.EventMultiplexer(
        tensor_size_guidance={fmt.PLUGIN_NAME: 0})  # keep every step; the plugin downsamples
    multiplexer.AddRunsFromDirectory(path)
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, path)
    context = base_plugin.TBContext(logdir=path, data_provider=provider,
                                    sampling_hints={fmt.PLUGIN_NAME: 0})
    plugin = TrainingHealthLoader().load(context)
    data = inline.snapshot(plugin, runs=runs, width=points)
    for key, answer in data.items():  # fewer histogram snapshots than the tab's default
        if key.split("?", 1)[0] == "histograms":
            data[key] = plugin.histograms_impl(RequestContext(), "", answer["run"], answer["layer"],
                                               histograms)
    return data


def render_html(data, title, head_text):
    """The report page for snapshot `data`.

    Args:
        data: the route answers (`snapshot`).
        title: the page title.
        head_text: one line shown above the tab's views.
    """
    from training_health.plugin import inline

    sources, style = read_static()
    if "</style" in style.lower():
        raise ValueError("the tab's %s contains '</style', which cannot be inlined" % STYLE_FILE)
    order = module_order(sources)
    return _PAGE % {
        "title": html.escape(title),
        "head": html.escape(head_text),
        "style": style,
        "data": inline.script_json(data),
        "modules": inline.script_json(sources),
        "order": inline.script_json(order),
        "loader": _LOADER_JS % {"pattern": json.dumps(IMPORT_RE.pattern),
                                "entry": json.dumps(ENTRY_MODULE)},
    }


def write_report(logdir, output, points=DEFAULT_POINTS, runs=None, histograms=DEFAULT_HISTOGRAMS):
    """Writes the report of `logdir` to `output`; returns (bytes written, run names).

    Args: as `snapshot`; `output` is the HTML file to write (its directory
    is created).
    """
    data = snapshot(logdir, points, runs, histograms)
    names = [entry["run"] for entry in data["runs"]["runs"]]
    if not names:
        raise ValueError("no Training Health data under %s (log a run with "
                         "training_health.keras.HealthCallback first)" % logdir)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    head = "Training Health report of %s, %d run%s, written %s" % (
        logdir, len(names), "s"[: len(names) != 1], stamp)
    page = render_html(data, "Training Health: %s" % logdir, head).encode("utf-8")
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(page)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's file is private; a report is not
        os.replace(tmp, output)
    except OSError:
        os.unlink(tmp)
        raise
    return len(page), names


def _hide_tensorflow():
    # TensorBoard's event reader imports TensorFlow whenever it is installed
    # (seconds of start-up) although its own reader is enough for a report.
    if "tensorflow" not in sys.modules:
        sys.modules["tensorflow"] = None


def run(args):
    """Runs the subcommand; returns the exit status (0, or 2 for an error)."""
    _hide_tensorflow()
    from training_health import format as fmt

    def fail(message):
        print("training-health report: %s" % message, file=sys.stderr)
        return EXIT_ERROR

    try:
        size, names = write_report(args.logdir, args.output, args.points, args.runs,
                                   args.histograms)
    except FileNotFoundError as e:
        return fail(str(e))
    except (ValueError, fmt.FormatError) as e:
        return fail(str(e))
    except (OSError, ImportError) as e:
        return fail("cannot write a report of %s: %s: %s" % (args.logdir, type(e).__name__, e))
    print("wrote %s (%.0f KB, %d run%s: %s)" % (
        args.output, size / 1024.0, len(names), "s"[: len(names) != 1], ", ".join(names)))
    return EXIT_OK
