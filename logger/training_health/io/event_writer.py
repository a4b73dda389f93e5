"""Event-file writing off the training thread.

`EventWriter` takes `Event` protos from the training side (`write()` only
appends to a bounded in-memory queue) and a background thread frames them as
TFRecords and appends them to an event file. It never raises I/O errors into
training: a failure (permissions, disk full, unreachable bucket) is reported
once through `logging`/`warnings`, the events are kept (up to `max_pending`)
and retried on the next cycle. `flush()` and `close()` wait a bounded time.
Files are flushed on `close()` and at interpreter exit.

Logdirs may be URLs (``s3://``, ``gs://``, any fsspec URL, see
`training_health.io.remote`). Object stores cannot append, so for URLs the
current event file is uploaded whole on each cycle and the writer rolls over
to a new event file (a name that sorts after the previous one) every
`roll_secs`; readers see the files of a directory as one run.
"""

import atexit
import collections
import errno
import itertools
import logging
import os
import socket
import threading
import time
import warnings
import weakref

from tensorboard.compat.proto import event_pb2

from training_health.io.crc32c import record
from training_health.io.remote import is_url, local_path

log = logging.getLogger("training_health")

_LIVE_WRITERS = weakref.WeakSet()
_COUNTER = itertools.count()

LOCAL_FLUSH_SECS = 2.0
REMOTE_FLUSH_SECS = 5.0  # each cycle re-uploads the current object
REMOTE_ROLL_SECS = 60.0
REMOTE_CLOSE_SECS = 15.0


def _close_all_at_exit():
    for writer in list(_LIVE_WRITERS):
        writer.close()


def _register_exit_hooks():
    # Uploads through s3fs/aiohttp need concurrent.futures' thread pools,
    # which threading's exit hooks shut down *before* `atexit` handlers run
    # ("cannot schedule new futures after interpreter shutdown"). threading
    # runs its hooks in reverse order of registration: registering after
    # concurrent.futures.thread (imported here) closes the writers first.
    # `atexit` stays as the fallback where that hook does not exist.
    import concurrent.futures.thread  # noqa: F401  (registers its own hook)

    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(_close_all_at_exit)
    atexit.register(_close_all_at_exit)


_register_exit_hooks()


def is_remote(logdir):
    """True when `logdir` is a URL other than ``file://``."""
    return is_url(logdir)


class LocalSink:
    """Appends to one local event file, all or nothing.

    An append that fails part-way (a full disk, a file size limit) is
    undone: the file is cut back to its size before the append, so a retry
    leaves no torn record in the middle of the file.

    Attributes:
        size: bytes appended so far (the file's size when all is well).
    """

    def __init__(self, logdir, filename):
        self.logdir = local_path(logdir)
        self.path = os.path.join(self.logdir, filename)
        self.size = 0
        self._torn = False  # a failed append could not be undone
        self._identity = None  # (device, inode) of the file the first append made

    @property
    def lost(self):
        """True when the file no longer ends where the last append ended
        (removed, cut or replaced by someone else, or a failed append that
        could not be undone): appending to it would leave a gap or a torn
        record, so the writer starts a new file."""
        if self._torn:
            return True
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):  # gone, or its folder is
            return self.size > 0
        return st.st_size != self.size or not self._same_file(st)

    def _same_file(self, st):
        return self._identity is None or (st.st_dev, st.st_ino) == self._identity

    def append(self, data):
        """Appends `data`; on failure the file is as it was and OSError is raised.

        Only the first append creates the file. A file that is not what the
        last append left (removed, cut or replaced since `lost` said it was
        fine) is not appended to: `lost` is True from then on and OSError is
        raised, so the writer starts a new file (with its header and
        metadata) instead of writing records no reader could decode."""
        os.makedirs(self.logdir, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | (os.O_CREAT if self.size == 0 else 0)
        try:
            fd = os.open(self.path, flags, 0o666)
        except FileNotFoundError:
            if self.size:
                self._torn = True
            raise
        try:
            st = os.fstat(fd)
            start = st.st_size
            if start != self.size or not self._same_file(st):
                self._torn = True
                raise OSError(errno.ESTALE, "the event file changed since the last append "
                              "(removed, cut or replaced)", self.path)
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(fd, view):]
            except OSError:
                try:
                    os.ftruncate(fd, start)
                except OSError:
                    self._torn = True
                raise
            self.size = start + len(data)
            self._identity = (st.st_dev, st.st_ino)
        finally:
            os.close(fd)


def _event_filename(timestamp):
    # The zero-padded timestamp and process-wide counter make every new file
    # of a writer sort after its previous one.
    return "events.out.tfevents.%010d.%s.%d.%08d.training_health" % (
        timestamp,
        socket.gethostname(),
        os.getpid(),
        next(_COUNTER),
    )


def _positive_or_none(name, value):
    if value is not None and not value > 0:
        raise ValueError("%s must be a number > 0 or None; received %r" % (name, value))
    return None if value is None else float(value)


class EventWriter:
    """Writes `Event`s to `logdir` from a background thread.

    Args:
        logdir: directory or URL (``s3://bucket/run``, ``gs://...``, any
            fsspec URL; see `training_health.io.remote`) of the run.
        flush_secs: how often the thread writes what is queued. Defaults to
            2 for local directories and 5 for URLs (where each write
            re-uploads the current event file).
        max_pending: events kept in memory while the destination fails;
            beyond that the oldest are dropped (and the drop is reported).
            Defaults to 100000.
        sink_factory: callable(logdir, filename) -> object with `append(bytes)`
            that raises OSError on failure. Defaults to local files for paths
            and to `training_health.io.remote.make_sink` for URLs.
        roll_secs: start a new event file when the current one is this old
            (seconds) and more data comes. Defaults to 60 for URLs and None
            (one file per writer) for local directories.
        flush_timeout: the longest `flush()` waits for the thread, in
            seconds. Defaults to 10.
        close_timeout: how long `close()` keeps retrying a failing
            destination, in seconds. Defaults to 15 for URLs and 0 (one
            final attempt) for local directories.
        storage_options: options for the fsspec filesystem of a URL logdir
            (e.g. ``{"client_kwargs": {"endpoint_url": ...}}``). Defaults to
            None.

    Raises:
        ValueError: an argument is out of range.
        training_health.io.remote.MissingDependencyError: `logdir` is a URL
            whose client library is not installed (the message names the
            extra to install).
    """

    def __init__(
        self,
        logdir,
        flush_secs=None,
        max_pending=100000,
        sink_factory=None,
        roll_secs=None,
        flush_timeout=10.0,
        close_timeout=None,
        storage_options=None,
    ):
        self.logdir = str(logdir)
        remote = self._remote = is_remote(self.logdir)
        flush_secs = _positive_or_none("flush_secs", flush_secs)
        self.flush_secs = flush_secs or (REMOTE_FLUSH_SECS if remote else LOCAL_FLUSH_SECS)
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1; received %r" % (max_pending,))
        self.max_pending = int(max_pending)
        roll_secs = _positive_or_none("roll_secs", roll_secs)
        self.roll_secs = roll_secs or (REMOTE_ROLL_SECS if remote else None)
        if flush_timeout is None or flush_timeout < 0:
            raise ValueError("flush_timeout must be a number >= 0; received %r" % (flush_timeout,))
        self.flush_timeout = float(flush_timeout)
        if close_timeout is None:
            close_timeout = REMOTE_CLOSE_SECS if remote else 0.0
        if close_timeout < 0:
            raise ValueError("close_timeout must be >= 0; received %r" % (close_timeout,))
        self.close_timeout = float(close_timeout)
        if sink_factory is None:
            if remote:
                from training_health.io import remote as remote_module

                remote_module.check_available(self.logdir)  # missing extra: fail now, clearly

                def sink_factory(logdir, filename):
                    return remote_module.make_sink(logdir, filename, storage_options)

            else:
                sink_factory = LocalSink
        self._sink_factory = sink_factory
        self._sink = None
        self._sink_started = 0.0
        self._sink_clean = True  # the last append to the current sink succeeded
        self._header_written = False
        self._tag_metadata = {}  # tag -> SummaryMetadata for the first value in each file
        self._described = set()  # tags whose metadata the current file holds
        self._failing = False
        self._last_timestamp = 0
        self.files = []  # names of the event files started, oldest first
        self._pending = collections.deque()
        self._head = 0  # index (since the start) of the event at _pending[0]
        self._lock = threading.Lock()  # guards _pending
        self._io_lock = threading.Lock()  # one writer of the file at a time
        self._cond = threading.Condition()  # guards the flush bookkeeping below
        self._requested = 0
        self._completed = 0
        self._last_ok = True
        self._wake = threading.Event()
        self._closed = False
        self._close_deadline = None
        self._warned = False
        self._warned_drop = False
        self._dropped = 0
        self.errors = 0  # failed write attempts, for callers and tests
        self.last_error = None
        self._thread = threading.Thread(
            target=self._run, name="training-health-writer", daemon=True
        )
        self._thread.start()
        _LIVE_WRITERS.add(self)

    @property
    def dropped(self):
        """Events dropped because more than `max_pending` were waiting."""
        return self._dropped

    @property
    def pending(self):
        """Events queued and not written yet."""
        with self._lock:
            return len(self._pending)

    def describe(self, tag, metadata):
        """Has `metadata` (a SummaryMetadata) written with the first value of
        `tag` in every event file, whichever values are dropped.

        Readers learn what a tag's values mean from the metadata of its first
        value; with it at the start of every file, a value is readable even
        when the events before it were dropped (see `max_pending`) or are in
        a file that was lost.
        """
        with self._io_lock:
            self._tag_metadata[tag] = metadata
            self._described.discard(tag)

    def _with_metadata(self, event, described):
        """`event`, or a copy with metadata on the values whose tag the file
        does not describe yet; adds those tags to `described`."""
        copy = None
        for i, value in enumerate(event.summary.value):
            if value.tag in described:
                continue
            if value.metadata.plugin_data.plugin_name:
                described.add(value.tag)  # the caller gave it its metadata
                continue
            metadata = self._tag_metadata.get(value.tag)
            if metadata is None:
                continue
            if copy is None:
                copy = event_pb2.Event()
                copy.CopyFrom(event)
            copy.summary.value[i].metadata.CopyFrom(metadata)
            described.add(value.tag)
        return event if copy is None else copy

    def write(self, event):
        """Queues one Event. Never blocks on I/O, never raises for I/O."""
        if self._closed:
            raise RuntimeError("EventWriter.write() called after close()")
        with self._lock:
            self._pending.append(event)
            while len(self._pending) > self.max_pending:
                self._pending.popleft()
                self._head += 1
                self._dropped += 1

    def flush(self):
        """Has everything queued now written; waits at most `flush_timeout` seconds.

        For a URL logdir whose last upload failed, a retry is started and
        False is returned at once: the caller (the end of a `fit`) does not
        wait on a bucket that is known to be down. A local directory is
        always tried again before returning.

        Returns:
            True when everything queued at the call was written, False when
            the destination failed or the wait timed out (the events stay
            queued and are retried).
        """
        if not self._thread.is_alive():
            return self._write_pending()
        with self._cond:
            self._requested += 1
            target = self._requested
        self._wake.set()
        if self._failing and self._remote:
            return False
        deadline = time.monotonic() + self.flush_timeout
        with self._cond:
            while self._completed < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return self._last_ok

    def close(self):
        """Writes what is queued and stops the thread. Safe to call twice.

        Retries a failing destination for at most `close_timeout` seconds,
        then warns how many events could not be written.
        """
        if self._closed:
            return
        self._close_deadline = time.monotonic() + self.close_timeout
        self._closed = True
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=self.close_timeout + self.flush_timeout + 5)
        _LIVE_WRITERS.discard(self)
        left = self.pending
        if left:
            message = (
                "training_health: %d events could not be written to %s before close (%s)"
                % (left, self.logdir, self.last_error)
            )
            log.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    def _run(self):
        while True:
            closing = self._closed
            if not closing:
                self._wake.wait(self.flush_secs)
                self._wake.clear()
                closing = self._closed
            with self._cond:
                generation = self._requested
            ok = self._write_pending()
            with self._cond:
                self._completed = max(self._completed, generation)
                self._last_ok = ok
                self._cond.notify_all()
            if closing:
                remaining = self._close_deadline - time.monotonic()
                if ok or remaining <= 0:
                    return
                time.sleep(min(1.0, remaining))

    def _write_pending(self):
        with self._io_lock:
            try:
                return self._write_pending_locked()
            except Exception as e:  # a bug, not I/O: log it with its traceback, keep the data
                self.errors += 1
                self.last_error = e
                log.error("training_health: unexpected error while writing to %s", self.logdir, exc_info=True)
                return False

    def _roll_due(self):
        if self._sink is None:
            return False
        if getattr(self._sink, "lost", False):
            self._report_lost()
            return True
        if not self._sink_clean:
            # Never roll after a failed append: the failed upload may have
            # landed, and the retry must go to the same file (no duplicates).
            return False
        if getattr(self._sink, "full", False):
            return True
        return self.roll_secs is not None and time.monotonic() - self._sink_started >= self.roll_secs

    def _new_filename(self):
        timestamp = max(int(time.time()), self._last_timestamp)
        self._last_timestamp = timestamp
        return _event_filename(timestamp)

    def _write_pending_locked(self, retried=False):
        with self._lock:
            events = list(self._pending)
            first = self._head
        self._report_drops()
        if not events:
            return True
        if self._roll_due():
            self._sink = None
        records = []
        try:
            if self._sink is None:
                filename = self._new_filename()
                self._sink = self._sink_factory(self.logdir, filename)
                self._sink_started = time.monotonic()
                self._header_written = False
                self._described = set()
                self.files.append(filename)
            if not self._header_written:
                header = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
                records.append(record(header.SerializeToString()))
            described = set(self._described)
            records.extend(record(self._with_metadata(event, described).SerializeToString())
                           for event in events)
            self._sink.append(b"".join(records))
        except OSError as e:  # remote sinks raise OSError subclasses too
            self._sink_clean = False
            if getattr(self._sink, "lost", False) and not retried:
                # Removed or replaced since `_roll_due` looked: say so and go
                # on in a new file now, as `_roll_due` would have.
                return self._write_pending_locked(retried=True)
            self._report(e)
            return False
        self._sink_clean = True
        self._header_written = True
        self._described = described
        with self._lock:
            # Events dropped by write() while this batch was being written
            # have moved the head already: remove only what is left of it.
            done = max(0, first + len(events) - self._head)
            for _ in range(min(done, len(self._pending))):
                self._pending.popleft()
            self._head += done
        if self._failing:
            self._failing = False
            log.info("training_health: writing to %s works again", self.logdir)
        return True

    def _report_drops(self):
        if self._dropped and not self._warned_drop:
            self._warned_drop = True
            why = ("last error: %s" % self.last_error if self.last_error is not None
                   else "writing is slower than logging")
            message = (
                "training_health: more than %d events waited for %s (%s); the oldest are "
                "being dropped" % (self.max_pending, self.logdir, why)
            )
            log.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    def _report_lost(self):
        message = (
            "training_health: the event file %s no longer holds what was written to it "
            "(%d bytes: removed, cut or replaced); those events are lost unless a copy "
            "exists, and writing goes on in a new event file"
            % (getattr(self._sink, "path", self.files[-1]), getattr(self._sink, "size", 0))
        )
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)

    def _report(self, error):
        self.errors += 1
        self._failing = True
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
