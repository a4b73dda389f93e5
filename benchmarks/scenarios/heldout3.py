"""Held-out runs of the data-order and overfitting alerts (issue 20):
written after the data-order rule of `oscillating_loss` was designed on
synthetic streams (tests/test_detectors.py) and on class-sorted MLP runs of
one teacher (seed 61), and after the `overfitting` detector was designed on
constructed epoch sequences; kept apart from that calibration: each was run
once to report the figures.

    python benchmarks/scenario_report.py --set heldout3
"""

import numpy as np

from benchmarks.scenarios.common import Scenario, images, teacher_classification


def _layers():
    import keras

    return keras, keras.layers


def _sorted(x, y):
    order = np.argsort(y.argmax(axis=1), kind="stable")
    return x[order], y[order]


def _cnn(classes):
    keras, L = _layers()
    return keras.Sequential([
        keras.Input((16, 16, 1)), L.Rescaling(1 / 255.0),
        L.Conv2D(8, 3, activation="relu"), L.MaxPooling2D(),
        L.Conv2D(16, 3, activation="relu"), L.GlobalAveragePooling2D(),
        L.Dense(classes, activation="softmax", name="output")])


# -- buggy ------------------------------------------------------------------
def _class_sorted_cnn(shuffle):
    """The CNN and its images sorted by class, fit with `shuffle`."""
    keras, _ = _layers()
    x, y = _sorted(*images(2400, 16, 4, seed=71, priors=[0.25] * 4))
    m = _cnn(4)
    m.compile(keras.optimizers.Adam(3e-3), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, y, dict(epochs=3, batch_size=32, shuffle=shuffle)


def c_class_sorted_cnn():
    """A small CNN on images sorted by class, fit with shuffle=False: every
    batch holds one class, the classes come one after another."""
    return _class_sorted_cnn(shuffle=False)


def _sgd_mlp():
    keras, L = _layers()
    m = keras.Sequential([keras.Input((24,)), L.Dense(128, activation="relu"),
                          L.Dense(64, activation="tanh"), L.Dense(6, activation="softmax")])
    m.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy",
              metrics=["accuracy"])
    return m


def c_class_sorted_sgd_mlp():
    """An MLP with SGD + momentum on tabular data sorted by label (6
    classes), shuffle=False."""
    x, y = _sorted(*teacher_classification(4800, 24, 6, seed=72, noise=0.05))
    return _sgd_mlp(), x, y, dict(epochs=2, batch_size=64, shuffle=False)


def c_overfit_small_data():
    """A wide MLP on 96 noisy examples, validated on 400 others: the
    validation loss turns up after a few epochs while the training loss
    keeps falling."""
    keras, L = _layers()
    x, y = teacher_classification(496, 20, 3, seed=73, noise=0.3)
    m = keras.Sequential([keras.Input((20,)), L.Dense(512, activation="relu"),
                          L.Dense(512, activation="relu"), L.Dense(3, activation="softmax")])
    m.compile(keras.optimizers.Adam(2e-3), "categorical_crossentropy", metrics=["accuracy"])
    return m, x[:96], y[:96], dict(epochs=40, batch_size=16, validation_data=(x[96:], y[96:]))


# -- healthy ----------------------------------------------------------------
def g_class_sorted_shuffled_cnn():
    """The class-sorted CNN's data and model, fit with shuffle=True."""
    return _class_sorted_cnn(shuffle=True)


def g_fixed_random_order():
    """shuffle=False on data shuffled once: the same batches every epoch,
    each a mix of classes."""
    x, y = teacher_classification(4800, 24, 6, seed=74, noise=0.05)
    return _sgd_mlp(), x, y, dict(epochs=2, batch_size=64, shuffle=False)


def g_validated_enough_data():
    """Validation data, enough training data for the model: both losses fall."""
    keras, L = _layers()
    x, y = teacher_classification(6400, 20, 3, seed=75, noise=0.05)
    m = keras.Sequential([keras.Input((20,)), L.Dense(64, activation="relu"),
                          L.Dense(3, activation="softmax")])
    m.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return m, x[:4800], y[:4800], dict(epochs=8, batch_size=64,
                                       validation_data=(x[4800:], y[4800:]))


def g_cosine_restarts():
    """SGD with cosine decay and warm restarts every 150 steps (the loss
    jumps at each restart)."""
    keras, L = _layers()
    x, y = teacher_classification(4800, 24, 4, seed=76, noise=0.05)
    schedule = keras.optimizers.schedules.CosineDecayRestarts(0.1, first_decay_steps=150)
    m = keras.Sequential([keras.Input((24,)), L.Dense(64, activation="relu"),
                          L.Dense(4, activation="softmax")])
    m.compile(keras.optimizers.SGD(schedule, momentum=0.9), "categorical_crossentropy",
              metrics=["accuracy"])
    return m, x, y, dict(epochs=3, batch_size=32)


# -- written after the first report of this set (and the two detector
# changes it led to: the order test judged from 40 logged steps, before the
# learning-rate test; constant_output not raised on a loss that moves with
# the order), kept apart from them ------------------------------------------
def c_class_sorted_binary_sigmoid():
    """Binary labels sorted (all 0s, then all 1s), a sigmoid output with
    binary_crossentropy, shuffle=False."""
    keras, L = _layers()
    x, y = teacher_classification(3200, 12, 2, seed=81)
    x, y = _sorted(x, y)
    m = keras.Sequential([keras.Input((12,)), L.Dense(32, activation="relu"),
                          L.Dense(1, activation="sigmoid")])
    m.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy", metrics=["accuracy"])
    return m, x, y[:, 1:], dict(epochs=3, batch_size=32, shuffle=False)


def c_class_sorted_eight_classes_rmsprop():
    """Eight classes sorted by label, RMSprop, batches of 16, shuffle=False."""
    keras, L = _layers()
    x, y = _sorted(*teacher_classification(3200, 32, 8, seed=82, noise=0.02))
    m = keras.Sequential([keras.Input((32,)), L.Dense(96, activation="relu"),
                          L.Dense(96, activation="relu"), L.Dense(8, activation="softmax")])
    m.compile(keras.optimizers.RMSprop(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, y, dict(epochs=2, batch_size=16, shuffle=False)


def g_noisy_labels_small_batches():
    """30% wrong labels, batches of 8, shuffled: a very noisy batch loss."""
    keras, L = _layers()
    x, y = teacher_classification(3200, 16, 4, seed=83, noise=0.3)
    m = keras.Sequential([keras.Input((16,)), L.Dense(64, activation="relu"),
                          L.Dense(4, activation="softmax")])
    m.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, y, dict(epochs=2, batch_size=8)


SCENARIOS = [
    Scenario("c_class_sorted_cnn", "oscillating_loss", c_class_sorted_cnn,
             c_class_sorted_cnn.__doc__, cause="shuffle"),
    Scenario("c_class_sorted_sgd_mlp", "oscillating_loss", c_class_sorted_sgd_mlp,
             c_class_sorted_sgd_mlp.__doc__, cause="shuffle"),
    Scenario("c_overfit_small_data", "overfitting", c_overfit_small_data,
             c_overfit_small_data.__doc__, cause="EarlyStopping"),
    Scenario("g_class_sorted_shuffled_cnn", None, g_class_sorted_shuffled_cnn,
             g_class_sorted_shuffled_cnn.__doc__),
    Scenario("g_fixed_random_order", None, g_fixed_random_order, g_fixed_random_order.__doc__),
    Scenario("g_validated_enough_data", None, g_validated_enough_data,
             g_validated_enough_data.__doc__),
    Scenario("g_cosine_restarts", None, g_cosine_restarts, g_cosine_restarts.__doc__),
    Scenario("c_class_sorted_binary_sigmoid", "oscillating_loss", c_class_sorted_binary_sigmoid,
             c_class_sorted_binary_sigmoid.__doc__, cause="shuffle"),
    Scenario("c_class_sorted_eight_classes_rmsprop", "oscillating_loss",
             c_class_sorted_eight_classes_rmsprop, c_class_sorted_eight_classes_rmsprop.__doc__,
             cause="shuffle"),
    Scenario("g_noisy_labels_small_batches", None, g_noisy_labels_small_batches,
             g_noisy_labels_small_batches.__doc__),
]
