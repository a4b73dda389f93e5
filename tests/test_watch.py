"""`training-health watch` as a real subprocess on real event files.

A run is written with `RunWriter` while `watch` refreshes: its status line
follows the run, an alert logged between refreshes and one found by the
detectors (a NaN loss) are printed once with their hints, output to a pipe
has no ANSI codes, output to a terminal (a pty) is redrawn in place, and
SIGINT ends it with status 0 and no traceback.
"""

import math
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from training_health import format as fmt
from training_health.records import Alert, LayerInfo
from training_health.io.run_writer import RunWriter

from test_remote_support import s3, s3_server  # noqa: F401  (fixtures)

LAYERS = (
    LayerInfo("conv", "Conv2D", "relu", None, 8, True, True),
    LayerInfo("dense", "Dense", "relu", None, 16, True, True),
    LayerInfo("out", "Dense", "softmax", (0.0, 1.0), 10, True, True),
)
HEALTHY_LAYER = {
    "grad_norm": 0.1, "grad_max_abs": 0.05, "grad_zero_frac": 0.0, "grad_nonfinite": 0.0,
    "weight_norm": 5.0, "update_ratio": 1e-3, "act_mean": 0.3, "act_std": 0.5,
    "act_example_std": 0.3, "act_zero_frac": 0.3, "act_saturated_frac": 0.0,
    "act_nonfinite": 0.0, "dead_frac": 0.0, "dead_frac_window": 0.0,
}
T0 = 1.7e9
STEPS_PER_SEC = 10.0


def watch_command():
    exe = shutil.which("training-health")
    return [exe] if exe else [sys.executable, "-m", "training_health.cli"]


def sigint_as_in_a_terminal():
    """(preexec_fn) SIGINT back to its default in the child: a test session
    started in the background of a script inherits SIGINT ignored, and so
    would `watch`, which a user stops with Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def healthy_step(step, loss=None):
    layer_values = np.array([[HEALTHY_LAYER[s] for s in fmt.LAYER_STATS]] * len(LAYERS), np.float32)
    layer_values[:, fmt.LAYER_STATS.index("dead_frac_window")] = [0.25, 0.0, 0.0]
    values = {"loss": 2.0 * math.exp(-step / 50.0) if loss is None else loss, "grad_norm": 0.2,
              "grad_nonfinite": 0.0, "input_mean": 0.0, "input_std": 1.0, "input_min": -3.0,
              "input_max": 3.0, "input_nonfinite": 0.0, "learning_rate": 1e-3}
    return layer_values, np.array([values[s] for s in fmt.GLOBAL_STATS], np.float32)


def write_steps(writer, steps, loss=None):
    for step in steps:
        writer.write_step(step, *healthy_step(step, loss), wall_time=T0 + step / STEPS_PER_SEC)
    assert writer.flush()


class Output:
    """Collects a stream's text in a thread; `wait_for` polls it with a deadline."""

    def __init__(self, read_chunk):
        self.text = ""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, args=(read_chunk,), daemon=True)
        self._thread.start()

    def _pump(self, read_chunk):
        while True:
            chunk = read_chunk()
            if not chunk:
                return
            with self._lock:
                self.text += chunk.decode("utf-8", "replace")

    def wait_for(self, predicate, timeout=30, what="output"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(self.text):
                    return self.text
            time.sleep(0.05)
        pytest.fail("timed out waiting for %s; output so far:\n%s" % (what, self.text))


def stop_with_sigint(proc, timeout=15):
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("watch did not exit within %d s of SIGINT" % timeout)


def test_pipe_output_follows_the_run_prints_new_alerts_and_exits_on_sigint(tmp_path):
    logdir = tmp_path / "logs"
    writer = RunWriter(str(logdir / "run1"), LAYERS)
    write_steps(writer, range(1, 21))
    proc = subprocess.Popen(
        watch_command() + ["watch", str(logdir), "--interval", "0.3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=sigint_as_in_a_terminal,
    )
    try:
        out = Output(lambda: os.read(proc.stdout.fileno(), 65536))
        err = Output(lambda: os.read(proc.stderr.fileno(), 65536))
        first = out.wait_for(lambda t: "step 20 " in t, what="the first status line")
        line = [l for l in first.splitlines() if "run1" in l][0]
        assert "loss %.4g" % (2.0 * math.exp(-20 / 50.0)) in line
        assert "10 steps/s" in line
        assert "worst conv (25% dead)" in line
        assert "WARNING" not in first and "CRITICAL" not in first, "a healthy run has no alert"

        # an alert logged by the training process between two refreshes
        write_steps(writer, range(21, 26))
        writer.write_alerts(25, [Alert("dead_units", 25, "conv", "warning",
                                       "81% of conv's units are dead", "lower the learning rate")])
        assert writer.flush()
        text = out.wait_for(lambda t: "hint: lower the learning rate" in t, what="the logged alert")
        assert "[run1] step 25: WARNING dead_units conv: 81% of conv's units are dead" in text
        out.wait_for(lambda t: "step 25 " in t and "worst conv (dead_units)" in t, what="updated line")

        # an alert the detectors find in the new steps: a NaN loss
        write_steps(writer, [26], loss=float("nan"))
        text = out.wait_for(lambda t: "CRITICAL nan_inf" in t, what="the detector's alert")
        nan_line = [l for l in text.splitlines() if "CRITICAL nan_inf" in l][0]
        assert nan_line.startswith("[run1] step 26:")
        hint_line = text.splitlines()[text.splitlines().index(nan_line) + 1]
        assert hint_line.startswith("    hint: ") and len(hint_line) > len("    hint: ")

        time.sleep(1.0)  # a few more refreshes: nothing is printed twice
        rc = stop_with_sigint(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        writer.close()
    assert rc == 0
    assert out.text.count("dead_units conv: 81%") == 1
    assert out.text.count("CRITICAL nan_inf") == 1
    assert "\x1b" not in out.text, "no terminal codes when stdout is not a terminal"
    assert "Traceback" not in err.text and "KeyboardInterrupt" not in err.text


def test_terminal_output_is_redrawn_in_place(tmp_path):
    logdir = tmp_path / "logs"
    writer = RunWriter(str(logdir / "run1"), LAYERS)
    write_steps(writer, range(1, 11))
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        watch_command() + ["watch", str(logdir), "--interval", "0.3"],
        stdout=slave, stderr=subprocess.PIPE, preexec_fn=sigint_as_in_a_terminal,
    )
    os.close(slave)

    def read_master():
        ready, _, _ = select.select([master], [], [], 0.5)
        if not ready:
            return b" " if proc.poll() is None else b""
        try:
            return os.read(master, 65536)
        except OSError:  # the child closed the terminal
            return b""

    try:
        out = Output(read_master)
        out.wait_for(lambda t: "step 10 " in t, what="the first status line")
        write_steps(writer, range(11, 16))
        text = out.wait_for(lambda t: "step 15 " in t, what="the redrawn line")
        rc = stop_with_sigint(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        writer.close()
        os.close(master)
    assert rc == 0
    assert "\x1b[1F\x1b[J" in text, "the run's line is redrawn in place on a terminal"
    assert "Traceback" not in proc.stderr.read().decode()


def test_once_prints_one_pass_and_exits(tmp_path):
    logdir = tmp_path / "logs"
    writer = RunWriter(str(logdir / "b_run"), LAYERS)
    write_steps(writer, range(1, 6))
    writer.close()
    writer = RunWriter(str(logdir / "a_run"), LAYERS)
    write_steps(writer, range(1, 4))
    writer.close()
    out = subprocess.run(watch_command() + ["watch", str(logdir), "--once"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [l for l in out.stdout.splitlines() if "steps/s" in l]
    assert len(lines) == 2
    assert "a_run" in lines[0] and "step 3 " in lines[0]
    assert "b_run" in lines[1] and "step 5 " in lines[1]


def test_once_on_a_missing_logdir_is_an_error_without_traceback(tmp_path):
    out = subprocess.run(watch_command() + ["watch", str(tmp_path / "nope"), "--once"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "no such log directory" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_interval_is_rejected(tmp_path):
    out = subprocess.run(watch_command() + ["watch", str(tmp_path), "--interval", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--interval must be > 0 seconds; received 0" in out.stderr


def test_watch_follows_a_bucket_and_exits_on_sigint(s3, tmp_path):
    server, bucket = s3
    url = "s3://%s/runs" % bucket
    writer = RunWriter(url + "/run1", LAYERS)
    write_steps(writer, range(1, 11))
    proc = subprocess.Popen(watch_command() + ["watch", url, "--interval", "0.3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ),
                            preexec_fn=sigint_as_in_a_terminal)
    try:
        out = Output(lambda: os.read(proc.stdout.fileno(), 65536))
        err = Output(lambda: os.read(proc.stderr.fileno(), 65536))
        out.wait_for(lambda t: "run1  step 10 " in t, what="the run's line from the bucket")
        write_steps(writer, range(11, 21))
        out.wait_for(lambda t: "run1  step 20 " in t, what="new steps uploaded to the bucket")
        rc = stop_with_sigint(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        writer.close()
    assert rc == 0
    assert "Traceback" not in err.text


def test_missing_s3_client_is_an_error_naming_the_extra_not_an_endless_retry(tmp_path):
    code = ("import sys\n"
            "sys.modules['s3fs'] = None\n"
            "from training_health.cli import main\n"
            "sys.exit(main(['watch', 's3://bucket/runs', '--interval', '0.2']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "pip install 'training-health[s3]'" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_run_with_no_new_step_for_minutes_is_shown_idle(tmp_path):
    logdir = tmp_path / "logs"
    now = time.time()
    for name, last_wall in (("fresh", now), ("stopped", now - 2 * 86400 - 60)):
        writer = RunWriter(str(logdir / name), LAYERS)
        for step in range(1, 6):
            writer.write_step(step, *healthy_step(step), wall_time=last_wall - (5 - step) * 0.1)
        writer.close()
    out = subprocess.run(watch_command() + ["watch", str(logdir), "--once"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    fresh = [l for l in out.stdout.splitlines() if "fresh" in l][0]
    stopped = [l for l in out.stdout.splitlines() if "stopped" in l][0]
    assert "idle" not in fresh
    assert stopped.endswith("idle 2d"), stopped
    assert "10 steps/s" in stopped, "the rate it had while it ran"


def test_an_alert_that_follows_from_another_is_one_short_line():
    from training_health.cli.watch import format_alert
    from training_health.detectors import incidents

    root, nan, dead = incidents.group([
        Alert("exploding_gradients", 3, "dense", "critical", "gradient norm 1e9 at step 3",
              "lower the learning rate"),
        Alert("nan_inf", 4, None, "critical", "non-finite values at step 4: loss nan; more",
              "check the targets"),
        Alert("dead_units", 20, "conv", "critical", "x" * 300, "He initialization")])
    assert format_alert("run", root) == [
        "[run] step 3: CRITICAL exploding_gradients dense: gradient norm 1e9 at step 3",
        "    hint: lower the learning rate"]
    assert format_alert("run", nan) == [
        "[run]   then step 4 critical nan_inf: non-finite values at step 4: loss nan "
        "(follows from exploding_gradients@3/dense)"]
    (line,) = format_alert("run", dead)
    assert "x" * 97 + "..." in line and "x" * 98 not in line and "hint" not in line
