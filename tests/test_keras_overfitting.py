"""Real `fit` runs with and without validation data: the epochs in the
event files, the `overfitting` alert online and offline (`check`)."""

import io
import contextlib
import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from training_health.cli import main as cli_main  # noqa: E402
from training_health.detectors import DetectorSuite  # noqa: E402
from training_health.io import reader  # noqa: E402
from training_health.keras import HealthCallback  # noqa: E402

pytestmark = pytest.mark.slow


def regression(n_train, n_val, noise, seed=0):
    """y = x @ w + noise, 20 features: a big net memorizes a few noisy examples."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_train + n_val, 20)).astype("float32")
    y = (x @ rng.standard_normal((20, 1)) + noise * rng.standard_normal((n_train + n_val, 1)))
    return x[:n_train], y[:n_train].astype("float32"), x[n_train:], y[n_train:].astype("float32")


def mlp(width):
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(width, activation="relu"),
                              keras.layers.Dense(width, activation="relu"), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(3e-3), "mse")
    return model


def fit(logdir, n_train, width, epochs, validate=True, **fit_args):
    keras.utils.set_random_seed(0)
    x, y, x_val, y_val = regression(n_train, 256, noise=2.0 if n_train < 100 else 0.1)
    cb = HealthCallback(logdir, flush_every=10)
    if validate:
        fit_args["validation_data"] = (x_val, y_val)
    history = mlp(width).fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=[cb], **fit_args)
    cb.close()
    run, _ = reader.read_run(logdir)
    return cb, history, run


def test_memorizing_fit_raises_overfitting_online_and_in_check(tmp_path):
    # 32 noisy examples, two layers of 256 units: the training loss falls
    # towards 0 while the validation loss turns up after a few epochs.
    cb, history, run = fit(str(tmp_path), n_train=32, width=256, epochs=14)
    val = history.history["val_loss"]
    best = int(np.argmin(val))
    assert best < 10 and val[-1] > 1.05 * val[best], val  # the scenario overfits
    found = [a for a in cb.alerts if a.kind == "overfitting"]
    assert len(found) == 1, cb.alerts
    alert = found[0]
    assert alert.layer is None and alert.severity == "warning"
    assert "epoch %d" % (best + 1) in alert.hint and "EarlyStopping" in alert.hint
    # The epochs are in the event files: Keras's epoch logs, one per epoch,
    # at the epoch's last step (2 batches of 16 per epoch).
    assert [(e.epoch, e.step) for e in run.epochs] == [(i + 1, 2 * i + 1) for i in range(14)]
    for e, loss, val_loss in zip(run.epochs, history.history["loss"], val):
        assert set(e.metrics) == {"loss", "val_loss"}
        assert math.isclose(e.metrics["loss"], loss, rel_tol=1e-6)
        assert math.isclose(e.metrics["val_loss"], val_loss, rel_tol=1e-6)
    assert alert.step == run.epochs[alert.step // 2].step
    # Offline: the detectors replayed over the steps and epochs find it at the same step.
    replayed = DetectorSuite().replay(run.steps, run.epochs)
    assert [(a.kind, a.step) for a in replayed if a.kind == "overfitting"] == [("overfitting", alert.step)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli_main(["check", str(tmp_path)])
    assert status == 1 and "overfitting" in out.getvalue() and "EarlyStopping" in out.getvalue()


def test_the_same_fit_without_validation_data_writes_no_val_metrics_and_stays_silent(tmp_path):
    cb, history, run = fit(str(tmp_path), n_train=32, width=256, epochs=14, validate=False)
    assert "val_loss" not in history.history
    assert len(run.epochs) == 14
    assert all(set(e.metrics) == {"loss"} for e in run.epochs)
    assert not any(a.kind == "overfitting" for a in cb.alerts)
    assert not any(a.kind == "overfitting" for a in DetectorSuite().replay(run.steps, run.epochs))


def test_healthy_fit_validated_every_other_epoch_is_silent(tmp_path):
    # Enough clean data for a small net: both losses fall. Validation every
    # 2nd epoch: val_loss appears at epochs 2, 4, 6 only.
    cb, history, run = fit(str(tmp_path), n_train=512, width=32, epochs=6, validation_freq=2)
    assert [sorted(e.metrics) for e in run.epochs] == [["loss"], ["loss", "val_loss"]] * 3
    val = [e.metrics["val_loss"] for e in run.epochs if "val_loss" in e.metrics]
    assert val == sorted(val, reverse=True)  # healthy: falls at every validation
    assert not any(a.kind == "overfitting" for a in cb.alerts)
    assert not any(a.kind == "overfitting" for a in DetectorSuite().replay(run.steps, run.epochs))
