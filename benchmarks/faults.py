"""Fault injection and fuzzing: nothing flushed is lost, nothing crashes.

    python benchmarks/faults.py [--seed 0] [--kill-trials 20] [--keras-every 5]
                                [--fuzz-files 200] [--fuzz-requests 2000] [--skip-bucket]
                                [--skip-faults] [--workdir DIR]

Real processes, real files, a real S3-compatible server (moto, on 127.0.0.1):

* kill trials: a real training process logs to one logdir and is killed with
  SIGKILL at a random (seeded) moment, 0.02-1.5 s into training (a Keras
  one: after its first `fit`, which traces the step); one after another in
  the same logdir, then one more that trains to its end there.
  Each is a PyTorch loop (a small MLP on random data, SGD, the
  `training_health.torch.HealthMonitor` with `flush_every=4`, `step(loss)`
  after `optimizer.step()`) that calls `monitor.flush()` every 10 steps and
  prints "flushed N" when it returned True: steps 1..N are then in the event
  file (handed to the operating system, which keeps them when the process
  is killed). Every `--keras-every`-th trial is a Keras `fit` of the same
  MLP with a `HealthCallback` instead, 10 steps per `fit`, "flushed N" after
  the `fit` that ran step N returned (the callback flushes at its end). After
  each kill every reader (`reader.read_logdir`, `training-health check`,
  `watch`, and every 5th time the report) reads the logdir: none may raise
  or fail, and every step flushed by any process so far must be read back
  whole (each process's learning rate, a logged value, tells its steps from
  the others', as every process numbers its steps from the start). The next
  process must start cleanly in that logdir: no traceback and no warning of
  the logger but alerts on its stderr. Also counted: kills that left a
  record cut short at the end of a file;
* faults while a run trains (each once), each in a real PyTorch training
  process (the loop of the kill trials, `--step-secs` of sleep after each
  step standing for a bigger model's compute): a full disk (a 1 MiB tmpfs
  filled up mid-run, then space freed), an unwritable logdir (a read-only
  tmpfs), the logdir removed mid-run (the process stopped with SIGSTOP
  meanwhile, so that what the removed file held is known), and an `s3://`
  logdir whose bucket goes away (the S3 server behind a proxy that closes
  every connection) and comes back. Each must finish with exit status 0 and
  no traceback on its stderr, print exactly the expected warnings of the
  logger (what happened; for the unwritable logdir, how many events were
  lost; for the removed logdir, which file and how many bytes), and every
  step not lost by design must read back whole through every reader; after
  the full disk and the outage, a flush must succeed again (writing
  resumed) and every whole record written before the fault must still be at
  the start of its file or object;
* fuzzing, bounded and seeded: event files with random truncations, bit
  flips, garbage and foreign records through every reader, and random or
  hostile query arguments through every route of the plugin (TensorBoard's
  WSGI application over its data provider): never an uncaught exception,
  never a 500.

Mounting tmpfs needs root; without it the full-disk and read-only cases are
skipped (and said so). The last line is exactly:

    kill_trials=N lost_flushed_steps=L reader_errors=E fuzz_inputs=F uncaught=U

`tests/test_faults.py` runs the same code with smaller counts.
"""

import argparse
import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from training_health import format as fmt  # noqa: E402
from training_health.records import Alert, LayerInfo  # noqa: E402

LAYERS = (
    LayerInfo("conv", "Conv2D", "relu", None, 8, True, True),
    LayerInfo("dense", "Dense", "softmax", (0.0, 1.0), 10, True, True, is_output=True),
)
N_GLOBAL = len(fmt.GLOBAL_STATS)


# -- the training processes --------------------------------------------------------
# The real training loops of the kill trials and the fault cases. Each
# trains until it is killed (or for `--steps` steps), calls the logger's
# flush every FLUSH_POINT steps and prints "flushed N" once the flush says
# steps 1..N are in the files (a PyTorch loop prints "unflushed N" when the
# flush says writing failed).
# Every process of a trial series writes to the same logdir and numbers its
# steps from the start, as a new run does; its learning rate (a logged
# global value) tells its steps from those of the other processes. It
# imports its framework, then waits for a line on stdin ("go") before it
# builds anything, so that it can import while the readers read the logdir.
FLUSH_POINT = 10
BATCH = 32


def trial_lr(seed):
    """The learning rate of the training process of trial `seed`."""
    return 0.001 * (seed + 1)


def _random_data(seed, n=BATCH * FLUSH_POINT):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 32)).astype(np.float32), rng.integers(0, 10, n)


def train_torch(args):
    """A PyTorch loop with `training_health.torch.HealthMonitor`: a small MLP on
    random data; "flushed N" after `monitor.flush()` returned True at step N,
    "unflushed N" after it returned False. `--step-secs` (a sleep after each
    step) stands for a bigger model's compute: it paces the fault cases.
    `--storage-options` (JSON) are the monitor's fsspec options."""
    import warnings

    import torch

    from training_health.torch import HealthMonitor

    warnings.simplefilter("ignore")  # the logger's warnings are also logged: one line each on stderr
    if sys.stdin.readline() != "go\n":
        return 1  # (the benchmark ended before it let this process start)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                                torch.nn.ReLU(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=trial_lr(args.seed), momentum=0.9)
    x, y = (torch.from_numpy(a) for a in _random_data(args.seed))
    options = json.loads(args.storage_options) if args.storage_options else None
    monitor = HealthMonitor(args.logdir, model, optimizer, flush_every=args.flush_every,
                            storage_options=options)
    print("ready 1", flush=True)  # (the monitor numbers the optimizer steps from 1)
    for step in range(1, args.steps + 1):
        batch = slice((step % FLUSH_POINT) * BATCH, (step % FLUSH_POINT + 1) * BATCH)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        loss.backward()
        optimizer.step()
        monitor.step(loss)
        if args.step_secs:
            time.sleep(args.step_secs)
        if step % FLUSH_POINT == 0 or step == args.steps:
            print("%s %d" % ("flushed" if monitor.flush() else "unflushed", step), flush=True)
    monitor.close()
    print("done", flush=True)
    return 0


def train_keras(args):
    """A Keras `fit` with `training_health.keras.HealthCallback`: the same MLP;
    each `fit` runs FLUSH_POINT steps and flushes at its end (`on_train_end`),
    so "flushed N" follows the `fit` that ran step N (whether that flush
    succeeded is not told; were it to fail, the trial would count its steps lost)."""
    import warnings

    import keras

    from training_health.keras import HealthCallback

    warnings.simplefilter("ignore")
    if sys.stdin.readline() != "go\n":
        return 1
    keras.utils.set_random_seed(args.seed)
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    model.compile(keras.optimizers.SGD(trial_lr(args.seed), momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _random_data(args.seed)
    callback = HealthCallback(args.logdir, flush_every=args.flush_every)
    print("ready 0", flush=True)  # (a step is numbered by `optimizer.iterations` before it: 0 first)
    steps = 0
    while steps < args.steps:
        model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[callback], verbose=0, shuffle=False)
        steps = int(model.optimizer.iterations.numpy())
        print("flushed %d" % (steps - 1), flush=True)
    callback.close()
    print("done", flush=True)
    return 0


TRAIN = {"torch": train_torch, "keras": train_keras}


class Child:
    """A training process; its stdout lines are collected as they come. It
    imports its framework, then waits for `go()`.

    framework: "torch" (see `train_torch`) or "keras" (see `train_keras`).
    """

    def __init__(self, framework, logdir, steps, seed, flush_every=4, step_secs=0.0, storage_options=None):
        command = [sys.executable, os.path.abspath(__file__), "train", framework, "--logdir", logdir,
                   "--steps", str(steps), "--seed", str(seed),
                   "--flush-every", str(flush_every), "--step-secs", str(step_secs)]
        if storage_options:
            command += ["--storage-options", json.dumps(storage_options)]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")  # (TensorFlow's start-up lines on stderr)
        self.proc = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.lines, self.stderr = [], ""
        self._ready = threading.Event()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self._err_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._err_thread.start()

    def _read_stdout(self):
        for line in self.proc.stdout:
            self.lines.append(line.strip())
            if line.startswith("ready"):
                self._ready.set()
        self._ready.set()

    def _read_stderr(self):
        self.stderr = self.proc.stderr.read()

    def go(self):
        """Lets a real training loop start (it waits for this after its imports)."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def wait_ready(self, timeout=120):
        if not self._ready.wait(timeout) or self.proc.poll() not in (None, 0):
            raise RuntimeError("the training process did not start:\n%s" % self.finish(5))

    def wait_for(self, prefix, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.startswith(prefix) for line in self.lines):
                return True
            if self.proc.poll() is not None:
                return any(line.startswith(prefix) for line in self.lines)
            time.sleep(0.02)
        return False

    def flushed(self):
        steps = [int(line.split()[1]) for line in list(self.lines) if line.startswith("flushed")]
        return max(steps) if steps else None

    def first_step(self):
        """The number of the first step of a real training loop ("ready N")."""
        return next(int(line.split()[1]) for line in self.lines if line.startswith("ready "))

    def finish(self, timeout=300):
        """Waits for the process to end (kills it after `timeout` s); returns its stderr."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._err_thread.join(10)
        return self.stderr

    def finished(self):
        """True when the training loop ran to its end and the process exited with status 0."""
        return "done" in self.lines and self.proc.returncode == 0

    def after(self, prefix, line):
        """True when a line starting with `prefix` came after `line`."""
        lines = list(self.lines)
        return line in lines and any(x.startswith(prefix) for x in lines[lines.index(line):])


# -- every reader ------------------------------------------------------------------
def read_everything(logdir, storage_options=None, report=True, key=None):
    """Reads `logdir` with every reader; returns (steps read, errors).

    steps read: `key(step_stats)` (defaults to the step number) of every step
    that `reader.read_logdir` read whole (global values and layer rows).
    errors: (reader, exception text) of every reader that raised or failed.
    """
    key = key or (lambda s: s.step)
    from training_health.cli import main as cli_main
    from training_health.cli.watch import Watcher
    from training_health.io import reader

    errors = []
    steps = set()
    try:
        for run in reader.read_logdir(logdir, storage_options):
            steps.update(key(s) for s in run.steps if s.global_values and len(s.layers))
    except Exception as e:  # noqa: BLE001  (counted and printed: this is what is measured)
        errors.append(("reader", "%s: %s" % (type(e).__name__, e)))
    try:
        watcher = Watcher(logdir, storage_options)
        watcher.refresh()
        watcher.lines()
        errors.extend(("watch", v.error) for v in watcher.runs.values() if v.error)
    except Exception as e:  # noqa: BLE001
        errors.append(("watch", "%s: %s" % (type(e).__name__, e)))
    argv = ["check", str(logdir), "--json"]
    for key, value in (storage_options or {}).items():
        argv += ["--storage-option", "%s=%s" % (key, json.dumps(value))]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli_main(argv)
        nothing = status == 2 and "no Training Health data" in err.getvalue() and not steps
        if status not in (0, 1) and not nothing:  # (exit 2 for a logdir that holds no step is right)
            errors.append(("check", "exit %s: %s" % (status, err.getvalue().strip()[-300:])))
    except Exception as e:  # noqa: BLE001
        errors.append(("check", "%s: %s" % (type(e).__name__, e)))
    if report:
        try:
            from tensorboard_plugin_training_health import report as report_module

            report_module.snapshot(str(logdir), points=50, storage_options=storage_options)
        except Exception as e:  # noqa: BLE001
            errors.append(("report", "%s: %s" % (type(e).__name__, e)))
    return steps, errors


# -- kill trials -------------------------------------------------------------------
def kill_trials(n, rng, workdir, log=print, keras_every=5):
    """`n` real training processes killed with SIGKILL at random moments, one
    after another in one logdir, then one more that trains to its end there.

    Trials are PyTorch loops (`train_torch`), every `keras_every`-th one a
    Keras `fit` (`train_keras`; 0: none). A trial is killed `rng.uniform(0.02,
    1.5)` seconds after its monitor was created (a Keras trial: after its
    first `fit`, which traces the step). After each trial every reader reads
    the logdir, and every step that any process of the series printed as
    flushed must be read back whole.

    Returns (trials, lost flushed steps, reader errors, unclean starts): an
    unclean start is a process whose stderr holds a traceback or a warning
    of the logger other than an alert.
    """
    logdir = os.path.join(workdir, "kill", "run")
    flushed_keys = set()  # (step, learning rate) of every step flushed, by every process so far
    lost_keys = set()
    reader_errors = unclean = cut = 0

    def start(trial):
        last = trial == n  # a final run that is not killed: the logdir still takes a clean run
        framework = "keras" if keras_every and (trial + 1) % keras_every == 0 and not last else "torch"
        return framework, Child(framework, logdir, steps=60 if last else 10 ** 6, seed=trial)

    framework, child = start(0)
    for trial in range(n + 1):
        last = trial == n
        started = time.monotonic()
        child.go()
        child.wait_ready()
        delay = None
        if last:
            child.finish()
        else:
            if framework == "keras":
                child.wait_for("flushed")
            delay = rng.uniform(0.02, 1.5)
            time.sleep(delay)
            child.proc.kill()
            child.finish()
        following = start(trial + 1) if not last else None  # (imports while the readers read)
        first, flushed = child.first_step(), child.flushed()
        lr = float(np.float32(trial_lr(trial)))
        if flushed is not None:
            flushed_keys.update((step, lr) for step in range(first, flushed + 1))
        trained = time.monotonic()
        keys, errors = read_everything(os.path.dirname(logdir), report=trial % 5 == 0 or last,
                                       key=lambda s: (s.step, s.global_values["learning_rate"]))
        reader_errors += len(errors)
        missing = flushed_keys - keys
        lost_keys |= missing
        problems = [line for line in child.stderr.splitlines() if line.startswith("Traceback")]
        problems += logger_warnings(child.stderr)
        unclean += bool(problems)
        torn = cut_bytes(logdir, child.proc.pid)
        cut += torn > 0
        log("  %s %2d (%s%s; trained %.1f s, readers %.1f s): flushed steps %s..%s, readable of this "
            "process %d, in all %d, missing %d, bytes of a cut record %d, reader errors %s, start %s"
            % ("clean run" if last else "kill", trial, framework,
               "" if delay is None else ", killed %.2f s in" % delay, trained - started,
               time.monotonic() - trained,
               first, flushed, sum(1 for _, key_lr in keys if key_lr == lr), len(keys), len(missing), torn,
               errors or 0, "ok" if not problems else "NOT clean: %s" % problems[:3]))
        if following is not None:
            framework, child = following
    log("  kills that cut a record short: %d of %d" % (cut, n))
    return n, len(lost_keys), reader_errors, unclean


ALERT_LINE = re.compile(r"training_health: (\[|  then )")  # (host.dispatch_alerts)


def logger_warnings(stderr):
    """The logger's warnings (one line each) in a training process's stderr, alerts left out."""
    return [line for line in stderr.splitlines()
            if line.startswith("training_health:") and not ALERT_LINE.match(line)]


def whole_records(data):
    """The longest prefix of `data` made of whole records, from the record framing alone."""
    at = 0
    while at + 12 <= len(data):  # length (8 bytes), its CRC (4), data, the data's CRC (4)
        end = at + 12 + int.from_bytes(data[at:at + 8], "little") + 4
        if end > len(data):
            break
        at = end
    return data[:at]


def cut_bytes(logdir, pid):
    """Bytes at the end of process `pid`'s event files that are not a whole
    record (a write the kill cut short), from the record framing alone."""
    torn = 0
    for name in os.listdir(logdir):
        if ".%d." % pid not in name:
            continue
        with open(os.path.join(logdir, name), "rb") as f:
            data = f.read()
        torn += len(data) - len(whole_records(data))
    return torn


# -- faults while training -----------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d" % size, "tmpfs", path], check=True,
                   capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True)


def can_mount(workdir):
    probe = os.path.join(workdir, "mount-probe")
    try:
        with tmpfs(probe, 1 << 16):
            return True
    except (OSError, subprocess.CalledProcessError):
        return False


def local_files(logdir):
    """{name: bytes} of the files in local directory `logdir` (none when it is missing)."""
    if not os.path.isdir(logdir):
        return {}
    files = {}
    for name in sorted(os.listdir(logdir)):
        with open(os.path.join(logdir, name), "rb") as f:
            files[name] = f.read()
    return files


def changed(before, after):
    """Names of the files of `before` whose whole records `after` no longer starts with:
    what was written before was overwritten, cut or removed."""
    return sorted(name for name, data in before.items()
                  if not after.get(name, b"").startswith(whole_records(data)))


def _outcome(name, child, logdir, expected, warnings_expected, log, storage_options=None, checks=()):
    """Checks one fault run: the training process finished with exit status 0
    and no traceback; its logger warnings (alerts left out) are exactly
    `warnings_expected` (one tuple of words per warning, in order); every
    reader reads `logdir` without an error and every step of `expected`
    whole. `checks`: more (description, callable() -> passed) pairs, called
    once the process ended.

    Returns (ok, reader errors, expected steps missing).
    """
    stderr = child.finish()
    steps, errors = read_everything(logdir, storage_options, report=False)
    missing = sorted(set(expected) - steps)
    warned = logger_warnings(stderr)
    right_warnings = len(warned) == len(warnings_expected) and all(
        all(w in line for w in words) for line, words in zip(warned, warnings_expected))
    checks = [("finished with exit status 0", child.finished()),
              ("no traceback", "Traceback" not in stderr),
              ("the expected warnings", right_warnings)] + [(what, check()) for what, check in checks]
    failed = [what for what, passed in checks if not passed]
    ok = not errors and not missing and not failed
    log("  %-14s %s: exit status %s, %d of %d expected steps read, reader errors %s, failed checks %s, "
        "warnings: %s" % (name, "ok" if ok else "FAILED", child.proc.returncode,
                          len(expected) - len(missing), len(expected), errors or 0, failed or 0,
                          " | ".join(line[:400] for line in warned) or "(none)"))
    log("    and: %s" % "; ".join(what for what, _ in checks[3:]))
    if not ok:
        log("    stdout: %s" % " ".join(list(child.lines)[-40:]))
        log("    stderr: %s" % stderr[-1500:])
    return ok, len(errors), len(missing)


def full_disk(workdir, log):
    """A small filesystem fills up mid-run; then space is freed."""
    mount = os.path.join(workdir, "full")
    with tmpfs(mount, 1 << 20):
        with open(os.path.join(mount, "filler"), "wb") as f:
            f.write(b"\0" * ((1 << 20) - (64 << 10)))  # 64 KiB left: about 130 of the 900 steps
        logdir = os.path.join(mount, "run")
        child = Child("torch", logdir, steps=900, seed=1, step_secs=0.004)
        child.go()
        child.wait_ready()
        if not child.wait_for("unflushed", timeout=120):
            log("  full disk: the disk never filled up: %s" % child.finish()[-1500:])
            return False, 1, 0
        full_at = next(line for line in child.lines if line.startswith("unflushed"))
        before = local_files(logdir)  # what was written before the disk filled
        os.remove(os.path.join(mount, "filler"))  # space comes back
        return _outcome(
            "full disk", child, mount, range(1, 901), [("could not write", "No space left")], log,
            checks=[("writing resumed (a flush succeeded after the disk was full at %s)" % full_at,
                     lambda: child.after("flushed", full_at)),
                    ("what was written before is intact", lambda: not changed(before, local_files(logdir))),
                    ("one event file", lambda: len(local_files(logdir)) == 1)])


def unwritable(workdir, log):
    """The logdir is on a read-only filesystem for the whole run."""
    mount = os.path.join(workdir, "readonly")
    with tmpfs(mount, 1 << 20):
        subprocess.run(["mount", "-o", "remount,ro", mount], check=True, capture_output=True)
        steps = 200
        child = Child("torch", os.path.join(mount, "run"), steps=steps, seed=2)
        child.go()
        child.wait_ready()

        def all_counted():  # every step is at least two events (its layer rows, its global values)
            lost = re.search(r"(\d+) events could not be written", child.stderr)
            return lost is not None and int(lost.group(1)) >= 2 * steps

        return _outcome("unwritable", child, mount, (), [("could not write", "Read-only"),
                                                         ("events could not be written", "Read-only")], log,
                        checks=[("the closing warning counts every step's events as lost", all_counted),
                                ("no flush succeeded", lambda: child.flushed() is None),
                                ("nothing written", lambda: not os.listdir(mount))])


def removed(workdir, log):
    """The logdir is removed while the run trains (the process stopped
    meanwhile, so that what it held is known): the steps in it are lost, the
    warning says so with its size, every later step is written to a new file."""
    from training_health.io import reader

    logdir = os.path.join(workdir, "removed", "run")
    child = Child("torch", logdir, steps=600, seed=3, step_secs=0.003)
    child.go()
    child.wait_ready()
    child.wait_for("flushed 100")
    child.proc.send_signal(signal.SIGSTOP)
    try:
        gone = {s.step for run in reader.read_logdir(os.path.dirname(logdir)) for s in run.steps}
        size = sum(len(data) for data in local_files(logdir).values())
        shutil.rmtree(logdir)
    finally:
        child.proc.send_signal(signal.SIGCONT)
    later = sorted(set(range(1, 601)) - gone)
    return _outcome("logdir removed", child, os.path.dirname(logdir), later,
                    [("no longer holds", "(%d bytes" % size, "new event file")], log,
                    checks=[("the removed file held steps 1..%d (those flushed before the removal, 1..100, "
                             "at least)" % max(gone or [0]),
                             lambda: gone == set(range(1, max(gone or [0]) + 1)) and max(gone) >= 100)])


def bucket_outage(workdir, log):
    """The bucket refuses connections for a while mid-run, then comes back."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_remote_support import DUMMY_AWS_ENV, Proxy, S3Server, fast_fail_options

    os.environ.update(DUMMY_AWS_ENV)
    server = S3Server()
    server.start()
    proxy = Proxy(server.port)
    try:
        bucket = server.new_bucket()
        options = fast_fail_options(proxy.endpoint)
        options["key"] = options["secret"] = "testing"
        child = Child("torch", "s3://%s/run" % bucket, steps=500, seed=4, step_secs=0.01,
                      storage_options=options)
        child.go()
        child.wait_ready()
        child.wait_for("flushed 50", timeout=120)
        proxy.mode = "refuse"
        child.wait_for("unflushed", timeout=60)
        down_at = next((line for line in child.lines if line.startswith("unflushed")), None)
        before = {key: server.get(bucket, key) for key in server.keys(bucket)}  # (not through the proxy)
        time.sleep(1.0)
        proxy.mode = "pass"
        child.finish()
        after = {key: server.get(bucket, key) for key in server.keys(bucket)}
        return _outcome("bucket outage", child, "s3://%s" % bucket, range(1, 501), [("could not write",)],
                        log, storage_options=options,
                        checks=[("writing resumed (a flush succeeded after the outage at %s)" % down_at,
                                 lambda: down_at is not None and child.after("flushed", down_at)),
                                ("what was uploaded before is intact",
                                 lambda: bool(before) and not changed(before, after))])
    finally:
        proxy.close()
        server.stop()


def faults(workdir, log, bucket=True):
    """Every fault case that this machine allows; returns (cases, failed, reader errors, lost)."""
    cases = [removed]
    if can_mount(workdir):
        cases = [full_disk, unwritable] + cases
    else:
        log("  full disk, unwritable: skipped (mounting a tmpfs needs root)")
    if bucket:
        cases.append(bucket_outage)
    failed = errors = lost = 0
    for case in cases:
        ok, e, missing = case(workdir, log)
        failed += not ok
        errors += e
        lost += missing
    return len(cases), failed, errors, lost


# -- fuzzing -----------------------------------------------------------------------
def write_base_run(path, steps=30, seed=0):
    from training_health.io.run_writer import RunWriter

    rng = np.random.default_rng(seed)
    writer = RunWriter(path, LAYERS, metric_names=("accuracy",))
    for step in range(1, steps + 1):
        writer.write_step(step, rng.random((len(LAYERS), len(fmt.LAYER_STATS))).astype(np.float32),
                          rng.random(N_GLOBAL + 1).astype(np.float32), wall_time=1000.0 + step)
        if step % 10 == 0:
            writer.write_histograms(step, rng.random((len(LAYERS), len(fmt.HIST_SERIES), fmt.HIST_ROW))
                                    .astype(np.float32), wall_time=1000.0 + step)
            writer.write_alerts(step, [Alert("stalled", step, None, "warning", "<b>m</b>", "h")])
    writer.close()


def foreign_record(rng):
    """A well-framed record that is not what the reader expects."""
    from tensorboard.compat.proto import summary_pb2

    from training_health.io.crc32c import record

    choice = rng.randrange(6)
    if choice == 0:
        return record(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200))))
    step = rng.randrange(-5, 100)
    if choice == 1:  # someone else's scalar
        event = fmt.make_event("loss", step, np.float32(rng.random()))
    elif choice == 2:  # our tag, a value of the wrong shape or type
        value = rng.choice([np.zeros((3, 2), np.float32), np.array([b"x", b"y"], dtype=object),
                            np.float32(1.0), np.zeros((0,), np.int32)])
        event = fmt.make_event(rng.choice(fmt.TAGS), step, value)
    elif choice == 3:  # our tag with malformed metadata
        content = rng.choice([b"{", b"[]", b'{"format_version": 1, "kind": "layers", "layers": [1]}',
                              b'{"format_version": 1, "kind": "layers", "stats": 3, "layers": [{}]}'])
        metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=fmt.PLUGIN_NAME, content=content))
        event = fmt.make_event(rng.choice(fmt.TAGS), step, np.zeros((2, 2), np.float32), metadata)
    elif choice == 4:  # an alert that is not JSON, or JSON of the wrong shape
        value = np.array([rng.choice([b"not json", b"[1, 2]", b'{"kind": 3}', b"\xff\xfe"])], dtype=object)
        event = fmt.make_event(fmt.TAG_ALERTS, step, value)
    else:  # an event with no summary, or an empty one
        event = fmt.make_event("x", step, np.float32(0))
        event.ClearField("summary")
    return record(event.SerializeToString())


def mutate(data, rng):
    """`data` with 1-4 random mutations: truncation, bit flips, garbage, foreign records, duplication."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(5)
        at = rng.randrange(len(data) + 1)
        if kind == 0:
            data = data[:at]
        elif kind == 1 and data:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 2:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif kind == 3:
            data[at:at] = foreign_record(rng)
        else:
            end = min(len(data), at + rng.randint(1, 400))
            data[at:at] = data[at:end]
    return bytes(data)


def plugin_client(logdir):
    """A test client of TensorBoard's WSGI application serving the plugin on `logdir`."""
    from tensorboard.backend import application
    from werkzeug import test as werkzeug_test

    from tensorboard_plugin_training_health.report import load_plugin

    plugin, provider = load_plugin(logdir)
    return werkzeug_test.Client(application.TensorBoardWSGI([plugin], data_provider=provider))


ROUTES = ("runs", "layers", "matrix", "series", "layer", "alerts", "histograms",
          "index.js", "model.js", "views.js", "style.css")
HOSTILE = ("", " ", "run1", "base", "../../etc/passwd", "<script>alert(1)</script>", "\u202e\u0000x",
           "%00", "%", "'; DROP", "a" * 5000, "conv", "dense", "grad_norm", "nan", "inf", "-1", "0",
           "1e309", "9" * 40, "2147483648", str(2 ** 63), "mean", "max", "min", "last", "true", "[]",
           "{}", "\ud800", "null", "1.5", " 7 ")
PARAMS = ("run", "stat", "layer", "width", "reduce", "start_step", "end_step", "limit", "tag", "x")


def random_request(rng, runs):
    route = rng.choice(ROUTES + ("nothing", "runs/extra", ""))
    query = []
    for _ in range(rng.randint(0, 6)):
        name = rng.choice(PARAMS)
        value = rng.choice(HOSTILE + tuple(runs) + (str(rng.randint(-10, 30000)),))
        query.append((name, value))
    path = "/data/plugin/%s/%s" % (fmt.PLUGIN_NAME, route)
    text = urllib.parse.urlencode(query, errors="surrogatepass") if query else ""
    if rng.random() < 0.1:
        text += "&" + "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randint(1, 30)))
    return path + ("?" + text if text else "")


def fuzz_routes(client, n, rng, runs, failures):
    """`n` random requests; a failure is a 500, an exception, or a JSON route answering non-JSON."""
    for _ in range(n):
        url = random_request(rng, runs)
        try:
            response = client.get(url)
            status = response.status_code
            body = response.get_data()
            if status >= 500:
                failures.append((url, "HTTP %d" % status))
            elif status not in (200, 400, 404):
                failures.append((url, "HTTP %d" % status))
            elif response.headers.get("Content-Type", "").startswith("application/json"):
                json.loads(body)
        except Exception as e:  # noqa: BLE001  (counted: this is what is measured)
            failures.append((url, "%s: %s" % (type(e).__name__, e)))
    return n


def fuzz(workdir, files, requests, rng, log):
    """Fuzzed event files through every reader and fuzzed requests through every route.

    Returns (inputs tried, uncaught failures).
    """
    from training_health import format as fmt_module
    from training_health.io import reader

    base_dir = os.path.join(workdir, "fuzz-base", "run1")
    write_base_run(base_dir)
    (name,) = os.listdir(base_dir)
    base = open(os.path.join(base_dir, name), "rb").read()
    failures = []
    inputs = 0
    for i in range(files):
        logdir = os.path.join(workdir, "fuzz", "f%d" % i)
        run_dir = os.path.join(logdir, "run1")
        os.makedirs(run_dir)
        data = mutate(base, rng)
        with open(os.path.join(run_dir, name), "wb") as f:
            f.write(data)
        inputs += 1
        # the live reader, fed the file in pieces as a writer would append it
        live_dir = os.path.join(logdir, "live")
        os.makedirs(live_dir)
        try:
            live = reader.RunReader(live_dir)
            cuts = sorted(rng.randrange(len(data) + 1) for _ in range(3)) + [len(data)]
            written = 0
            for cut in cuts:
                with open(os.path.join(live_dir, name), "ab") as f:
                    f.write(data[written:cut])
                written = cut
                live.poll()
            live.poll(final=True)
        except fmt_module.UnknownVersionError:
            pass  # documented: logs of a newer format
        except Exception as e:  # noqa: BLE001
            failures.append(("live reader on %s" % logdir, "%s: %s" % (type(e).__name__, e)))
        shutil.rmtree(live_dir)
        steps, errors = read_everything(logdir, report=i % 10 == 0)
        failures.extend(("%s on %s" % (who, logdir), e) for who, e in errors
                        if "unknown Training Health format version" not in e)
        if i % 10 == 0:  # the tab on this file, through TensorBoard's own reader
            inputs += fuzz_routes(plugin_client(logdir), 20, rng, ["run1"], failures)
        if not failures:
            shutil.rmtree(logdir)
    good = os.path.join(workdir, "fuzz-base")
    write_base_run(os.path.join(good, "<b>x</b>"), steps=12, seed=1)
    inputs += fuzz_routes(plugin_client(good), requests, rng, ["run1", "<b>x</b>"], failures)
    for where, what in failures[:20]:
        log("  uncaught: %s: %s" % (where[:160], what[:300]))
    return inputs, len(failures)


# -- main --------------------------------------------------------------------------
def run_all(seed=0, kill=20, files=200, requests=2000, bucket=True, workdir=None, log=print,
            fault_cases=True, keras_every=5):
    """Runs everything; returns the figures of the last line as a dict."""
    rng = random.Random(seed)
    own = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="th-faults-")
    quiet = quiet_logging()
    quiet.__enter__()
    try:
        log("kill -9 of a training process at random moments (%d trials, seed %d):" % (kill, seed))
        started = time.monotonic()
        trials, lost, reader_errors, unclean = kill_trials(kill, rng, workdir, log, keras_every)
        log("kill trials took %.0f s" % (time.monotonic() - started))
        cases = failed = fault_errors = fault_lost = 0
        if fault_cases:
            log("faults while training:")
            cases, failed, fault_errors, fault_lost = faults(workdir, log, bucket)
        log("fuzzing (%d event files, %d requests):" % (files, requests))
        inputs, uncaught = fuzz(workdir, files, requests, rng, log)
        log("fault cases: %d, failed: %d" % (cases, failed))
        return {"kill_trials": trials, "lost_flushed_steps": lost, "reader_errors": reader_errors + fault_errors,
                "fuzz_inputs": inputs, "uncaught": uncaught, "fault_cases": cases, "fault_failed": failed,
                "fault_lost": fault_lost, "unclean_starts": unclean}
    finally:
        quiet.__exit__(None, None, None)
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def quiet_logging():
    """Silences the expected warnings while it is open, then puts the
    loggers' levels and the warning filters back (tests run in one process)."""
    import logging
    import warnings

    # The readers' warnings about damage are expected here by the thousand.
    levels = {"training_health": logging.ERROR, "tensorboard": logging.CRITICAL,
              "absl": logging.CRITICAL, "werkzeug": logging.ERROR}  # werkzeug: the S3 server's log
    saved = {name: logging.getLogger(name).level for name in levels}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        try:
            yield
        finally:
            for name, level in saved.items():
                logging.getLogger(name).setLevel(level)


def contract_line(figures):
    return ("kill_trials=%(kill_trials)d lost_flushed_steps=%(lost_flushed_steps)d "
            "reader_errors=%(reader_errors)d fuzz_inputs=%(fuzz_inputs)d uncaught=%(uncaught)d" % figures)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        p = argparse.ArgumentParser()
        p.add_argument("framework", choices=sorted(TRAIN))
        for name, kind in (("--logdir", str), ("--steps", int), ("--seed", int),
                           ("--flush-every", int), ("--step-secs", float), ("--storage-options", str)):
            p.add_argument(name, type=kind)
        args = p.parse_args(argv[1:])
        return TRAIN[args.framework](args)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kill-trials", type=int, default=20)
    parser.add_argument("--keras-every", type=int, default=5,
                        help="every this many kill trials is a Keras one (0: PyTorch only)")
    parser.add_argument("--fuzz-files", type=int, default=200)
    parser.add_argument("--fuzz-requests", type=int, default=2000)
    parser.add_argument("--skip-bucket", action="store_true", help="no S3 server case")
    parser.add_argument("--skip-faults", action="store_true", help="no fault case at all")
    parser.add_argument("--workdir", default=None, help="keep the files here (default: a temp dir)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        figures = run_all(args.seed, args.kill_trials, args.fuzz_files, args.fuzz_requests,
                          not args.skip_bucket, args.workdir, fault_cases=not args.skip_faults,
                          keras_every=args.keras_every)
    except Exception:  # noqa: BLE001  (the harness itself failed: say where)
        traceback.print_exc()
        return 1
    print("took %.0f s; training processes that did not start cleanly after a kill %d; fault cases %d, "
          "failed %d, steps missing after a fault %d"
          % (time.monotonic() - started, figures["unclean_starts"], figures["fault_cases"],
             figures["fault_failed"], figures["fault_lost"]))
    print(contract_line(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
