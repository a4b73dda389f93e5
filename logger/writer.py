"""Event-file writing off the training thread.

`EventWriter` takes `Event` protos from the training side (`write()` only
appends to a bounded in-memory queue) and a background thread frames them as
TFRecords and appends them to an event file. It never raises into training:
an I/O failure (permissions, disk full, unreachable bucket) is reported once
through `logging`/`warnings`, the events are kept (up to `max_pending`) and
retried on the next flush. Files are flushed on `close()` and at interpreter
exit.
"""

import atexit
import collections
import itertools
import logging
import os
import socket
import threading
import time
import warnings
import weakref

from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

log = logging.getLogger("training_health")

_LIVE_WRITERS = weakref.WeakSet()
_COUNTER = itertools.count()


def _close_all_at_exit():
    for writer in list(_LIVE_WRITERS):
        writer.close()


atexit.register(_close_all_at_exit)


class _Buffer:
    """A file-like object RecordWriter can write into."""

    def __init__(self):
        self.parts = []

    def write(self, data):
        self.parts.append(data)

    def flush(self):
        pass

    def take(self):
        data = b"".join(self.parts)
        self.parts = []
        return data


def is_remote(logdir):
    return "://" in str(logdir) and not str(logdir).startswith("file://")


class LocalSink:
    """Appends to one local event file."""

    def __init__(self, logdir, filename):
        self.logdir = logdir
        self.path = os.path.join(logdir, filename)

    def append(self, data):
        os.makedirs(self.logdir, exist_ok=True)
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()


def _event_filename():
    return "events.out.tfevents.%010d.%s.%d.%d.training_health" % (
        int(time.time()),
        socket.gethostname(),
        os.getpid(),
        next(_COUNTER),
    )


class EventWriter:
    """Writes `Event`s to `logdir` from a background thread.

    Args:
        logdir: directory (or URL, see `training_health.remote`) of the run.
        flush_secs: how often the thread writes what is queued. Defaults to 2.
        max_pending: events kept in memory while the destination fails;
            beyond that the oldest are dropped (and the drop is reported).
            Defaults to 100000.
        sink_factory: callable(logdir, filename) -> object with `append(bytes)`.
            Defaults to local files for paths and to `training_health.remote`
            for URLs.
    """

    def __init__(self, logdir, flush_secs=2.0, max_pending=100000, sink_factory=None):
        if flush_secs <= 0:
            raise ValueError("flush_secs must be > 0; received %r" % (flush_secs,))
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1; received %r" % (max_pending,))
        self.logdir = str(logdir)
        self.flush_secs = float(flush_secs)
        self.max_pending = int(max_pending)
        if sink_factory is None:
            if is_remote(self.logdir):
                from training_health import remote

                sink_factory = remote.make_sink
            else:
                sink_factory = LocalSink
        self._sink_factory = sink_factory
        self._sink = None
        self._pending = collections.deque()
        self._lock = threading.Lock()  # guards _pending
        self._io_lock = threading.Lock()  # one writer of the file at a time
        self._wake = threading.Event()
        self._closed = False
        self._warned = False
        self._dropped = 0
        self.errors = 0  # failed write attempts, for callers and tests
        self.last_error = None
        self._thread = threading.Thread(
            target=self._run, name="training-health-writer", daemon=True
        )
        self._thread.start()
        _LIVE_WRITERS.add(self)

    def write(self, event):
        """Queues one Event. Never blocks on I/O, never raises for I/O."""
        if self._closed:
            raise RuntimeError("EventWriter.write() called after close()")
        with self._lock:
            self._pending.append(event)
            while len(self._pending) > self.max_pending:
                self._pending.popleft()
                self._dropped += 1

    def flush(self):
        """Writes everything queued now, from the calling thread. Returns True on success."""
        return self._write_pending()

    def close(self):
        """Writes what is queued and stops the thread. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)
        self._write_pending()
        _LIVE_WRITERS.discard(self)

    def _run(self):
        while not self._closed:
            self._wake.wait(self.flush_secs)
            self._wake.clear()
            self._write_pending()

    def _write_pending(self):
        with self._io_lock:
            return self._write_pending_locked()

    def _write_pending_locked(self):
        with self._lock:
            events = list(self._pending)
        if not events:
            return True
        buf = _Buffer()
        records = RecordWriter(buf)
        try:
            if self._sink is None:
                sink = self._sink_factory(self.logdir, _event_filename())
                header = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
                records.write(header.SerializeToString())
                self._header = buf.take()
                self._sink = sink
                first = self._header
            else:
                first = b""
            for event in events:
                records.write(event.SerializeToString())
            self._sink.append(first + buf.take())
        except OSError as e:  # remote sinks raise OSError subclasses too
            self._report(e)
            if first:
                self._sink = None  # the header did not land: write it again next time
            return False
        with self._lock:
            for _ in range(len(events)):
                if self._pending:
                    self._pending.popleft()
        return True

    def _report(self, error):
        self.errors += 1
        self.last_error = error
        if not self._warned:
            self._warned = True
            message = (
                "training_health: could not write to %s (%s: %s); training continues, "
                "events are kept in memory (up to %d) and retried"
                % (self.logdir, type(error).__name__, error, self.max_pending)
            )
            log.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
