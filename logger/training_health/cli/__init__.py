"""`training-health` command line: demo, check, watch, report, and --version.

Each subcommand lives in its own module exposing `add_arguments(parser)`
and `run(args) -> int` (the exit status). Modules are imported only when
their subcommand runs, so `training-health check` never imports TensorFlow.
"""

import argparse
import importlib
import importlib.metadata
import platform
import sys

# What `--version` reports besides training-health itself: (name, the
# distributions that install it, first found wins). Read from the installed
# packages' metadata, so neither TensorFlow nor torch is imported.
VERSION_PACKAGES = (
    ("tensorflow", ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tensorflow-intel",
                    "tf-nightly", "tf-nightly-cpu")),
    ("keras", ("keras", "keras-nightly")),
    ("tensorboard", ("tensorboard", "tb-nightly")),
    ("protobuf", ("protobuf",)),
    ("numpy", ("numpy",)),
    ("torch", ("torch",)),
)

# name -> (module, one-line help)
SUBCOMMANDS = {
    "demo": ("training_health.cli.demo", "train the stalled CNN and a healthy twin into ./runs"),
    "check": ("training_health.cli.check", "replay the stall detectors over a logdir and list alerts"),
    "watch": ("training_health.cli.watch", "live terminal view of a logdir (for SSH sessions)"),
    "report": ("tensorboard_plugin_training_health.report", "write one self-contained HTML report of a logdir"),
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="training-health",
        description="Why did my network stop learning? Per-layer training health for Keras.",
    )
    parser.add_argument(
        "--version", action="store_true",
        help="print the versions of training-health, Python, TensorFlow, Keras, tensorboard, "
        "protobuf, numpy and torch installed here, and exit")
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


def installed_version(distributions):
    """(distribution, version) of the first of `distributions` installed, or None."""
    for name in distributions:
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def version_lines(packages=VERSION_PACKAGES):
    """The lines `training-health --version` prints: one `name version` per
    package (the distribution in parentheses when it is not the name's own),
    `name not installed` for an absent one."""
    from training_health import __version__

    lines = ["training-health %s" % __version__,
             "python %s (%s)" % (platform.python_version(), sys.executable)]
    for name, distributions in packages:
        found = installed_version(distributions)
        if found is None:
            lines.append("%s not installed" % name)
        elif found[0] == name:
            lines.append("%s %s" % (name, found[1]))
        else:
            lines.append("%s %s (%s)" % (name, found[1], found[0]))
    return lines


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print("\n".join(version_lines()))
        return 0
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    module = _load(args._module)
    if module is None:
        print("training-health: '%s' is not available in this version" % args.command, file=sys.stderr)
        return 2
    return module.run(args)

