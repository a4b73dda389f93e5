"""`training-health watch LOGDIR`: a live terminal view for SSH sessions.

Every `--interval` seconds the new part of each run's event files is read
(`reader.RunReader`, local paths or bucket URLs), its steps and finished
epochs fed to the same detectors that `check` replays, and shown as one
line per run: step, loss, the last epoch's validation loss when there is
one, steps/s (from the logged wall times) and the worst layer, and "idle"
with the time since the newest step when that is over two minutes. Each new alert,
logged by the training process or found by the detectors, is printed once,
with its hint, when it appears; an episode that ends is printed as resolved.

On a terminal the run lines are redrawn in place; when stdout is not a
terminal (``nohup``, a log file, a pipe) plain lines are appended instead,
a run's line only when it changed. Ctrl-C exits with status 0. Only the
standard library is imported at module level (no TensorFlow at all).
"""

import collections
import dataclasses
import math
import os
import shutil
import sys
import time

from training_health.cli import storage

EXIT_OK, EXIT_ERROR = 0, 2
RATE_WINDOW_SECS = 30.0  # steps/s is measured over the last 30 s of logged wall time
# A run whose newest step was logged longer ago than this is shown as idle
# (finished, crashed or stuck). Generous, so that clock differences between
# the training box and this machine and the writer's delays do not show.
IDLE_SECS = 120.0

# Per-layer statistics that say "this layer is unhealthy", as fractions.
_BAD_FRACTIONS = (
    ("dead_frac_window", "dead"),
    ("act_saturated_frac", "saturated"),
)


def add_arguments(parser):
    """Adds the `watch` arguments to an argparse parser."""
    parser.add_argument("logdir", help="log directory or URL (s3://bucket/runs) holding one or more runs")
    parser.add_argument(
        "--interval", type=float, default=5.0,
        help="seconds between refreshes (default: 5)",
    )
    parser.add_argument("--once", action="store_true", help="read and print once, then exit")
    storage.add_argument(parser)


@dataclasses.dataclass
class RunView:
    """What the watcher knows about one run."""

    name: str
    reader: object
    suite: object
    last: object = None  # newest StepStats
    last_epoch: object = None  # newest EpochStats
    wall_times: collections.deque = dataclasses.field(default_factory=collections.deque)
    open_alerts: dict = dataclasses.field(default_factory=dict)  # (kind, layer) -> Alert
    n_alerts: int = 0
    error: str = ""
    line: str = ""


def steps_per_second(samples):
    """Steps per second over (wall_time, step) samples, oldest first; None if unknown."""
    if len(samples) < 2:
        return None
    (t0, s0), (t1, s1) = samples[0], samples[-1]
    if t1 <= t0:
        return None
    return (s1 - s0) / (t1 - t0)


def worst_layer(stats, open_alerts):
    """(layer name, why) of the least healthy layer, or None.

    A layer with an open alert comes first (critical before warning);
    otherwise the layer with the largest fraction of dead or saturated
    units (only when above 0), or with non-finite values. Layers fed by
    frozen weights (`hints.frozen_sources`) are not ranked by their dead or
    saturated units: training cannot change those, and their own alerts
    speak when they matter.
    """
    from training_health.detectors.hints import frozen_sources

    alerts = [a for a in open_alerts.values() if a.layer]
    if alerts:
        alert = max(alerts, key=lambda a: (a.severity == "critical", a.step))
        return alert.layer, alert.kind
    if stats is None or not len(stats.layers):
        return None
    names = stats.layer_stats
    best = None
    frozen = frozen_sources(stats)
    for i, info in enumerate(stats.layers):
        row = stats.layer_values[i]
        for column in ("act_nonfinite", "grad_nonfinite"):
            if column in names and math.isfinite(row[names.index(column)]) and row[names.index(column)] >= 1:
                return info.name, "non-finite values"
        if info.name in frozen:
            continue
        for column, label in _BAD_FRACTIONS:
            if column not in names:
                continue
            value = float(row[names.index(column)])
            if math.isfinite(value) and value > 0 and (best is None or value > best[0]):
                best = (value, info.name, "%.0f%% %s" % (100 * value, label))
    return (best[1], best[2]) if best else None


def format_duration(seconds):
    """A short duration: "45s", "12m", "3h", "2d"."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return "%d%s" % (seconds // size, unit)
    return "%ds" % seconds


def format_line(view, name_width, now=None):
    """The status line of one run.

    Args:
        view: a RunView.
        name_width: width the run names are padded to.
        now: the current time (seconds since the epoch), to tell an idle
            run. Defaults to `time.time()`.
    """
    if view.error:
        return "%s  error: %s" % (view.name.ljust(name_width), view.error)
    stats = view.last
    if stats is None:
        return "%s  waiting for data" % view.name.ljust(name_width)
    loss = stats.global_values.get("loss")
    rate = steps_per_second(view.wall_times)
    worst = worst_layer(stats, view.open_alerts)
    parts = [
        view.name.ljust(name_width),
        "step %d" % stats.step,
        "loss %s" % ("%.4g" % loss if loss is not None else "-"),
    ]
    val_loss = view.last_epoch.metrics.get("val_loss") if view.last_epoch is not None else None
    if val_loss is not None:
        parts.append("val_loss %.4g (epoch %d)" % (val_loss, view.last_epoch.epoch))
    parts += [
        "%s steps/s" % ("%.3g" % rate if rate is not None else "-"),
        "worst %s" % ("%s (%s)" % worst if worst else "-"),
    ]
    if view.n_alerts:
        parts.append("%d alert%s" % (view.n_alerts, "s"[: view.n_alerts != 1]))
    if view.wall_times:
        quiet = (time.time() if now is None else now) - view.wall_times[-1][0]
        if quiet > IDLE_SECS:
            parts.append("idle %s" % format_duration(quiet))
    return "  ".join(parts)


def format_alert(run_name, alert):
    """The lines printed for a new (or resolved) alert: an alert that
    follows from an earlier one (`caused_by`) is one short line."""
    where = " %s" % alert.layer if alert.layer else ""
    if alert.cleared:
        return ["[%s] step %d: resolved %s%s" % (run_name, alert.step, alert.kind, where)]
    if alert.caused_by:
        from training_health.detectors import incidents

        return ["[%s]   then %s (follows from %s)"
                % (run_name, incidents.short_line(alert), alert.caused_by)]
    lines = ["[%s] step %d: %s %s%s: %s" % (
        run_name, alert.step, alert.severity.upper(), alert.kind, where, alert.message)]
    if alert.hint:
        lines.append("    hint: %s" % alert.hint)
    return lines


class Watcher:
    """Reads a logdir incrementally and keeps one `RunView` per run.

    Args:
        logdir: local directory or URL.
        storage_options: fsspec options for URLs. Defaults to None.
    """

    def __init__(self, logdir, storage_options=None):
        from training_health.io import reader
        from training_health.detectors import DetectorSuite

        self.logdir = logdir
        self.storage_options = storage_options
        self._reader_module = reader
        self._suite_class = DetectorSuite
        self._reader_class = reader.RunReader
        self.runs = {}  # name -> RunView

    def refresh(self):
        """Reads what is new. Returns the new alert records as (run name, Alert).

        Raises:
            FileNotFoundError: the logdir does not exist (yet).
            OSError: the logdir could not be listed.
        """
        from training_health import format as fmt

        found = self._reader_module.list_runs(self.logdir, self.storage_options)
        new_alerts = []
        for name, path in found.items():
            view = self.runs.get(name)
            if view is None:
                reader = self._reader_class(path, name, self.storage_options)
                view = self.runs[name] = RunView(name, reader, self._suite_class())
            try:
                update = view.reader.poll()
            except (OSError, fmt.FormatError) as e:
                view.error = "%s: %s" % (type(e).__name__, e)
                continue
            view.error = ""
            new_alerts.extend((name, a) for a in self._ingest(view, update))
        return new_alerts

    def _ingest(self, view, update):
        found = view.suite.feed(update.steps, update.epochs)
        if update.epochs:
            view.last_epoch = update.epochs[-1]
        for stats in update.steps:
            view.last = stats
            wall = update.wall_times.get(stats.step)
            if wall is not None:
                view.wall_times.append((wall, stats.step))
        while len(view.wall_times) > 2 and view.wall_times[-1][0] - view.wall_times[0][0] > RATE_WINDOW_SECS:
            view.wall_times.popleft()
        found.extend(update.alerts)  # logged by the training process
        fresh = []
        for alert in sorted(found, key=lambda a: a.step):  # stable: detector order kept
            key = (alert.kind, alert.layer)
            if alert.cleared:
                if view.open_alerts.pop(key, None) is not None:
                    fresh.append(alert)
            elif key not in view.open_alerts:
                view.open_alerts[key] = alert
                view.n_alerts += 1
                fresh.append(alert)
        return fresh

    def lines(self):
        """One status line per run that has Training Health data, sorted by name."""
        views = [v for v in self.runs.values() if v.reader.has_data or v.error]
        width = max((len(v.name) for v in views), default=0)
        return [(v, format_line(v, width)) for v in sorted(views, key=lambda v: v.name)]


class _Screen:
    """Prints to a terminal (run lines redrawn in place) or appends plain lines."""

    def __init__(self, out):
        self.out = out
        self.tty = hasattr(out, "isatty") and out.isatty()
        self._drawn = 0

    def show(self, alert_lines, run_lines, changed_only):
        out = self.out
        if self.tty:
            width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
            if self._drawn:
                out.write("\x1b[%dF\x1b[J" % self._drawn)  # back to the block's start, clear
            for line in alert_lines:
                out.write(line + "\n")
            for _, line in run_lines:
                out.write(line[:width] + "\n")
            self._drawn = len(run_lines)
        else:
            for line in alert_lines:
                out.write(line + "\n")
            stamp = time.strftime("%H:%M:%S")
            for view, line in run_lines:
                if changed_only and line == view.line:
                    continue
                out.write("%s %s\n" % (stamp, line))
        for view, line in run_lines:
            view.line = line
        out.flush()


def _loop(args, out, err):
    from training_health import format as fmt

    watcher = Watcher(args.logdir, storage.options(args))
    screen = _Screen(out)
    waiting_said = False
    first = True
    while True:
        try:
            alerts = watcher.refresh()
        except FileNotFoundError:
            if args.once:
                print("training-health watch: no such log directory: %s" % args.logdir, file=err)
                return EXIT_ERROR
            alerts = []
            if not waiting_said:
                print("training-health watch: %s does not exist yet; waiting (Ctrl-C to stop)"
                      % args.logdir, file=err)
                waiting_said = True
        except ImportError as e:  # a missing client: waiting will not help
            print("training-health watch: cannot read %s: %s" % (args.logdir, e), file=err)
            return EXIT_ERROR
        except (OSError, fmt.FormatError) as e:
            if args.once:
                print("training-health watch: cannot read %s: %s: %s"
                      % (args.logdir, type(e).__name__, e), file=err)
                return EXIT_ERROR
            print("training-health watch: cannot read %s (%s: %s); retrying"
                  % (args.logdir, type(e).__name__, e), file=err)
            alerts = []
        alert_lines = [line for name, alert in alerts for line in format_alert(name, alert)]
        run_lines = watcher.lines()
        if first and not run_lines and args.once:
            print("training-health watch: no Training Health data under %s" % args.logdir, file=err)
            return EXIT_ERROR
        screen.show(alert_lines, run_lines, changed_only=not first)
        first = False
        if args.once:
            return EXIT_OK
        time.sleep(args.interval)


def run(args):
    """Runs the subcommand; returns the exit status (0, or 2 for an error)."""
    if not args.interval > 0:
        print("training-health watch: --interval must be > 0 seconds; received %r" % args.interval,
              file=sys.stderr)
        return EXIT_ERROR
    try:
        return _loop(args, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        sys.stdout.flush()
        return EXIT_OK
    except BrokenPipeError:  # e.g. `watch ... | head`: the reader is gone
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        return EXIT_OK
