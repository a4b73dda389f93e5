"""Held-out runs: written after the detectors were calibrated on `buggy` and
`healthy`, to see how the defaults do on runs they were not tuned on.

Their first run gave 12/12 healthy runs without alerts and 8/8 buggy runs
detected; `b_sigmoid_raw_big_conv` (the stalled CNN with a hidden layer) got
its stall only at step 176, because a rare example still sparked the dead
filter now and then. That led to one change (a layer with zero gradient on
90% of the window counts as cut off); everything else is as first run.
Run them with `python benchmarks/scenario_report.py --set heldout`.
"""

import numpy as np

from benchmarks.scenarios.common import Scenario, teacher_classification


def _layers():
    import keras

    return keras, keras.layers


def seq(layers):
    keras, _ = _layers()
    return keras.Sequential(layers)


def h_cnn_bn():
    """CNN on colour images with BatchNormalization, Dropout and global pooling."""
    keras, L = _layers()
    rng = np.random.default_rng(1)
    x = rng.random((2000, 16, 16, 3)).astype("float32")
    lab = (x[:, :8, :, 0].mean((1, 2)) > x[:, 8:, :, 0].mean((1, 2))).astype(int)
    m = seq(
        [
            keras.Input((16, 16, 3)),
            L.Conv2D(16, 3, padding="same"),
            L.BatchNormalization(),
            L.ReLU(),
            L.MaxPooling2D(),
            L.Dropout(0.3),
            L.Conv2D(16, 3),
            L.ReLU(),
            L.GlobalAveragePooling2D(),
            L.Dense(2, activation="softmax"),
        ]
    )
    m.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, np.eye(2, dtype="float32")[lab], dict(epochs=3, batch_size=32)


def h_gru_reg():
    """GRU regression of a sequence sum (MSE)."""
    keras, L = _layers()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1600, 10, 4)).astype("float32")
    y = x[:, :, 1].sum(1, keepdims=True).astype("float32")
    m = seq([keras.Input((10, 4)), L.GRU(16), L.Dense(1)])
    m.compile(keras.optimizers.Adam(3e-3), "mse")
    return m, x, y, dict(epochs=3, batch_size=32)


def h_leaky_momentum():
    """LeakyReLU MLP with SGD and momentum 0.9."""
    keras, L = _layers()
    x, y = teacher_classification(3200, 16, 3, seed=3)
    m = seq(
        [
            keras.Input((16,)),
            L.Dense(64),
            L.LeakyReLU(0.1),
            L.Dense(64),
            L.LeakyReLU(0.1),
            L.Dense(3, activation="softmax"),
        ]
    )
    m.compile(
        keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy", metrics=["accuracy"]
    )
    return m, x, y, dict(epochs=3, batch_size=32)


def h_gelu_adamw():
    """GELU MLP with AdamW and weight decay."""
    keras, L = _layers()
    x, y = teacher_classification(3200, 16, 3, seed=4)
    m = seq(
        [
            keras.Input((16,)),
            L.Dense(64, activation="gelu"),
            L.Dense(64, activation="gelu"),
            L.Dense(3, activation="softmax"),
        ]
    )
    m.compile(
        keras.optimizers.AdamW(1e-3, weight_decay=0.01),
        "categorical_crossentropy",
        metrics=["accuracy"],
    )
    return m, x, y, dict(epochs=3, batch_size=32)


def h_unscaled_targets():
    """Regression on unscaled targets (~500 +- 300): large gradients, but learning."""
    keras, L = _layers()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3200, 8)).astype("float32")
    y = (100 * x @ rng.standard_normal((8, 1)) + 500).astype("float32")
    m = seq([keras.Input((8,)), L.Dense(32, activation="relu"), L.Dense(1)])
    m.compile(keras.optimizers.Adam(1e-2), "mse")
    return m, x, y, dict(epochs=3, batch_size=32)


def h_batch1():
    """Online learning: batches of one example."""
    keras, L = _layers()
    x, y = teacher_classification(400, 8, 2, seed=6)
    m = seq([keras.Input((8,)), L.Dense(16, activation="relu"), L.Dense(2, activation="softmax")])
    m.compile(keras.optimizers.SGD(0.01), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, y, dict(epochs=1, batch_size=1)


def h_conv1d_text():
    """Embedding + Conv1D + global max pooling on token ids."""
    keras, L = _layers()
    rng = np.random.default_rng(7)
    tok = rng.integers(0, 100, (3200, 30))
    pol = rng.standard_normal(100)
    lab = (pol[tok].sum(1) > 0).astype(int)
    m = seq(
        [
            keras.Input((30,), dtype="int32"),
            L.Embedding(100, 8),
            L.Conv1D(16, 3, activation="relu"),
            L.GlobalMaxPooling1D(),
            L.Dense(2, activation="softmax"),
        ]
    )
    m.compile(keras.optimizers.Adam(3e-3), "categorical_crossentropy", metrics=["accuracy"])
    return m, tok.astype("int32"), np.eye(2, dtype="float32")[lab], dict(epochs=3, batch_size=32)


def h_autoencoder():
    """Autoencoder with a 4-unit linear bottleneck and a sigmoid output (MSE)."""
    keras, L = _layers()
    rng = np.random.default_rng(8)
    z = rng.standard_normal((3200, 4))
    x = (1 / (1 + np.exp(-z @ rng.standard_normal((4, 32))))).astype("float32")
    m = seq(
        [
            keras.Input((32,)),
            L.Dense(16, activation="relu"),
            L.Dense(4),
            L.Dense(16, activation="relu"),
            L.Dense(32, activation="sigmoid"),
        ]
    )
    m.compile(keras.optimizers.Adam(1e-3), "mse")
    return m, x, x, dict(epochs=3, batch_size=32)


def h_multi_output():
    """Two heads (classification and regression), two losses."""
    keras, L = _layers()
    x, y = teacher_classification(3200, 16, 3, seed=9)
    r = (x[:, :1] * 2).astype("float32")
    i = keras.Input((16,))
    h = L.Dense(32, activation="relu")(i)
    a = L.Dense(3, activation="softmax", name="cls")(h)
    b = L.Dense(1, name="reg")(h)
    m = keras.Model(i, [a, b])
    m.compile(keras.optimizers.Adam(1e-3), loss=["categorical_crossentropy", "mse"])
    return m, x, [y, r], dict(epochs=3, batch_size=32)


def h_warmup_cosine():
    """Learning rate warmed up from 0, then cosine decay."""
    keras, L = _layers()
    x, y = teacher_classification(3200, 16, 3, seed=10)
    sched = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=300, warmup_target=3e-3, warmup_steps=30
    )
    m = seq([keras.Input((16,)), L.Dense(64, activation="relu"), L.Dense(3, activation="softmax")])
    m.compile(keras.optimizers.Adam(sched), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, y, dict(epochs=3, batch_size=32)


def h_rmsprop_tanh():
    """Three tanh layers with RMSprop."""
    keras, L = _layers()
    x, y = teacher_classification(3200, 16, 3, seed=11)
    m = seq(
        [
            keras.Input((16,)),
            L.Dense(32, activation="tanh"),
            L.Dense(32, activation="tanh"),
            L.Dense(32, activation="tanh"),
            L.Dense(3, activation="softmax"),
        ]
    )
    m.compile(keras.optimizers.RMSprop(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, y, dict(epochs=3, batch_size=32)


def h_big_batch():
    """Batches of 512 with SGD: few steps, small changes per step."""
    keras, L = _layers()
    x, y = teacher_classification(12800, 16, 3, seed=12)
    m = seq([keras.Input((16,)), L.Dense(64, activation="relu"), L.Dense(3, activation="softmax")])
    m.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, y, dict(epochs=8, batch_size=512)


def b_cnn_high_lr():
    """CNN with Adam at 0.5: ReLUs die after the first steps."""
    keras, L = _layers()
    rng = np.random.default_rng(21)
    x = rng.random((2000, 16, 16, 1)).astype("float32")
    lab = (x[:, :8, :, 0].mean((1, 2)) > x[:, 8:, :, 0].mean((1, 2))).astype(int)
    m = seq(
        [
            keras.Input((16, 16, 1)),
            L.Conv2D(16, 3, activation="relu"),
            L.Conv2D(16, 3, activation="relu"),
            L.Flatten(),
            L.Dense(32, activation="relu"),
            L.Dense(2, activation="softmax"),
        ]
    )
    m.compile(keras.optimizers.Adam(0.5), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, np.eye(2, dtype="float32")[lab], dict(epochs=3, batch_size=32)


def b_sigmoid_adam():
    """Ten sigmoid layers with Adam."""
    keras, L = _layers()
    x, y = teacher_classification(3200, 16, 2, seed=22)
    m = seq(
        [keras.Input((16,))]
        + [L.Dense(32, activation="sigmoid") for _ in range(10)]
        + [L.Dense(2, activation="softmax")]
    )
    m.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, y, dict(epochs=3, batch_size=32)


def b_nan_labels():
    """Regression targets with a few NaN."""
    keras, L = _layers()
    rng = np.random.default_rng(23)
    x = rng.standard_normal((3200, 8)).astype("float32")
    y = (x @ rng.standard_normal((8, 1))).astype("float32")
    y[rng.choice(3200, 10)] = np.nan
    m = seq([keras.Input((8,)), L.Dense(16, activation="relu"), L.Dense(1)])
    m.compile(keras.optimizers.Adam(1e-3), "mse")
    return m, x, y, dict(epochs=3, batch_size=32)


def b_sgd_tiny_cnn():
    """CNN with SGD at 1e-9."""
    keras, L = _layers()
    rng = np.random.default_rng(24)
    x = rng.random((2000, 16, 16, 1)).astype("float32")
    lab = (x[:, :8, :, 0].mean((1, 2)) > x[:, 8:, :, 0].mean((1, 2))).astype(int)
    m = seq(
        [
            keras.Input((16, 16, 1)),
            L.Conv2D(8, 3, activation="relu"),
            L.Flatten(),
            L.Dense(2, activation="softmax"),
        ]
    )
    m.compile(keras.optimizers.SGD(1e-9), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, np.eye(2, dtype="float32")[lab], dict(epochs=3, batch_size=32)


def b_tanh_raw():
    """tanh layer fed inputs scaled x255."""
    keras, L = _layers()
    x, y = teacher_classification(3200, 16, 3, seed=25)
    m = seq([keras.Input((16,)), L.Dense(32, activation="tanh"), L.Dense(3, activation="softmax")])
    m.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return m, x * 255, y, dict(epochs=3, batch_size=32)


def b_rnn_explode():
    """ReLU SimpleRNN over 40 steps with recurrent gain 2."""
    keras, L = _layers()
    rng = np.random.default_rng(26)
    x = rng.standard_normal((1600, 40, 4)).astype("float32")
    y = x[:, :, 0].sum(1, keepdims=True).astype("float32")
    m = seq(
        [
            keras.Input((40, 4)),
            L.SimpleRNN(
                32, activation="relu", recurrent_initializer=keras.initializers.Orthogonal(gain=2.0)
            ),
            L.Dense(1),
        ]
    )
    m.compile(keras.optimizers.SGD(1e-3), "mse")
    return m, x, y, dict(epochs=3, batch_size=32)


def b_sgd_oscillate():
    """SGD at 3.0 with momentum 0.9."""
    keras, L = _layers()
    x, y = teacher_classification(3200, 16, 3, seed=27)
    m = seq([keras.Input((16,)), L.Dense(32, activation="tanh"), L.Dense(3, activation="softmax")])
    m.compile(
        keras.optimizers.SGD(3.0, momentum=0.9), "categorical_crossentropy", metrics=["accuracy"]
    )
    return m, x, y, dict(epochs=3, batch_size=32)


def b_sigmoid_raw_big_conv():
    """Raw 0..255 pixels, a 16x16 filter on 16x16 images, a hidden ReLU layer."""
    keras, L = _layers()
    x = np.random.default_rng(28).integers(0, 256, (2000, 16, 16, 1)).astype("float32")
    lab = (x[:, :8].mean((1, 2, 3)) > x[:, 8:].mean((1, 2, 3))).astype(int)
    m = seq(
        [
            keras.Input((16, 16, 1)),
            L.Conv2D(8, 16, activation="relu"),
            L.Flatten(),
            L.Dense(16, activation="relu"),
            L.Dense(2, activation="softmax"),
        ]
    )
    m.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return m, x, np.eye(2, dtype="float32")[lab], dict(epochs=3, batch_size=32)


SCENARIOS = [
    Scenario("h_cnn_bn", None, h_cnn_bn, h_cnn_bn.__doc__),
    Scenario("h_gru_reg", None, h_gru_reg, h_gru_reg.__doc__),
    Scenario("h_leaky_momentum", None, h_leaky_momentum, h_leaky_momentum.__doc__),
    Scenario("h_gelu_adamw", None, h_gelu_adamw, h_gelu_adamw.__doc__),
    Scenario("h_unscaled_targets", None, h_unscaled_targets, h_unscaled_targets.__doc__),
    Scenario("h_batch1", None, h_batch1, h_batch1.__doc__),
    Scenario("h_conv1d_text", None, h_conv1d_text, h_conv1d_text.__doc__),
    Scenario("h_autoencoder", None, h_autoencoder, h_autoencoder.__doc__),
    Scenario("h_multi_output", None, h_multi_output, h_multi_output.__doc__),
    Scenario("h_warmup_cosine", None, h_warmup_cosine, h_warmup_cosine.__doc__),
    Scenario("h_rmsprop_tanh", None, h_rmsprop_tanh, h_rmsprop_tanh.__doc__),
    Scenario("h_big_batch", None, h_big_batch, h_big_batch.__doc__),
    Scenario("b_cnn_high_lr", "dead_units", b_cnn_high_lr, b_cnn_high_lr.__doc__, cause="is high"),
    Scenario("b_sigmoid_adam", "vanishing_gradients", b_sigmoid_adam, b_sigmoid_adam.__doc__,
             cause="stacked sigmoid/tanh"),
    Scenario("b_nan_labels", "nan_inf", b_nan_labels, b_nan_labels.__doc__,
             cause="check the targets"),
    Scenario("b_sgd_tiny_cnn", "stalled", b_sgd_tiny_cnn, b_sgd_tiny_cnn.__doc__, cause="low"),
    Scenario("b_tanh_raw", "saturation", b_tanh_raw, b_tanh_raw.__doc__, cause="inputs range"),
    Scenario("b_rnn_explode", "exploding_gradients", b_rnn_explode, b_rnn_explode.__doc__),
    Scenario("b_sgd_oscillate", "oscillating_loss", b_sgd_oscillate, b_sgd_oscillate.__doc__,
             cause="is high"),
    Scenario(
        "b_sigmoid_raw_big_conv", "stalled", b_sigmoid_raw_big_conv, b_sigmoid_raw_big_conv.__doc__,
        cause="inputs range",
    ),
]
