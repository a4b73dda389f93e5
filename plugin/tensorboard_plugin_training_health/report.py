"""`training-health report LOGDIR -o report.html`: one self-contained HTML file.

The report shows the same views as the Training Health tab because it runs
the tab's own front-end modules on the tab's own route answers:
`tensorboard_plugin_training_health.inline.snapshot` gives the answers of every route
for the logdir's runs, and `inline.offline_page` puts them in a page as
``window.TRAINING_HEALTH_INLINE`` (read by `model.js`'s `InlineSource`
instead of fetching) together with the tab's modules and style sheet,
inline. Nothing is fetched: the file opens offline, from disk, in any
current browser.

Series are downsampled by the plugin to `--points` columns per chart
(bucket means, as the tab does for wide ranges) and histograms to
`--histograms` evenly spaced snapshots per layer.
"""

import datetime
import os
import sys
import tempfile

from training_health.cli import storage

EXIT_OK, EXIT_ERROR = 0, 2
DEFAULT_POINTS = 500
DEFAULT_HISTOGRAMS = 50  # snapshots per layer; the tab asks for up to 200


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
    storage.add_argument(parser)


def snapshot(logdir, points=DEFAULT_POINTS, runs=None, histograms=DEFAULT_HISTOGRAMS,
             storage_options=None):
    """The tab's route answers for `logdir`, as `inline.snapshot` gives them.

    The event files are first copied to a temporary directory without their
    damaged bytes (`reader.copy_event_files`), because TensorBoard's reader
    stops at the first damaged record of a file: the report shows everything
    `training-health check` reads.

    Args:
        logdir: local directory or URL.
        points: columns per heatmap and points per chart. Defaults to
            DEFAULT_POINTS.
        runs: names of the runs to include. Defaults to None (every run with
            Training Health data).
        histograms: histogram snapshots kept per layer. Defaults to
            DEFAULT_HISTOGRAMS.
        storage_options: fsspec options for a URL logdir. Defaults to None.

    Raises:
        FileNotFoundError: `logdir` does not exist.
        ValueError: `points` or `histograms` is not a positive int, or an
            unknown run was asked.
    """
    from training_health.io import reader

    if not isinstance(points, int) or points < 1:
        raise ValueError("points must be a positive int; received %r" % (points,))
    if not isinstance(histograms, int) or histograms < 1:
        raise ValueError("histograms must be a positive int; received %r" % (histograms,))
    with tempfile.TemporaryDirectory(prefix="training-health-report-") as tmp:
        reader.copy_event_files(logdir, tmp, storage_options)
        return _snapshot_of_copy(tmp, points, runs, histograms)


def load_plugin(path):
    """(plugin, data provider) as TensorBoard's Python backend builds them for
    the local logdir `path`, keeping every step (the plugin downsamples)."""
    from training_health import format as fmt
    from tensorboard.backend.event_processing import data_provider
    from tensorboard.backend.event_processing import plugin_event_multiplexer
    from tensorboard.plugins import base_plugin

    from tensorboard_plugin_training_health import TrainingHealthLoader

    multiplexer = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance={fmt.PLUGIN_NAME: 0})
    multiplexer.AddRunsFromDirectory(path)
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, path)
    context = base_plugin.TBContext(logdir=path, data_provider=provider,
                                    sampling_hints={fmt.PLUGIN_NAME: 0})
    return TrainingHealthLoader().load(context), provider


def _snapshot_of_copy(path, points, runs, histograms):
    from tensorboard.context import RequestContext

    from tensorboard_plugin_training_health import inline

    plugin, _ = load_plugin(path)
    data = inline.snapshot(plugin, runs=runs, width=points)
    for key, answer in data.items():  # fewer histogram snapshots than the tab's default
        if key.split("?", 1)[0] == "histograms":
            data[key] = plugin.histograms_impl(RequestContext(), "", answer["run"], answer["layer"],
                                               histograms)
    return data


def write_report(logdir, output, points=DEFAULT_POINTS, runs=None, histograms=DEFAULT_HISTOGRAMS,
                 storage_options=None):
    """Writes the report of `logdir` to `output`; returns (bytes written, run names).

    Args: as `snapshot`; `output` is the HTML file to write (its directory
    is created).
    """
    data = snapshot(logdir, points, runs, histograms, storage_options)
    names = [entry["run"] for entry in data["runs"]["runs"]]
    if not names:
        raise ValueError("no Training Health data under %s (log a run with "
                         "training_health.keras.HealthCallback first)" % logdir)
    from tensorboard_plugin_training_health import inline

    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    title = "Training Health: %s (%s)" % (logdir, stamp)
    page = inline.offline_page(data, title).encode("utf-8")
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
                                   args.histograms, storage.options(args))
    except FileNotFoundError as e:
        return fail(str(e))
    except (ValueError, fmt.FormatError) as e:
        return fail(str(e))
    except (OSError, ImportError) as e:
        return fail("cannot write a report of %s: %s: %s" % (args.logdir, type(e).__name__, e))
    print("wrote %s (%.0f KB, %d run%s: %s)" % (
        args.output, size / 1024.0, len(names), "s"[: len(names) != 1], ", ".join(names)))
    return EXIT_OK
