"""`end_epoch()` of the PyTorch and GradientTape monitors: the epochs in the
event files and the `overfitting` alert for loops outside `fit`."""

import math

import numpy as np
import pytest

from training_health.io import reader

pytestmark = pytest.mark.slow


def regression(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 20)).astype("float32")
    w = np.random.default_rng(0).standard_normal((20, 1))
    return x, (x @ w + 2.0 * rng.standard_normal((n, 1))).astype("float32")


def test_torch_loop_reports_val_loss_and_overfitting_is_raised(tmp_path):
    torch = pytest.importorskip("torch")
    from training_health.torch import HealthMonitor

    torch.manual_seed(0)
    x, y = (torch.from_numpy(a) for a in regression(32, 1))
    x_val, y_val = (torch.from_numpy(a) for a in regression(256, 2))
    model = torch.nn.Sequential(torch.nn.Linear(20, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                torch.nn.ReLU(), torch.nn.Linear(256, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    step_losses, val_losses = [], []
    with HealthMonitor(str(tmp_path), model, optimizer, flush_every=10) as monitor:
        with pytest.raises(ValueError, match="without a training step"):
            monitor.end_epoch(val_loss=1.0)  # before any step
        for epoch in range(16):
            losses = []
            for idx in torch.arange(32).split(16):
                optimizer.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
                loss.backward()
                optimizer.step()
                monitor.step(loss)
                losses.append(loss.item())
            with torch.no_grad():
                val_loss = torch.nn.functional.mse_loss(model(x_val), y_val)
            monitor.end_epoch(val_loss=val_loss, val_rmse=float(val_loss) ** 0.5)
            step_losses.append(float(np.mean(losses)))
            val_losses.append(float(val_loss))
        with pytest.raises(ValueError, match="without a training step"):
            monitor.end_epoch(val_loss=1.0)  # twice at the same step
        with pytest.raises(ValueError, match="'val_accuracy' must be one number"):
            monitor.end_epoch(val_accuracy=torch.ones(3))
    best = int(np.argmin(val_losses))
    assert best < 12 and max(val_losses[best:]) > 1.03 * val_losses[best], val_losses  # it overfits
    found = [a for a in monitor.alerts if a.kind == "overfitting"]
    assert len(found) == 1 and "epoch %d" % (best + 1) in found[0].hint
    run, _ = reader.read_run(str(tmp_path))
    assert [(e.epoch, e.step) for e in run.epochs] == [(i + 1, 2 * (i + 1)) for i in range(16)]
    for e, loss, val in zip(run.epochs, step_losses, val_losses):
        assert set(e.metrics) == {"loss", "val_loss", "val_rmse"}
        # without loss=..., the epoch's loss is the mean of the losses given to step()
        assert math.isclose(e.metrics["loss"], loss, rel_tol=1e-5)
        assert math.isclose(e.metrics["val_loss"], val, rel_tol=1e-6)


def test_tape_loop_end_epoch_writes_the_epochs(tmp_path):
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    from training_health.tf import HealthMonitor

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1)])
    optimizer = keras.optimizers.SGD(0.01)
    monitor = HealthMonitor(str(tmp_path), model, optimizer, detectors=None)
    x, y = regression(64, 1)
    for epoch in range(3):
        for i in range(0, 64, 32):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((model(x[i:i + 32], training=True) - y[i:i + 32]) ** 2)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            monitor.record(x[i:i + 32], loss, grads)
        monitor.end_epoch(loss=float(loss), val_loss=tf.constant(2.0 - epoch), accuracy=np.float32(0.5))
    with pytest.raises(ValueError, match="without a training step"):
        monitor.end_epoch()
    monitor.close()
    run, _ = reader.read_run(str(tmp_path))
    assert [(e.epoch, e.step) for e in run.epochs] == [(1, 1), (2, 3), (3, 5)]
    assert [e.metrics["val_loss"] for e in run.epochs] == [2.0, 1.0, 0.0]
    assert run.epochs[-1].metrics["loss"] == pytest.approx(float(loss))
    assert run.epochs[0].metrics["accuracy"] == 0.5
