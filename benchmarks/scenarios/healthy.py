"""Healthy runs that are traps for false alarms: each must raise nothing."""

import numpy as np

from benchmarks.scenarios.common import Scenario, images, teacher_classification

N = 3200  # 100 batches of 32 per epoch


def _keras():
    import keras

    return keras


def healthy_cnn():
    """Twin of stalled_cnn: pixels scaled to [0, 1], 3x3 filters, pooling."""
    keras = _keras()
    x, y = images(N, 28, 3, seed=1, priors=[0.45, 0.35, 0.20])
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Rescaling(1.0 / 255),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv2d"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax", name="output"),
    ])
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return model, x, y, dict(epochs=3, batch_size=32)


def converged_then_flat():
    """An easy task learned within the first epoch; the loss then sits near 0."""
    keras = _keras()
    x, y = teacher_classification(N, 8, 2, seed=21)
    x = x + 3.0 * (y[:, :1] - 0.5)  # well separated classes
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(2, activation="softmax"),
    ])
    model.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy", metrics=["accuracy"])
    return model, x, y, dict(epochs=4, batch_size=32)


def noisy_small_batches():
    """Batches of 4, dropout 0.5 and 20% wrong labels: a very noisy loss."""
    keras = _keras()
    x, y = teacher_classification(1200, 16, 3, seed=22, noise=0.2)
    model = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return model, x, y, dict(epochs=1, batch_size=4)


def batch_norm():
    """Dense -> BatchNormalization -> ReLU blocks."""
    keras = _keras()
    x, y = teacher_classification(N, 16, 4, seed=23)
    inp = keras.Input((16,))
    h = inp
    for _ in range(3):
        h = keras.layers.Dense(64, use_bias=False)(h)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.ReLU()(h)
    out = keras.layers.Dense(4, activation="softmax")(h)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return model, x, y, dict(epochs=3, batch_size=32)


def lstm():
    """An LSTM classifying whether a sequence's sum is positive."""
    keras = _keras()
    rng = np.random.default_rng(24)
    x = rng.standard_normal((1600, 12, 3)).astype("float32")
    labels = (x[:, :, 0].sum(axis=1) > 0).astype(int)
    y = np.eye(2, dtype="float32")[labels]
    model = keras.Sequential([
        keras.Input((12, 3)),
        keras.layers.LSTM(16),
        keras.layers.Dense(2, activation="softmax"),
    ])
    model.compile(keras.optimizers.Adam(3e-3), "categorical_crossentropy", metrics=["accuracy"])
    return model, x, y, dict(epochs=3, batch_size=32)


def embedding():
    """Token ids -> Embedding -> average -> softmax (text-classification shape)."""
    keras = _keras()
    rng = np.random.default_rng(25)
    vocab, length = 300, 20
    tokens = rng.integers(1, vocab, (N, length))
    polarity = rng.standard_normal(vocab)
    labels = (polarity[tokens].mean(axis=1) > 0).astype(int)
    y = np.eye(2, dtype="float32")[labels]
    model = keras.Sequential([
        keras.Input((length,), dtype="int32"),
        keras.layers.Embedding(vocab, 16),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(2, activation="softmax"),
    ])
    model.compile(keras.optimizers.Adam(5e-3), "categorical_crossentropy", metrics=["accuracy"])
    return model, tokens.astype("int32"), y, dict(epochs=3, batch_size=32)


def multi_input():
    """Two inputs through separate branches, concatenated."""
    keras = _keras()
    x, y = teacher_classification(N, 16, 3, seed=26)
    a_in, b_in = keras.Input((10,), name="a"), keras.Input((6,), name="b")
    a = keras.layers.Dense(32, activation="relu", name="branch_a")(a_in)
    b = keras.layers.Dense(16, activation="tanh", name="branch_b")(b_in)
    h = keras.layers.Concatenate()([a, b])
    h = keras.layers.Dense(32, activation="relu", name="joint")(h)
    out = keras.layers.Dense(3, activation="softmax", name="output")(h)
    model = keras.Model([a_in, b_in], out)
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return model, [x[:, :10], x[:, 10:]], y, dict(epochs=3, batch_size=32)


def early_plateau():
    """A deep net started with tiny weights: the loss sits flat, then drops."""
    keras = _keras()
    x, y = teacher_classification(N, 16, 2, seed=27)
    init = keras.initializers.RandomNormal(stddev=0.05)
    model = keras.Sequential([keras.Input((16,))] + [
        keras.layers.Dense(32, activation="tanh", kernel_initializer=init) for _ in range(4)
    ] + [keras.layers.Dense(2, activation="softmax", kernel_initializer=init)])
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy",
                  metrics=["accuracy"])
    return model, x, y, dict(epochs=3, batch_size=32)


def shallow_sigmoid():
    """Two sigmoid hidden layers with SGD: slow but fine."""
    keras = _keras()
    x, y = teacher_classification(N, 16, 3, seed=28)
    model = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(32, activation="sigmoid"),
        keras.layers.Dense(32, activation="sigmoid"),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model.compile(keras.optimizers.SGD(0.5), "categorical_crossentropy", metrics=["accuracy"])
    return model, x, y, dict(epochs=3, batch_size=32)


def sgd_regression_converged():
    """Noise-free linear regression with SGD: the loss converges to ~0."""
    keras = _keras()
    rng = np.random.default_rng(29)
    x = rng.standard_normal((N, 8)).astype("float32")
    y = (x @ rng.standard_normal((8, 1))).astype("float32")
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(1),
    ])
    model.compile(keras.optimizers.SGD(0.02), "mse")
    return model, x, y, dict(epochs=4, batch_size=32)


def tanh_mlp():
    """A tanh MLP with Glorot initialization and scaled inputs."""
    keras = _keras()
    x, y = teacher_classification(N, 16, 3, seed=30)
    model = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(64, activation="tanh"),
        keras.layers.Dense(64, activation="tanh"),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    return model, x, y, dict(epochs=3, batch_size=32)


def sigmoid_binary_output():
    """Binary classifier with a sigmoid output that becomes confidently right."""
    keras = _keras()
    x, y = teacher_classification(N, 16, 2, seed=31)
    model = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy", metrics=["accuracy"])
    return model, x, y[:, :1], dict(epochs=3, batch_size=32)


def fine_tune_low_loss():
    """A model trained beforehand, fine-tuned at a lower rate from a low, noisy loss."""
    keras = _keras()
    x, y = teacher_classification(N, 16, 3, seed=32, noise=0.05)
    model = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model.compile(keras.optimizers.Adam(3e-3), "categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=8, batch_size=32, verbose=0)  # not monitored: the "pretraining"
    model.compile(keras.optimizers.Adam(3e-4), "categorical_crossentropy", metrics=["accuracy"])
    return model, x, y, dict(epochs=3, batch_size=32)


SCENARIOS = [
    Scenario("healthy_cnn", None, healthy_cnn, healthy_cnn.__doc__),
    Scenario("converged_then_flat", None, converged_then_flat, converged_then_flat.__doc__),
    Scenario("noisy_small_batches", None, noisy_small_batches, noisy_small_batches.__doc__),
    Scenario("batch_norm", None, batch_norm, batch_norm.__doc__),
    Scenario("lstm", None, lstm, lstm.__doc__),
    Scenario("embedding", None, embedding, embedding.__doc__),
    Scenario("multi_input", None, multi_input, multi_input.__doc__),
    Scenario("early_plateau", None, early_plateau, early_plateau.__doc__),
    Scenario("shallow_sigmoid", None, shallow_sigmoid, shallow_sigmoid.__doc__),
    Scenario("sgd_regression_converged", None, sgd_regression_converged,
             sgd_regression_converged.__doc__),
    Scenario("tanh_mlp", None, tanh_mlp, tanh_mlp.__doc__),
    Scenario("sigmoid_binary_output", None, sigmoid_binary_output, sigmoid_binary_output.__doc__),
    Scenario("fine_tune_low_loss", None, fine_tune_low_loss, fine_tune_low_loss.__doc__),
]
