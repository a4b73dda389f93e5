"""Training health for a custom `tf.GradientTape` loop: one call per step.

    monitor = training_health.tf.HealthMonitor("runs/my_run", model, optimizer)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        monitor.record(x, loss, grads)  # the one call
        return loss

    for x, y in dataset:
        train_step(x, y)
    monitor.close()

Statistics are computed inside the step (also under XLA) into a device-side
buffer; a background thread reads it every `flush_secs` seconds and writes
the event files, so the loop itself never waits for the host.
"""

try:
    import tensorflow as tf
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "training_health.tf needs TensorFlow. Install it with "
        "`pip install training-health[tf]` (or `pip install tensorflow`). (%s)" % e
    ) from e

import logging
import threading
import weakref

from training_health import _capture
from training_health._layers import select_layers
from training_health.keras import check_logdir, check_options, default_detectors, _check_int
from training_health.run_writer import RunWriter

log = logging.getLogger("training_health")

__all__ = ["HealthMonitor"]

_EAGER = object()


class HealthMonitor:
    """Per-step training health for a custom training loop.

    Call `record(inputs, loss, grads)` once per step, after
    `optimizer.apply_gradients`, inside or outside `tf.function`. Layer
    outputs are taken from the forward pass the step already did (the
    model's layers are wrapped until `close()`); the update-to-weight ratio
    compares the weights with those at the previous `record()`.

    Args:
        logdir: directory (or bucket URL) of this run's event files.
        model: the built Keras model being trained.
        optimizer: the optimizer (for the learning rate), or None.
        every_n_batches, histogram_every, layers, dead_window,
        activation_examples, detectors, stop_on, on_alert: as in
            `training_health.keras.HealthCallback` (same defaults).
        flush_secs: how often a background thread reads the device buffer
            and writes what it holds. Defaults to 2.
        buffer_rows: steps the device buffer holds between reads; steps
            beyond it before a read are lost (and reported). Defaults to 1024.
    """

    def __init__(self, logdir, model, optimizer=None, every_n_batches=1, histogram_every=100,
                 layers=None, dead_window=50, activation_examples=8, detectors="default",
                 stop_on=(), on_alert=None, flush_secs=2.0, buffer_rows=1024):
        check_options(every_n_batches, histogram_every, dead_window, 1, layers, stop_on,
                      activation_examples, on_alert)
        _check_int("buffer_rows", buffer_rows, 2)
        check_logdir(logdir)
        if not (isinstance(flush_secs, (int, float)) and flush_secs > 0):
            raise ValueError("`flush_secs` must be a number > 0; received %r" % (flush_secs,))
        if not getattr(model, "built", False) or not model.trainable_weights:
            raise ValueError(
                "HealthMonitor needs a built model with trainable weights; received %r. "
                "Call the model on one batch (or model.build(input_shape)) first." % (model,))
        self.logdir = str(logdir)
        self.model = model
        self.optimizer = optimizer
        self.stop_on = tuple(stop_on)
        self.on_alert = on_alert
        self.alerts = []
        self.stop_requested = False  # set when an alert of a `stop_on` kind is raised
        self.detectors = default_detectors() if detectors == "default" else detectors
        start = int(optimizer.iterations.numpy()) if optimizer is not None else 0
        self._program = _capture.DeviceProgram(
            select_layers(model, None if layers is None else list(layers)), None,
            every_n_batches, histogram_every, dead_window, buffer_rows, start,
            activation_examples=activation_examples, output_model=model,
        )
        self._variables = self._program.monitored_variables()
        # What the weight statistics need of the weights at the previous
        # record(): each variable's sample (see `training_health.stats.sample`),
        # not a full copy.
        self._snapshot = []
        for i, (part, scale) in enumerate(self._program.weights_before()):
            self._snapshot.append((_capture._variable(part.numpy(), tf.float32, "th_snapshot_%d" % i),
                                   scale))
        self._pending = weakref.WeakKeyDictionary()
        self._pending_eager = None
        self._patches = _capture.Patches()
        self._patches.wrap_layer_calls(self._program.layers, fallback=self._ambient_recording)
        self._writer = None
        self._flusher = _capture.HostFlusher(self._program, self._make_writer, self.detectors,
                                             self._handle_alerts)
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(float(flush_secs),),
                                        name="training-health-monitor", daemon=True)
        self._thread.start()
        _capture.close_at_exit(self)

    # -- device side ---------------------------------------------------------
    def _ambient_recording(self):
        if tf.executing_eagerly():
            if self._pending_eager is None:
                self._pending_eager = _capture.Recording()
            return self._pending_eager
        graph = tf.compat.v1.get_default_graph()
        rec = self._pending.get(graph)
        if rec is None:
            rec = self._pending[graph] = _capture.Recording()
        return rec

    @tf.autograph.experimental.do_not_convert  # called from the user's tf.function; plain TF ops
    def record(self, inputs, loss, grads, variables=None):
        """Records one training step. Call it once per step, after the update.

        Args:
            inputs: the step's input batch (a tensor or a nest of tensors).
            loss: the step's loss (scalar tensor).
            grads: the gradients, aligned with `variables`.
            variables: the variables `grads` belong to. Defaults to
                `model.trainable_variables`.

        Returns:
            The op that writes the statistics (already run when eager).
        """
        if self._closed:
            raise RuntimeError("HealthMonitor.record() called after close()")
        if variables is None:
            variables = self.model.trainable_variables
        grads = list(grads)
        if len(grads) != len(variables):
            raise ValueError(
                "record() got %d gradients for %d variables; pass `variables=` matching `grads`"
                % (len(grads), len(variables)))
        rec = self._ambient_recording()
        if tf.executing_eagerly():
            self._pending_eager = None
        else:
            self._pending.pop(tf.compat.v1.get_default_graph(), None)
        rec.grads_and_vars = (grads, list(variables))
        rec.loss = loss
        flat_inputs = [t for t in tf.nest.flatten(inputs) if t is not None]
        before = [(part.read_value(), scale) for part, scale in self._snapshot]
        done = self._program.record(rec, flat_inputs, before, self.optimizer)
        with tf.control_dependencies([done]):
            now = self._program.weights_before()
            updates = []
            for (part, _), (new_part, _) in zip(self._snapshot, now):
                updates.append(part.assign(new_part))
        return tf.group(*updates) if updates else done

    # -- host side -----------------------------------------------------------
    def _make_writer(self, layer_infos, metric_names):
        if self._writer is None:
            self._writer = RunWriter(self.logdir, layer_infos, metric_names)
        return self._writer

    def _poll(self, interval):
        while not self._stop.wait(interval):
            self._flusher.flush(blocking=False)

    def flush(self):
        """Reads the device buffer and writes everything recorded so far."""
        self._flusher.flush(blocking=True)
        if self._writer is not None:
            self._writer.flush()

    def close(self):
        """Flushes, stops the reader thread and unwraps the model's layers."""
        if self._closed:
            return
        self._stop.set()
        self._thread.join(timeout=30)
        self.flush()
        self._closed = True
        self._patches.restore()
        if self._writer is not None:
            self._writer.close()

    def _handle_alerts(self, alerts):
        _capture.dispatch_alerts(alerts, self.alerts, self.on_alert, self.stop_on, self._stop)

    def _stop(self):
        self.stop_requested = True
