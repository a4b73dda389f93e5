"""`HealthCallback`: per-batch training health for `model.fit`, in one line.

    model.fit(x, y, callbacks=[training_health.keras.HealthCallback("runs/my_run")])
"""

try:
    import keras
    import tensorflow as tf
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "training_health.keras needs TensorFlow (Keras 3). Install it with "
        "`pip install training-health[tf]` (or `pip install tensorflow`). (%s)" % e
    ) from e

import logging

from training_health.capture import host
from training_health.capture import tf_program
from training_health.capture import tf_recording
from training_health.capture.keras_layers import frozen_unmonitored, select_layers

log = logging.getLogger("training_health")

__all__ = ["HealthCallback"]


def _is_built(model):
    return all(layer.built for layer in model._flatten_layers())


class HealthCallback(keras.callbacks.Callback):
    """Logs per-batch, per-layer training health and raises stall alerts.

    Statistics are computed inside the training step (also under XLA), kept
    in a small device-side buffer and read every `flush_every` batches; a
    background thread writes them to TensorBoard event files. At each
    epoch's end the epoch's loss and metrics as `fit` reports them (with
    `val_loss` and the other `val_*` when `fit` got validation data) are
    written too, for the `overfitting` alert and the tab. The model is
    left as it was after training: `predict`, `evaluate` and `save` behave
    the same.

    Args:
        logdir: directory (or bucket URL) of this run's event files.
        every_n_batches: log statistics every this many batches. Defaults to 1.
        histogram_every: log gradient and activation histograms every this
            many batches; 0 turns them off. Defaults to 100.
        layers: list of layer names or regular expressions (full match) to
            monitor, or None for every layer with trainable weights, every
            frozen layer (weights, `trainable=False`, also inside a frozen
            base model: activations and dead units measured, no gradient
            or update statistics) and activation layers. Defaults to None.
        dead_window: number of batches over which a unit must stay at <= 0
            to count as dead in `dead_frac_window`. Defaults to 50.
        flush_every: read the device buffer every this many batches (and at
            each epoch end). Lower means fresher data and alerts; each read is
            one small device-to-host copy. The rows are checked and written
            on a background thread while training goes on. Defaults to 50.
        activation_examples: activation and input statistics (and dead
            units) are computed on the first this many examples of each
            batch (and, of a feature map with more than 16,384 values in
            them, on a fixed set of positions), which keeps their cost to a
            fraction of a step; None uses the whole batch. Gradient and
            weight statistics always cover the whole batch, and so do the
            dead units of most ReLU layers (a unit whose bias got gradient
            fired; see docs/format.md). Defaults to 8.
        detectors: a `training_health.detectors.DetectorSuite`, or None to
            turn online alerts off. Defaults to the default suite.
        stop_on: alert kinds that stop training (like `TerminateOnNaN`),
            e.g. `["nan_inf"]`. Defaults to `()`.
        on_alert: callable taking each raised `Alert` (for a webhook or a
            pager), called on the training thread at the next batch end.
            Exceptions it raises are logged, not propagated. Defaults to None.
        storage_options: options for the fsspec filesystem of a bucket
            logdir (credentials, endpoint: ``{"key": ..., "secret": ...,
            "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}``),
            merged over the client's own configuration and environment
            variables. Defaults to None.
        history_after: layer statistics of the first this many steps are
            written at full resolution; after them, each block of
            `history_block` steps is written as one min/mean/max summary,
            except the blocks around an alert and the run's last two blocks,
            which stay whole (the detectors still see every step, and the
            loss and global statistics are always written every step). This
            keeps a million-step run of a deep model under about 1 GB (see
            docs/format.md). None writes every step in full. Defaults to 10000.
        history_block: steps per history block. Defaults to 100.

    Under `tf.distribute.MultiWorkerMirroredStrategy` every worker passes
    the callback (with the same logdir); the statistics are those of the
    whole global step (every worker's examples), and only the chief (task
    "chief", or worker 0 when there is none) writes and raises alerts.
    """

    # Batch hooks only count batches and occasionally read a small buffer:
    # safe to dispatch asynchronously, which keeps Keras's fast path.
    async_safe = True

    def __init__(self, logdir, every_n_batches=1, histogram_every=100, layers=None,
                 dead_window=50, flush_every=50, activation_examples=8, detectors="default",
                 stop_on=(), on_alert=None, storage_options=None,
                 history_after=host.HISTORY_AFTER, history_block=host.HISTORY_BLOCK):
        super().__init__()
        host.check_logdir(logdir, storage_options)
        host.check_history(history_after, history_block)
        self.history_after = history_after
        self.history_block = history_block
        host.check_options(every_n_batches, histogram_every, dead_window, flush_every, layers,
                           stop_on, activation_examples, on_alert)
        self.logdir = str(logdir)
        self.every_n_batches = every_n_batches
        self.histogram_every = histogram_every
        self.layer_patterns = None if layers is None else list(layers)
        self.dead_window = dead_window
        self.flush_every = flush_every
        self.activation_examples = activation_examples
        self.detectors = host.default_detectors() if detectors == "default" else detectors
        self.stop_on = tuple(stop_on)
        self.on_alert = on_alert
        self.storage_options = storage_options
        self.alerts = []  # every alert raised so far, for the caller
        self._program = None
        self._program_model = None
        self._host = None
        self._patches = None
        self._batches = 0
        self._warned_skipped = False
        self._train_function = None
        self._keras_train_function = None
        host.close_at_exit(self)

    # -- lifecycle -----------------------------------------------------------
    def on_train_begin(self, logs=None):
        model = self.model
        if self._program_model is not None and self._program_model is not model:
            raise ValueError(
                "this HealthCallback already logs model %r to %s; received another model %r. "
                "Create one HealthCallback (and one logdir) per model."
                % (self._program_model.name, self.logdir, model.name))
        if self._program_model is not model:
            self._program = None  # a new model: new device state, new trace
            self._program_model = model
            self._train_function = None
        if self._program is None and _is_built(model):
            self._build(model)
        if self._program is None and not hasattr(model, "_symbolic_build"):
            raise RuntimeError(
                "HealthCallback builds a model whose layers are created by its first step "
                "(model %r is not built yet) through Keras's symbolic build, which Keras has "
                "since 3.0.2; found Keras %s. Build the model before fit (call it on a batch, "
                "e.g. model(x[:1]), or model.build(input_shape)), or upgrade Keras: "
                "pip install 'keras>=3.0.2'" % (model.name, keras.__version__))
        self._batches = 0
        self._last_batch = -1
        self._keras_train_function = model.train_function
        self._install(model)

    def _build(self, model):
        layers = select_layers(model, self.layer_patterns)
        start = int(model.optimizer.iterations.numpy()) if model.optimizer is not None else 0
        # Room for several flushes' worth of steps, also when Keras runs many
        # steps per call (steps_per_execution) between two batch hooks.
        rows = max(4 * self.flush_every, 4 * int(getattr(model, "steps_per_execution", 1) or 1), 64)
        self._program = tf_program.DeviceProgram(
            layers, model, self.every_n_batches, self.histogram_every, self.dead_window,
            rows, start, activation_examples=self.activation_examples,
        )
        self._program.frozen_unmonitored = frozen_unmonitored(model, layers)
        previous = self._host
        self._host = None
        if tf_program.writes(model):  # not a non-chief worker of a multi-worker strategy
            if self.detectors is not None:
                self.detectors.reset()
            self._host = host.Host(self.logdir, self._program, self.detectors, self.stop_on,
                                   self.on_alert, self._stop, storage_options=self.storage_options,
                                   history_after=self.history_after,
                                   history_block=self.history_block)
            self._host.alerts = self.alerts
        if previous is not None:  # the same run goes on in the same files
            previous.close()

    def _install(self, model):
        patches = tf_recording.Patches()
        self._patches = patches
        if self._program is not None:
            patches.wrap_layer_calls(self._program.layers)
            patches.wrap_variable_updates(self._program.tf_variables())
        if model.optimizer is not None:
            patches.wrap_optimizer(model.optimizer)
        patches.wrap_compute_loss(model)
        original_step = model.train_step

        def train_step(data):
            if self._program is None:
                # A subclassed model is built by its first step: build it
                # from the batch's shapes first, so its layers are known.
                with tf.init_scope():
                    model._symbolic_build(data_batch=data)
                    self._build(model)
                    patches.wrap_variable_updates(self._program.tf_variables())
                patches.wrap_layer_calls(self._program.layers)
            program = self._program
            x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
            inputs = [t for t in tf.nest.flatten(x) if t is not None]
            weights_before = program.weights_before()  # samples of W at the start (see DeviceProgram._row)
            with tf_recording.recording() as rec:
                logs = original_step(data)
            done = program.record(rec, inputs, weights_before, model.optimizer)
            with tf.control_dependencies([done]):
                return tf.nest.map_structure(tf.identity, logs)

        patches._set(model, "train_step", train_step)
        if self._train_function is None:
            model.make_train_function(force=True)
            self._train_function = model.train_function
        else:  # a later fit on the same model: reuse the traced step, no retrace
            model.train_function = self._train_function

    def _uninstall(self):
        if self._patches is not None:
            self._patches.restore()
            self._patches = None
            # Keras's own step again for whatever the user does next.
            self.model.train_function = self._keras_train_function

    def on_epoch_begin(self, epoch, logs=None):
        # Keras has just reset the metrics: per-batch metric values restart from zero.
        self._last_batch = -1
        if self._program is not None:
            self._program.reset_metric_snapshots()

    def on_train_batch_end(self, batch, logs=None):
        # `batch` is the index of the last step the call ran in this epoch.
        self._batches += max(1, batch - self._last_batch)
        self._last_batch = batch
        if self._batches >= self.flush_every and self._host is not None:
            self._batches = 0
            # Reading, checking and writing the rows runs on a background
            # thread while the next steps train (the device reads release the
            # interpreter lock); the training thread only dispatches alerts.
            self._host.collect_in_background()
        if self._host is not None:
            self._host.dispatch()

    def on_epoch_end(self, epoch, logs=None):
        # The epoch's mean loss and metrics, and the `val_*` ones when fit
        # got validation data and validated at this epoch.
        if self._host is not None and self._host.end_epoch(
                epoch + 1, host.epoch_metrics(logs or {}, skip_others=True)):
            self._warn_skipped()  # end_epoch collected every row first
        else:
            self._collect()

    def on_train_end(self, logs=None):
        try:
            if self._host is not None:  # (the chief's warning only)
                self._host.flush()
                self._warn_skipped()
        finally:
            self._uninstall()

    def _collect(self):
        if self._host is not None:
            self._host.collect(blocking=True)
            self._host.dispatch()
            self._warn_skipped()

    def _warn_skipped(self):
        if not self._warned_skipped and self._program is not None and self._program.traced:
            self._warned_skipped = True
            skipped = [l.name for l, ok in zip(self._program.layers, self._program.captured) if not ok]
            if skipped:
                log.warning(
                    "training_health: could not capture the outputs of %s (not called through "
                    "Layer.__call__ in the training step); their gradient and weight statistics "
                    "are still logged", skipped)

    def _stop(self):
        self.model.stop_training = True

    def close(self):
        """Writes every step still in the device buffer and closes the event
        files. Also done at interpreter exit, so a run interrupted by an
        exception or Ctrl-C keeps what it computed."""
        if self._host is not None:
            self._host.close()
