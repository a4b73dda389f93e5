"""Other URL logdirs: fsspec's in-memory filesystem and file:// URLs.

`memory://` is a real fsspec filesystem (no network), so it shows that any
fsspec URL works end to end: the writer rolls over, the project's reader
reads the objects back as one run, `remote.call` turns a client error into
an OSError with the cause attached.
"""

import os
import time

import numpy as np
import pytest

from training_health import format as fmt
from training_health.io import reader
from training_health.io import remote
from training_health.records import LayerInfo
from training_health.io.run_writer import RunWriter
from training_health.io.event_writer import EventWriter

pytest.importorskip("fsspec")

LAYERS = (LayerInfo("dense", "Dense", "relu", None, 4, True, True),)


def write(url, steps, roll_secs):
    writer = EventWriter(url, flush_secs=0.05, roll_secs=roll_secs)
    run = RunWriter(url, LAYERS, writer=writer)
    for step in steps:
        layer_values = np.full((1, len(fmt.LAYER_STATS)), step, np.float32)
        run.write_step(step, layer_values, np.full(len(fmt.GLOBAL_STATS), step, np.float32))
        if step % 5 == 0:
            assert run.flush()
            time.sleep(roll_secs)
    run.close()
    return writer.files


def test_memory_url_rolls_and_reads_back_as_one_run():
    url = "memory://th-test-%d/runs/a" % os.getpid()
    files = write(url, range(1, 21), roll_secs=0.1)
    assert len(files) >= 4
    assert files == sorted(files)
    listed = remote.list_event_files(url.rsplit("/", 1)[0])
    assert [u.rsplit("/", 1)[1] for u in listed["a"]] == files
    runs = reader.read_logdir(url.rsplit("/", 1)[0])
    assert [r.name for r in runs] == ["a"]
    assert [s.step for s in runs[0].steps] == list(range(1, 21))
    assert [s.global_values["loss"] for s in runs[0].steps] == list(range(1, 21))


def test_file_url_is_a_local_directory(tmp_path):
    url = (tmp_path / "runs" / "a").as_uri()
    assert url.startswith("file://")
    files = write(url, range(1, 6), roll_secs=5)
    assert os.listdir(tmp_path / "runs" / "a") == files
    runs = reader.read_logdir((tmp_path / "runs").as_uri())
    assert [s.step for s in runs[0].steps] == [1, 2, 3, 4, 5]


def test_call_turns_client_errors_into_oserror_with_the_cause():
    botocore = pytest.importorskip("botocore.exceptions")

    def fails():
        raise botocore.EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

    with pytest.raises(remote.RemoteError, match=r"upload to s3://b/k failed: EndpointConnectionError") as info:
        remote.call("upload to", "s3://b/k", fails)
    assert isinstance(info.value, OSError)
    assert isinstance(info.value.__cause__, botocore.EndpointConnectionError)

    def not_found():
        raise FileNotFoundError("b/k")

    with pytest.raises(FileNotFoundError):  # OSErrors of the client pass through unchanged
        remote.call("reading", "s3://b/k", not_found)

    def bug():
        raise TypeError("a bug, not I/O")

    with pytest.raises(TypeError):  # not turned into an I/O error
        remote.call("reading", "s3://b/k", bug)


def test_list_event_files_of_a_missing_logdir(tmp_path):
    with pytest.raises(FileNotFoundError):
        remote.list_event_files(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError):
        remote.list_event_files("memory://th-nothing-here-%d/x" % os.getpid())


class SlowFirstAppend:
    """A local event file whose first append takes 0.5 s (a slow upload)."""

    def __init__(self, logdir, filename):
        from training_health.io.event_writer import LocalSink

        self.sink = LocalSink(logdir, filename)
        self.calls = 0

    def append(self, data):
        self.calls += 1
        if self.calls == 1:
            time.sleep(0.5)
        self.sink.append(data)


def test_events_dropped_during_a_slow_write_do_not_take_newer_ones_with_them(tmp_path):
    import threading

    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    writer = EventWriter(str(tmp_path), flush_secs=3600, max_pending=10, sink_factory=SlowFirstAppend)
    for step in range(10):
        writer.write(fmt.make_event(fmt.TAG_GLOBAL, step, np.float32([step])))
    flusher = threading.Thread(target=writer.flush)
    flusher.start()
    time.sleep(0.2)  # the first append is under way with steps 0..9
    for step in range(10, 30):  # overflow: only the newest 10 are kept
        writer.write(fmt.make_event(fmt.TAG_GLOBAL, step, np.float32([step])))
    flusher.join()
    writer.close()
    (name,) = os.listdir(tmp_path)
    steps = [e.step for e in EventFileLoader(str(tmp_path / name)).Load() if e.HasField("summary")]
    assert steps == list(range(10)) + list(range(20, 30))
    assert writer.pending == 0
