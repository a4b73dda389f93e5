"""`training-health check LOGDIR`: replay the stall detectors over event files.

For every run of the logdir, every logged step and finished epoch is fed
to a fresh `DetectorSuite` (the same detectors the online logger runs), and the
alerts already logged by the training process are added; the same
(kind, layer, step) found both ways is listed once. Only raised alerts are
listed, not the records that close an episode. Alerts are grouped into
incidents (`detectors.incidents`): the table lists each incident's first
alert with its message and hint, then one short line per alert that
follows from it; `--json` lists every alert with its `incident` and
`caused_by`.

A long run whose layer rows were summarized on disk after its first steps
(docs/format.md, "Long runs") is replayed up to its first summarized
block; beyond it, the alerts are those the logger raised online, where
the detectors saw every step.

On a logdir of several runs (a sweep), one line per run comes first,
worst first: its status (the severity of its worst alert, or OK), steps,
number of alerts and worst alert; then each run's table.

Exit status: 0 when no run has an alert, 1 when any has, 2 for an error
(no such logdir, no Training Health data, unreadable data), with the reason
on stderr. TensorFlow is not imported.
"""

import json
import sys

from training_health import format as fmt
from training_health.cli import storage
from training_health.io import reader
from training_health.records import SEVERITIES
from training_health.detectors import DetectorSuite, incidents

EXIT_OK, EXIT_ALERTS, EXIT_ERROR = 0, 1, 2
JSON_KEYS = ("kind", "step", "layer", "severity", "message", "hint", "incident", "caused_by")


def add_arguments(parser):
    """Adds the `check` arguments to an argparse parser."""
    parser.add_argument("logdir", help="log directory (or URL) holding one or more runs")
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"runs": [{"run": ..., "alerts": [...]}]} instead of tables',
    )
    storage.add_argument(parser)


def check_run(run, suite=None):
    """The raised alerts of one `reader.RunData`, replayed and logged, deduplicated.

    Args:
        run: a `reader.RunData`.
        suite: the `DetectorSuite` to replay (it is reset first). Defaults to
            a new suite of the default detectors.

    Returns:
        A list of `records.Alert` sorted by step (causes before consequences
        within a step), without cleared records, each with its `incident`
        and `caused_by` (grouped over the replayed and logged records
        together, cleared ones included).
    """
    suite = suite if suite is not None else DetectorSuite()
    found = {}
    for alert in suite.replay(replayed_steps(run), run.epochs) + list(run.alerts):
        found.setdefault((alert.kind, alert.layer, alert.step, alert.cleared), alert)
    ordered = sorted(found.values(), key=lambda a: (a.step, a.kind, a.layer or "", a.cleared))
    return [a for a in incidents.group(ordered) if not a.cleared]


def replayed_steps(run):
    """The steps of `run` the detectors are replayed on: every step, or,
    for a long run, those before its first summarized block."""
    if not run.history:
        return run.steps
    start = run.history[0].first_step
    return [s for s in run.steps if s.step < start]


def _as_json(results):
    return {
        "runs": [
            {"run": name, "alerts": [{k: getattr(a, k) for k in JSON_KEYS} for a in alerts]}
            for name, alerts in results
        ]
    }


def _table(name, n_steps, alerts, out, summarized_from=None):
    note = ("" if summarized_from is None else
            "\n  (a long run: its layer rows from step %d on are summarized on disk; the alerts "
            "there are those the logger raised while it saw every step)" % summarized_from)
    if not alerts:
        print("%s: OK (%d steps, no alerts)%s" % (name, n_steps, note), file=out)
        return
    groups = incidents.by_incident(alerts)
    print("%s: %d alert%s in %d incident%s (%d steps)"
          % (name, len(alerts), "" if len(alerts) == 1 else "s",
             len(groups), "" if len(groups) == 1 else "s", n_steps) + note, file=out)
    rows = [("STEP", "SEVERITY", "KIND", "LAYER")] + [
        (str(root.step), root.severity, root.kind, root.layer or "-") for root, _ in groups
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for i, row in enumerate(rows):
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)
        if i:
            root, consequences = groups[i - 1]
            print("      %s" % root.message, file=out)
            if root.hint:
                print("      hint: %s" % root.hint, file=out)
            for alert in consequences:
                print("      then %s" % incidents.short_line(alert), file=out)


def worst_alert(alerts):
    """The most severe of `alerts`, the earliest of those; None for none."""
    return min(alerts, key=lambda a: (-SEVERITIES.index(a.severity), a.step), default=None)


def run_status(alerts):
    """"ok", or the severity of the worst alert ("warning", "critical")."""
    worst = worst_alert(alerts)
    return "ok" if worst is None else worst.severity


def _sweep_summary(results, steps, out):
    """One line per run, worst first: status, run, steps, alerts, worst alert."""
    order = ("critical", "warning", "ok")
    rows = sorted(results, key=lambda r: (order.index(run_status(r[1])), r[0]))
    counts = [sum(run_status(alerts) == status for _, alerts in results) for status in order]
    print("%d runs: %s" % (len(results), ", ".join(
        "%d %s" % (n, status.upper() if status == "ok" else status)
        for n, status in zip(counts, order) if n)), file=out)
    table = [("STATUS", "RUN", "STEPS", "ALERTS", "WORST ALERT")]
    for name, alerts in rows:
        worst = worst_alert(alerts)
        table.append((run_status(alerts).upper(), name, str(steps[name]), str(len(alerts)),
                      "-" if worst is None else "step %d %s%s" % (
                          worst.step, worst.kind, "" if worst.layer is None else " in " + worst.layer)))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for row in table:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)
    print(file=out)


def _fail(message):
    print("training-health check: %s" % message, file=sys.stderr)
    return EXIT_ERROR


def run(args):
    """Runs the subcommand; returns the exit status."""
    try:
        runs = reader.read_logdir(args.logdir, storage.options(args), keep_summarized_steps=False)
    except FileNotFoundError:
        return _fail("no such log directory: %s" % args.logdir)
    except fmt.FormatError as e:
        return _fail("cannot read %s: %s" % (args.logdir, e))
    except (OSError, ImportError) as e:
        return _fail("cannot read %s: %s: %s" % (args.logdir, type(e).__name__, e))
    if not runs:
        return _fail(
            "no Training Health data under %s (log a run with "
            "training_health.keras.HealthCallback first)" % args.logdir
        )
    results = [(r.name, check_run(r)) for r in runs]
    if args.json:
        json.dump(_as_json(results), sys.stdout)
        sys.stdout.write("\n")
    else:
        steps = {r.name: r.step_count for r in runs}
        if len(results) > 1:
            _sweep_summary(results, steps, sys.stdout)
        summarized = {r.name: r.history[0].first_step for r in runs if r.history}
        for name, alerts in results:
            _table(name, steps[name], alerts, sys.stdout, summarized.get(name))
    return EXIT_ALERTS if any(alerts for _, alerts in results) else EXIT_OK
