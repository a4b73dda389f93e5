"""HealthCallback across model kinds, layers, optimizers, XLA and mixed precision."""

import os

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from training_health import format as fmt  # noqa: E402
from training_health.keras import HealthCallback  # noqa: E402

from thtest_events import layer_table  # noqa: E402

pytestmark = pytest.mark.slow


def cnn():
    return keras.Sequential([
        keras.Input((12, 12, 1)),
        keras.layers.Conv2D(4, 3, activation="relu", name="conv2d"),
        keras.layers.BatchNormalization(name="batch_normalization"),
        keras.layers.MaxPooling2D(),
        keras.layers.Dropout(0.3),
        keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax", name="dense"),
    ], name="cnn")


def cnn_data(n=64):
    rng = np.random.default_rng(0)
    return rng.random((n, 12, 12, 1), dtype="float32"), rng.integers(0, 3, n)


def multi_io():
    tokens = keras.Input((5,), dtype="int32", name="tokens")
    dense_in = keras.Input((4,), name="features")
    e = keras.layers.Embedding(20, 6, name="embed")(tokens)
    r = keras.layers.LSTM(5, name="lstm")(e)
    d = keras.layers.Dense(5, activation="relu", name="feat_dense")(dense_in)
    merged = keras.layers.Concatenate()([r, d])
    cls = keras.layers.Dense(2, activation="softmax", name="cls")(merged)
    reg = keras.layers.Dense(1, name="reg")(merged)
    return keras.Model([tokens, dense_in], {"cls": cls, "reg": reg}, name="multi_io")


def multi_io_data(n=64):
    rng = np.random.default_rng(1)
    x = {"tokens": rng.integers(0, 20, (n, 5)), "features": rng.random((n, 4), dtype="float32")}
    y = {"cls": rng.integers(0, 2, n), "reg": rng.random((n, 1), dtype="float32")}
    return x, y


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed")
        self.conv = keras.layers.Conv1D(4, 3, activation="relu", name="conv1d")
        self.gru = keras.layers.GRU(4, name="gru")
        self.head = keras.layers.Dense(1, activation="sigmoid", name="head")

    def call(self, x, training=False):
        return self.head(self.gru(self.conv(x)))


def seq_data(n=64):
    rng = np.random.default_rng(2)
    return rng.random((n, 10, 3), dtype="float32"), rng.integers(0, 2, (n, 1)).astype("float32")


def conv3d():
    return keras.Sequential([
        keras.Input((4, 6, 6, 1)),
        keras.layers.Conv3D(2, 2, activation="tanh", name="conv3d"),
        keras.layers.GlobalAveragePooling3D(),
        keras.layers.Dense(1, name="out"),
    ])


def fit_and_check(tmp_path, model, x, y, compile_kwargs, expect_layers, epochs=2, batch_size=16):
    model.compile(**compile_kwargs)
    logdir = str(tmp_path / model.name)
    cb = HealthCallback(logdir, flush_every=2, histogram_every=3)
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[cb])
    cb.close()
    names, global_names, steps, meta = layer_table(logdir)
    for name in expect_layers:
        assert name in names, (name, names)
    n_batches = int(np.ceil(len(tree_first(x)) / batch_size))
    assert sorted(steps) == list(range(epochs * n_batches))
    matrix, glob = steps[max(steps)]
    grad_norm = matrix[:, fmt.LAYER_STATS.index("grad_norm")]
    has_weights = [l.has_weights for l in meta["layers"]]
    assert np.all(np.isfinite(grad_norm[has_weights])) and np.all(grad_norm[has_weights] > 0)
    assert np.isfinite(glob["loss"]) and glob["grad_norm"] > 0
    # The model is left as it was.
    assert "train_step" not in model.__dict__ and "compute_loss" not in model.__dict__
    assert "apply" not in model.optimizer.__dict__
    assert all("call" not in layer.__dict__ for layer in model._flatten_layers())
    return names, steps, meta


def tree_first(x):
    return x if not isinstance(x, dict) else next(iter(x.values()))


@pytest.mark.compat
def test_sequential_cnn_with_bn_dropout_and_save(tmp_path):
    keras.utils.set_random_seed(0)
    x, y = cnn_data()
    model = cnn()
    names, steps, meta = fit_and_check(
        tmp_path, model, x, y,
        dict(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]),
        ["conv2d", "batch_normalization", "dense"])
    layers = {l.name: l for l in meta["layers"]}
    assert layers["conv2d"].activation == "relu" and layers["conv2d"].units == 4
    assert layers["dense"].bounds == (0.0, 1.0)
    before = model.predict(x[:8], verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(restored.predict(x[:8], verbose=0), before, rtol=1e-5, atol=1e-6)
    assert np.isfinite(model.evaluate(x, y, verbose=0)[0])


def test_callback_does_not_change_training(tmp_path):
    x, y = cnn_data()
    results = []
    for callbacks in ([], [HealthCallback(str(tmp_path / "run"), detectors=None)]):
        keras.utils.set_random_seed(3)
        model = keras.Sequential([keras.Input((12, 12, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                                  keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])
        model.compile("sgd", "sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)
        results.append([w.copy() for w in model.get_weights()])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_functional_multi_input_multi_output_embedding_lstm(tmp_path):
    x, y = multi_io_data()
    names, steps, meta = fit_and_check(
        tmp_path, multi_io(), x, y,
        dict(optimizer=keras.optimizers.RMSprop(1e-3),
             loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
             metrics={"cls": ["accuracy"], "reg": ["mae"]}),
        ["embed", "lstm", "feat_dense", "cls", "reg"])
    layers = {l.name: l for l in meta["layers"]}
    assert layers["lstm"].bounds == (-1.0, 1.0) and layers["embed"].units == 6
    matrix, glob = steps[max(steps)]
    assert "accuracy" in " ".join(glob) and "mae" in " ".join(glob)
    assert glob["input_max"] >= 1.0  # token ids and features are both covered


# Keras 3.0.0 and 3.0.1 (allowed by TensorFlow 2.16) cannot build a model
# from a data batch; an unbuilt subclassed model is monitored from 3.0.2 on.
SYMBOLIC_BUILD = hasattr(keras.Model, "_symbolic_build")


@pytest.mark.compat
@pytest.mark.skipif(not SYMBOLIC_BUILD, reason="Keras %s builds no model from a batch "
                    "(see the next test)" % keras.__version__)
def test_subclassed_model_gru_conv1d(tmp_path):
    x, y = seq_data()
    names, steps, meta = fit_and_check(
        tmp_path, Subclassed(), x, y,
        dict(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="binary_crossentropy"),
        ["conv1d", "gru", "head"])
    assert all(l.has_activation for l in meta["layers"])


@pytest.mark.compat
@pytest.mark.skipif(SYMBOLIC_BUILD, reason="Keras %s builds a model from a batch"
                    % keras.__version__)
def test_unbuilt_subclassed_model_on_keras_3_0_1_names_the_version(tmp_path):
    x, y = seq_data()
    model = Subclassed()
    model.compile("sgd", "binary_crossentropy")
    cb = HealthCallback(str(tmp_path / "run"), flush_every=2)
    with pytest.raises(RuntimeError, match=r"Keras has since 3\.0\.2; found Keras 3\.0\.[01]\b"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[cb])
    model(x[:1])  # what the message says to do
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[cb])
    cb.close()
    names, _, steps, _ = layer_table(str(tmp_path / "run"))
    assert {"conv1d", "gru", "head"} <= set(names) and sorted(steps) == list(range(4))


def test_conv3d_with_xla(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.random((32, 4, 6, 6, 1), dtype="float32")
    y = rng.random((32, 1), dtype="float32")
    model = conv3d()
    names, steps, meta = fit_and_check(
        tmp_path, model, x, y, dict(optimizer="adamw", loss="mse", jit_compile=True), ["conv3d", "out"])
    assert model.jit_compile


def test_mixed_precision(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation="relu", name="h"),
                                  keras.layers.Dense(1, name="o", dtype="float32")], name="mp")
        rng = np.random.default_rng(5)
        x, y = rng.random((64, 8), dtype="float32"), rng.random((64, 1), dtype="float32")
        names, steps, meta = fit_and_check(tmp_path, model, x, y, dict(optimizer="adam", loss="mse"), ["h", "o"])
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        matrix, glob = steps[max(steps)]
        # Gradients are unscaled: the global norm is of the order of the float32 model's, not x 32768.
        assert glob["grad_norm"] < 100
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_repeated_fit_keeps_steps_increasing_and_eval_predict_work(tmp_path):
    x, y = cnn_data(32)
    model = cnn()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    cb = HealthCallback(str(tmp_path / "run"), flush_every=1)
    for _ in range(3):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[cb], validation_data=(x, y))
        model.evaluate(x, y, verbose=0)
        model.predict(x, verbose=0)
    cb.close()
    _, _, steps, _ = layer_table(str(tmp_path / "run"))
    assert sorted(steps) == list(range(6))


def test_layer_selection_by_regex_and_bad_arguments(tmp_path):
    x, y = cnn_data(32)
    model = cnn()
    model.compile("adam", "sparse_categorical_crossentropy")
    cb = HealthCallback(str(tmp_path / "run"), layers=["conv.*"])
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[cb])
    cb.close()
    names, _, _, _ = layer_table(str(tmp_path / "run"))
    assert names == ["conv2d"]
    with pytest.raises(ValueError, match="every_n_batches"):
        HealthCallback("x", every_n_batches=0)
    with pytest.raises(ValueError, match="list of layer names"):
        HealthCallback("x", layers="conv.*")
    with pytest.raises(ValueError, match="stop_on"):
        HealthCallback("x", stop_on=["stall"])
    with pytest.raises(ValueError, match="matched no layer"):
        bad = HealthCallback(str(tmp_path / "bad"), layers=["nope"])
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[bad])


def test_every_n_batches(tmp_path):
    x, y = cnn_data(64)
    model = cnn()
    model.compile("adam", "sparse_categorical_crossentropy")
    cb = HealthCallback(str(tmp_path / "run"), every_n_batches=3, flush_every=1)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    cb.close()
    _, _, steps, _ = layer_table(str(tmp_path / "run"))
    assert sorted(steps) == [0, 3, 6]


def test_steps_per_execution_logs_every_step(tmp_path):
    x, y = cnn_data(320)
    model = cnn()
    model.compile("adam", "sparse_categorical_crossentropy", steps_per_execution=8)
    cb = HealthCallback(str(tmp_path / "run"), flush_every=2, detectors=None)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[cb])
    cb.close()
    _, _, steps, _ = layer_table(str(tmp_path / "run"))
    assert sorted(steps) == list(range(80))
    assert cb._host.collector.lost_rows == 0


@pytest.mark.compat
def test_output_layers_are_marked(tmp_path):
    x, y = multi_io_data()
    model = multi_io()
    model.compile("adam", {"cls": "sparse_categorical_crossentropy", "reg": "mse"})
    cb = HealthCallback(str(tmp_path / "run"), detectors=None)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[cb])
    cb.close()
    _, _, _, meta = layer_table(str(tmp_path / "run"))
    assert {l.name for l in meta["layers"] if l.is_output} == {"cls", "reg"}


def test_constant_output_has_near_zero_example_std(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax", name="o",
                                                                    kernel_initializer="zeros")])
    model.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    cb = HealthCallback(str(tmp_path / "run"), flush_every=1, detectors=None)
    model.fit(rng.random((64, 4), dtype="float32") * 100, rng.integers(0, 3, 64), batch_size=32,
              epochs=1, verbose=0, callbacks=[cb])
    cb.close()
    _, _, steps, _ = layer_table(str(tmp_path / "run"))
    # Only the float32 rounding of the batch mean is left (a one-pass
    # E[x^2] - E[x]^2 would leave ~1e-4 here).
    assert steps[1][0][0, fmt.LAYER_STATS.index("act_example_std")] < 1e-6


def test_layer_without_gradient_is_logged_as_not_measured(tmp_path):
    inp = keras.Input((4,))
    h = keras.layers.Dense(3, activation="relu", name="h")(inp)
    model = keras.Model(inp, {"a": keras.layers.Dense(1, name="a")(h), "b": keras.layers.Dense(1, name="b")(h)})
    model.compile("sgd", loss={"a": "mse", "b": None})  # nothing flows back into "b"
    rng = np.random.default_rng(0)
    y = {"a": rng.random((32, 1)), "b": rng.random((32, 1))}
    cb = HealthCallback(str(tmp_path / "run"), flush_every=1, detectors=None)
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        model.fit(rng.random((32, 4)), y, batch_size=16, epochs=1, verbose=0, callbacks=[cb])
    cb.close()
    names, _, steps, _ = layer_table(str(tmp_path / "run"))
    row = dict(zip(fmt.LAYER_STATS, steps[1][0][names.index("b")]))
    assert np.isnan(row["grad_norm"]) and np.isnan(row["grad_zero_frac"])  # not measured, not zero
    assert row["update_ratio"] == 0.0 and row["weight_norm"] > 0
    assert steps[1][0][names.index("h"), fmt.LAYER_STATS.index("grad_norm")] > 0
