"""Host side of the logger: turns per-step arrays into events of the format."""

import threading
import time

import numpy as np

from training_health import format as fmt
from training_health.io.event_writer import EventWriter
from training_health.io.history import HISTORY_AFTER, HISTORY_BLOCK, LayerHistory


class RunWriter:
    """Writes one run's Training Health data (any thread may call it).

    Args:
        logdir: the run's directory or URL.
        layers: sequence of LayerInfo, the rows of every layer matrix.
        metric_names: names of compiled metrics appended to GLOBAL_STATS.
        writer: an EventWriter to use; by default one is opened on `logdir`.
        history_after: layer rows of steps before this are written at full
            resolution; after it, in blocks of `history_block` steps, each
            block as one min/mean/max summary unless an alert or the run's
            end keeps it whole (`io.history`). None writes every row.
            Defaults to 10000.
        history_block: steps per history block. Defaults to 100.
        frozen_unmonitored: names of the model's frozen layers that are not
            in `layers` (listed in the layer metadata). Defaults to ().

    The global series and the alerts are written at every step; only layer
    rows and histograms are downsampled.
    """

    def __init__(self, logdir, layers, metric_names=(), writer=None, history_after=HISTORY_AFTER,
                 history_block=HISTORY_BLOCK, frozen_unmonitored=()):
        self.history = LayerHistory(history_after, history_block)
        self.layers = tuple(layers)
        self.global_names = tuple(fmt.GLOBAL_STATS) + tuple(metric_names)
        self.writer = writer if writer is not None else EventWriter(logdir)
        # Each tag's metadata goes with its first value in every event file
        # (EventWriter.describe), so no dropped or lost event takes it along.
        self.writer.describe(fmt.TAG_LAYERS, fmt.layers_metadata(self.layers, frozen_unmonitored))
        self.writer.describe(fmt.TAG_GLOBAL, fmt.global_metadata(self.global_names))
        self.writer.describe(fmt.TAG_HISTOGRAMS, fmt.histograms_metadata(self.layers))
        self.writer.describe(fmt.TAG_ALERTS, fmt.alerts_metadata())
        if history_after is not None:
            self.writer.describe(fmt.TAG_LAYER_HISTORY,
                                 fmt.layer_history_metadata(self.layers, history_block))
        self.writer.describe(fmt.TAG_EPOCHS, fmt.epochs_metadata())
        self._last_epoch_step = None
        self._last_step = None
        # One caller at a time: a step's two events stay together and in
        # step order, also when steps and alerts come from several threads.
        self._lock = threading.Lock()

    def _emit(self, tag, step, value, wall_time):
        event = fmt.make_event(tag, step, value,
                               wall_time=time.time() if wall_time is None else wall_time)
        self.writer.write(event)

    _TAGS = {"layers": fmt.TAG_LAYERS, "history": fmt.TAG_LAYER_HISTORY,
             "histograms": fmt.TAG_HISTOGRAMS}

    def _emit_all(self, writes):
        for kind, step, value, wall_time in writes:
            self._emit(self._TAGS[kind], step, value, wall_time)

    def write_step(self, step, layer_values, global_values, wall_time=None):
        """One logged step: layer matrix [L, len(LAYER_STATS)] and global vector."""
        layer_values = np.asarray(layer_values, dtype=np.float32)
        global_values = np.asarray(global_values, dtype=np.float32)
        expected = (len(self.layers), len(fmt.LAYER_STATS))
        if layer_values.shape != expected:
            raise ValueError(
                "layer_values must have shape %s; received %s" % (expected, layer_values.shape)
            )
        if global_values.shape != (len(self.global_names),):
            raise ValueError(
                "global_values must have shape (%d,); received %s"
                % (len(self.global_names), global_values.shape)
            )
        with self._lock:
            if self._last_step is not None and step <= self._last_step:
                raise ValueError(
                    "steps must only increase; received step %d after %d" % (step, self._last_step)
                )
            self._last_step = step
            if wall_time is None:
                wall_time = time.time()
            self._emit_all(self.history.add_step(step, layer_values, wall_time))
            self._emit(fmt.TAG_GLOBAL, step, global_values, wall_time)

    def write_histograms(self, step, histograms, wall_time=None):
        histograms = np.asarray(histograms, dtype=np.float32)
        expected = (len(self.layers), len(fmt.HIST_SERIES), fmt.HIST_ROW)
        if histograms.shape != expected:
            raise ValueError(
                "histograms must have shape %s; received %s" % (expected, histograms.shape)
            )
        with self._lock:
            self._emit_all(self.history.add_histograms(
                step, histograms, time.time() if wall_time is None else wall_time))

    def write_alerts(self, step, alerts, wall_time=None):
        """Alerts (records.Alert) found at `step`; nothing is written for none."""
        if not alerts:
            return
        value = np.array([fmt.encode_alert(a.to_json()) for a in alerts], dtype=object)
        with self._lock:
            self._emit(fmt.TAG_ALERTS, step, value, wall_time)
            self._emit_all(self.history.add_alerts(step))

    def write_epoch(self, step, epoch, metrics, wall_time=None):
        """One finished epoch at `step` (its last training step): its index
        and {name: number} (`loss`, training metrics, `val_*`)."""
        value = np.array([fmt.encode_epoch(epoch, metrics)], dtype=object)
        with self._lock:
            if self._last_epoch_step is not None and step <= self._last_epoch_step:
                raise ValueError("epoch steps must only increase; received step %d after %d"
                                 % (step, self._last_epoch_step))
            self._last_epoch_step = step
            self._emit(fmt.TAG_EPOCHS, step, value, wall_time)

    def flush(self):
        """Waits until what was written is in the files (rows that a history
        block still holds wait for the block's end or `close`)."""
        return self.writer.flush()

    def close(self):
        """Writes the rows history blocks still hold, then closes the files."""
        with self._lock:
            self._emit_all(self.history.close())
        self.writer.close()
