"""`training-health` command line: demo, check, watch, report.

Each subcommand lives in its own module exposing `add_arguments(parser)`
and `run(args) -> int` (the exit status). Modules are imported only when
their subcommand runs, so `training-health check` never imports TensorFlow.
"""

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS = {
    "demo": ("training_health.cli.demo", "train the frozen-accuracy CNN and a healthy twin into ./runs"),
    "check": ("training_health.cli.check", "replay the stall detectors over a logdir and list alerts"),
    "watch": ("training_health.cli.watch", "live terminal view of a logdir (for SSH sessions)"),
    "report": ("tensorboard_plugin_training_health.report", "write one self-contained HTML report of a logdir"),
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="training-health",
        description="Why did my network stop learning? Per-layer training health for Keras.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        module = _load(module_name)
        if module is not None:
            module.add_arguments(p)
    return parser


def _load(module_name):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:  # subcommand not built yet
            return None
        raise


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    module = _load(args._module)
    if module is None:
        print("training-health: '%s' is not available in this version" % args.command, file=sys.stderr)
        return 2
    return module.run(args)

