"""EventWriter / RunWriter on s3:// against a real S3-compatible server on 127.0.0.1.

What is checked: event files roll over and appear in the bucket while the run
writes; everything written is read back once (TensorBoard's own event file
reader on the downloaded objects); an unreachable, stalled or flaky endpoint
never blocks `write()`, gives one warning, and loses or duplicates nothing.
"""

import gc
import logging
import os
import subprocess
import time
import warnings

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.util import tensor_util

from training_health import format as fmt
from training_health.io import remote
from training_health.records import LayerInfo
from training_health.io.run_writer import RunWriter
from training_health.io.event_writer import EventWriter

from test_remote_support import (  # noqa: F401  (fixtures)
    PYTHON,
    fast_fail_options,
    proxy,
    s3,
    s3_server,
    wait_until,
)

LAYERS = (
    LayerInfo("conv", "Conv2D", "relu", None, 8, True, True),
    LayerInfo("dense", "Dense", "softmax", (0.0, 1.0), 10, True, True),
)
N_GLOBAL = len(fmt.GLOBAL_STATS)


def step_values(step):
    layer_values = np.full((len(LAYERS), len(fmt.LAYER_STATS)), step, dtype=np.float32)
    global_values = np.arange(N_GLOBAL, dtype=np.float32) + step
    return layer_values, global_values


def global_event(step):
    return fmt.make_event(fmt.TAG_GLOBAL, step, np.float32([step, 2.0 * step]), wall_time=1.0)


def read_back(server, bucket, prefix, dest):
    """(file names, [(tag, step, value)]) of the event files under `prefix`, in name order."""
    server.download(bucket, prefix, str(dest))
    names = sorted(n for n in os.listdir(dest) if "tfevents" in n)
    values = []
    for name in names:
        for event in EventFileLoader(os.path.join(dest, name)).Load():
            for value in event.summary.value:
                values.append((value.tag, event.step, tensor_util.make_ndarray(value.tensor)))
    return names, values


def warnings_about(records, text):
    return [w for w in records if text in str(w.message)]


def test_run_rolls_over_to_new_objects_visible_during_the_run(s3, tmp_path):
    server, bucket = s3
    url = "s3://%s/runs/run1" % bucket
    writer = EventWriter(url, flush_secs=0.1, roll_secs=0.5)
    run = RunWriter(url, LAYERS, writer=writer)
    seen_during_run = set()
    for step in range(1, 41):
        run.write_step(step, *step_values(step))
        if step == 1:
            # The first upload also imports and starts the S3 client, which
            # takes seconds on a busy machine: wait for it, then time the rest.
            assert writer.flush()
        time.sleep(0.1)
        if step % 10 == 0:
            seen_during_run.update(server.keys(bucket, "runs/run1/"))
    assert len(seen_during_run) >= 2, "rolled-over files should appear while the run writes"
    run.close()
    keys = server.keys(bucket, "runs/run1/")
    assert len(keys) >= 3
    assert [os.path.basename(k) for k in keys] == writer.files, "names sort in writing order"
    assert all("tfevents" in k for k in keys)

    names, values = read_back(server, bucket, "runs/run1/", tmp_path / "dl")
    layer_steps = [step for tag, step, _ in values if tag == fmt.TAG_LAYERS]
    global_steps = [step for tag, step, _ in values if tag == fmt.TAG_GLOBAL]
    assert layer_steps == list(range(1, 41)), "every step exactly once, in order, across files"
    assert global_steps == list(range(1, 41))
    for tag, step, value in values:
        expected = step_values(step)[0 if tag == fmt.TAG_LAYERS else 1]
        np.testing.assert_array_equal(value, expected)
        assert value.dtype == np.float32
    # each object is a complete event file starting with its own header
    for name in names:
        events = list(EventFileLoader(os.path.join(tmp_path / "dl", name)).Load())
        assert events[0].file_version == "brain.Event:2"

    listed = remote.list_event_files("s3://%s/runs" % bucket)
    assert list(listed) == ["run1"]
    assert [os.path.basename(u) for u in listed["run1"]] == writer.files
    raw = remote.read_bytes(listed["run1"][0])
    assert raw == server.get(bucket, keys[0])
    assert remote.read_bytes(listed["run1"][0], start=10) == raw[10:]


def test_unreachable_endpoint_warns_once_never_blocks_and_delivers_after_recovery(s3, tmp_path):
    server, bucket = s3
    url = "s3://%s/run" % bucket
    server.stop()
    options = fast_fail_options(server.endpoint)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        writer = EventWriter(url, flush_secs=0.2, roll_secs=0.5, storage_options=options)
        slowest = 0.0
        start = time.monotonic()
        for step in range(200):
            t0 = time.perf_counter()
            writer.write(global_event(step))
            slowest = max(slowest, time.perf_counter() - t0)
            time.sleep(0.01)
        loop_secs = time.monotonic() - start
        wait_until(lambda: writer.errors >= 2, 30, what="failed upload attempts")
        t0 = time.monotonic()
        assert writer.flush() is False
        assert time.monotonic() - t0 < 0.5, "flush() does not wait on a bucket known to be down"
        assert writer.pending == 200
        assert isinstance(writer.last_error, OSError)
    assert slowest < 0.05, "write() must not wait for the bucket (slowest %.3f s)" % slowest
    assert loop_secs < 10
    assert len(warnings_about(caught, "could not write to " + url)) == 1

    server.start()
    wait_until(writer.flush, 30, interval=0.5, what="the writer to deliver after the server came back")
    for step in range(200, 210):
        writer.write(global_event(step))
    writer.close()
    _, values = read_back(server, bucket, "run/", tmp_path / "dl")
    assert [step for _, step, _ in values] == list(range(210)), "nothing lost, nothing twice"


def test_stalled_endpoint_bounds_flush_and_write(s3, proxy, tmp_path):
    server, bucket = s3
    url = "s3://%s/run" % bucket
    proxy.mode = "stall"
    options = fast_fail_options(proxy.endpoint, read_timeout=2)

    def sink_factory(logdir, filename):
        return remote.make_sink(logdir, filename, options, upload_timeout=2)

    writer = EventWriter(url, flush_secs=0.2, flush_timeout=1.0, close_timeout=1.0,
                         sink_factory=sink_factory)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        slowest = 0.0
        for step in range(50):
            t0 = time.perf_counter()
            writer.write(global_event(step))
            slowest = max(slowest, time.perf_counter() - t0)
            time.sleep(0.01)
        t0 = time.monotonic()
        assert writer.flush() is False
        flush_secs = time.monotonic() - t0
        proxy.mode = "pass"
        wait_until(writer.flush, 40, interval=0.5, what="delivery once the endpoint answers")
        writer.close()
    assert slowest < 0.05
    assert flush_secs < 2.0, "flush() waited %.1f s" % flush_secs
    _, values = read_back(server, bucket, "run/", tmp_path / "dl")
    assert [step for _, step, _ in values] == list(range(50))


def test_upload_that_landed_but_failed_is_not_duplicated(s3, proxy, tmp_path):
    server, bucket = s3
    url = "s3://%s/run" % bucket
    writer = EventWriter(url, flush_secs=0.2, roll_secs=0.3,
                         storage_options=fast_fail_options(proxy.endpoint, read_timeout=2))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        for step in range(5):
            writer.write(global_event(step))
        assert writer.flush()
        proxy.mode = "drop_response"
        for step in range(5, 10):
            writer.write(global_event(step))
        wait_until(lambda: writer.errors >= 1 and proxy.dropped >= 1, 30, what="a dropped answer")
        time.sleep(0.5)  # a roll-over is now due; it must not happen before a successful retry
        proxy.mode = "pass"
        wait_until(writer.flush, 30, interval=0.5, what="the retry")
        for step in range(10, 12):
            writer.write(global_event(step))
        writer.close()
    names, values = read_back(server, bucket, "run/", tmp_path / "dl")
    assert [step for _, step, _ in values] == list(range(12)), "no record twice after the retry"
    assert len(names) >= 2


def test_upload_cut_off_by_the_server_prints_no_asyncio_traceback(s3, proxy, caplog):
    # aiohttp sends a request's body in a task of its own; when the server
    # closes the connection, the upload fails (reported by the writer) and
    # that task's ConnectionResetError used to reach asyncio's default
    # handler: "Task exception was never retrieved" with a traceback on the
    # training process's stderr, once per failed upload.
    server, bucket = s3
    sink = remote.make_sink("s3://%s/run" % bucket, "events.out.tfevents.1", fast_fail_options(proxy.endpoint))
    sink.append(b"x" * 1000)
    proxy.mode = "refuse"
    caplog.set_level(logging.DEBUG, logger="asyncio")
    for _ in range(3):
        with pytest.raises(OSError):
            sink.append(b"y" * 50000)
    gc.collect()  # (asyncio reports a never-retrieved exception when its task is collected)
    time.sleep(0.2)
    gc.collect()
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert server.get(bucket, "run/events.out.tfevents.1") == b"x" * 1000
    # any other unhandled error of the loop is reported as before
    sink.fs.loop.call_exception_handler({"message": "another failure", "exception": ValueError("x")})
    assert [r for r in caplog.records if r.name == "asyncio" and "another failure" in r.getMessage()]


def test_missing_s3_client_names_the_extra(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['s3fs'] = None\n"
        "from training_health.io.event_writer import EventWriter\n"
        "try:\n"
        "    EventWriter('s3://bucket/run')\n"
        "except ImportError as e:\n"
        "    print('ERROR:', e)\n"
    )
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ERROR:" in out.stdout
    assert "pip install 'training-health[s3]'" in out.stdout


def test_missing_gcs_client_names_the_extra():
    pytest.importorskip("fsspec")
    try:
        import gcsfs  # noqa: F401

        pytest.skip("gcsfs is installed here")
    except ImportError:
        pass
    with pytest.raises(remote.MissingDependencyError, match=r"training-health\[gcs\]"):
        EventWriter("gs://bucket/run")


def test_unknown_scheme_is_a_value_error():
    with pytest.raises(ValueError, match="nosuchscheme://"):
        EventWriter("nosuchscheme://bucket/run")


def test_bad_roll_secs_is_a_value_error():
    with pytest.raises(ValueError, match="roll_secs must be .* received -1"):
        EventWriter("memory://bucket/run", roll_secs=-1)


def test_events_still_queued_at_interpreter_exit_reach_the_bucket(s3, tmp_path):
    server, bucket = s3
    code = (
        "import numpy as np\n"
        "from training_health import format as fmt\n"
        "from training_health.io.event_writer import EventWriter\n"
        "w = EventWriter('s3://%s/run', flush_secs=3600)  # nothing uploaded before exit\n"
        "for step in range(5):\n"
        "    w.write(fmt.make_event(fmt.TAG_GLOBAL, step, np.float32([step])))\n"
        "# no close(): the exit hook uploads\n" % bucket
    )
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert "could not" not in out.stderr, out.stderr
    _, values = read_back(server, bucket, "run/", tmp_path / "dl")
    assert [step for _, step, _ in values] == list(range(5))
