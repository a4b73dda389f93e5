"""Alerts raised online by HealthCallback: written to the run, logged once, hooks and stop_on."""

import logging
import threading

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from training_health.cli import demo  # noqa: E402
from training_health import format as fmt  # noqa: E402
from training_health.keras import HealthCallback  # noqa: E402

from thtest_events import read_run  # noqa: E402

pytestmark = pytest.mark.slow


def stalled_fit(logdir, epochs=3, **kwargs):
    keras.utils.set_random_seed(0)
    x, y = demo.images(1024)
    model = demo.stalled_cnn()
    cb = HealthCallback(logdir, flush_every=10, **kwargs)
    history = model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[cb])
    cb.close()
    return cb, history


@pytest.mark.compat
def test_stalled_cnn_alerts_written_logged_once_and_hooked(tmp_path, caplog):
    seen, threads = [], set()

    def hook(alert):
        seen.append(alert)
        threads.add(threading.current_thread())

    with caplog.at_level(logging.WARNING, logger="training_health"):
        cb, history = stalled_fit(str(tmp_path), on_alert=hook)
    kinds = {a.kind for a in cb.alerts}
    assert "stalled" in kinds and "dead_units" in kinds
    assert seen == cb.alerts
    # The rows are read and checked on the logger's reader thread, but the
    # hook (like stop_on) runs on the training thread.
    assert threads == {threading.main_thread()}
    assert cb._host._thread is None  # stopped by close()
    assert not any(t.name == "training-health-reader" for t in threading.enumerate())
    stall = next(a for a in cb.alerts if a.kind == "stalled")
    assert "255" in stall.hint or "254" in stall.hint  # the raw-pixel input range is named
    # One log line per raised alert, not one per batch; the stall follows
    # from the dead conv layer: one short line, without the hint.
    dead = next(a for a in cb.alerts if a.kind == "dead_units")
    assert (dead.incident, dead.caused_by) == (1, None)
    assert (stall.incident, stall.caused_by) == (1, "dead_units@%d/%s" % (dead.step, dead.layer))
    lines = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
    assert len(lines) == 1
    assert "then step %d critical stalled" % stall.step in lines[0]
    assert "follows from dead_units@" in lines[0] and "Hint" not in lines[0]
    # The alerts are in the run's event files, in the format, with their incidents.
    logged = read_run(str(tmp_path))[fmt.TAG_ALERTS]
    decoded = [a for _, value, _ in logged for a in fmt.decode_alerts(value)]
    assert {a["kind"] for a in decoded if not a.get("cleared")} == kinds
    assert {(a["kind"], a["incident"], a["caused_by"]) for a in decoded if a["kind"] == "stalled"} \
        == {("stalled", 1, stall.caused_by)}


def test_stop_on_ends_training_early(tmp_path):
    cb, history = stalled_fit(str(tmp_path), epochs=20, stop_on=["dead_units"])
    assert any(a.kind == "dead_units" for a in cb.alerts)
    assert len(history.history["loss"]) < 20


def test_on_alert_exception_is_logged_not_raised(tmp_path, caplog):
    def broken(alert):
        raise RuntimeError("webhook down")

    with caplog.at_level(logging.ERROR, logger="training_health"):
        cb, history = stalled_fit(str(tmp_path), epochs=2, on_alert=broken)
    assert cb.alerts and len(history.history["loss"]) == 2
    assert any("on_alert raised" in r.getMessage() for r in caplog.records)


@pytest.mark.compat
def test_keeps_keras_async_batch_dispatch():
    # Keras dispatches batch hooks asynchronously only when every callback that
    # overrides them declares `async_safe`; HealthCallback overrides
    # on_train_batch_end, so it must declare it (backends that are not thread
    # safe, like TensorFlow's today, dispatch synchronously either way).
    from keras.src import backend

    cb = HealthCallback("unused")
    assert type(cb).on_train_batch_end is not keras.callbacks.Callback.on_train_batch_end
    assert cb.async_safe is True
    callbacks = keras.callbacks.CallbackList([cb])
    if not hasattr(callbacks, "_async_train"):
        pytest.skip("Keras %s dispatches every batch hook synchronously (asynchronous "
                    "dispatch came in Keras 3.6)" % keras.__version__)
    assert callbacks._async_train == bool(backend.IS_THREAD_SAFE)


def test_write_failure_is_reported_once_and_training_continues(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a regular file where the logdir's parent should be")
    x, y = demo.images(256)
    model = demo.healthy_cnn()
    cb = HealthCallback(str(blocker / "run"), flush_every=2, detectors=None)
    with pytest.warns(RuntimeWarning, match="could not write") as record:
        history = model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[cb])
        cb.close()
    assert len(history.history["loss"]) == 2
    assert len([w for w in record if "could not write" in str(w.message)]) == 1
    assert np.isfinite(model.predict(x[:2], verbose=0)).all()


@pytest.mark.compat
@pytest.mark.skipif(not hasattr(keras.Model, "_symbolic_build"),
                    reason="Keras %s builds no model from a batch (Keras 3.0.2 does)"
                    % keras.__version__)
def test_layers_called_inside_a_loop_are_skipped_with_one_warning(tmp_path, caplog):
    class RowWise(keras.Model):
        def __init__(self):
            super().__init__()
            self.inner = keras.layers.Dense(4, activation="relu", name="inner")
            self.out = keras.layers.Dense(1, name="out")

        def call(self, x):
            import tensorflow as tf

            rows = tf.map_fn(lambda r: self.inner(r[None])[0], x)  # traced in a while-loop body
            return self.out(rows)

    model = RowWise()
    model.compile("sgd", "mse")
    x = np.random.rand(32, 3).astype("float32")
    y = np.random.rand(32, 1).astype("float32")
    cb = HealthCallback(str(tmp_path), flush_every=1, detectors=None)
    with caplog.at_level(logging.WARNING, logger="training_health"):
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[cb])
    cb.close()
    skipped = [r for r in caplog.records if "could not capture" in r.getMessage()]
    assert len(skipped) == 1 and "inner" in skipped[0].getMessage()
    from thtest_events import layer_table

    names, _, steps, meta = layer_table(str(tmp_path))
    info = {l.name: l for l in meta["layers"]}
    assert not info["inner"].has_activation and info["out"].has_activation
    row = dict(zip(fmt.LAYER_STATS, steps[3][0][names.index("inner")]))
    assert row["grad_norm"] > 0 and np.isnan(row["act_mean"])


INTERRUPTED = r"""
import sys, numpy as np, keras
from training_health.keras import HealthCallback
x = np.random.rand(256, 8).astype("float32"); y = np.random.rand(256, 1).astype("float32")
m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
m.compile("sgd", "mse")
class Interrupt(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 6:
            raise KeyboardInterrupt
cb = HealthCallback(sys.argv[1], flush_every=int(sys.argv[2]), detectors=None)
m.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[cb, Interrupt()])
"""


@pytest.mark.parametrize("flush_every", [100, 4], ids=["no-flush-yet", "writer-open"])
def test_interrupted_training_keeps_its_steps_at_exit(tmp_path, flush_every):
    import subprocess
    import sys

    from thtest_events import layer_table

    proc = subprocess.run([sys.executable, "-c", INTERRUPTED, str(tmp_path / "run"), str(flush_every)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr
    assert "could not process" not in proc.stderr
    # Steps still in the device buffer were written at exit.
    assert sorted(layer_table(str(tmp_path / "run"))[2]) == list(range(7))


def test_unknown_bucket_scheme_fails_when_the_callback_is_made():
    with pytest.raises(ValueError, match="nosuchscheme"):
        HealthCallback("nosuchscheme://bucket/run")
