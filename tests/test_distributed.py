"""HealthCallback under tf.distribute.MirroredStrategy with two logical CPU devices.

Runs in a subprocess: logical devices must be configured before TensorFlow
initializes, which the rest of the test session has already done.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("tensorflow")

SCRIPT = textwrap.dedent(r"""
    import json, sys, numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from training_health import format as fmt
    from training_health import statistics as stats
    from training_health.keras import HealthCallback
    sys.path.insert(0, sys.argv[2])
    from thtest_events import layer_table

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    keras.utils.set_random_seed(0)
    with strategy.scope():
        inp = keras.Input((8,))
        hidden = keras.layers.Dense(6, activation="relu", name="h")(inp)
        model = keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="o")(hidden))
        model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8)).astype("float32")
    y = rng.integers(0, 2, 32)

    probe = keras.Model(model.inputs, [model.get_layer("h").output, model.output])
    with tf.GradientTape() as tape:
        h, out = probe(x, training=True)
        loss = keras.losses.SparseCategoricalCrossentropy()(y, out)
    grads = [np.asarray(g) for g in tape.gradient(loss, model.trainable_variables)]

    cb = HealthCallback(sys.argv[1], flush_every=1, detectors=None, activation_examples=None)
    before = model.get_layer("h").get_weights()
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0, callbacks=[cb])
    cb.close()
    names, _, steps, _ = layer_table(sys.argv[1])
    matrix, glob = steps[0]
    row_h = dict(zip(fmt.LAYER_STATS, matrix[0].tolist()))
    ref_h = stats.activation_stats(np.asarray(h))
    ref_w = stats.weight_stats(before, model.get_layer("h").get_weights())
    print(json.dumps(dict(
        steps=sorted(steps), files=len([f for f in __import__("os").listdir(sys.argv[1])]),
        loss=[float(glob["loss"]), float(loss)],
        grad_norm=[float(glob["grad_norm"]), stats.gradient_stats(grads)["grad_norm"]],
        input_mean=[float(glob["input_mean"]), float(np.mean(x))],
        act_mean=[row_h["act_mean"], ref_h["act_mean"]],
        act_std=[row_h["act_std"], ref_h["act_std"]],
        dead=[row_h["dead_frac"], stats.dead_fraction(np.asarray(h))],
        weight_norm=[row_h["weight_norm"], ref_w["weight_norm"]],
        update_ratio=[row_h["update_ratio"], ref_w["update_ratio"]],
        accuracy=[float(glob["accuracy"]), float(np.mean(np.argmax(np.asarray(out), 1) == y))],
    )))
""")


@pytest.mark.slow
def test_mirrored_strategy_two_replicas(tmp_path):
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "run"), tests_dir],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["steps"] == [0]
    assert result["files"] == 1  # exactly one writer
    assert result["update_ratio"][1] > 1e-3  # the step moved the weights
    for key in ("loss", "grad_norm", "input_mean", "act_mean", "act_std", "dead", "accuracy",
                "weight_norm", "update_ratio"):
        logged, expected = result[key]
        assert logged == pytest.approx(expected, rel=1e-4, abs=1e-6), key
