"""Fault injection and fuzzing: nothing flushed is lost, nothing crashes.

    python benchmarks/faults.py [--seed 0] [--kill-trials 20] [--fuzz-files 200]
                                [--fuzz-requests 2000] [--skip-bucket] [--skip-faults]
                                [--workdir DIR]

Real processes, real files, a real S3-compatible server (moto, on 127.0.0.1):

* kill trials: a training process (the logger's host side, `capture.host.Host`
  with its collector, detectors, `RunWriter` and `EventWriter`, fed rows by a
  plain Python ring buffer as a device program would) logs to one logdir
  and prints each step it has flushed; it is killed with SIGKILL at a random
  moment; then every reader (`reader.read_logdir`, `training-health check`,
  `watch`, the report) reads the logdir, every step flushed before the kill
  must be there, and the next trial's process starts in the same logdir;
* faults while a run trains (each once): a full disk (a small tmpfs filled
  up, then space freed), an unwritable logdir (a read-only tmpfs), the logdir
  removed mid-run, and a bucket that goes away (connections refused) and
  comes back; training must finish, with one warning saying what happened
  and what was lost, and everything written before must read back;
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
import shutil
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
WIDTH = N_GLOBAL + len(LAYERS) * len(fmt.LAYER_STATS)


# -- the training process ----------------------------------------------------------
class RingSource:
    """A ring buffer of rows, as a device program keeps them (a `host.RowSource`)."""

    rows = 256
    hist_slots = 0
    global_names = tuple(fmt.GLOBAL_STATS)

    def __init__(self, seed):
        self.count = 0
        self.buffer = np.zeros((self.rows, WIDTH), np.float32)
        self.steps = np.zeros(self.rows, np.int64)
        self._rng = np.random.default_rng(seed)

    def train_step(self, step):
        row = self._rng.random(WIDTH).astype(np.float32)
        row[fmt.GLOBAL_STATS.index("loss")] = 1.0 / (1.0 + 0.01 * step)
        slot = self.count % self.rows
        self.buffer[slot], self.steps[slot] = row, step
        self.count += 1

    def read_rows(self):
        if not self.count:
            return None
        return self.count, self.buffer.copy(), self.steps.copy(), self.count

    def read_histograms(self):
        return None

    def layer_infos(self):
        return LAYERS


def train(args):
    """The training process: logs `--steps` steps, flushing every `--flush-every`."""
    import warnings

    from training_health.capture import host
    from training_health.detectors import DetectorSuite

    warnings.simplefilter("ignore")  # the logger's warnings are also logged: one line each on stderr

    options = json.loads(args.storage_options) if args.storage_options else None
    source = RingSource(args.seed)
    monitor = host.Host(args.logdir, source, DetectorSuite(), (), None, lambda: None,
                        storage_options=options)
    print("ready", flush=True)
    for i, step in enumerate(range(args.start, args.start + args.steps)):
        source.train_step(step)
        time.sleep(args.step_secs)  # the step's compute
        if (i + 1) % args.flush_every == 0:
            monitor.collect()
            events = monitor.writer.writer
            if events.flush():
                print("flushed %d" % step, flush=True)
            elif events.errors:
                print("failing %d" % step, flush=True)
    monitor.close()
    events = monitor.writer.writer
    print("done %s" % json.dumps({"errors": events.errors, "dropped": events.dropped,
                                  "pending": events.pending, "files": len(events.files)}), flush=True)
    return 0


class Child:
    """A training process; its stdout lines are collected as they come."""

    def __init__(self, logdir, start, steps, seed, flush_every=5, step_secs=0.004, storage_options=None):
        command = [sys.executable, os.path.abspath(__file__), "train", "--logdir", logdir,
                   "--start", str(start), "--steps", str(steps), "--seed", str(seed),
                   "--flush-every", str(flush_every), "--step-secs", str(step_secs)]
        if storage_options:
            command += ["--storage-options", json.dumps(storage_options)]
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
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

    def wait_ready(self, timeout=120):
        if not self._ready.wait(timeout) or self.proc.poll() not in (None, 0):
            raise RuntimeError("the training process did not start:\n%s" % self.finish(5)[1])

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

    def finish(self, timeout=300):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._err_thread.join(10)
        done = [json.loads(line[5:]) for line in self.lines if line.startswith("done ")]
        return (done[0] if done else None), self.stderr


# -- every reader ------------------------------------------------------------------
def read_everything(logdir, storage_options=None, report=True):
    """Reads `logdir` with every reader; returns (steps read, errors).

    errors: (reader, exception text) of every reader that raised or failed.
    """
    from training_health.cli import main as cli_main
    from training_health.cli.watch import Watcher
    from training_health.io import reader

    errors = []
    steps = set()
    try:
        for run in reader.read_logdir(logdir, storage_options):
            steps.update(s.step for s in run.steps if s.global_values and len(s.layers))
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
def kill_trials(n, rng, workdir, log=print):
    """`n` training processes killed at random moments, one after another in one logdir.

    Returns (trials, lost flushed steps, reader errors).
    """
    logdir = os.path.join(workdir, "kill", "run")
    start, lost, reader_errors = 0, 0, 0
    for trial in range(n + 1):
        last = trial == n  # a final run that is not killed: the logdir still takes a clean run
        child = Child(logdir, start, steps=400 if last else 100000, seed=trial)
        child.wait_ready()
        if last:
            child.finish()
        else:
            time.sleep(rng.uniform(0.02, 1.2))
            child.proc.kill()
            child.finish()
        flushed = child.flushed()
        steps, errors = read_everything(os.path.dirname(logdir), report=trial % 5 == 0 or last)
        reader_errors += len(errors)
        missing = [] if flushed is None else [s for s in range(start, flushed + 1) if s not in steps]
        lost += len(missing)
        log("  %s %2d: flushed up to step %s, %d steps readable in all, missing %d, reader errors %s"
            % ("clean run" if last else "kill", trial, flushed, len(steps), len(missing), errors or 0))
        start = max([start - 1, flushed if flushed is not None else -1] + list(steps)) + 1
    return n, lost, reader_errors


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


def warnings_in(stderr, *words):
    """The logger's warnings (one line each) in a training process's stderr that hold every word."""
    return [line for line in stderr.splitlines()
            if line.startswith("training_health:") and all(w in line for w in words)]


def _outcome(name, child, logdir, expected, warning_words, log, storage_options=None):
    """Checks one fault run: training finished, one warning with the words, steps read back."""
    done, stderr = child.finish()
    steps, errors = read_everything(logdir, storage_options, report=False)
    missing = sorted(set(expected) - steps)
    warned = warnings_in(stderr, *warning_words)
    ok = done is not None and not errors and not missing and len(warned) == 1
    log("  %-14s %s: finished=%s, %d of %d expected steps read, reader errors %s, warning: %s"
        % (name, "ok" if ok else "FAILED", done is not None, len(expected) - len(missing), len(expected),
           errors or 0, warned[0][:200] if warned else "(none)"))
    if not ok:
        log("    stderr: %s" % stderr[-1500:])
    return ok, len(errors), len(missing)


def full_disk(workdir, log):
    """A small filesystem fills up mid-run; then space is freed."""
    mount = os.path.join(workdir, "full")
    with tmpfs(mount, 256 * 1024):
        with open(os.path.join(mount, "filler"), "wb") as f:
            f.write(b"\0" * (256 * 1024 - 48 * 1024))  # ~48 KB left: about 200 steps
        logdir = os.path.join(mount, "run")
        child = Child(logdir, 0, steps=900, seed=1, step_secs=0.002)
        child.wait_ready()
        if not child.wait_for("failing", timeout=120):
            log("  full disk: the disk never filled up")
            return False, 1, 0
        os.remove(os.path.join(mount, "filler"))  # space comes back
        return _outcome("full disk", child, mount, range(900), ("could not write", "No space left"), log)


def unwritable(workdir, log):
    """The logdir is on a read-only filesystem for the whole run."""
    mount = os.path.join(workdir, "readonly")
    with tmpfs(mount, 1 << 20):
        subprocess.run(["mount", "-o", "remount,ro", mount], check=True, capture_output=True)
        child = Child(os.path.join(mount, "run"), 0, steps=200, seed=2, step_secs=0.001)
        child.wait_ready()
        done, stderr = child.finish()
        lost = warnings_in(stderr, "could not be written")
        first = warnings_in(stderr, "could not write")
        ok = done is not None and len(first) == 1 and len(lost) == 1 and "Read-only" in first[0]
        log("  %-14s %s: finished=%s, warnings: %s | %s" % (
            "unwritable", "ok" if ok else "FAILED", done is not None,
            first[0][:160] if first else "(none)", lost[0][:160] if lost else "(none)"))
        return ok, 0, 0


def removed(workdir, log):
    """The logdir is removed while the run trains."""
    logdir = os.path.join(workdir, "removed", "run")
    child = Child(logdir, 0, steps=600, seed=3, step_secs=0.003)
    child.wait_ready()
    child.wait_for("flushed 99")
    shutil.rmtree(logdir)
    removed_after = child.flushed()
    # Steps flushed before the removal are gone with it (the warning says so);
    # those after it are written to a new file.
    return _outcome("logdir removed", child, os.path.dirname(logdir), range(removed_after + 1, 600),
                    ("no longer holds", "new event file"), log)


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
        url = "s3://%s/run" % bucket
        child = Child(url, 0, steps=500, seed=4, step_secs=0.01, storage_options=options)
        child.wait_ready()
        child.wait_for("flushed 49", timeout=120)
        proxy.mode = "refuse"
        child.wait_for("failing", timeout=60)
        time.sleep(1.0)
        proxy.mode = "pass"
        return _outcome("bucket outage", child, "s3://%s" % bucket, range(500), ("could not write",),
                        log, storage_options=options)
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
            fault_cases=True):
    """Runs everything; returns the figures of the last line as a dict."""
    rng = random.Random(seed)
    own = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="th-faults-")
    quiet = quiet_logging()
    quiet.__enter__()
    try:
        log("kill -9 at random moments (%d trials, seed %d):" % (kill, seed))
        trials, lost, reader_errors = kill_trials(kill, rng, workdir, log)
        cases = failed = fault_errors = fault_lost = 0
        if fault_cases:
            log("faults while training:")
            cases, failed, fault_errors, fault_lost = faults(workdir, log, bucket)
        log("fuzzing (%d event files, %d requests):" % (files, requests))
        inputs, uncaught = fuzz(workdir, files, requests, rng, log)
        log("fault cases: %d, failed: %d" % (cases, failed))
        return {"kill_trials": trials, "lost_flushed_steps": lost, "reader_errors": reader_errors + fault_errors,
                "fuzz_inputs": inputs, "uncaught": uncaught, "fault_cases": cases, "fault_failed": failed,
                "fault_lost": fault_lost}
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
        for name, kind in (("--logdir", str), ("--start", int), ("--steps", int), ("--seed", int),
                           ("--flush-every", int), ("--step-secs", float), ("--storage-options", str)):
            p.add_argument(name, type=kind)
        return train(p.parse_args(argv[1:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kill-trials", type=int, default=20)
    parser.add_argument("--fuzz-files", type=int, default=200)
    parser.add_argument("--fuzz-requests", type=int, default=2000)
    parser.add_argument("--skip-bucket", action="store_true", help="no S3 server case")
    parser.add_argument("--skip-faults", action="store_true", help="no fault case at all")
    parser.add_argument("--workdir", default=None, help="keep the files here (default: a temp dir)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        figures = run_all(args.seed, args.kill_trials, args.fuzz_files, args.fuzz_requests,
                          not args.skip_bucket, args.workdir, fault_cases=not args.skip_faults)
    except Exception:  # noqa: BLE001  (the harness itself failed: say where)
        traceback.print_exc()
        return 1
    print("took %.0f s; fault cases %d, failed %d, steps missing after a fault %d"
          % (time.monotonic() - started, figures["fault_cases"], figures["fault_failed"], figures["fault_lost"]))
    print(contract_line(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
