#!/usr/bin/env bash
# Sets up Training Health from this checkout and runs the demo or the tests,
# on a fresh machine as on a prepared one.
#
#   ./dev.sh demo             train the stalled CNN demo into ./runs
#                             (installs the package with its [tf] extra)
#   ./dev.sh test [ARGS...]   run the test suite: `python -m pytest -q ARGS...`
#                             (installs the [test] extra, PyTorch's CPU-only
#                             build and Debian's chromium for the browser tests)
#
# Python packages go into a virtual environment (.venv in the checkout, or
# DEV_VENV) that also sees the machine's own site-packages, so what is
# installed already is reused and the system's Python is left as it was
# (Debian's pip refuses to install into it: PEP 668). What the machine lacks
# (python3, python3-venv, chromium) comes from apt-get, as root or with sudo.
# The exit status is the demo's or pytest's (5: no test collected).
#
# Environment:
#   DEV_VENV           the virtual environment (default: .venv here; made if missing).
#   DEV_PYTHON         the interpreter to make it with (default: the first
#                      python3/python with TensorFlow, else the first found,
#                      else Debian's python3).
#   DEV_SKIP_CHROMIUM  1: do not install chromium.
#   DEV_TORCH_INDEX    PyTorch's CPU-only index
#                      (default: https://download.pytorch.org/whl/cpu).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

say() { echo "[dev.sh] $*" >&2; }

usage() {
  sed -n '5,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
  exit 2
}

# Runs a command; if it fails, waits and runs it once more (network hiccups).
retry() {
  "$@" && return 0
  say "failed, retrying once in 10 s: $*"
  sleep 10
  "$@"
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo -n "$@"
  else
    say "need root (or sudo) to run: $*"
    return 1
  fi
}

APT_UPDATED=0
apt_install() {
  if ! command -v apt-get >/dev/null; then
    say "cannot install $* (no apt-get here): install it with your system's package manager"
    return 1
  fi
  if [ "$APT_UPDATED" -eq 0 ]; then
    retry as_root apt-get update -q
    APT_UPDATED=1
  fi
  retry as_root apt-get install -y -q --no-install-recommends "$@"
}

find_python() {
  if [ -n "${DEV_PYTHON:-}" ]; then
    command -v "$DEV_PYTHON" || { say "DEV_PYTHON=$DEV_PYTHON: no such interpreter"; return 1; }
    return 0
  fi
  local found="" candidate path
  for candidate in python3 python; do
    path=$(command -v "$candidate" || true)
    [ -n "$path" ] || continue
    [ -n "$found" ] || found=$path
    if "$path" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("tensorflow") is None)' 2>/dev/null; then
      found=$path
      break
    fi
  done
  if [ -z "$found" ]; then
    say "installing python3"
    apt_install python3 python3-venv python3-pip >&2
    found=$(command -v python3)
  fi
  echo "$found"
}

# Makes (or reuses) the virtual environment and activates it.
venv() {
  local python venv=${DEV_VENV:-.venv}
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    say "using the virtual environment $venv"
  else
    python=$(find_python)
    "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed; found " + sys.version)'
    say "creating the virtual environment $venv with $("$python" --version 2>&1)"
    rm -rf "$venv"
    if ! "$python" -m venv --system-site-packages "$venv"; then
      say "venv failed; installing python3-venv"
      rm -rf "$venv"
      apt_install python3-venv python3-pip
      "$python" -m venv --system-site-packages "$venv"
    fi
  fi
  # shellcheck disable=SC1091
  source "$venv/bin/activate"
}

# PyTorch's CPU-only build (no CUDA libraries) before the test extras ask for
# torch: from its CPU index, else a CPU wheel in pip's find-links folders,
# else whatever pip finds.
install_cpu_torch() {
  if python -c 'import torch' 2>/dev/null; then
    say "torch already installed: $(python -c 'import torch; print(torch.__version__)')"
    return 0
  fi
  say "installing PyTorch's CPU-only build"
  # (--isolated: only that index; configured indexes and find-links folders
  # may hold a CUDA build too)
  if timeout 900 python -m pip --isolated install -q --timeout 15 --retries 1 torch \
      --index-url "${DEV_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"; then
    return 0
  fi
  local dir wheel
  for dir in ${PIP_FIND_LINKS:-} $(python -m pip config get global.find-links 2>/dev/null || true); do
    wheel=$(ls "$dir"/torch-*+cpu-*.whl 2>/dev/null | sort -V | tail -1 || true)
    if [ -n "$wheel" ] && python -m pip install -q "$wheel"; then
      return 0
    fi
  done
  say "no CPU-only torch found; installing torch from the package index"
  retry python -m pip install -q torch
}

# A PyTorch build from the package index brings triton, whose LLVM clashes
# with TensorFlow's in one process: with TensorFlow imported first, the first
# torch optimizer (which imports torch._dynamo, hence triton) aborts the
# process ("LLVM ERROR: inconsistency in registered CommandLine options"),
# and the test session runs both frameworks. torch works without triton on a
# CPU. (Run after the last install: pip reinstalls it for torch otherwise.)
remove_triton() {
  if python -m pip show -q triton >/dev/null 2>&1; then
    say "removing triton from the test environment (it aborts a process that also runs TensorFlow)"
    python -m pip uninstall -y -q triton
  fi
}

# Debian's chromium for the browser tests, and libatomic1, which the driver
# of the playwright package (a node binary) needs and a minimal Debian lacks.
install_chromium() {
  if [ "${DEV_SKIP_CHROMIUM:-0}" = 1 ]; then
    say "skipping chromium (DEV_SKIP_CHROMIUM=1)"
    return 0
  fi
  local missing=()
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  if command -v dpkg-query >/dev/null &&
      ! dpkg-query -W -f='${Status}' libatomic1 2>/dev/null | grep -q "ok installed"; then
    missing+=(libatomic1)
  fi
  if [ ${#missing[@]} -eq 0 ]; then
    say "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo unknown version)"
  else
    say "installing ${missing[*]} for the browser tests"
    apt_install "${missing[@]}"
  fi
}

[ $# -ge 1 ] || usage
command=$1
shift
case $command in
  demo)
    [ $# -eq 0 ] || usage
    venv
    say "installing training-health with its [tf] extra"
    retry python -m pip install -q -e ".[tf]"
    exec training-health demo
    ;;
  test)
    install_chromium
    venv
    install_cpu_torch
    say "installing training-health with its [test] extra"
    retry python -m pip install -q -e ".[test]"
    remove_triton
    say "running: python -m pytest -q $*"
    exec python -m pytest -q "$@"
    ;;
  *)
    usage
    ;;
esac
