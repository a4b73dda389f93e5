"""A machine that only views logs needs neither TensorFlow nor PyTorch.

Each check runs in a fresh interpreter where `tensorflow`, `keras` and
`torch` are blocked (`sys.modules[name] = None` makes any import of them
fail), so a module that imports a framework, even indirectly, fails here.
"""

import importlib.util
import json
import os
import subprocess
import textwrap

import pytest

from conftest import REPO_ROOT

BLOCKED = ("tensorflow", "keras", "tf_keras", "torch")
BLOCK = "import sys\nfor _name in %r:\n    sys.modules[_name] = None\n" % (BLOCKED,)

# Modules that need TensorFlow and must say how to get it.
TF_MODULES = ("training_health.keras", "training_health.tf")
# Internal modules used only by those (they import TensorFlow at the top).
TF_INTERNAL = tuple("training_health.capture." + m for m in
                    ("tf_program", "tf_ops", "tf_recording", "keras_layers"))
# Modules that need PyTorch (the public one says how to get it).
TORCH_MODULES = ("training_health.torch", "training_health.lightning")
TORCH_INTERNAL = tuple("training_health.capture." + m for m in ("torch_program", "torch_ops"))
FRAMEWORK_MODULES = TF_MODULES + TF_INTERNAL + TORCH_MODULES + TORCH_INTERNAL
# The source roots of setup.py: each holds packages under their import names.
SOURCE_ROOTS = ("logger", "plugin")


def _all_modules():
    """Every module of the packages, found in the source folders
    (`__main__` modules run a command when imported: left out)."""
    names = []
    for folder in SOURCE_ROOTS:
        base = os.path.join(REPO_ROOT, folder)
        for dirpath, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            rel = os.path.relpath(dirpath, base)
            if rel == ".":
                continue
            prefix = rel.replace(os.sep, ".")
            for f in files:
                if f.endswith(".py") and f != "__main__.py":
                    names.append(prefix if f == "__init__.py" else prefix + "." + f[:-3])
    return sorted(set(names))


# Every other module must import without TensorFlow: the plugin, the format,
# the reader, the detectors, the CLI and its subcommands (demo imports Keras
# only when it runs).
LIGHT_MODULES = tuple(m for m in _all_modules() if m not in FRAMEWORK_MODULES)
IMPORT_ALL = """
import importlib, json, sys, traceback
failed = {}
for name in %r:
    try:
        importlib.import_module(name)
    except ImportError:
        failed[name] = traceback.format_exc(limit=-3)
print(json.dumps({"failed": failed, "loaded": sorted(m for m in ("tensorflow", "keras", "torch") if m in sys.modules)}))
""" % (LIGHT_MODULES,)


def _python(python_exe, code, *args, block=True):
    script = (BLOCK if block else "") + textwrap.dedent(code)
    return subprocess.run(
        [python_exe, "-c", script, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180
    )


@pytest.mark.parametrize("name", ["tensorflow", "torch"])
def test_blocking_really_blocks_the_frameworks(python_exe, name):
    result = _python(python_exe, "import " + name)
    assert result.returncode != 0
    assert "ModuleNotFoundError" in result.stderr


def _import_all(python_exe, block):
    result = _python(python_exe, IMPORT_ALL, block=block)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_light_modules_are_found():
    for name in ("training_health", "training_health.format", "tensorboard_plugin_training_health",
                 "tensorboard_plugin_training_health.report", "training_health.cli",
                 "training_health.cli.check", "training_health.detectors",
                 "training_health.capture.host", "training_health.statistics"):
        assert name in LIGHT_MODULES


def test_light_modules_import_with_tensorflow_blocked(python_exe):
    report = _import_all(python_exe, block=True)
    assert report["failed"] == {}, "\n".join("%s:\n%s" % kv for kv in report["failed"].items())


def test_light_modules_do_not_import_tensorflow(python_exe):
    """Unblocked (TensorFlow installed): importing them still must not load it."""
    report = _import_all(python_exe, block=False)
    assert report["failed"] == {}
    assert report["loaded"] == []


@pytest.fixture
def blocking_env(tmp_path):
    """Environment whose interpreters start with TensorFlow blocked (a sitecustomize)."""
    folder = tmp_path / "block_tf"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(BLOCK)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH")) if p)
    return env


def test_sitecustomize_blocks_tensorflow(python_exe, blocking_env):
    result = subprocess.run(
        [python_exe, "-c", "import tensorflow"], env=blocking_env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "ModuleNotFoundError" in result.stderr


@pytest.mark.parametrize("argv", [["--help"]] + [[c, "--help"] for c in ("demo", "check", "watch", "report")])
def test_python_m_cli_help_runs_with_tensorflow_blocked(python_exe, blocking_env, argv):
    result = subprocess.run(
        [python_exe, "-m", "training_health.cli", *argv],
        cwd=REPO_ROOT, env=blocking_env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: training-health")
    if argv == ["--help"]:
        for command in ("demo", "check", "watch", "report"):
            assert command in result.stdout


def test_write_and_read_a_run_with_tensorflow_blocked(python_exe, tmp_path):
    """Writing (RunWriter) and reading back through TensorBoard's data provider."""
    code = """
        import sys
        import numpy as np
        from tensorboard import context
        from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
        from training_health import format as fmt
        from training_health.records import LayerInfo
        from training_health.io.run_writer import RunWriter

        logdir = sys.argv[1]
        writer = RunWriter(logdir + "/run", [LayerInfo("dense", "Dense", "relu", None, 4, True, True)])
        for step in (1, 2):
            writer.write_step(step, np.full((1, len(fmt.LAYER_STATS)), step), np.zeros(len(fmt.GLOBAL_STATS)))
        writer.close()
        mux = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance={fmt.PLUGIN_NAME: 0})
        mux.AddRunsFromDirectory(logdir)
        mux.Reload()
        provider = data_provider.MultiplexerDataProvider(mux, logdir)
        data = provider.read_tensors(
            context.RequestContext(), experiment_id="", plugin_name=fmt.PLUGIN_NAME, downsample=100
        )
        print([float(d.numpy[0, 0]) for d in data["run"][fmt.TAG_LAYERS]])
    """
    result = _python(python_exe, code, str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[1.0, 2.0]"


def test_plugin_entry_point_loads_with_tensorflow_blocked(python_exe, tmp_path):
    """What TensorBoard does on a viewing machine: entry point -> loader -> plugin."""
    code = """
        import sys
        from importlib.metadata import entry_points
        from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
        from tensorboard.plugins import base_plugin

        (ep,) = [e for e in entry_points(group="tensorboard_plugins") if e.name == "training_health"]
        loader_class = ep.load()
        loader = loader_class()
        mux = plugin_event_multiplexer.EventMultiplexer()
        context = base_plugin.TBContext(
            logdir=sys.argv[1], data_provider=data_provider.MultiplexerDataProvider(mux, sys.argv[1])
        )
        plugin = loader.load(context)
        print(plugin.plugin_name, sorted(plugin.get_plugin_apps()))
    """
    result = _python(python_exe, code, str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("training_health ")


@pytest.mark.parametrize("module,extra", [(m, "[tf]") for m in TF_MODULES]
                         + [(m, "[torch]") for m in TORCH_MODULES])
def test_framework_modules_fail_with_a_hint_to_their_extra(python_exe, module, extra):
    if importlib.util.find_spec(module) is None:
        pytest.skip("%s is not part of the package yet" % module)
    code = """
        import importlib
        try:
            importlib.import_module(%r)
        except ImportError as e:
            print("IMPORT_ERROR:", e)
        else:
            print("IMPORTED")
    """ % (module,)
    result = _python(python_exe, code)
    assert result.returncode == 0, result.stderr
    out = result.stdout.strip()
    assert out.startswith("IMPORT_ERROR:"), out
    assert extra in out, "the ImportError must name the %s extra; got: %s" % (extra, out)
