"""The host side of every capture, whichever framework computed the rows.

A framework's device program keeps one row per logged step (the global
vector, then every layer's columns, as `format` lays them out) in a ring
buffer on the device, and offers it to the host as a `RowSource`. This
module does the rest, the same way for Keras, a GradientTape loop and
PyTorch:

* `RowCollector` reads the new rows (a few times a minute), turns them into
  steps for the `RunWriter` (whose thread writes the files) and for the
  detectors;
* `Host` owns the collector, the run's writer, the alerts raised so far and
  what happens to them (`dispatch_alerts`: a log line, `on_alert`,
  `stop_on`), a background thread that collects off the training thread,
  and the interpreter-exit hook that saves what the device still holds;
* `check_options` validates the knobs that every capture shares.

Nothing here imports a framework.
"""

import atexit
import collections
import logging
import re
import threading
import weakref

import numpy as np

from training_health import format as fmt
from training_health.records import KINDS, EpochStats, StepStats
from training_health.io import event_writer as _event_writer  # noqa: F401  (registers its exit hook first)
from training_health.io.history import HISTORY_AFTER, HISTORY_BLOCK, check_history
from training_health.io.run_writer import RunWriter

log = logging.getLogger("training_health")

_TO_CLOSE = weakref.WeakSet()


def close_at_exit(obj):
    """Calls `obj.close()` at interpreter exit (reads what the device still holds)."""
    _TO_CLOSE.add(obj)


def _close_all_at_exit():
    for obj in list(_TO_CLOSE):
        obj.close()


# The event writers close from threading's exit hook (see io/event_writer.py);
# hooks run in reverse order of registration and this module registers after
# the writer module, so device buffers are read before the writers close.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_close_all_at_exit)
atexit.register(_close_all_at_exit)


# -- options shared by every capture ---------------------------------------------
def check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError("`%s` must be an integer >= %d; received %r" % (name, minimum, value))


def check_logdir(logdir, storage_options=None):
    """Fails now (not at the first write) for a logdir that is not a path or
    URL string, storage options that are not a dict, or a bucket URL whose
    client library is missing (the error names the extra to install)."""
    if not isinstance(logdir, str) and not hasattr(logdir, "__fspath__"):
        raise ValueError("`logdir` must be a path or URL string; received %r" % (logdir,))
    if storage_options is not None and not isinstance(storage_options, dict):
        raise ValueError(
            "`storage_options` must be a dict of fsspec options (e.g. {'client_kwargs': "
            "{'endpoint_url': 'http://127.0.0.1:9000'}}) or None; received %r" % (storage_options,))
    from training_health.io import remote

    if remote.is_url(str(logdir)):
        remote.check_available(str(logdir))


def check_options(every_n_batches, histogram_every, dead_window, flush_every, layers, stop_on,
                  activation_examples, on_alert):
    """Validates the knobs shared by every capture (see `HealthCallback`)."""
    check_int("every_n_batches", every_n_batches, 1)
    if activation_examples is not None:
        check_int("activation_examples", activation_examples, 1)
    if on_alert is not None and not callable(on_alert):
        raise ValueError("`on_alert` must be callable or None; received %r" % (on_alert,))
    check_int("histogram_every", histogram_every, 0)
    check_int("dead_window", dead_window, 1)
    check_int("flush_every", flush_every, 1)
    if layers is not None:
        if isinstance(layers, str) or not all(isinstance(p, str) for p in layers):
            raise ValueError(
                "`layers` must be a list of layer names or regular expressions, e.g. "
                "layers=['conv2d', 'dense.*']; received %r" % (layers,)
            )
        for p in layers:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError("`layers` entry %r is not a valid regular expression: %s" % (p, e)) from e
    unknown = [k for k in stop_on if k not in KINDS]
    if isinstance(stop_on, str) or unknown:
        raise ValueError(
            "`stop_on` must be a list of alert kinds from %s; received %r" % (KINDS, stop_on)
        )


def epoch_metrics(metrics, skip_others=False):
    """{name: float} of an epoch's metrics: numbers, numpy or framework
    scalars (a scalar tensor), NaN and Inf kept.

    Args:
        metrics: a dict name -> value.
        skip_others: leave out values that are not one number (Keras's
            `logs` may hold other things) instead of raising. Defaults to
            False.

    Raises:
        ValueError: a value is not one number (unless `skip_others`).
    """
    out = {}
    for name, value in metrics.items():
        try:
            if isinstance(value, (str, bytes, bool)):
                raise TypeError(type(value).__name__)
            out[str(name)] = float(value)
        except (TypeError, ValueError, RuntimeError) as e:
            if skip_others:
                continue
            raise ValueError("epoch metric %r must be one number (a float or a scalar tensor); "
                             "received %r (%s)" % (name, value, e)) from None
    return out


def end_epoch(host, epoch, loss, val_loss, metrics):
    """What `end_epoch()` of the PyTorch and GradientTape monitors does:
    checks the values and writes the epoch through `host` (None: a process
    that does not write, e.g. DDP rank > 0).

    Raises:
        ValueError: a value is not one number, or no step was recorded since
            the previous epoch's end.
    """
    values = dict(metrics)
    for name, value in (("loss", loss), ("val_loss", val_loss)):
        if value is not None:
            values[name] = value
    values = epoch_metrics(values)
    if host is not None and not host.end_epoch(epoch, values):
        raise ValueError(
            "end_epoch() was called without a training step since the previous end_epoch() "
            "(epoch %d); call it once per epoch, after the epoch's last step" % epoch)


def default_detectors():
    """A new DetectorSuite with every detector at its defaults."""
    from training_health.detectors import DetectorSuite

    return DetectorSuite()


# -- alerts ----------------------------------------------------------------------
def dispatch_alerts(alerts, raised, on_alert, stop_on, stop):
    """What the logger does with the detectors' findings, online.

    Each raised alert is appended to `raised`, logged once as a warning (an
    alert that follows from an earlier one, `caused_by`, as one short line
    without its hint) and handed to `on_alert` (whose exceptions are logged,
    never propagated); an alert of a `stop_on` kind calls `stop()`. Cleared
    records are logged at INFO level.
    """
    from training_health.detectors import incidents

    for alert in alerts:
        where = " in %s" % alert.layer if alert.layer else ""
        if alert.cleared:
            log.info("training_health: %s%s cleared at step %d", alert.kind, where, alert.step)
            continue
        raised.append(alert)
        if alert.caused_by:
            log.warning("training_health:   then %s (follows from %s)",
                        incidents.short_line(alert), alert.caused_by)
        else:
            log.warning("training_health: [%s] %s at step %d%s: %s Hint: %s", alert.severity,
                        alert.kind, alert.step, where, alert.message, alert.hint)
        if on_alert is not None:
            try:
                on_alert(alert)
            except Exception:  # the user's hook must not end training; the traceback is logged
                log.exception("training_health: on_alert raised")
        if alert.kind in stop_on:
            log.warning("training_health: stopping training on %s (stop_on=%r)", alert.kind, list(stop_on))
            stop()


# -- rows from the device ----------------------------------------------------------
class RowSource:
    """What a framework's device program offers the host (the interface).

    Attributes:
        rows: capacity of the row ring buffer (steps).
        hist_slots: capacity of the histogram ring buffer (0: no histograms).
        global_names: GLOBAL_STATS plus metric names, or None until the
            program knows its row layout (before the first step).
        frozen_unmonitored: names of the model's frozen layers that are not
            monitored (listed in the layer metadata, so the tab can say so).
    """

    rows = 0
    hist_slots = 0
    global_names = None
    frozen_unmonitored = ()

    def read_rows(self):
        """(count_before, buffer, steps, count_after), numpy, or None before
        any row was written: `count_*` rows were written in all when the read
        began / ended; `buffer[r % rows]` holds row r, `steps[r % rows]` its
        step. Rows written while the read ran may be torn, and
        `RowCollector` skips them."""
        raise NotImplementedError

    def read_histograms(self):
        """(count, hist [slots, L, 2, HIST_ROW], steps [slots]) or None."""
        return None

    def last_step(self):
        """The step of the newest training step (logged or not), or None
        before the first."""
        raise NotImplementedError

    def layer_infos(self):
        """The LayerInfo of every monitored layer (known once rows exist)."""
        raise NotImplementedError


def valid_rows(read, count_before, count_after, capacity):
    """The rows [first, end) of a ring buffer read that are whole and new.

    Row r sits in slot r % capacity until row r + capacity is written. A
    read that began after `count_before` rows and ended after `count_after`
    rows holds the rows < count_before (those were complete) whose slot was
    not reused before the read ended: the writer of row count_after may
    already be overwriting the slot of row count_after - capacity, so only
    rows > count_after - capacity are whole.
    """
    first = max(read, count_after - capacity + 1, 0)
    return first, max(first, count_before)


class RowCollector:
    """Moves new rows from a `RowSource` to the writer and the detectors.

    Args:
        source: the RowSource.
        writer_factory: callable(layer_infos, metric_names) -> RunWriter.
        detectors: a DetectorSuite or None.
        on_alerts: callable(list of Alert) for the caller's reactions.
    """

    def __init__(self, source, writer_factory, detectors, on_alerts):
        self.source = source
        self._factory = writer_factory
        self.writer = None
        self.detectors = detectors
        self.on_alerts = on_alerts
        self._lock = threading.Lock()
        self._read = 0  # rows consumed
        self._hist_read = 0
        self.lost_rows = 0
        self.last_step = None
        self.layer_infos = None
        self._pending_epochs = []  # EpochStats waiting for the writer (no row read yet)
        self._epoch_loss = [0.0, 0]  # sum and count of the finite losses logged this epoch

    def collect(self, blocking=True):
        """Reads and passes on new rows. With blocking=False, skips if a
        collection is running in another thread."""
        if not self._lock.acquire(blocking=blocking):
            return
        try:
            self._collect_locked()
        finally:
            self._lock.release()

    def _collect_locked(self):
        s = self.source
        read = s.read_rows()
        if read is None:
            return  # nothing recorded yet
        count_before, buffer, steps, count_after = read
        if self.writer is None:
            self.layer_infos = tuple(s.layer_infos())
            self.writer = self._factory(self.layer_infos, s.global_names[len(fmt.GLOBAL_STATS):])
        first, end = valid_rows(self._read, count_before, count_after, s.rows)
        if first > self._read:
            self.lost_rows += first - self._read
            log.warning("training_health: %d logged steps were overwritten before they were read; "
                        "lower flush_every", first - self._read)
        n_global = len(s.global_names)
        shape = (len(self.layer_infos), len(fmt.LAYER_STATS))
        for r in range(first, end):
            slot = r % s.rows
            step = int(steps[slot])
            row = np.asarray(buffer[slot])
            if self.last_step is not None and step <= self.last_step:
                continue
            self.last_step = step
            layer_values = row[n_global:].reshape(shape)
            global_values = row[:n_global]
            self.writer.write_step(step, layer_values, global_values)
            loss = float(global_values[0])  # GLOBAL_STATS[0] is the loss
            if np.isfinite(loss):
                self._epoch_loss[0] += loss
                self._epoch_loss[1] += 1
            if self.detectors is not None:
                stats = StepStats(step, self.layer_infos, fmt.LAYER_STATS, layer_values,
                                  dict(zip(s.global_names, (float(x) for x in global_values))))
                alerts = self.detectors.update(step, stats)
                if alerts:
                    self.writer.write_alerts(step, alerts)
                    self.on_alerts(alerts)
        self._read = max(self._read, end)
        hist = s.read_histograms()
        if hist is not None:
            hcount, values, hsteps = hist
            for r in range(max(self._hist_read, hcount - s.hist_slots), hcount):
                slot = r % s.hist_slots
                self.writer.write_histograms(int(hsteps[slot]), values[slot])
            self._hist_read = max(self._hist_read, hcount)
        self._write_epochs()

    def end_epoch(self, step, epoch, metrics):
        """One finished epoch: reads every row up to it first, then writes it
        and feeds it to the detectors.

        Args:
            step: the global step of the epoch's last training step.
            epoch: the epoch's number (from 1).
            metrics: {name: float}; without `loss`, the epoch's training loss
                is the mean of the finite losses of the steps logged since
                the previous epoch's end.
        """
        with self._lock:
            self._collect_locked()
            metrics = dict(metrics)
            total, count = self._epoch_loss
            if "loss" not in metrics and count:
                metrics["loss"] = total / count
            self._epoch_loss = [0.0, 0]
            self._pending_epochs.append(EpochStats(int(step), int(epoch), metrics))
            self._write_epochs()

    def _write_epochs(self):
        """Writes the waiting epochs once the writer exists (after the first row)."""
        if self.writer is None:
            return
        while self._pending_epochs:
            stats = self._pending_epochs.pop(0)
            self.writer.write_epoch(stats.step, stats.epoch, stats.metrics)
            if self.detectors is not None:
                alerts = self.detectors.update_epoch(stats.step, stats)
                if alerts:
                    self.writer.write_alerts(stats.step, alerts)
                    self.on_alerts(alerts)


class BackgroundThread:
    """A daemon thread that calls `work()` each time it is woken, and also
    every `interval` seconds when one is given. An exception in `work` is
    logged (with its traceback, once) and the thread goes on."""

    def __init__(self, work, interval=None, name="training-health-reader"):
        self._work = work
        self._interval = interval
        self._wake = threading.Event()
        self._stopping = False
        self._warned = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def wake(self):
        self._wake.set()

    def stop(self, timeout=30.0):
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    def _run(self):
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self._work()
            except Exception:  # a background failure must not end the thread or training
                if not self._warned:
                    self._warned = True
                    log.exception("training_health: could not process the logged statistics; "
                                  "training continues")


class Host:
    """The host side of one monitored run: collector, writer, alerts.

    Args:
        logdir: the run's directory or URL.
        source: the framework's `RowSource`.
        detectors: a DetectorSuite or None.
        stop_on, on_alert: as in `HealthCallback`.
        stop: callable that asks the training loop to stop.
        storage_options: fsspec options for a URL logdir, or None.
        queue_alerts: True: alerts found off the training thread wait for
            `dispatch()` (which the training loop calls); False: they are
            dispatched where they are found (a loop with no hook to call
            `dispatch()` from, such as a compiled step).
        history_after, history_block: as in `HealthCallback`.
    """

    def __init__(self, logdir, source, detectors, stop_on, on_alert, stop, storage_options=None,
                 queue_alerts=True, history_after=HISTORY_AFTER, history_block=HISTORY_BLOCK):
        check_history(history_after, history_block)
        self.history = (history_after, history_block)
        self.logdir = str(logdir)
        self.source = source
        self.detectors = detectors
        self.stop_on = tuple(stop_on)
        self.on_alert = on_alert
        self._stop = stop
        self.storage_options = storage_options
        self.alerts = []  # every alert raised so far
        self.writer = None
        self._queued = collections.deque()  # alerts found off the training thread
        self._warned_internal = False
        self._thread = None
        self._epoch_step = None  # step of the last epoch written
        found = self._queued.append if queue_alerts else self._dispatch_now
        self.collector = RowCollector(source, self._make_writer, detectors, found)

    def _make_writer(self, layer_infos, metric_names):
        if self.writer is None:
            from training_health.io.event_writer import EventWriter

            events = EventWriter(self.logdir, storage_options=self.storage_options)
            self.writer = RunWriter(
                self.logdir, layer_infos, metric_names, writer=events,
                history_after=self.history[0], history_block=self.history[1],
                frozen_unmonitored=tuple(self.source.frozen_unmonitored))
        return self.writer

    def _guarded(self, work, *args):
        """Runs `work(*args)`; a failure is logged once, never raised."""
        try:
            work(*args)
        except Exception:  # logging must never end training: report with the traceback
            if not self._warned_internal:
                self._warned_internal = True
                log.exception("training_health: could not process the logged statistics; "
                              "training continues")

    def collect(self, blocking=True):
        """Reads the device's new rows; never raises (a failure is logged once)."""
        self._guarded(self.collector.collect, blocking)

    def collect_in_background(self, interval=None):
        """Wakes (or starts) the background thread that collects; with
        `interval`, it also collects every `interval` seconds by itself."""
        if self._thread is None:
            self._thread = BackgroundThread(lambda: self.collector.collect(blocking=False), interval)
        self._thread.wake()

    def _dispatch_now(self, alerts):
        dispatch_alerts(alerts, self.alerts, self.on_alert, self.stop_on, self._stop)

    def dispatch(self):
        """Reacts to the alerts found so far (call it on the training thread)."""
        while self._queued:
            dispatch_alerts(self._queued.popleft(), self.alerts, self.on_alert, self.stop_on,
                            self._stop)

    def end_epoch(self, epoch, metrics):
        """Writes one finished epoch (after every row up to it) at the newest
        training step and reacts to the alerts it raises; never raises (a
        failure is logged once).

        Args:
            epoch: the epoch's number (from 1).
            metrics: {name: float} (see `epoch_metrics`).

        Returns:
            False when no training step ran since the previous epoch's end
            (nothing is written), else True.
        """
        step = self.source.last_step()
        if step is None or (self._epoch_step is not None and step <= self._epoch_step):
            return False
        self._epoch_step = step
        self._guarded(self.collector.end_epoch, step, epoch, metrics)
        self.dispatch()
        return True

    def flush(self):
        """Collects every row and waits until the writer has written it.

        Returns:
            True when every row collected is in the files (handed to the
            operating system), except the layer rows a history block still
            holds; False when writing failed or timed out (the events stay
            queued and are retried).
        """
        self.collect(blocking=True)
        self.dispatch()
        return True if self.writer is None else self.writer.flush()

    def close(self):
        """Stops the background thread, collects every row, closes the files."""
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
        self.collect(blocking=True)
        self.dispatch()
        if self.writer is not None:
            self.writer.close()
