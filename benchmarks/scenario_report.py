"""Runs the scenario suite and prints what the detectors found.

    python benchmarks/scenario_report.py [--set suite|heldout|heldout2|heldout3|all] [--only NAME ...]
                                         [--logdir DIR] [--margins] [--verbose]

Prints one line per scenario, then: buggy runs detected, diagnosed with the
expected kind, detected within the first epoch of the onset, healthy runs
with any alert, the median steps from onset to the first alert of the
expected kind, and how many of the buggy runs that name their cause got a
first hint that names it (`Scenario.cause`).
"""

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.scenarios import (  # noqa: E402
    BUGGY, HEALTHY, HELDOUT, HELDOUT2, HELDOUT3, SCENARIOS, run_scenario)
from benchmarks.scenarios.margins import format_margins, margins  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="scenario names to run")
    parser.add_argument("--set", choices=("suite", "heldout", "heldout2", "heldout3", "all"), default="suite",
                        help="the calibration suite (default), the held-out runs, the held-out "
                             "runs of the second generation of alerts (heldout2: constant output, "
                             "learning rate too low, dead from the start, frozen layers...; "
                             "heldout3: data order, overfitting), or all")
    parser.add_argument("--every", type=int, default=1,
                        help="log every N batches (HealthCallback(every_n_batches=N))")
    parser.add_argument("--margins", action="store_true",
                        help="print how close each run came to each threshold")
    parser.add_argument("--logdir", default=None, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--verbose", action="store_true", help="print every alert")
    args = parser.parse_args(argv)
    sets = {"suite": BUGGY + HEALTHY, "heldout": HELDOUT, "heldout2": HELDOUT2,
            "heldout3": HELDOUT3, "all": BUGGY + HEALTHY + HELDOUT + HELDOUT2 + HELDOUT3}
    names = args.only or list(sets[args.set])
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error("unknown scenarios %s; known: %s" % (unknown, sorted(SCENARIOS)))
    root = args.logdir or tempfile.mkdtemp(prefix="scenarios-")
    results = []
    for name in names:
        result = run_scenario(SCENARIOS[name], os.path.join(root, name),
                              every_n_batches=args.every)
        results.append(result)
        expected = result.expected or "(healthy)"
        verdict = ("ok" if (result.right_kind if result.expected else not result.detected)
                   else "MISS" if result.expected else "FALSE ALARM")
        cause = {None: "", True: " cause=named", False: " cause=MISSED"}[result.cause_named]
        print("%-30s %-20s %-11s kinds=%s first=%s delay=%s steps=%d/epoch=%d %.1fs%s"
              % (name, expected, verdict, ",".join(result.kinds) or "-",
                 result.first_expected_step, result.delay, result.steps,
                 result.steps_per_epoch, result.seconds, cause), flush=True)
        if result.cause_named is False:
            print("    first hint: %s" % result.first_hint)
        if args.margins:
            from training_health.io import reader

            (run,) = reader.read_logdir(os.path.join(root, name))
            print("    margins: " + format_margins(margins(run.steps)))
        if args.verbose:
            for a in result.alerts:
                print("    %s %s %s %s | %s" % (a.step, a.kind, a.layer, a.message, a.hint))
    buggy = [r for r in results if r.expected]
    healthy = [r for r in results if not r.expected]
    delays = [r.delay for r in buggy if r.delay is not None]
    scored = [r for r in buggy if r.cause_named is not None]
    print("buggy_detected=%d/%d right_kind=%d/%d within_first_epoch=%d/%d "
          "healthy_with_alerts=%d/%d median_steps_to_first_alert=%s hint_names_cause=%d/%d"
          % (sum(r.detected for r in buggy), len(buggy),
             sum(r.right_kind for r in buggy), len(buggy),
             sum(r.within_first_epoch for r in buggy), len(buggy),
             sum(r.detected for r in healthy), len(healthy),
             statistics.median(delays) if delays else "n/a",
             sum(r.cause_named for r in scored), len(scored)))
    ok = all(r.right_kind for r in buggy) and not any(r.detected for r in healthy)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
