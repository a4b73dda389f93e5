"""EventWriter: background writing, failure behaviour and flushing, checked on
real files (a real failure: the logdir's parent is a regular file)."""

import glob
import json
import os
import shutil
import subprocess
import textwrap
import time
import warnings

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import event_pb2
from tensorboard.util import tensor_util

from training_health import format as fmt
from training_health.io.event_writer import EventWriter

from conftest import REPO_ROOT

pytestmark = pytest.mark.compat

TAG = fmt.TAG_GLOBAL


def _event(step):
    return fmt.make_event(TAG, step, [float(step), -1.0], wall_time=float(step))


def _read_steps(logdir):
    """Steps of our tag in every event file of `logdir`, file order; checks the header."""
    steps = []
    files = sorted(glob.glob(os.path.join(str(logdir), "events.out.tfevents.*")))
    for path in files:
        events = list(event_file_loader.EventFileLoader(path).Load())
        if not events:
            continue  # made by an append that is writing its first bytes right now
        assert events[0].file_version == "brain.Event:2"
        for event in events[1:]:
            (value,) = event.summary.value
            assert value.tag == TAG
            assert tensor_util.make_ndarray(value.tensor)[0] == event.step
            steps.append(event.step)
    return steps


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_background_thread_writes_without_flush(tmp_path):
    logdir = tmp_path / "run"
    writer = EventWriter(str(logdir), flush_secs=0.1)
    try:
        events = [_event(step) for step in range(1, 201)]
        start = time.monotonic()
        for event in events:
            writer.write(event)
        assert time.monotonic() - start < 2.0  # write() only queues (microseconds each)
        # Nobody calls flush(): the writer's own thread must write them.
        assert _wait_for(lambda: _read_steps(logdir) == list(range(1, 201)))
        writer.write(_event(201))
        assert _wait_for(lambda: _read_steps(logdir) == list(range(1, 202)))
        assert len(glob.glob(str(logdir / "events.out.tfevents.*"))) == 1  # one file, appended
    finally:
        writer.close()


def test_close_flushes_and_refuses_later_writes(tmp_path):
    writer = EventWriter(str(tmp_path / "run"), flush_secs=3600)
    for step in (1, 2, 3):
        writer.write(_event(step))
    writer.close()
    assert _read_steps(tmp_path / "run") == [1, 2, 3]
    writer.close()  # safe twice
    with pytest.raises(RuntimeError, match="after close"):
        writer.write(_event(4))


def test_flush_writes_now(tmp_path):
    writer = EventWriter(str(tmp_path / "run"), flush_secs=3600)
    try:
        writer.write(_event(7))
        assert writer.flush() is True
        assert _read_steps(tmp_path / "run") == [7]
        assert writer.flush() is True  # nothing pending is fine
        assert writer.errors == 0 and writer.last_error is None
    finally:
        writer.close()


def test_write_failure_warns_once_keeps_events_and_recovers(tmp_path, caplog):
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file where a directory should be")
    logdir = blocker / "run"
    writer = EventWriter(str(logdir), flush_secs=3600)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in (1, 2, 3):
            writer.write(_event(step))  # never raises for I/O
        assert writer.flush() is False
        writer.write(_event(4))
        assert writer.flush() is False
        assert writer.flush() is False
    ours = [w for w in caught if "could not write" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert issubclass(ours[0].category, RuntimeWarning)
    assert str(logdir) in str(ours[0].message)
    assert len([r for r in caplog.records if "could not write" in r.getMessage()]) == 1
    assert writer.errors == 3
    assert isinstance(writer.last_error, OSError)

    blocker.unlink()  # the destination works again
    writer.write(_event(5))
    assert writer.flush() is True
    writer.close()
    assert _read_steps(logdir) == [1, 2, 3, 4, 5]  # nothing lost, nothing twice


def test_close_on_failing_destination_does_not_raise(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    writer = EventWriter(str(blocker / "run"), flush_secs=3600)
    writer.write(_event(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        writer.close()
    assert isinstance(writer.last_error, OSError)


def test_oldest_events_are_dropped_beyond_max_pending(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    writer = EventWriter(str(blocker / "run"), flush_secs=3600, max_pending=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, 6):
            writer.write(_event(step))
        assert writer.flush() is False
    assert writer.dropped == 2
    assert len([w for w in caught if "oldest are" in str(w.message)]) == 1, [str(w.message) for w in caught]
    blocker.unlink()
    writer.close()
    assert _read_steps(blocker / "run") == [3, 4, 5]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(flush_secs=0), r"flush_secs must be .*> 0.*received 0"),
        (dict(flush_secs=-1.5), r"flush_secs must be .*> 0.*received -1\.5"),
        (dict(max_pending=0), r"max_pending must be >= 1.*received 0"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        EventWriter(str(tmp_path / "run"), **kwargs)


def test_interpreter_exit_flushes_without_close(tmp_path, python_exe):
    logdir = tmp_path / "run"
    script = textwrap.dedent(
        """
        import sys
        from training_health import format as fmt
        from training_health.io.event_writer import EventWriter

        writer = EventWriter(sys.argv[1], flush_secs=3600)
        for step in range(1, 51):
            writer.write(fmt.make_event(fmt.TAG_GLOBAL, step, [float(step), -1.0]))
        # no flush(), no close(): interpreter exit must write them
        """
    )
    result = subprocess.run(
        [python_exe, "-c", script, str(logdir)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert _read_steps(logdir) == list(range(1, 51))


def test_events_are_parseable_protos(tmp_path):
    writer = EventWriter(str(tmp_path / "run"), flush_secs=3600)
    writer.write(event_pb2.Event(step=3, wall_time=1.5, file_version="ignored"))
    writer.close()
    (path,) = glob.glob(str(tmp_path / "run" / "events.out.tfevents.*"))
    assert path.endswith(".training_health")
    events = list(event_file_loader.RawEventFileLoader(path).Load())
    assert len(events) == 2
    parsed = event_pb2.Event.FromString(events[1])
    assert (parsed.step, parsed.wall_time) == (3, 1.5)


# -- failures in the middle of a run: nothing torn, nothing unreadable ----------

from training_health.io import reader  # noqa: E402
from training_health.io.run_writer import RunWriter  # noqa: E402
from training_health.records import LayerInfo  # noqa: E402

LAYERS = (LayerInfo("dense", "Dense", "relu", None, 4, True, True),)


def _step_values(step):
    layer = np.full((len(LAYERS), len(fmt.LAYER_STATS)), float(step), np.float32)
    return layer, np.full(len(fmt.GLOBAL_STATS), float(step), np.float32)


def _damage_free_steps(logdir):
    """Steps read back from `logdir`; fails on any damaged byte or skipped value."""
    for path in glob.glob(os.path.join(str(logdir), "events.out.tfevents.*")):
        _, consumed, damage = reader.split_records(open(path, "rb").read(), path)
        assert damage == [] and consumed == os.path.getsize(path), path
    run_reader = reader.RunReader(str(logdir))
    steps = run_reader.poll(final=True).steps
    assert run_reader.skipped == []
    for stats in steps:
        np.testing.assert_array_equal(stats.layer_values, _step_values(stats.step)[0])
    return [s.step for s in steps]


PARTIAL_WRITE_CHILD = """
import json, os, resource, signal, sys, warnings
import numpy as np
sys.path.insert(0, sys.argv[2])
from test_writer import LAYERS, _step_values
from training_health.io.event_writer import EventWriter
from training_health.io.run_writer import RunWriter

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
warnings.simplefilter("ignore")
logdir = sys.argv[1]
writer = EventWriter(logdir, flush_secs=3600)
run = RunWriter(logdir, LAYERS, writer=writer)
for step in range(1, 21):
    run.write_step(step, *_step_values(step))
assert writer.flush()
(path,) = [os.path.join(logdir, n) for n in os.listdir(logdir)]
size = os.path.getsize(path)
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 700, hard))  # room for part of the next batch
for step in range(21, 41):
    run.write_step(step, *_step_values(step))
failed = writer.flush()
size_after_failure = os.path.getsize(path)
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space again
recovered = writer.flush()
run.close()
print(json.dumps([size, size_after_failure, failed, recovered, writer.errors, str(writer.last_error)]))
"""


def test_a_partial_write_is_undone_and_the_retry_leaves_no_torn_record(tmp_path, python_exe):
    # A real partial write: the kernel writes up to the file size limit and
    # fails the rest (as on a full disk).
    logdir = tmp_path / "run"
    result = subprocess.run([python_exe, "-c", PARTIAL_WRITE_CHILD, str(logdir), os.path.join(REPO_ROOT, "tests")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    size, size_after_failure, failed, recovered, errors, error = json.loads(result.stdout.splitlines()[-1])
    assert (failed, recovered, errors) == (False, True, 1) and "File too large" in error
    assert size_after_failure == size  # the failed append left nothing behind
    assert _damage_free_steps(logdir) == list(range(1, 41))


def test_metadata_survives_when_the_first_events_are_dropped(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    logdir = blocker / "run"
    writer = EventWriter(str(logdir), flush_secs=3600, max_pending=4)
    run = RunWriter(str(logdir), LAYERS, writer=writer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in range(1, 6):
            run.write_step(step, *_step_values(step))  # steps 1-3 (and their metadata) are dropped
        assert writer.flush() is False
    assert writer.dropped == 6
    blocker.unlink()
    run.close()
    assert _damage_free_steps(logdir) == [4, 5]


def test_every_rolled_over_file_is_readable_on_its_own(tmp_path):
    pytest.importorskip("fsspec")
    url = "memory://metadata-per-file/run"
    writer = EventWriter(url, flush_secs=3600, roll_secs=0.01)
    run = RunWriter(url, LAYERS, writer=writer)
    for step in range(1, 7):
        run.write_step(step, *_step_values(step))
        assert writer.flush()
        time.sleep(0.02)
    run.close()
    assert len(writer.files) >= 3
    from training_health.io import remote

    for i, name in enumerate(writer.files):
        alone = tmp_path / ("file%d" % i)
        alone.mkdir()
        (alone / name).write_bytes(remote.read_bytes(url + "/" + name))
        assert _damage_free_steps(alone), name  # its own metadata: its steps read alone


def test_a_removed_logdir_is_recreated_with_a_new_readable_file(tmp_path):
    logdir = tmp_path / "run"
    writer = EventWriter(str(logdir), flush_secs=3600)
    run = RunWriter(str(logdir), LAYERS, writer=writer)
    for step in range(1, 4):
        run.write_step(step, *_step_values(step))
    assert writer.flush()
    shutil.rmtree(logdir)
    for step in range(4, 7):
        run.write_step(step, *_step_values(step))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert writer.flush()
    (warning,) = [str(w.message) for w in caught if "no longer holds" in str(w.message)]
    assert writer.files[0] in warning and "new event file" in warning
    run.close()
    assert len(writer.files) == 2
    assert _damage_free_steps(logdir) == [4, 5, 6]


class SlowQueueWriter(EventWriter):
    """An EventWriter whose queue takes a millisecond per event (a busy process)."""

    def write(self, event):
        time.sleep(0.001)
        super().write(event)


def test_run_writer_from_several_threads_keeps_steps_whole_and_in_order(tmp_path):
    import itertools
    import threading

    logdir = tmp_path / "run"
    run = RunWriter(str(logdir), LAYERS, writer=SlowQueueWriter(str(logdir), flush_secs=3600))
    steps = itertools.count(1)
    accepted = []

    def worker():
        for _ in range(40):
            step = next(steps)
            try:
                run.write_step(step, *_step_values(step))
            except ValueError:
                continue  # a later step was written first: refused, as documented
            accepted.append(step)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.close()
    (path,) = glob.glob(str(logdir / "events.out.tfevents.*"))
    written = [(e.summary.value[0].tag, e.step)
               for e in event_file_loader.EventFileLoader(path).Load() if e.summary.value]
    assert len(written) == 2 * len(accepted)
    pairs = [written[i:i + 2] for i in range(0, len(written), 2)]
    assert all(p == [(fmt.TAG_LAYERS, p[0][1]), (fmt.TAG_GLOBAL, p[0][1])] for p in pairs), written
    in_file = [p[0][1] for p in pairs]
    assert in_file == sorted(accepted) and len(set(in_file)) == len(in_file)


# -- a file removed or replaced between the writer's check and its append --------
from training_health.io.event_writer import LocalSink  # noqa: E402


def test_local_sink_does_not_recreate_a_removed_file(tmp_path):
    sink = LocalSink(str(tmp_path / "run"), "events.out.tfevents.1.training_health")
    sink.append(b"header+records")
    shutil.rmtree(tmp_path / "run")
    with pytest.raises(OSError):
        sink.append(b"more records")
    # The old code made a new file holding only the later records: no
    # header, no metadata, which no reader can decode.
    assert not os.path.exists(sink.path)
    assert sink.lost


def test_local_sink_does_not_append_to_a_replaced_file(tmp_path):
    sink = LocalSink(str(tmp_path), "events.out.tfevents.1.training_health")
    sink.append(b"header+records")
    with open(sink.path, "wb") as f:  # rewritten by someone else
        f.write(b"another program's data")
    with pytest.raises(OSError):
        sink.append(b"more records")
    with open(sink.path, "rb") as f:
        assert f.read() == b"another program's data"
    assert sink.lost


class RemovedJustBeforeAppend(LocalSink):
    """A real file sink whose run folder is removed after the writer looked
    at it and before its next append (the race, made to happen every time)."""

    remove_next = False

    def append(self, data):
        if RemovedJustBeforeAppend.remove_next:
            RemovedJustBeforeAppend.remove_next = False
            shutil.rmtree(self.logdir)
        return super().append(data)


def test_writer_goes_on_in_a_new_file_when_the_file_vanishes_mid_append(tmp_path):
    logdir = tmp_path / "run"
    writer = EventWriter(str(logdir), flush_secs=None, sink_factory=RemovedJustBeforeAppend)
    for step in range(3):
        writer.write(_event(step))
    assert writer.flush()
    RemovedJustBeforeAppend.remove_next = True
    for step in range(3, 6):
        writer.write(_event(step))
    with pytest.warns(RuntimeWarning, match="no longer holds what was written"):
        assert writer.flush()  # the same flush goes on in a new file
    writer.close()
    # Steps 0..2 went with the removed folder; 3..5 are in a new, readable file.
    assert _read_steps(logdir) == [3, 4, 5]
