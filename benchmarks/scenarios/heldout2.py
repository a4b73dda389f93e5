"""Held-out runs of the second generation of alerts (issue 20): written
after `constant_output`, the learning-rate-too-low rule of `stalled` and the
dead-from-the-start hint were designed on synthetic streams (tests/), and
kept apart from that calibration: each was run once to report the figures.

Buggy runs also name the cause they build in (`cause`: text the hint of
the alert the user reads first must contain); healthy runs are patterns
people really use that must stay silent.
    python benchmarks/scenario_report.py --set heldout2
"""

import numpy as np

from benchmarks.scenarios.common import Scenario, teacher_classification

N = 3200  # 100 batches of 32 per epoch


def _layers():
    import keras

    return keras, keras.layers


def _mlp(hidden, out_units, out_activation, input_dim=16, activation="relu", **kwargs):
    keras, L = _layers()
    return keras.Sequential([keras.Input((input_dim,))]
                            + [L.Dense(u, activation=activation, **kwargs) for u in hidden]
                            + [L.Dense(out_units, activation=out_activation, name="output")])


# -- buggy ------------------------------------------------------------------
def c_one_unit_softmax_cce():
    """Binary labels in one column, Dense(1, softmax) + categorical_crossentropy:
    the loss is exactly 0 with no gradient from the first step."""
    keras, _ = _layers()
    x, y = teacher_classification(N, 16, 2, seed=41)
    m = _mlp([32], 1, "softmax")
    m.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, y[:, :1], dict(epochs=2, batch_size=32)


def c_adam_lr_1e6():
    """Adam at 1e-6 on a task Adam at 1e-3 learns in an epoch."""
    keras, _ = _layers()
    x, y = teacher_classification(N, 16, 3, seed=42)
    m = _mlp([64, 64], 3, "softmax")
    m.compile(keras.optimizers.Adam(1e-6), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, y, dict(epochs=2, batch_size=32)


def c_sgd_lr_1e5_cnn():
    """A small CNN with SGD at 1e-5."""
    keras, L = _layers()
    rng = np.random.default_rng(43)
    x = rng.random((2000, 16, 16, 1)).astype("float32")
    lab = (x[:, :8, :, 0].mean((1, 2)) > x[:, 8:, :, 0].mean((1, 2))).astype(int)
    m = keras.Sequential([keras.Input((16, 16, 1)), L.Conv2D(8, 3, activation="relu"),
                          L.Flatten(), L.Dense(2, activation="softmax")])
    m.compile(keras.optimizers.SGD(1e-5), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, np.eye(2, dtype="float32")[lab], dict(epochs=2, batch_size=32)


def c_bias_init_high_sgd():
    """ReLU biases initialized at -5 with SGD at 0.05 (a high rate): the units
    are dead from the first step, because of the initializer."""
    keras, _ = _layers()
    x, y = teacher_classification(N, 16, 3, seed=44)
    m = _mlp([64, 64], 3, "softmax", bias_initializer=keras.initializers.Constant(-5.0))
    m.compile(keras.optimizers.SGD(0.05), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, y, dict(epochs=2, batch_size=32)


# -- healthy ----------------------------------------------------------------
def g_frozen_base():
    """Transfer learning: a pretrained base frozen (trainable=False), a new head."""
    keras, L = _layers()
    x, y = teacher_classification(N, 16, 3, seed=51)
    base = keras.Sequential([keras.Input((16,)), L.Dense(64, activation="relu"),
                             L.Dense(32, activation="relu")], name="base")
    pre = keras.Sequential([base, L.Dense(3, activation="softmax")])
    pre.compile(keras.optimizers.Adam(3e-3), "categorical_crossentropy")
    pre.fit(x, y, epochs=2, batch_size=32, verbose=0)  # not monitored: the pretraining
    base.trainable = False
    m = keras.Sequential([keras.Input((16,)), base, L.Dense(3, activation="softmax", name="head")])
    m.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, y, dict(epochs=2, batch_size=32)


def g_frozen_layer():
    """One hidden layer set trainable=False from the start (random features)."""
    keras, L = _layers()
    x, y = teacher_classification(N, 16, 3, seed=52)
    m = _mlp([64, 64], 3, "softmax")
    m.layers[0].trainable = False
    m.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, y, dict(epochs=2, batch_size=32)


def g_imbalanced():
    """98% / 2% binary classes with a sigmoid output."""
    keras, _ = _layers()
    x, y = teacher_classification(N, 16, 2, seed=53, priors=[0.98, 0.02])
    m = _mlp([32], 1, "sigmoid")
    m.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy", metrics=["accuracy"])
    return m, x, y[:, :1], dict(epochs=2, batch_size=32)


def g_sparse_relu_l1():
    """ReLU layer with an L1 activity regulariser: sparse, not dead."""
    keras, L = _layers()
    x, y = teacher_classification(N, 16, 3, seed=54)
    m = keras.Sequential([keras.Input((16,)),
                          L.Dense(128, activation="relu",
                                  activity_regularizer=keras.regularizers.L1(1e-3)),
                          L.Dense(3, activation="softmax", name="output")])
    m.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, y, dict(epochs=2, batch_size=32)


def g_clipnorm_sgd():
    """SGD at 0.05 with clipnorm=1.0."""
    keras, _ = _layers()
    x, y = teacher_classification(N, 16, 4, seed=55)
    m = _mlp([64, 64], 4, "softmax")
    m.compile(keras.optimizers.SGD(0.05, clipnorm=1.0), "categorical_crossentropy",
              metrics=["accuracy"])
    return m, x, y, dict(epochs=2, batch_size=32)


def g_attention_layernorm():
    """Self-attention + LayerNormalization over short sequences."""
    keras, L = _layers()
    rng = np.random.default_rng(56)
    x = rng.standard_normal((1600, 10, 8)).astype("float32")
    lab = (x[:, :, 0].sum(1) > 0).astype(int)
    inp = keras.Input((10, 8))
    h = L.Dense(16)(inp)
    a = L.MultiHeadAttention(num_heads=2, key_dim=8)(h, h)
    h = L.LayerNormalization()(h + a)
    h = L.GlobalAveragePooling1D()(h)
    out = L.Dense(2, activation="softmax", name="output")(h)
    m = keras.Model(inp, out)
    m.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, np.eye(2, dtype="float32")[lab], dict(epochs=2, batch_size=32)


def g_flat_tail():
    """Converges within an epoch on 10% wrong labels, then a long flat tail with SGD."""
    keras, _ = _layers()
    x, y = teacher_classification(N, 8, 2, seed=57, noise=0.1)
    m = _mlp([16], 2, "softmax", input_dim=8)
    m.compile(keras.optimizers.SGD(0.05), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, y, dict(epochs=6, batch_size=32)


def g_adam_1e4():
    """Adam at 1e-4: slow, but learning (the control of the rate-too-low runs)."""
    keras, _ = _layers()
    x, y = teacher_classification(N, 16, 3, seed=58)
    m = _mlp([64, 64], 3, "softmax")
    m.compile(keras.optimizers.Adam(1e-4), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, y, dict(epochs=2, batch_size=32)


SCENARIOS = [
    Scenario("c_one_unit_softmax_cce", "constant_output", c_one_unit_softmax_cce,
             c_one_unit_softmax_cce.__doc__, cause="softmax to a single unit"),
    Scenario("c_adam_lr_1e6", "stalled", c_adam_lr_1e6, c_adam_lr_1e6.__doc__,
             cause="too low"),
    Scenario("c_sgd_lr_1e5_cnn", "stalled", c_sgd_lr_1e5_cnn, c_sgd_lr_1e5_cnn.__doc__,
             cause="too low"),
    Scenario("c_bias_init_high_sgd", "dead_units", c_bias_init_high_sgd,
             c_bias_init_high_sgd.__doc__, cause="check the initializers"),
    Scenario("g_frozen_base", None, g_frozen_base, g_frozen_base.__doc__),
    Scenario("g_frozen_layer", None, g_frozen_layer, g_frozen_layer.__doc__),
    Scenario("g_imbalanced", None, g_imbalanced, g_imbalanced.__doc__),
    Scenario("g_sparse_relu_l1", None, g_sparse_relu_l1, g_sparse_relu_l1.__doc__),
    Scenario("g_clipnorm_sgd", None, g_clipnorm_sgd, g_clipnorm_sgd.__doc__),
    Scenario("g_attention_layernorm", None, g_attention_layernorm, g_attention_layernorm.__doc__),
    Scenario("g_flat_tail", None, g_flat_tail, g_flat_tail.__doc__),
    Scenario("g_adam_1e4", None, g_adam_1e4, g_adam_1e4.__doc__),
]
