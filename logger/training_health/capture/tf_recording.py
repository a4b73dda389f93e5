"""Which tensors a Keras / TensorFlow training step produced: the recording.

* `Recording`: per-trace collection of what one training step produced
  (layer outputs, gradients, the batch loss, the optimizer's in-place
  updates of the weights).
* `Patches`: instance-attribute wrappers around layers' `call`, the
  optimizer's `apply`, the model's `compute_loss` and the variables'
  in-place updates, which hand their tensors to the open recording; they
  do nothing outside a recording (evaluate/predict traces are untouched)
  and `restore()` removes them exactly.
"""

import contextlib
import threading

import numpy as np
import tensorflow as tf

from training_health.capture import tf_ops as ts

_local = threading.local()

try:  # a plain variable even inside a distribution strategy's scope
    from tensorflow.python.ops.resource_variable_ops import ResourceVariable as PlainVariable
except ImportError:  # pragma: no cover - older or newer layouts
    PlainVariable = tf.Variable


def variable(initial, dtype, name):
    """A non-trainable, non-distributed variable (created eagerly).

    Under a MirroredStrategy a `tf.Variable` would be mirrored, and a
    mirrored variable cannot be scatter-updated from a replica: the buffer
    must be one plain variable that replica 0 alone writes.
    """
    with tf.init_scope():
        return PlainVariable(np.asarray(initial), dtype=dtype, trainable=False, name=name)


class Recording:
    """What one traced training step produced."""

    def __init__(self):
        # Tensors are only usable in the graph that is being traced (a layer
        # called inside a tf.cond / while_loop body is skipped).
        self.graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
        self.activations = {}  # layer index -> first output tensor
        self.grads_and_vars = None  # (grads, variables) given to the optimizer
        self.loss = None
        # id(tf variable) -> the in-place updates the step made to it
        # ((tensor, sign) pairs to add up), or None where one of them was not
        # an addition that this graph can use (see `Patches.wrap_variable_updates`).
        self.updates = {}

    def note_update(self, key, value, sign):
        """One in-place update of a monitored variable: `sign * value` was
        added to it (sign None: it was changed some other way)."""
        if key in self.updates and self.updates[key] is None:
            return
        if sign is not None and not isinstance(value, tf.IndexedSlices):
            value = tf.convert_to_tensor(value)
            if getattr(value, "graph", None) is self.graph:  # not inside a cond or loop body
                self.updates.setdefault(key, []).append((ts._as_f32(value), sign))
                return
        self.updates[key] = None

    def update_of(self, key, view, signed=True):
        """The sum of the step's updates of a variable, each taken through
        `view` (a linear map: `ts.sample`'s flat sample), or None when they
        are unknown. The sign of a subtraction is applied to the view: a pass
        over a small sample, not over a large update. signed=False: the
        update or its negation (for sums of squares), no op spent on the
        sign of a single subtraction."""
        parts = self.updates.get(key)
        if not parts:
            return None
        if len(parts) == 1 and not signed:
            return view(parts[0][0])
        terms = [view(value) if sign > 0 else -view(value) for value, sign in parts]
        return terms[0] if len(terms) == 1 else tf.add_n(terms)


def current_recording():
    return getattr(_local, "recording", None)


@contextlib.contextmanager
def recording():
    rec = Recording()
    previous = current_recording()
    _local.recording = rec
    try:
        yield rec
    finally:
        _local.recording = previous


def _first_tensor(out):
    for t in tf.nest.flatten(out):
        if isinstance(t, (tf.Tensor, tf.Variable)) or hasattr(t, "dtype"):
            return t
    return None


class Patches:
    """Instance-attribute wrappers, removed exactly by `restore()`."""

    def __init__(self):
        self._saved = []  # (obj, attr name, previous instance value or _MISSING)

    _MISSING = object()

    def _set(self, obj, name, value):
        previous = obj.__dict__.get(name, self._MISSING)
        self._saved.append((obj, name, previous))
        object.__setattr__(obj, name, value)

    def wrap_layer_calls(self, layers, fallback=None):
        """Hands each layer's first output per step to the open recording
        (or, with none open, to `fallback()`'s recording, if it returns one)."""
        for index, layer in enumerate(layers):
            original = layer.call

            def call(*args, __original=original, __index=index, **kwargs):
                out = __original(*args, **kwargs)
                rec = current_recording()
                if rec is None and fallback is not None:
                    rec = fallback()
                if rec is not None and __index not in rec.activations:
                    tensor = _first_tensor(out)
                    if tensor is not None and getattr(tensor, "graph", None) is rec.graph:
                        rec.activations[__index] = tensor
                return out

            self._set(layer, "call", call)

    # Methods of a TensorFlow variable that change it in place.
    _ADDITIONS = {"assign_add": 1.0, "assign_sub": -1.0}
    _OTHER_UPDATES = ("assign", "scatter_add", "scatter_sub", "scatter_update", "scatter_max",
                      "scatter_min", "scatter_mul", "scatter_div", "batch_scatter_update",
                      "scatter_nd_add", "scatter_nd_sub", "scatter_nd_update", "scatter_nd_max",
                      "scatter_nd_min")

    def wrap_variable_updates(self, variables):
        """Hands each in-place update of these TensorFlow variables, made
        while a recording is open, to the recording: the step's update of
        the weights is then known without copying the weights before it.
        Variables of another kind (a distributed variable) are left alone:
        their statistics use the copy."""
        for v in variables:
            if not isinstance(v, PlainVariable):
                continue
            for name in self._ADDITIONS.keys() | set(self._OTHER_UPDATES):
                original = getattr(v, name, None)
                if original is None:
                    continue

                def update(*args, __original=original, __sign=self._ADDITIONS.get(name), __key=id(v), **kwargs):
                    rec = current_recording()
                    if rec is not None:
                        value = args[0] if args else kwargs.get("delta", kwargs.get("value"))
                        rec.note_update(__key, value, __sign if value is not None else None)
                    return __original(*args, **kwargs)

                self._set(v, name, update)

    def wrap_optimizer(self, optimizer):
        original = optimizer.apply

        def apply(grads, trainable_variables=None):
            rec = current_recording()
            if rec is not None and rec.grads_and_vars is None:
                variables = trainable_variables
                if variables is None:
                    variables = optimizer._trainable_variables
                rec.grads_and_vars = (list(grads), list(variables))
            return original(grads, trainable_variables)

        self._set(optimizer, "apply", apply)

    def wrap_compute_loss(self, model):
        original = model.compute_loss

        def compute_loss(*args, **kwargs):
            loss = original(*args, **kwargs)
            rec = current_recording()
            if rec is not None:
                rec.loss = loss
            return loss

        self._set(model, "compute_loss", compute_loss)

    def restore(self):
        for obj, name, previous in reversed(self._saved):
            if previous is self._MISSING:
                object.__delattr__(obj, name)
            else:
                object.__setattr__(obj, name, previous)
        self._saved = []
