"""Which Keras layers are monitored, and what their activation is."""

import re

import keras

from training_health.records import LayerInfo
from training_health.statistics import ACTIVATION_BOUNDS

_BOUNDS = ACTIVATION_BOUNDS

_ACTIVATION_LAYERS = {
    "Activation", "ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax",
}


def activation_of(layer):
    """(normalized activation name, bounds or None) of a layer's output."""
    cls = type(layer).__name__
    if cls == "ReLU":
        if getattr(layer, "max_value", None) == 6:
            return "relu6", _BOUNDS["relu6"]
        if getattr(layer, "negative_slope", 0.0):
            return "leaky_relu", None
        return "relu", None
    if cls in ("LeakyReLU", "PReLU"):
        return "leaky_relu", None
    if cls == "ELU":
        return "elu", None
    if cls == "Softmax":
        return "softmax", _BOUNDS["softmax"]
    fn = getattr(layer, "activation", None)
    if fn is None or not callable(fn):
        return "", None
    name = getattr(fn, "__name__", "") or ""
    name = {"hard_silu": "hard_swish", "swish": "silu"}.get(name, name)
    return name, _BOUNDS.get(name)


def _leaves(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaves(layer)
        else:
            yield layer


def is_frozen(layer):
    """Whether a layer holds weights of which none is trained: it was set
    `trainable=False` (itself, or a model that contains it, as the base of
    transfer learning). A layer whose weights are never trained by design
    (an adapted Normalization) is not frozen."""
    return bool(layer.weights) and not layer.trainable_weights and not layer.trainable


def select_layers(model, patterns=None):
    """The layers to monitor, in model order.

    Args:
        model: a built Keras model.
        patterns: None for the default (layers with trainable weights and
            activation layers; frozen layers (`is_frozen`) are left out: a
            frozen base of a hundred layers would cost a quarter of a step,
            see `frozen_unmonitored`), or a list of layer names / regular
            expressions matched against the whole layer name (frozen layers
            included, marked frozen).
    """
    leaves = list(_leaves(model))
    if patterns is None:
        chosen = [l for l in leaves
                  if l.trainable_weights or type(l).__name__ in _ACTIVATION_LAYERS]
    else:
        compiled = [re.compile(p) for p in patterns]
        chosen = [l for l in leaves if any(c.fullmatch(l.name) for c in compiled)]
        if not chosen:
            raise ValueError(
                "`layers` matched no layer of the model; received %r, the model's layers are %s"
                % (list(patterns), [l.name for l in leaves])
            )
    seen, unique = set(), []
    for layer in chosen:
        if id(layer) not in seen:
            seen.add(id(layer))
            unique.append(layer)
    return unique


def frozen_unmonitored(model, layers):
    """Names of the model's frozen layers (`is_frozen`) not in `layers`."""
    chosen = {id(l) for l in layers}
    return tuple(l.name for l in _leaves(model) if is_frozen(l) and id(l) not in chosen)


def _flatten(structure):
    """keras.tree.flatten, which Keras has since 3.1; Keras 3.0 (TensorFlow
    2.16's first Keras) flattens with tf.nest, which orders lists and dicts
    the same way."""
    tree = getattr(keras, "tree", None)
    if tree is not None:
        return tree.flatten(structure)
    import tensorflow as tf

    return tf.nest.flatten(structure)


def output_layers(model):
    """Ids of the layers that produce the model's outputs (empty when the
    model has no symbolic outputs, as a subclassed model)."""
    found = set()
    try:
        outputs = _flatten(model.outputs)
    except (AttributeError, ValueError):
        return found
    for tensor in outputs:
        history = getattr(tensor, "_keras_history", None)
        op = getattr(history, "operation", None)
        if isinstance(op, keras.Model):
            found |= output_layers(op)
        elif op is not None:
            found.add(id(op))
    return found


def layer_info(layer, units=0, has_activation=False, is_output=False):
    activation, bounds = activation_of(layer)
    return LayerInfo(
        name=layer.name,
        type=type(layer).__name__,
        activation=activation,
        bounds=bounds,
        units=int(units or 0),
        has_weights=bool(layer.trainable_weights),
        has_activation=bool(has_activation),
        is_output=bool(is_output),
        frozen=is_frozen(layer),
    )


# Layers whose call ends with `activation(f(inputs) + bias)`, bias one value
# per unit of the last axis (channels_last).
_BIAS_THEN_ACTIVATION = ("Dense", "Conv1D", "Conv2D", "Conv3D",
                         "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")


def _is_relu(fn):
    return fn is keras.activations.relu or fn is keras.activations.relu6


def _own_call(layer, class_names):
    return any(type(layer).call is getattr(keras.layers, name).call for name in class_names)


def _added_bias(layer, activation_ok):
    """The bias a Dense/convolution layer adds last before its activation
    (which must pass `activation_ok`), when its gradient is the plain sum of
    the gradient reaching the units; else None."""
    if not activation_ok(getattr(layer, "activation", None)) or not _own_call(layer, _BIAS_THEN_ACTIVATION):
        return None
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return None
    bias = getattr(layer, "bias", None)
    if bias is None or not getattr(bias, "trainable", False) or getattr(layer, "bias_regularizer", None) is not None:
        return None
    units = getattr(layer, "units", None) or getattr(layer, "filters", None)
    return bias if units is not None and tuple(bias.shape) == (units,) else None


def _added_beta(layer):
    """The offset a BatchNormalization over the last axis adds last, or None."""
    if not _own_call(layer, ("BatchNormalization",)) or not getattr(layer, "center", False):
        return None
    beta = getattr(layer, "beta", None)
    if beta is None or not getattr(beta, "trainable", False) or getattr(layer, "beta_regularizer", None) is not None:
        return None
    nodes = getattr(layer, "_inbound_nodes", [])
    tensors = nodes[0].input_tensors if len(nodes) == 1 else []
    rank = len(tensors[0].shape) if len(tensors) == 1 else None
    return beta if rank is not None and layer.axis in (-1, rank - 1) else None


def _standalone_relu(layer):
    if _own_call(layer, ("ReLU",)):
        return (getattr(layer, "max_value", None) in (None, 6) and not getattr(layer, "negative_slope", 0)
                and not getattr(layer, "threshold", 0))
    return _own_call(layer, ("Activation",)) and _is_relu(getattr(layer, "activation", None))


def _sole_producer(layer):
    """The layer whose output is this layer's only input and feeds nothing
    else, in a functional or Sequential model; else None."""
    nodes = getattr(layer, "_inbound_nodes", [])
    if len(nodes) != 1 or len(nodes[0].input_tensors) != 1:
        return None
    history = getattr(nodes[0].input_tensors[0], "_keras_history", None)
    producer = getattr(history, "operation", None)
    if producer is None or len(getattr(producer, "_inbound_nodes", [])) != 1:
        return None
    if len(getattr(producer, "_outbound_nodes", [])) != 1:
        return None
    return producer


def firing_bias(layer):
    """The bias whose gradient shows which of the layer's ReLU units fired, or None.

    When a ReLU layer's output is relu(z + b) (or relu6), d loss / d b[u]
    sums the loss gradient over the outputs of unit u where the ReLU passes
    gradient, i.e. where the unit fired; it is exactly 0 when the unit output
    0 for every example and position of the batch. A non-zero (finite) entry
    therefore proves the unit fired, whichever examples and positions the
    activation sample looked at. b is the bias of a Dense or convolution
    layer with a ReLU activation (Keras's own `call`, channels last), or,
    for a ReLU / Activation("relu") layer whose only input is the output of
    a linear Dense/convolution layer or of a BatchNormalization over the
    last axis that feeds nothing else, that layer's bias or beta. A bias
    regularizer adds a term of its own to the gradient: such a bias is not
    used.
    """
    bias = _added_bias(layer, _is_relu)
    if bias is not None or not _standalone_relu(layer):
        return bias
    producer = _sole_producer(layer)
    if producer is None:
        return None
    beta = _added_beta(producer)
    if beta is not None:
        return beta
    return _added_bias(producer, lambda fn: fn is keras.activations.linear)
