"""Buggy runs: each must raise its expected alert kind."""

import numpy as np

from benchmarks.scenarios.common import Scenario, images, teacher_classification

N = 3200  # 100 batches of 32 per epoch


def _keras():
    import keras

    return keras


def _mlp(hidden, activation, out_units, out_activation, input_dim, **dense_kwargs):
    keras = _keras()
    inp = keras.Input((input_dim,))
    h = inp
    for i, units in enumerate(hidden):
        h = keras.layers.Dense(units, activation=activation, name="dense_%d" % i, **dense_kwargs)(h)
    out = keras.layers.Dense(out_units, activation=out_activation, name="output")(h)
    return keras.Model(inp, out)


def stalled_cnn():
    """The seed report: raw 0..255 pixels, one conv filter as large as the image."""
    keras = _keras()
    x, y = images(N, 28, 3, seed=1, priors=[0.45, 0.35, 0.20])
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 28, activation="relu", name="conv2d"),
        keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax", name="output"),
    ])
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return model, x, y, dict(epochs=3, batch_size=32)


def deep_sigmoid():
    """Twelve sigmoid layers: the first layers get ~no gradient."""
    keras = _keras()
    x, y = teacher_classification(N, 16, 2, seed=2)
    model = _mlp([32] * 12, "sigmoid", 2, "softmax", 16)
    model.compile(keras.optimizers.SGD(0.05), "categorical_crossentropy", metrics=["accuracy"])
    return model, x, y, dict(epochs=3, batch_size=32)


def diverging_lr():
    """SGD with a learning rate of 20: gradients blow up, then NaN."""
    keras = _keras()
    x, y = teacher_classification(N, 16, 4, seed=3)
    model = _mlp([64, 64], "relu", 4, "softmax", 16)
    model.compile(keras.optimizers.SGD(20.0), "categorical_crossentropy", metrics=["accuracy"])
    return model, x, y, dict(epochs=3, batch_size=32)


def dying_relu():
    """ReLU layers whose biases start far below zero: the units never fire."""
    keras = _keras()
    x, y = teacher_classification(N, 16, 3, seed=4)
    model = _mlp([64, 64], "relu", 3, "softmax", 16,
                 bias_initializer=keras.initializers.Constant(-6.0))
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return model, x, y, dict(epochs=3, batch_size=32)


def nan_in_data():
    """A few rows of the data hold NaN."""
    keras = _keras()
    x, y = teacher_classification(N, 16, 3, seed=5)
    rows = np.random.default_rng(5).choice(N, 40, replace=False)
    x[rows, 3] = np.nan
    model = _mlp([32], "relu", 3, "softmax", 16)
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return model, x, y, dict(epochs=3, batch_size=32)


def zero_lr():
    """Learning rate 0: nothing changes."""
    keras = _keras()
    x, y = teacher_classification(N, 16, 3, seed=6)
    model = _mlp([32, 32], "relu", 3, "softmax", 16)
    model.compile(keras.optimizers.Adam(0.0), "categorical_crossentropy", metrics=["accuracy"])
    return model, x, y, dict(epochs=3, batch_size=32)


def tiny_lr():
    """SGD with a learning rate of 1e-8: the weights barely move."""
    keras = _keras()
    x, y = teacher_classification(N, 16, 3, seed=7)
    model = _mlp([32, 32], "relu", 3, "softmax", 16)
    model.compile(keras.optimizers.SGD(1e-8), "categorical_crossentropy", metrics=["accuracy"])
    return model, x, y, dict(epochs=3, batch_size=32)


def saturated_tanh():
    """tanh layers initialized with stddev 5: outputs pinned at +-1."""
    keras = _keras()
    x, y = teacher_classification(N, 16, 3, seed=8)
    model = _mlp([64, 64], "tanh", 3, "softmax", 16,
                 kernel_initializer=keras.initializers.RandomNormal(stddev=5.0))
    model.compile(keras.optimizers.SGD(0.01), "categorical_crossentropy", metrics=["accuracy"])
    return model, x, y, dict(epochs=3, batch_size=32)


def single_unit_softmax():
    """Binary task with Dense(1, softmax): the output is always 1.0."""
    keras = _keras()
    x, y = teacher_classification(N, 16, 2, seed=9)
    model = _mlp([32], "relu", 1, "softmax", 16)
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy", metrics=["accuracy"])
    return model, x, y[:, :1], dict(epochs=3, batch_size=32)


def exploding_deep_relu():
    """Ten ReLU layers initialized with stddev 0.6 (He would be 0.18)."""
    keras = _keras()
    x, y = teacher_classification(N, 16, 3, seed=10)
    model = _mlp([64] * 10, "relu", 3, "softmax", 16,
                 kernel_initializer=keras.initializers.RandomNormal(stddev=0.6))
    model.compile(keras.optimizers.SGD(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return model, x, y, dict(epochs=3, batch_size=32)


def oscillating_lr():
    """Adam with a learning rate of 0.5 on a small net: the loss jumps around."""
    keras = _keras()
    x, y = teacher_classification(N, 16, 4, seed=11)
    model = _mlp([32], "tanh", 4, "softmax", 16)
    model.compile(keras.optimizers.Adam(0.5), "categorical_crossentropy", metrics=["accuracy"])
    return model, x, y, dict(epochs=3, batch_size=32)


def saturated_sigmoid_raw_inputs():
    """Sigmoid layer fed unscaled inputs (x1000): outputs pinned at 0 and 1."""
    keras = _keras()
    x, y = teacher_classification(N, 16, 3, seed=12)
    model = _mlp([64], "sigmoid", 3, "softmax", 16)
    model.compile(keras.optimizers.SGD(0.01), "categorical_crossentropy", metrics=["accuracy"])
    return model, x * 1000.0, y, dict(epochs=3, batch_size=32)


def _lr_from_epoch(epoch, rate):
    keras = _keras()
    return keras.callbacks.LearningRateScheduler(
        lambda e, lr: rate if e >= epoch else lr)


def lr_jump_diverges():
    """Trains fine for an epoch, then a schedule sets SGD's rate to 20 (onset: step 100)."""
    keras = _keras()
    x, y = teacher_classification(N, 16, 4, seed=13)
    model = _mlp([64, 64], "relu", 4, "softmax", 16)
    model.compile(keras.optimizers.SGD(0.01), "categorical_crossentropy", metrics=["accuracy"])
    return model, x, y, dict(epochs=3, batch_size=32, callbacks=[_lr_from_epoch(1, 20.0)])


def adam_rate_jump():
    """Trains fine for an epoch, then a schedule sets Adam's rate to 1e4 (onset: step 100)."""
    keras = _keras()
    x, y = teacher_classification(N, 16, 3, seed=14)
    model = _mlp([32], "relu", 3, "softmax", 16)
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return model, x, y, dict(epochs=3, batch_size=32, callbacks=[_lr_from_epoch(1, 1e4)])


SCENARIOS = [
    Scenario("stalled_cnn", "stalled", stalled_cnn, stalled_cnn.__doc__, cause="inputs range"),
    Scenario("deep_sigmoid", "vanishing_gradients", deep_sigmoid, deep_sigmoid.__doc__,
             cause="stacked sigmoid/tanh"),
    Scenario("diverging_lr", "exploding_gradients", diverging_lr, diverging_lr.__doc__,
             cause="is high"),
    Scenario("dying_relu", "dead_units", dying_relu, dying_relu.__doc__,
             cause="check the initializers"),
    Scenario("nan_in_data", "nan_inf", nan_in_data, nan_in_data.__doc__, cause="NaN/Inf values"),
    Scenario("zero_lr", "stalled", zero_lr, zero_lr.__doc__, cause="learning rate is 0"),
    Scenario("tiny_lr", "stalled", tiny_lr, tiny_lr.__doc__, cause="too low"),
    Scenario("saturated_tanh", "saturation", saturated_tanh, saturated_tanh.__doc__,
             cause="initializer"),
    Scenario("single_unit_softmax", "saturation", single_unit_softmax, single_unit_softmax.__doc__,
             cause="softmax to a single unit"),
    Scenario("exploding_deep_relu", "exploding_gradients", exploding_deep_relu,
             exploding_deep_relu.__doc__, cause="initializer"),
    Scenario("oscillating_lr", "oscillating_loss", oscillating_lr, oscillating_lr.__doc__,
             cause="is high"),
    Scenario("saturated_sigmoid_raw_inputs", "saturation", saturated_sigmoid_raw_inputs,
             saturated_sigmoid_raw_inputs.__doc__, cause="inputs range"),
    Scenario("lr_jump_diverges", "exploding_gradients", lr_jump_diverges,
             lr_jump_diverges.__doc__, onset=100, cause="is high"),
    Scenario("adam_rate_jump", "exploding_gradients", adam_rate_jump,
             adam_rate_jump.__doc__, onset=100, cause="is high"),
]
