"""The GradientTape wrapper: one call per step, same statistics as the callback."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from training_health import format as fmt  # noqa: E402
from training_health import statistics as stats  # noqa: E402
from training_health.tf import HealthMonitor  # noqa: E402

from thtest_events import layer_table  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.compat]


def setup(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, activation="relu", name="h"),
                              keras.layers.Dense(2, activation="softmax", name="o")])
    return model, keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy()


def tape_step(model, opt, loss_fn, monitor):
    """The README's custom loop step: one `monitor.record` call per step."""
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        monitor.record(x, loss, grads)
        return loss
    return train_step


@pytest.mark.parametrize("mode", ["eager", "tf.function", "xla"])
def test_tape_loop_matches_reference(tmp_path, mode):
    model, opt, loss_fn = setup()
    monitor = HealthMonitor(str(tmp_path), model, opt, detectors=None, activation_examples=None)
    train_step = tape_step(model, opt, loss_fn, monitor)
    if mode == "eager":
        step_fn = train_step
    else:
        step_fn = tf.function(train_step, jit_compile=mode == "xla")
    rng = np.random.default_rng(0)
    probe = keras.Model(model.inputs, [model.get_layer("h").output])
    refs = []
    for _ in range(3):
        x = rng.normal(size=(16, 8)).astype("float32")
        y = rng.integers(0, 2, 16)
        before = [w.copy() for w in model.get_layer("h").get_weights()]
        hidden = np.asarray(probe(x, training=True))
        loss = float(step_fn(x, y))
        refs.append((x, hidden, before, model.get_layer("h").get_weights(), loss))
    monitor.close()
    assert all("call" not in layer.__dict__ for layer in model.layers)

    names, _, steps, meta = layer_table(str(tmp_path))
    assert names == ["h", "o"] and sorted(steps) == [0, 1, 2]
    for step, (x, hidden, before, after, loss) in enumerate(refs):
        matrix, glob = steps[step]
        row = dict(zip(fmt.LAYER_STATS, matrix[0]))
        assert glob["loss"] == pytest.approx(loss, rel=1e-5)
        assert glob["input_mean"] == pytest.approx(float(np.mean(x)), rel=1e-4, abs=1e-6)
        assert row["update_ratio"] == pytest.approx(stats.weight_stats(before, after)["update_ratio"], rel=1e-4)
        for key, value in stats.activation_stats(hidden).items():
            assert row[key] == pytest.approx(value, rel=1e-4, abs=1e-6, nan_ok=True), key
        assert glob["learning_rate"] == pytest.approx(0.1)


def test_tape_monitor_arguments():
    model, opt, _ = setup()
    with pytest.raises(ValueError, match="built model"):
        HealthMonitor("x", keras.Sequential([keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match="collect_secs"):
        HealthMonitor("x", model, collect_secs=0)
    monitor = HealthMonitor("unused", model, detectors=None)
    with pytest.raises(ValueError, match="gradients for"):
        monitor.record(tf.zeros([2, 8]), tf.constant(0.0), [tf.zeros([8, 6])])
    monitor.close()


def test_output_statistics_do_not_wait_for_the_backward_pass(tmp_path):
    # Each statistic runs as soon as its inputs exist: the statistics of a
    # layer's output belong to the forward pass. (They once sat under a
    # control dependency on the dead-unit updates, which wait for the bias
    # gradients, so all of them ran after the whole backward pass.)
    model, opt, loss_fn = setup()
    monitor = HealthMonitor(str(tmp_path), model, opt, detectors=None)
    train_step = tf.function(tape_step(model, opt, loss_fn, monitor))
    graph = train_step.get_concrete_function(
        tf.TensorSpec([16, 8], tf.float32), tf.TensorSpec([16], tf.int64)).graph
    monitor.close()

    def upstream(op):
        """Names of every op that `op` waits for (data and control inputs)."""
        seen, todo = set(), [op]
        while todo:
            current = todo.pop()
            for parent in [t.op for t in current.inputs] + list(current.control_inputs):
                if parent.name not in seen:
                    seen.add(parent.name)
                    todo.append(parent)
        return seen

    ops = graph.get_operations()
    act_ops = [op for op in ops if "training_health_activations/" in op.name]
    grad_ops = [op for op in ops if "training_health_gradients/" in op.name]
    assert act_ops and grad_ops
    # The check can fail: the gradient statistics do depend on the backward pass.
    assert any("gradient_tape/" in name for op in grad_ops for name in upstream(op))
    waiting = sorted({op.name for op in act_ops if any("gradient_tape/" in n for n in upstream(op))})
    assert not waiting, waiting[:5]


def test_stop_on_an_alert_of_the_tape_monitor_requests_the_stop(tmp_path):
    # The alert path with the detectors on: NaN inputs give a nan_inf alert.
    model, opt, loss_fn = setup()
    monitor = HealthMonitor(str(tmp_path), model, opt, stop_on=["nan_inf"])
    train_step = tf.function(tape_step(model, opt, loss_fn, monitor))
    x = np.full((16, 8), np.nan, np.float32)
    y = np.zeros(16, np.int64)
    for _ in range(3):
        train_step(x, y)
    monitor.flush()
    assert monitor.stop_requested
    assert "nan_inf" in [a.kind for a in monitor.alerts]
    monitor.close()


class BuggyDetector:
    """A user's detector with a bug: raises at every step from step 2 on."""

    def update(self, step, stats):
        if step >= 2:
            raise ZeroDivisionError("a bug in a user's detector")
        return []

    def reset(self):
        pass


def test_an_error_in_the_collecting_thread_is_logged_and_close_still_restores_and_closes(tmp_path, caplog):
    import logging
    import time

    from training_health.detectors import DetectorSuite
    from training_health.io import reader

    model, opt, loss_fn = setup()
    monitor = HealthMonitor(str(tmp_path), model, opt, detectors=DetectorSuite([BuggyDetector()]),
                            collect_secs=0.05)
    train_step = tape_step(model, opt, loss_fn, monitor)
    rng = np.random.default_rng(0)
    caplog.set_level(logging.WARNING, "training_health")
    for _ in range(6):
        train_step(tf.constant(rng.normal(size=(16, 8)), tf.float32), tf.constant(rng.integers(0, 2, 16)))
        time.sleep(0.1)  # the background thread collects (and fails) while training goes on
    monitor.close()  # does not raise
    assert all("call" not in layer.__dict__ for layer in model.layers)  # the layers are unwrapped
    failures = [r for r in caplog.records if "could not process" in r.getMessage()]
    assert failures and all(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in failures)
    assert len(failures) <= 2  # once from the thread, once from close(); not once per step
    (run,) = reader.read_logdir(str(tmp_path))  # the writer was closed: its file is complete
    assert [s.step for s in run.steps][:3] == [0, 1, 2]


def test_eager_record_takes_numpy_inputs(tmp_path):
    from training_health.io import reader

    model, opt, loss_fn = setup()
    monitor = HealthMonitor(str(tmp_path), model, opt, detectors=None)
    x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
    tape_step(model, opt, loss_fn, monitor)(x, np.zeros(16, np.int64))  # eager, numpy batch
    monitor.close()
    (run,) = reader.read_logdir(str(tmp_path))
    assert run.steps[0].global_values["input_mean"] == pytest.approx(float(x[:8].mean()), rel=1e-4)  # activation_examples=8
