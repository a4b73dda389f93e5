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
buffer; a background thread reads it every `collect_secs` seconds and writes
the event files, so the loop itself never waits for the host.
"""

try:
    import tensorflow as tf
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "training_health.tf needs TensorFlow. Install it with "
        "`pip install training-health[tf]` (or `pip install tensorflow`). (%s)" % e
    ) from e

import weakref

from training_health.capture import host
from training_health.capture import tf_program
from training_health.capture import tf_recording
from training_health.capture.keras_layers import frozen_unmonitored, select_layers

__all__ = ["HealthMonitor"]


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
        collect_secs: how often a background thread reads the device
            buffer and passes what it holds to the detectors and the event
            files. Defaults to 2.
        buffer_rows: steps the device buffer holds between reads; steps
            beyond it before a read are lost (and reported). Defaults to 1024.
        storage_options: options for the fsspec filesystem of a bucket
            logdir (credentials, endpoint), as in `HealthCallback`.
            Defaults to None.
        history_after, history_block: how a long run's layer statistics
            are downsampled on disk, as in `HealthCallback`. Default to
            10000 and 100.

    Under `tf.distribute.MultiWorkerMirroredStrategy` every worker creates
    the monitor and calls `record()` in its replica function; the
    statistics are those of the whole global step, and only the chief
    writes and raises alerts (as with `HealthCallback`).
    """

    def __init__(self, logdir, model, optimizer=None, every_n_batches=1, histogram_every=100,
                 layers=None, dead_window=50, activation_examples=8, detectors="default",
                 stop_on=(), on_alert=None, collect_secs=2.0, buffer_rows=1024, storage_options=None,
                 history_after=host.HISTORY_AFTER, history_block=host.HISTORY_BLOCK):
        host.check_options(every_n_batches, histogram_every, dead_window, 1, layers, stop_on,
                           activation_examples, on_alert)
        host.check_int("buffer_rows", buffer_rows, 2)
        host.check_history(history_after, history_block)
        host.check_logdir(logdir, storage_options)
        if isinstance(collect_secs, bool) or not (isinstance(collect_secs, (int, float))
                                                  and collect_secs > 0):
            raise ValueError("`collect_secs` must be a number > 0; received %r" % (collect_secs,))
        if not getattr(model, "built", False) or not model.trainable_weights:
            raise ValueError(
                "HealthMonitor needs a built model with trainable weights; received %r. "
                "Call the model on one batch (or model.build(input_shape)) first." % (model,))
        self.logdir = str(logdir)
        self.model = model
        self.optimizer = optimizer
        self.stop_requested = False  # set when an alert of a `stop_on` kind is raised
        self.detectors = host.default_detectors() if detectors == "default" else detectors
        start = int(optimizer.iterations.numpy()) if optimizer is not None else 0
        chosen = select_layers(model, None if layers is None else list(layers))
        self._program = tf_program.DeviceProgram(
            chosen, None, every_n_batches, histogram_every, dead_window, buffer_rows, start,
            activation_examples=activation_examples, output_model=model,
        )
        self._program.frozen_unmonitored = frozen_unmonitored(model, chosen)
        self._variables = self._program.monitored_variables()
        # What the weight statistics need of the weights at the previous
        # record(): each variable's sample (see `training_health.statistics.sample`),
        # not a full copy.
        self._snapshot = []
        for i, (part, scale) in enumerate(self._program.weights_before()):
            self._snapshot.append((tf_recording.variable(part.numpy(), tf.float32, "th_snapshot_%d" % i),
                                   scale))
        self._pending = weakref.WeakKeyDictionary()
        self._pending_eager = None
        self._patches = tf_recording.Patches()
        self._patches.wrap_layer_calls(self._program.layers, fallback=self._ambient_recording)
        self._host = None  # a non-chief worker of a multi-worker strategy writes nothing
        if tf_program.writes(model):
            self._host = host.Host(self.logdir, self._program, self.detectors, stop_on, on_alert,
                                   self._request_stop, storage_options=storage_options,
                                   queue_alerts=False, history_after=history_after,
                                   history_block=history_block)
            self._host.collect_in_background(float(collect_secs))
        self._epochs = 0
        self._closed = False
        host.close_at_exit(self)

    @property
    def alerts(self):
        """Every alert raised so far (`Alert` records), oldest first (the
        chief's; none on the other workers of a multi-worker strategy)."""
        return self._host.alerts if self._host is not None else []

    # -- device side ---------------------------------------------------------
    def _ambient_recording(self):
        if tf.executing_eagerly():
            if self._pending_eager is None:
                self._pending_eager = tf_recording.Recording()
            return self._pending_eager
        graph = tf.compat.v1.get_default_graph()
        rec = self._pending.get(graph)
        if rec is None:
            rec = self._pending[graph] = tf_recording.Recording()
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
        flat_inputs = [tf.convert_to_tensor(t) for t in tf.nest.flatten(inputs) if t is not None]
        before = [(part.read_value(), scale) for part, scale in self._snapshot]
        done = self._program.record(rec, flat_inputs, before, self.optimizer)
        with tf.control_dependencies([done]):
            now = self._program.weights_before()
            updates = []
            for (part, _), (new_part, _) in zip(self._snapshot, now):
                updates.append(part.assign(new_part))
        return tf.group(*updates) if updates else done

    # -- host side -----------------------------------------------------------
    def end_epoch(self, val_loss=None, loss=None, **metrics):
        """Records the end of an epoch: its validation loss and metrics, for
        the `overfitting` alert and the tab. Call it once per epoch, outside
        `tf.function`, after the epoch's last step and its validation pass.

        Args:
            val_loss: the epoch's validation loss (a number or a scalar
                tensor), or None when the epoch was not validated.
            loss: the epoch's training loss. Defaults to the mean of the
                losses recorded at the logged steps of the epoch.
            **metrics: any other metrics of the epoch, e.g.
                `val_accuracy=0.91, accuracy=0.95` (`val_` for validation).

        Raises:
            ValueError: a value is not one number, or no step recorded since
                the previous `end_epoch()`.
        """
        if self._closed:
            raise RuntimeError("HealthMonitor.end_epoch() called after close()")
        host.end_epoch(self._host, self._epochs + 1, loss, val_loss, metrics)
        self._epochs += 1

    def flush(self):
        """Reads the device buffer and writes everything recorded so far
        (also reacts to the alerts found so far: `on_alert`, `stop_on`).

        Returns:
            True when every step recorded so far is in the event files (or
            this process does not write), False when writing failed or timed
            out (as `training_health.torch.HealthMonitor.flush`).
        """
        return True if self._host is None else self._host.flush()

    def close(self):
        """Writes what the device still holds, closes the files and unwraps
        the model's layers (also when writing fails)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._host is not None:
                self._host.close()
        finally:
            self._patches.restore()

    def _request_stop(self):
        self.stop_requested = True
