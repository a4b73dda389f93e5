"""The device side of the TensorFlow capture (Keras `fit` and GradientTape).

`DeviceProgram`, given a `tf_recording.Recording` of one traced step,
computes every statistic in the step and writes one row into a ring buffer
variable; it never transfers anything to the host and uses no summary ops
(XLA-safe). As a `host.RowSource` it hands the rows to the framework-neutral
host side (`training_health.capture.host`).
"""

import numpy as np
import tensorflow as tf

from training_health import format as fmt
from training_health.capture import host
from training_health.capture import tf_ops as ts
from training_health.capture.keras_layers import firing_bias, layer_info, output_layers
from training_health.capture.tf_recording import variable as _variable


def _metric_objects(model):
    """(name, metric) of the compiled metrics, flattened, loss tracker excluded."""
    out = []
    for m in model.metrics:
        inner = getattr(m, "metrics", None)
        if inner is not None and not hasattr(m, "total"):
            out.extend(inner)
        elif m.name != "loss":
            out.append(m)
    seen, result = set(), []
    for m in out:
        if m.name not in seen and m.name != "loss":
            seen.add(m.name)
            result.append((m.name, m))
    return result


def _metric_state(metric):
    total, count = getattr(metric, "total", None), getattr(metric, "count", None)
    if total is not None and count is not None:
        return (tf.cast(tf.convert_to_tensor(total), tf.float32),
                tf.cast(tf.convert_to_tensor(count), tf.float32))
    return None


def _replica():
    """(this replica's index, number of replicas) in the step being traced."""
    ctx = tf.distribute.get_replica_context()
    replicas = ctx.num_replicas_in_sync if ctx is not None else 1
    if replicas == 1:
        return 0, 1
    return int(tf.get_static_value(ctx.replica_id_in_sync_group)), replicas


def writes(model):
    """Whether this process writes the run: the chief of a multi-worker
    strategy (its "chief" task, or worker 0 when the cluster has none, as
    `tf.distribute` decides for summaries and checkpoints), and the one
    process of any other strategy. Every process still computes the step's
    statistics: their collectives need every replica."""
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    return bool(strategy.extended.should_save_summary)


def _gather(ctx, t):
    """All replicas' shares of a batch tensor, static shape kept."""
    if not t.device:
        # A step input has no device, and a multi-worker strategy gathers
        # to the tensor's device: a copy made in the replica's device scope.
        t = tf.identity(t)
    out = ctx.all_gather(t, 0)
    if t.shape.rank is not None:
        out.set_shape([None] + t.shape.as_list()[1:])
    return out


class DeviceProgram(host.RowSource):
    """Device-side state and the per-step statistics op.

    Args:
        layers: the monitored Keras layers.
        metrics: list of (name, metric) whose per-batch value is recorded.
        every_n_batches, histogram_every, dead_window, rows: see HealthCallback.
        start_step: the global step of the first training step.
    """

    def __init__(self, layers, model, every_n_batches, histogram_every, dead_window,
                 rows, start_step, activation_examples=None, output_model=None):
        self.activation_examples = activation_examples
        self.output_model = output_model if output_model is not None else model
        self.layers = list(layers)
        self.model = model
        self.every_n_batches = int(every_n_batches)
        self.histogram_every = int(histogram_every)
        self.dead_window = int(dead_window)
        self.rows = int(rows)
        self.metrics = None  # (name, metric) list, known once the step is traced
        self.global_names = None
        self.buffer = None
        self.hist_slots = max(2, self.rows // max(1, self.histogram_every) + 2) if self.histogram_every else 0
        # Layer -> its trainable variables (by id) for grouping gradients.
        self._var_layer = {}
        # Bias (by id) -> layer whose unit activity its gradient proves
        # (see `_layers.firing_bias`).
        self._firing_bias = {}
        for i, layer in enumerate(self.layers):
            for v in layer.trainable_weights:
                self._var_layer.setdefault(id(v), i)
            bias = firing_bias(layer)
            if bias is not None:
                self._firing_bias.setdefault(id(bias), i)
        self.units = [0] * len(self.layers)  # known after tracing
        self.captured = [False] * len(self.layers)
        self.traced = False
        with tf.init_scope():
            self.step = _variable(int(start_step), tf.int64, "th_step")
            self.start = _variable(int(start_step), tf.int64, "th_start")
            self.count = _variable(0, tf.int64, "th_count")
            if self.hist_slots:
                shape = [self.hist_slots, len(self.layers), len(fmt.HIST_SERIES), fmt.HIST_ROW]
                self.hist = _variable(np.zeros(shape, np.float32), tf.float32, "th_hist")
                self.hist_steps = _variable(np.zeros([self.hist_slots], np.int64), tf.int64, "th_hist_steps")
                self.hist_count = _variable(0, tf.int64, "th_hist_count")
        self._last_active = {}  # ((layer index, units), ...) -> int64 variable
        self._metric_prev = {}  # metric name -> (total, count) float32 variables

    def _ensure_buffers(self):
        """Creates the row buffer once the compiled metrics are known (first trace)."""
        if self.buffer is not None:
            return
        self.metrics = _metric_objects(self.model) if self.model is not None else []
        self.global_names = tuple(fmt.GLOBAL_STATS) + tuple(n for n, _ in self.metrics)
        self.width = len(self.global_names) + len(self.layers) * len(fmt.LAYER_STATS)
        with tf.init_scope():
            self.buffer = _variable(np.zeros([self.rows, self.width], np.float32), tf.float32, "th_rows")
            self.row_steps = _variable(np.zeros([self.rows], np.int64), tf.int64, "th_row_steps")

    # -- helpers used by the wrappers ------------------------------------
    def monitored_variables(self):
        return [v for layer in self.layers for v in layer.trainable_weights]

    def tf_variables(self):
        """The TensorFlow variables behind `monitored_variables()` (call it
        outside a layer's call: mixed precision casts `.value` there)."""
        return [v.value for v in self.monitored_variables()]

    def _by_layer(self, flat):
        """A list over the monitored tensors, split into one list per layer."""
        out, k = [], 0
        for layer in self.layers:
            n = len(layer.trainable_weights)
            out.append(flat[k:k + n])
            k += n
        return out

    def weights_before(self):
        """`record()`'s `weights_before`: the samples of the monitored
        variables' current values (call it before the update)."""
        return ts.weight_snapshot(self.tf_variables())

    def reset_metric_snapshots(self):
        """Call right after the model's metrics were reset (each epoch)."""
        for total, count in self._metric_prev.values():
            total.assign(tf.zeros_like(total))
            count.assign(tf.zeros_like(count))

    def _metric_delta(self, name, metric, replica, replicas):
        """(sum, count) this batch added to a mean-type metric on this replica,
        from the change of its state since the previous step; or (result, 1)
        for other metrics. Returns (sum, count, snapshot updates)."""
        state = _metric_state(metric)
        if state is None:
            try:
                value = tf.reshape(tf.cast(metric.result(), tf.float32), [])
            except (TypeError, ValueError):
                value = tf.constant(float("nan"), tf.float32)
            return value, tf.constant(1.0), []
        total, count = state
        prev = self._metric_prev.get(name)
        if prev is None:
            prev = (_variable(np.zeros([replicas], np.float32), tf.float32, "th_prev_total"),
                    _variable(np.zeros([replicas], np.float32), tf.float32, "th_prev_count"))
            self._metric_prev[name] = prev
        p_total, p_count = prev[0][replica], prev[1][replica]
        reset = count < p_count  # metrics were reset (new epoch) before this step
        d_total = tf.where(reset, total, total - p_total)
        d_count = tf.where(reset, count, count - p_count)
        updates = [prev[0].scatter_nd_update([[replica]], total[None]),
                   prev[1].scatter_nd_update([[replica]], count[None])]
        return d_total, d_count, updates

    def _last_active_var(self, units):
        """int64 vector: the step at which each unit of the captured layers
        last fired, the layers' units one after another. units: ((layer
        index, units), ...) of the captured layers."""
        var = self._last_active.get(units)
        if var is None:
            with tf.init_scope():
                start = int(self.start.numpy())
                var = _variable(np.full([sum(n for _, n in units)], start - 1, np.int64), tf.int64,
                                "th_last_active")
            self._last_active[units] = var
        return var

    # -- the per-step op --------------------------------------------------
    @tf.autograph.experimental.do_not_convert  # plain TF ops; no need to rewrite the source
    def record(self, rec, inputs, weights_before, optimizer):
        """Adds the statistics of one step to the graph; returns the op that writes them.

        weights_before: `weights_before()` taken before the update.
        """
        self._ensure_buffers()
        step = self.step.read_value()
        replica, replicas = _replica()
        ctx = tf.distribute.get_replica_context()

        grads, variables = rec.grads_and_vars if rec.grads_and_vars is not None else ([], [])
        scale = None
        if optimizer is not None and hasattr(optimizer, "inner_optimizer") and hasattr(optimizer, "dynamic_scale"):
            # Mixed precision: the optimizer received scaled gradients.
            scale = tf.cast(tf.convert_to_tensor(optimizer.dynamic_scale), tf.float32)
        all_grads, owners, fired_by = [], [], []
        for g, v in zip(grads, variables):
            if g is None:
                continue
            g = ts._as_f32(g)
            all_grads.append(g / scale if scale is not None else g)
            owners.append(self._var_layer.get(id(v)))
            fired_by.append(self._firing_bias.get(id(v)))

        if self.activation_examples:
            k = self.activation_examples
            rec.activations = {i: ts.activation_sample(a, k) for i, a in rec.activations.items()}
            inputs = [ts.leading(x, k) for x in inputs]

        metric_parts, state_updates = [], []
        for name, metric in self.metrics:
            d_total, d_count, updates = self._metric_delta(name, metric, replica, replicas)
            metric_parts.append((d_total, d_count))
            state_updates.extend(updates)

        if replicas > 1:
            # Statistics of the whole step, not of one replica's share:
            # gradients summed as the optimizer sums them, activations and
            # inputs gathered from every replica, loss and metric counts summed
            # (Keras divides each replica's loss by the number of replicas).
            sum_ = tf.distribute.ReduceOp.SUM
            if all_grads:
                all_grads = list(ctx.all_reduce(sum_, all_grads))
            rec.activations = {i: _gather(ctx, a) for i, a in sorted(rec.activations.items())}
            inputs = [_gather(ctx, tf.cast(x, tf.float32)) for x in inputs]
            if rec.loss is not None:
                rec.loss = ctx.all_reduce(sum_, ts._as_f32(rec.loss))
            metric_parts = [tuple(ctx.all_reduce(sum_, [t, c])) for t, c in metric_parts]
        nan = tf.constant(float("nan"), tf.float32)
        metric_values = [tf.where(c > 0, t / tf.maximum(c, 1e-30), nan) for t, c in metric_parts]

        per_layer_grads = [[] for _ in self.layers]
        unowned_grads = []  # variables of layers that are not monitored
        bias_grads = {i: g for g, i in zip(all_grads, fired_by) if i is not None}
        for g, owner in zip(all_grads, owners):
            if owner is not None:
                per_layer_grads[owner].append(g)
            else:
                unowned_grads.append(g)

        if replica != 0:
            # Exactly one writer: the other replicas only took part in the
            # collectives above and keep their own metric snapshots. (Under
            # a multi-worker strategy replica 0 is on the chief, the first
            # task of the cluster: see `writes`.)
            with tf.control_dependencies(state_updates):
                return tf.no_op()

        # Units activity is tracked every batch (the dead-unit window needs it).
        captured = sorted(rec.activations)
        for i in captured:
            a = rec.activations[i]
            self.captured[i] = True
            self.units[i] = int(a.shape[-1]) if (a.shape.rank or 0) >= 2 and a.shape[-1] is not None else 1
        # One vector over every captured layer's units: a few ops for all
        # layers instead of a few per layer (each op costs the step ~2 us).
        # Exact with NaN entries. A ReLU unit whose bias got gradient fired
        # somewhere in the batch, also where the (sampled) output did not
        # look (see `_layers.firing_bias`).
        units = tuple((i, self.units[i]) for i in captured)
        active, last_active, activity_updates = None, None, []
        if captured:
            active = ts.units_active([rec.activations[i] for i in captured],
                                     [bias_grads.get(i) for i in captured])
            var = self._last_active_var(units)
            last_active = tf.where(active, step, var.read_value())
            activity_updates.append(var.assign(last_active))

        def row():
            return self._row(rec, inputs, unowned_grads, per_layer_grads, weights_before,
                             metric_values, optimizer, step, units, active, last_active)

        def write_row(vec):
            slot = self.count % self.rows
            writes = [self.buffer.scatter_nd_update([[slot]], vec[None, :]),
                      self.row_steps.scatter_nd_update([[slot]], step[None])]
            with tf.control_dependencies(writes):
                return self.count.assign_add(1)

        # No control dependency on the statistics: logging every batch, each
        # runs as soon as its inputs exist (an output's statistics during the
        # forward pass, a gradient's when the backward pass produced it), not
        # in one block after the whole backward pass. (With every_n_batches >
        # 1 the row is computed inside the conditional, which starts once all
        # of its inputs exist.) Only the step counter waits for all.
        if self.every_n_batches == 1:
            done = write_row(row())
        else:
            done = ts.cond(tf.equal(step % self.every_n_batches, 0), lambda: write_row(row()),
                           lambda: self.count.read_value())
        ops = [done] + activity_updates
        if self.hist_slots:
            ops.append(ts.cond(
                tf.equal(step % self.histogram_every, 0),
                lambda: self._write_histograms(rec, per_layer_grads, step),
                lambda: self.hist_count.read_value(),
            ))
        # Only now are the layers' units and outputs known (`layer_infos`).
        self.traced = True
        with tf.control_dependencies(ops + state_updates):
            return self.step.assign_add(1)

    def _row(self, rec, inputs, unowned_grads, per_layer_grads, weights_before,
             metric_values, optimizer, step, units, active, last_active):
        """Reads what the statistics need and computes the row vector.

        units: ((layer index, units), ...) of the captured layers; active,
        last_active: over their units, one layer after another (None when no
        layer was captured), which fired in this step and the step at which
        each last fired (this one included).
        """
        nan = tf.constant(float("nan"), tf.float32)
        loss = ts._as_f32(rec.loss) if rec.loss is not None else nan
        loss = tf.reshape(loss, []) if loss.shape.rank == 0 else tf.reduce_mean(loss)
        lr = nan
        if optimizer is not None:
            try:
                lr = tf.cast(tf.convert_to_tensor(optimizer.learning_rate), tf.float32)
            except (TypeError, ValueError, AttributeError):
                lr = nan
        # dW of the step: the optimizer's in-place update where the hooks saw
        # it (nothing waits for the variable to change), else the weights
        # read now minus those at the start. Op by op, W comes from the read
        # at the start of the step; under XLA, whose compiled step a read
        # before the update made 1.15-1.18x slower on a CPU, as W_after - dW
        # (the unused reads at the start are pruned from the graph).
        xla = ts.compiled_by_xla()
        pairs = []
        for tf_var, (before, scale) in zip(self.tf_variables(), weights_before):
            # Op by op, dW only enters sums of squares: its sign is not needed.
            d = rec.update_of(id(tf_var), lambda t: ts.sample(t)[0], signed=xla)
            if d is None or xla:
                after = ts.sample(ts._as_f32(tf_var))[0]
                if d is None:
                    d = after - before
                else:
                    before = after - d
            pairs.append((before, d, scale))
        weights = self._by_layer(pairs)
        acts = [rec.activations.get(i) for i in range(len(self.layers))]
        threshold = tf.maximum(step - self.dead_window + 1, self.start.read_value())
        dead = ts.dead_columns(units, active, last_active, threshold, len(self.layers))
        bounds = [layer_info(layer).bounds for layer in self.layers]
        return _row_values(
            acts, dead, list(per_layer_grads), unowned_grads,
            weights, inputs, loss, lr, list(metric_values), bounds)

    def _write_histograms(self, rec, per_layer_grads, step):
        rows = []
        for i in range(len(self.layers)):
            grad_row = ts.gradient_histogram(per_layer_grads[i])
            a = rec.activations.get(i)
            act_row = ts.activation_histogram(a) if a is not None else tf.fill([fmt.HIST_ROW], float("nan"))
            rows.append(tf.stack([grad_row, act_row]))
        value = tf.stack(rows)
        slot = self.hist_count % self.hist_slots
        w1 = self.hist.scatter_nd_update([[slot]], value[None])
        w2 = self.hist_steps.scatter_nd_update([[slot]], step[None])
        with tf.control_dependencies([w1, w2]):
            return self.hist_count.assign_add(1)

    # -- host.RowSource ---------------------------------------------------
    def read_rows(self):
        if not self.traced:
            # Nothing traced yet, or the trace is still running (in another
            # thread than a background reader's): what `layer_infos` would
            # say is not known yet.
            return None
        before = int(self.count.numpy())
        buffer, steps = self.buffer.numpy(), self.row_steps.numpy()
        return before, buffer, steps, int(self.count.numpy())

    def last_step(self):
        step = int(self.step.numpy())  # the next step's number
        return step - 1 if step > int(self.start.numpy()) else None

    def read_histograms(self):
        if not self.hist_slots:
            return None
        return int(self.hist_count.numpy()), self.hist.numpy(), self.hist_steps.numpy()

    def layer_infos(self):
        outputs = output_layers(self.output_model) if self.output_model is not None else set()
        return [layer_info(l, self.units[i], self.captured[i], id(l) in outputs)
                for i, l in enumerate(self.layers)]


def _row_values(acts, dead, per_layer_grads, unowned_grads, weights, inputs, loss, lr,
                metric_values, bounds):
    """The row vector [GLOBAL_STATS, metrics, L x LAYER_STATS] from plain tensors.

    The weight columns (`ts.weight_columns`, on small samples) are the only
    part that waits for the optimizer (for its updates). The rest does not: op by
    op, it is computed first without masking non-finite values
    (`_fast_columns`) and, if any probe sum is non-finite, recomputed with
    the careful, masking functions (`_careful_columns`); that conditional
    runs while the optimizer updates the weights, not after. Under XLA the
    careful functions alone: XLA fuses their masking into the same passes,
    while a conditional in the compiled step measured 1.16x the plain
    step's wall time on a CPU (XLA's step with the careful row alone: 1.00x).
    """
    args = (acts, per_layer_grads, unowned_grads, inputs, loss, lr, metric_values, bounds)
    if ts.compiled_by_xla():
        head, columns = _careful_columns(*args)
    else:
        head, columns, probe = _fast_columns(*args)
        head, columns = ts.cond(tf.reduce_all(tf.math.is_finite(probe)), lambda: (head, columns),
                                lambda: _careful_columns(*args))
    columns.update(dead)
    columns.update(ts.weight_columns(weights))
    table = tf.stack([columns[k] for k in fmt.LAYER_STATS], axis=1)
    return tf.concat([head, tf.reshape(table, [-1])], axis=0)


_NO_INPUTS = fmt.INPUT_STATS


def _head(global_values, metric_values):
    """[GLOBAL_STATS, metrics] as one vector."""
    values = [tf.convert_to_tensor(v) for v in
              [global_values[name] for name in fmt.GLOBAL_STATS] + list(metric_values)]
    # (no reshape or cast op for what is already a float32 scalar)
    return tf.stack([v if v.dtype == tf.float32 and v.shape.rank == 0
                     else tf.reshape(tf.cast(v, tf.float32), []) for v in values])


def _fast_columns(acts, per_layer_grads, unowned_grads, inputs, loss, lr, metric_values, bounds):
    """(head, columns, probe): every column but the weights' as [L] vectors, nothing masked."""
    nan = tf.constant(float("nan"), tf.float32)
    # Named scopes: the statistics are easy to tell apart in a profile.
    with tf.name_scope("training_health_gradients"):
        grad_cols, grad_norm, grad_probe = ts.fast_gradient_columns(per_layer_grads, unowned_grads)
    with tf.name_scope("training_health_activations"):
        act_cols, act_probe = ts.fast_activation_columns(acts, bounds)
    columns = dict(grad_cols, **act_cols)
    probe = [grad_probe, act_probe]
    if inputs:
        inp = ts.fast_input_stats(list(inputs))
        probe.append(tf.reshape(inp.pop("_sq"), [1]))
    else:
        inp = {k: nan for k in _NO_INPUTS}
    nonfinite = tf.constant(0.0) if (unowned_grads or any(per_layer_grads)) else nan
    global_values = dict(grad_norm=grad_norm, grad_nonfinite=nonfinite, learning_rate=lr, loss=loss, **inp)
    return _head(global_values, metric_values), columns, tf.concat(probe, axis=0)


def _careful_columns(acts, per_layer_grads, unowned_grads, inputs, loss, lr, metric_values, bounds):
    """(head, columns) with every statistic over the finite entries only (masking functions)."""
    nan = tf.constant(float("nan"), tf.float32)
    # Per-layer gradient statistics first; the global ones add them up (and
    # the variables of unmonitored layers), so no gradient is read twice.
    layer_grads = [ts.gradient_stats(list(g)) if g else None for g in per_layer_grads]
    parts = [x for x in layer_grads if x is not None]
    if unowned_grads:
        parts.append(ts.gradient_stats(list(unowned_grads)))
    if parts:
        g = dict(grad_norm=tf.sqrt(tf.add_n([x["_sq"] for x in parts])),
                 grad_nonfinite=tf.add_n([x["grad_nonfinite"] for x in parts]))
    else:
        g = dict(grad_norm=nan, grad_nonfinite=nan)
    inp = ts.input_stats(list(inputs)) if inputs else {k: nan for k in _NO_INPUTS}
    global_values = dict(grad_norm=g["grad_norm"], grad_nonfinite=g["grad_nonfinite"],
                         learning_rate=lr, loss=loss, **inp)
    no_grads = ts.gradient_stats([])
    no_acts = {k: nan for k in fmt.ACTIVATION_STATS}
    per_layer = []
    for i, a in enumerate(acts):
        gs = layer_grads[i] if layer_grads[i] is not None else no_grads
        act = ts.activation_stats(a, bounds[i]) if a is not None else no_acts
        per_layer.append(dict(gs, **act))
    names = fmt.GRADIENT_STATS + fmt.ACTIVATION_STATS
    columns = {k: tf.stack([tf.cast(stats[k], tf.float32) for stats in per_layer]) for k in names}
    return _head(global_values, metric_values), columns
