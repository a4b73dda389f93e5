"""`training-health --version`: the versions a bug report needs, read from the
installed packages' metadata, in a subprocess, without importing TensorFlow
or torch."""

import importlib.metadata
import json
import platform
import subprocess
import sys
import textwrap

import pytest

from training_health import __version__
from training_health.cli import VERSION_PACKAGES, version_lines

pytestmark = pytest.mark.compat


def installed():
    """{normalized distribution name: version} of everything on sys.path (first wins)."""
    found = {}
    for dist in importlib.metadata.distributions():
        found.setdefault(dist.metadata["Name"].lower().replace("_", "-"), dist.version)
    return found


def test_version_prints_every_package_as_installed_without_importing_frameworks():
    script = textwrap.dedent("""
        import json, sys
        from training_health.cli import main
        status = main(["--version"])
        print(json.dumps([status, sorted(m for m in ("tensorflow", "keras", "torch")
                                         if m in sys.modules)]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    *lines, last = result.stdout.splitlines()
    status, imported = json.loads(last)
    assert status == 0 and imported == []
    assert lines[0] == "training-health %s" % __version__
    assert lines[1].startswith("python %s (" % platform.python_version())
    assert len(lines) == 2 + len(VERSION_PACKAGES)
    versions = installed()
    for (name, distributions), line in zip(VERSION_PACKAGES, lines[2:]):
        present = [d for d in distributions if d in versions]
        if not present:
            assert line == "%s not installed" % name
        else:
            assert line.split()[:2] == [name, versions[present[0]]], line
    # tensorboard and numpy are requirements of training-health: always there.
    assert any(line.startswith("tensorboard 2.") for line in lines)
    assert any(line.startswith("numpy ") and "not installed" not in line for line in lines)


def test_version_names_the_distribution_and_says_not_installed():
    lines = version_lines((
        ("tb", ("no-such-distribution-th23", "tensorboard")),
        ("absent", ("no-such-distribution-th23",)),
    ))
    assert lines[2] == "tb %s (tensorboard)" % importlib.metadata.version("tensorboard")
    assert lines[3] == "absent not installed"


def test_version_entry_point_exits_0():
    result = subprocess.run([sys.executable, "-m", "training_health.cli", "--version"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("training-health %s\n" % __version__)
