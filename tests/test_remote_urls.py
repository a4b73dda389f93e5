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
from training_health import reader, remote
from training_health.records import LayerInfo
from training_health.run_writer import RunWriter
from training_health.writer import EventWriter

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
