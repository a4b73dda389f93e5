"""Packaging: the wheel holds every package, data file and entry point, and a
plain (non-editable) install into a fresh virtual environment works.

The build runs on a copy of the source tree (what a clean clone would hold,
plus untracked files not ignored by git), so it never writes into the
checkout.
"""

import configparser
import fnmatch
import json
import os
import shutil
import site as pysite
import subprocess
import sys
import zipfile

import pytest
from packaging.requirements import Requirement

from conftest import REPO_ROOT

# The source roots of setup.py: each holds packages under their import names.
SOURCE_ROOTS = ("logger", "plugin")
PLUGIN = "tensorboard_plugin_training_health"
STATIC = os.path.join("plugin", PLUGIN, "static")
# Added to the copy only, to check the package-data globs (files and a subfolder).
PROBE_FILES = (os.path.join(STATIC, "zz_probe.js"), os.path.join(STATIC, "zz_sub", "zz_probe.css"))
IGNORED_NAMES = (".git", "build", "dist", "__pycache__", ".pytest_cache", "runs", "*.egg-info", "*venv*")


def _source_files():
    """Paths (relative) of the source tree: git's tracked and untracked-unignored files."""
    if shutil.which("git") and os.path.isdir(os.path.join(REPO_ROOT, ".git")):
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO_ROOT, capture_output=True, check=True,
        ).stdout
        return [p for p in out.decode("utf-8").split("\0") if p and os.path.isfile(os.path.join(REPO_ROOT, p))]
    files = []
    for root, dirs, names in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if not any(fnmatch.fnmatch(d, pat) for pat in IGNORED_NAMES)]
        files.extend(os.path.relpath(os.path.join(root, n), REPO_ROOT) for n in names)
    return files


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory):
    dest = tmp_path_factory.mktemp("src") / "training-health"
    for rel in _source_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(REPO_ROOT, rel), target)
    for rel in PROBE_FILES:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text("/* probe */\n")
    return dest


def _pip(python, *args, timeout=300):
    result = subprocess.run(
        [python, "-m", "pip", *args, "--disable-pip-version-check", "--no-input"],
        capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, "pip %s failed:\n%s\n%s" % (args, result.stdout[-3000:], result.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def wheel(source_copy, tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    _pip(sys.executable, "wheel", str(source_copy), "--no-deps", "-w", str(out))
    (path,) = [p for p in os.listdir(out) if p.endswith(".whl")]
    with zipfile.ZipFile(out / path) as zf:
        yield out / path, zf


def _expected_files(root):
    """Wheel paths of every file under the mapped folders of `root` (code and data).

    A folder holding modules but no `__init__.py` is not a package and does
    not ship: its modules show up as missing.
    """
    expected = set()
    for folder in SOURCE_ROOTS:
        base = os.path.join(str(root), folder)
        for dirpath, dirs, names in os.walk(base):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            rel = os.path.relpath(dirpath, base)
            if rel == ".":
                continue  # a source root itself is no package
            prefix = rel.replace(os.sep, "/")
            expected.update("%s/%s" % (prefix, n) for n in names if not n.endswith((".pyc", ".pyo")))
    return expected


def test_wheel_contains_every_module_and_data_file(wheel, source_copy):
    _, zf = wheel
    names = set(zf.namelist())
    expected = _expected_files(source_copy)
    for must in ("training_health/__init__.py", "training_health/detectors/__init__.py",
                 PLUGIN + "/__init__.py", "training_health/format.py", "training_health/cli/__init__.py",
                 "training_health/capture/host.py"):
        assert must in expected
    missing = expected - names
    assert not missing, "files missing from the wheel: %s" % sorted(missing)
    assert not [n for n in names if n.startswith(("logger/", "plugin/", "tests/"))]


def test_wheel_contains_static_files(wheel, source_copy):
    _, zf = wheel
    names = set(zf.namelist())
    static_root = source_copy / STATIC
    static = [
        os.path.relpath(os.path.join(d, n), str(source_copy / "plugin")).replace(os.sep, "/")
        for d, _, files in os.walk(static_root) for n in files
    ]
    assert len(static) >= len(PROBE_FILES)
    for rel in static:
        assert rel in names, rel
    real = [s for s in static if "zz_" not in s]
    for ext in (".js", ".css"):
        if not any(s.endswith(ext) for s in real):
            pytest.skip("the source tree has no plugin/static/*%s yet (probe files shipped)" % ext)


def oldest_stack():
    """{distribution: version} of .ci/oldest-stack.txt's lines that apply here."""
    pins = {}
    with open(os.path.join(REPO_ROOT, ".ci", "oldest-stack.txt")) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                req = Requirement(line)
                if req.marker is None or req.marker.evaluate():
                    (spec,) = req.specifier
                    assert spec.operator == "==", line
                    pins[req.name] = spec.version
    return pins


def test_oldest_stack_is_tensorflow_2_16_with_its_oldest_dependencies():
    pins = oldest_stack()
    tf = pins.get("tensorflow-cpu", pins.get("tensorflow"))
    assert tf == "2.16.1", pins
    assert set(pins) >= {"keras", "tensorboard", "protobuf", "numpy"}, pins
    assert pins["keras"].startswith("3.") and pins["tensorboard"].startswith("2.16.")


def test_wheel_entry_points_and_requirements(wheel):
    _, zf = wheel
    (ep_name,) = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
    eps = configparser.ConfigParser()
    eps.read_string(zf.read(ep_name).decode("utf-8"))
    assert eps["console_scripts"]["training-health"].strip() == "training_health.cli:main"
    assert eps["tensorboard_plugins"]["training_health"].strip() == "tensorboard_plugin_training_health:TrainingHealthLoader"
    (meta_name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
    requires = [line.split(":", 1)[1].strip() for line in zf.read(meta_name).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    base = [r for r in requires if "extra ==" not in r]
    assert sorted(Requirement(r).name for r in base) == ["numpy", "protobuf", "tensorboard"], base
    # Every requirement admits the oldest stack CI tests and no newer release
    # is excluded, so installing into an environment with TensorFlow 2.16 or
    # later changes none of its packages.
    oldest = oldest_stack()
    for r in requires:
        req = Requirement(r)
        if req.name in oldest and (req.marker is None or req.marker.evaluate({"extra": "tf"})
                                   or req.marker.evaluate({"extra": "tf-cpu"})):
            assert req.specifier.contains(oldest[req.name]), (r, oldest[req.name])
            assert not [s for s in req.specifier if s.operator in ("<", "<=", "==", "~=")], r
    assert Requirement([r for r in base if r.startswith("tensorboard")][0]).specifier.contains("2.16.0")
    assert not [r for r in base if r.startswith("tensorflow")], "TensorFlow must stay an extra: %s" % base
    tf_extra = [r for r in requires if r.startswith("tensorflow") and 'extra == "tf"' in r]
    assert tf_extra, requires
    for extra in ("tf", "tf-cpu", "s3", "gcs", "test"):
        assert "Provides-Extra: %s" % extra in zf.read(meta_name).decode()


def test_plain_install_into_fresh_venv(source_copy, tmp_path):
    venv = tmp_path / "venv"
    # System site-packages supply the dependencies (TensorBoard, numpy, ...);
    # the venv gets its own, non-editable copy of training-health.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert site.startswith(str(venv))
    # When the tests themselves run in a virtual environment (as .ci/run does),
    # the dependencies live there, not in the base interpreter's site: list
    # those folders after the new venv's own (a plain path line in a .pth
    # file runs none of the .pth files there, so no editable finder loads).
    with open(os.path.join(site, "zz_test_dependencies.pth"), "w", encoding="utf-8") as f:
        f.write("\n".join(p for p in pysite.getsitepackages() if os.path.isdir(p)) + "\n")
    _pip(python, "install", str(source_copy))
    probe = """
import importlib.metadata as md, json, os, training_health, tensorboard_plugin_training_health, training_health.format
(ep,) = [e for e in md.entry_points(group="tensorboard_plugins") if e.name == "training_health"]
loader = ep.load()
print(json.dumps({
    "init": training_health.__file__,
    "plugin": tensorboard_plugin_training_health.__file__,
    "loader": loader.__module__,
    "dist": str(md.distribution("training-health").locate_file("")),
    "static": sorted(os.listdir(os.path.join(os.path.dirname(tensorboard_plugin_training_health.__file__), "static"))),
}))
"""
    result = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout.strip().splitlines()[-1])
    # the installed copy is imported, not the editable checkout
    assert info["init"] == os.path.join(site, "training_health", "__init__.py")
    assert info["plugin"] == os.path.join(site, "tensorboard_plugin_training_health", "__init__.py")
    assert info["dist"].rstrip("/") == site.rstrip("/")
    assert info["loader"] == "tensorboard_plugin_training_health"
    assert "zz_probe.js" in info["static"]

    script = venv / "bin" / "training-health"
    assert script.exists()
    with open(script, encoding="utf-8") as f:
        assert f.readline().startswith("#!" + str(venv))
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: training-health")


def _ci_test_command():
    with open(os.path.join(REPO_ROOT, ".ci", "run"), encoding="utf-8") as f:
        lines = [line for line in f if line.startswith("TEST_COMMAND=")]
    assert len(lines) == 1, ".ci/run must define TEST_COMMAND once"
    return lines[0].strip()[len("TEST_COMMAND='"):-1]


def test_ci_runs_the_readme_test_command():
    command = _ci_test_command()
    assert command == "./dev.sh test"
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
        readme_lines = [line.strip() for line in f]
    assert command in readme_lines, "README.md must show the test command %r on a line of its own" % command
    for script in (os.path.join(REPO_ROOT, ".ci", "run"), os.path.join(REPO_ROOT, "dev.sh")):
        assert os.access(script, os.X_OK), script
        syntax = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
        assert syntax.returncode == 0, syntax.stderr
    with open(os.path.join(REPO_ROOT, "dev.sh"), encoding="utf-8") as f:
        assert 'exec python -m pytest -q "$@"' in f.read()  # the test command runs the suite


TOY_SETUP = """from setuptools import setup
setup(name="ci-toy", version="0", py_modules=[], extras_require={"test": ["pytest"]})
"""
TOY_PYPROJECT = """[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"
"""


def _toy_project(root, test_source):
    """A tiny project with a copy of .ci/run and dev.sh and one test file (or none)."""
    (root / ".ci").mkdir(parents=True)
    shutil.copy2(os.path.join(REPO_ROOT, ".ci", "run"), root / ".ci" / "run")
    shutil.copy2(os.path.join(REPO_ROOT, "dev.sh"), root / "dev.sh")
    (root / "setup.py").write_text(TOY_SETUP)
    (root / "pyproject.toml").write_text(TOY_PYPROJECT)
    (root / "tests").mkdir()
    if test_source is not None:
        (root / "tests" / "test_toy.py").write_text(test_source)
    return root


def test_ci_script_exit_status_follows_the_tests(tmp_path):
    """.ci/run on toy projects: passing tests -> 0; a failing test or no test -> non-zero."""
    cases = {
        "passing": ("def test_ok():\n    assert 1 + 1 == 2\n", 0),
        "failing": ("def test_broken():\n    assert 1 + 1 == 3\n", 1),
        "empty": (None, 1),
    }
    # No build isolation: the toy builds with the setuptools already there (faster).
    env = dict(os.environ, CI="true", CI_SKIP_CHROMIUM="1", PIP_NO_BUILD_ISOLATION="1",
               CI_SKIP_COMPAT="1")
    env.pop("PYTHONPATH", None)
    procs = {}
    for name, (source, _) in cases.items():
        root = _toy_project(tmp_path / name, source)
        procs[name] = subprocess.Popen(
            ["bash", str(root / ".ci" / "run")], cwd=str(tmp_path), env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
    outputs = {}
    for name, proc in procs.items():
        outputs[name], _ = proc.communicate(timeout=300)
        assert proc.returncode == cases[name][1], "%s:\n%s" % (name, outputs[name][-3000:])
        assert "running: %s" % _ci_test_command() in outputs[name]
    assert "1 passed" in outputs["passing"] and "all tests passed" in outputs["passing"]
    assert "1 failed" in outputs["failing"] and "FAILED: exit status 1" in outputs["failing"]
    assert "FAILED: pytest collected no tests" in outputs["empty"]


def test_ci_compat_step_runs_the_compat_subset_covering_each_area():
    compat = os.path.join(REPO_ROOT, ".ci", "compat")
    assert os.access(compat, os.X_OK)
    syntax = subprocess.run(["bash", "-n", compat], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    with open(os.path.join(REPO_ROOT, ".ci", "run"), encoding="utf-8") as f:
        assert 'bash .ci/compat "$DEV_VENV/bin/python"' in f.read()
    with open(compat, encoding="utf-8") as f:
        script = f.read()
    assert '-m venv "$OLD"' in script and "--system-site-packages" not in script
    assert '-m pytest -q -p no:cacheprovider -m compat' in script
    assert "tests/test_compat_viewing.py" in script
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", "-m", "compat"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert collected.returncode == 0, collected.stdout[-3000:]
    files = {line.split("::")[0] for line in collected.stdout.splitlines() if "::" in line}
    areas = {
        "capture (Keras callback)": "tests/test_capture_stats.py",
        "capture (tape)": "tests/test_tape.py",
        "format": "tests/test_format.py",
        "reader": "tests/test_reader.py",
        "CLI check": "tests/test_check_cli.py",
        "detectors": "tests/test_detectors.py",
        "plugin end to end": "tests/test_plugin_e2e.py",
    }
    for area, path in areas.items():
        assert path in files, "no %s test is marked compat (%s)" % (area, path)
