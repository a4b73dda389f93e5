"""Frozen layers (Keras `trainable=False`, PyTorch `requires_grad=False`):
monitored and marked `frozen`, silent by design.

A frozen layer gets no gradient on purpose. Both captures list it (activation
and dead-unit columns measured, gradient and weight columns NaN) with
`LayerInfo.frozen`; no detector reads its missing gradient as vanishing,
stalled, dead or exploding; `check` and `watch` say nothing about it while
the trainable part is healthy. Dead units of a frozen layer are still
reported (see docs/alerts.md), with a hint that names the frozen weights
instead of the learning rate or the initializers.
"""

import contextlib
import io

import numpy as np
import pytest

from training_health import format as fmt
from training_health.cli import main as cli_main
from training_health.cli.watch import worst_layer
from training_health.detectors import (
    DeadUnitsDetector, DetectorSuite, StalledDetector, VanishingGradientsDetector,
    default_detectors, is_epoch_level)
from training_health.io import reader
from training_health.records import LayerInfo

from test_detectors import make_step, raised, run, stream

NOT_MEASURED = [s for s in fmt.LAYER_STATS if s.startswith("grad_")] + ["weight_norm", "update_ratio"]

# A frozen base (convolution, its ReLU layer, a tanh Dense) before a trainable head.
FROZEN_BASE = (
    LayerInfo("base_conv", "Conv2D", "relu", None, 16, False, True, frozen=True),
    LayerInfo("base_bn", "BatchNormalization", "", None, 16, False, True, frozen=True),
    LayerInfo("base_relu", "ReLU", "relu", None, 16, False, True),
    LayerInfo("base_dense", "Dense", "tanh", (-1.0, 1.0), 32, False, True, frozen=True),
)
HEAD = (
    LayerInfo("head_hidden", "Dense", "relu", None, 32, True, True),
    LayerInfo("out", "Dense", "softmax", (0.0, 1.0), 3, True, True, is_output=True),
)
LAYERS = FROZEN_BASE + HEAD


def frozen_rows(step, extra=None):
    """Layer overrides: the frozen layers' gradient and weight columns not measured."""
    out = {info.name: {s: float("nan") for s in NOT_MEASURED}
           for info in LAYERS if not info.has_weights}
    for name, stats in (extra or {}).items():
        out.setdefault(name, {}).update(stats)
    return out


# -- detectors on constructed streams -----------------------------------------


@pytest.mark.parametrize("every", [1, 7])
def test_every_detector_is_silent_on_a_frozen_base_with_a_learning_head(every):
    steps = stream(2000 // every, layers=LAYERS, every=every, layer_fn=frozen_rows)
    for detector in default_detectors():
        if not is_epoch_level(detector):
            assert run(detector, steps) == [], type(detector).__name__
    assert DetectorSuite().replay(steps) == []


def test_a_frozen_layer_without_gradient_is_not_dead_vanishing_or_stalled():
    # What a missing gradient could be mistaken for: a frozen ReLU layer whose
    # batch shows most units at 0 (but not over the window), with a flat loss
    # that is still coming down; the head learns.
    def layers(step):
        return frozen_rows(step, {"base_conv": {"dead_frac": 0.95, "dead_frac_window": 0.1}})
    steps = stream(600, layers=LAYERS, layer_fn=layers)
    assert run(DeadUnitsDetector(), steps) == []
    assert run(VanishingGradientsDetector(), steps) == []
    assert run(StalledDetector(), steps) == []


def test_the_trainable_part_still_stalls_and_vanishes_beside_a_frozen_base():
    # A stall: flat loss, the head's weights do not move.
    steps = stream(600, layers=LAYERS, loss=lambda s, r: 1.1 + 1e-4 * r.standard_normal(),
                   layer_fn=lambda s: frozen_rows(s, {n: {"update_ratio": 1e-9}
                                                      for n in ("head_hidden", "out")}))
    stalls = raised(run(StalledDetector(), steps))
    assert [a.kind for a in stalls] == ["stalled"]
    assert "base_" not in stalls[0].message
    # Vanishing: judged over the trainable sigmoid stack, frozen rows left out.
    head = tuple(LayerInfo("s%d" % i, "Dense", "sigmoid", (0.0, 1.0), 32, True, True)
                 for i in range(6)) + (HEAD[1],)
    overrides = {"s%d" % i: {"grad_norm": 0.5 * 0.1 ** (6 - i)} for i in range(6)}
    steps = stream(200, layers=FROZEN_BASE + head,
                   layer_fn=lambda s: dict(frozen_rows(s), **overrides))
    alerts = raised(run(VanishingGradientsDetector(), steps))
    assert [(a.kind, a.layer) for a in alerts] == [("vanishing_gradients", "s0")]


def test_dead_units_of_a_frozen_layer_name_the_frozen_weights_not_the_initializers():
    steps = stream(100, layers=LAYERS, layer_fn=lambda s: frozen_rows(s, {
        "base_conv": {"dead_frac": 0.97, "dead_frac_window": 0.95},
        "base_relu": {"dead_frac": 0.97, "dead_frac_window": 0.95}}))
    alerts = {a.layer: a for a in raised(run(DeadUnitsDetector(), steps))}
    assert sorted(alerts) == ["base_conv", "base_relu"]
    conv, relu = alerts["base_conv"].hint, alerts["base_relu"].hint
    assert conv.startswith("base_conv is frozen (its weights are not trained)")
    assert relu.startswith("base_relu follows the frozen layer base_bn")
    for hint in (conv, relu):
        assert "preprocessed as the frozen layers expect" in hint
        assert "check the initializers" not in hint and "lower the learning rate" not in hint


def test_units_of_a_frozen_layer_that_die_later_blame_the_trainable_layers_before_it():
    layers = (HEAD[0],) + FROZEN_BASE + (HEAD[1],)
    steps = stream(200, layers=layers, layer_fn=lambda s: frozen_rows(s, {
        "base_conv": {"dead_frac_window": 0.02 if s < 50 else 0.95, "dead_frac": 0.95}}))
    (alert,) = raised(run(DeadUnitsDetector(), steps))
    assert alert.layer == "base_conv" and "input changed" in alert.hint
    assert "trainable layers before it" in alert.hint


def test_hints_and_watch_leave_dead_units_of_frozen_layers_to_their_own_alerts():
    from training_health.detectors import hints

    stats = make_step(10, LAYERS, frozen_rows(10, {"base_conv": {"dead_frac_window": 0.6},
                                                   "base_relu": {"dead_frac_window": 0.6},
                                                   "head_hidden": {"dead_frac_window": 0.0,
                                                                   "act_saturated_frac": 0.0},
                                                   "out": {"dead_frac_window": 0.0,
                                                           "act_saturated_frac": 0.0}}))
    assert hints.dead_layers(stats) is None
    assert worst_layer(stats, {}) is None  # the trainable part is all alive
    hidden = make_step(10, LAYERS, frozen_rows(10, {"base_conv": {"dead_frac_window": 0.6},
                                                    "head_hidden": {"dead_frac_window": 0.6}}))
    assert "of head_hidden" in hints.dead_layers(hidden)
    assert worst_layer(hidden, {})[0] == "head_hidden"


def test_old_layer_metadata_without_the_field_reads_as_not_frozen():
    old = {"name": "dense", "type": "Dense", "activation": "relu", "bounds": None, "units": 4,
           "has_weights": True, "has_activation": True, "is_output": False}
    assert LayerInfo.from_json(old).frozen is False
    new = LayerInfo("base", "Dense", "relu", None, 4, False, True, frozen=True)
    assert new.to_json()["frozen"] is True and LayerInfo.from_json(new.to_json()) == new


# -- real runs -------------------------------------------------------------------


def teacher(n, dim, classes, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype("float32")
    labels = (x @ rng.standard_normal((dim, classes))).argmax(axis=1)
    return x, labels


def check_output(logdir):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli_main(["check", str(logdir)])
    return status, out.getvalue()


@pytest.mark.slow
def test_keras_transfer_learning_with_a_frozen_base_is_monitored_and_silent(tmp_path):
    """Named in `layers=`, the frozen base is measured and marked frozen;
    by default it is left out and named in the metadata."""
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    from training_health.keras import HealthCallback

    L = keras.layers
    keras.utils.set_random_seed(0)
    x, labels = teacher(3200, 16, 3, seed=1)
    y = np.eye(3, dtype="float32")[labels]
    base = keras.Sequential([keras.Input((16,)), L.Dense(64, name="base_dense"),
                             L.BatchNormalization(name="base_bn"), L.ReLU(name="base_relu"),
                             L.Dense(32, activation="relu", name="base_features")], name="base")
    pretrain = keras.Sequential([base, L.Dense(3, activation="softmax")])
    pretrain.compile(keras.optimizers.Adam(3e-3), "categorical_crossentropy")
    pretrain.fit(x, y, epochs=1, batch_size=32, verbose=0)  # the "pretrained" base
    base.trainable = False
    model = keras.Sequential([keras.Input((16,)), base, L.Dropout(0.1, name="drop"),
                              L.Dense(16, activation="relu", name="head_hidden"),
                              L.Dense(3, activation="softmax", name="head")])
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    cb = HealthCallback(str(tmp_path), flush_every=20, layers=["base_.*", "head.*"])
    history = model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[cb])
    cb.close()
    assert history.history["accuracy"][-1] > 0.8  # the head learns on the frozen features
    run_data, _ = reader.read_run(str(tmp_path))
    infos = {info.name: info for info in run_data.steps[-1].layers}
    # The base's layers with weights are frozen; its ReLU layer (no weights)
    # and the head are monitored as before; Dropout (no weights) is not.
    assert [n for n, i in infos.items() if i.frozen] == ["base_dense", "base_bn", "base_features"]
    assert list(infos) == ["base_dense", "base_bn", "base_relu", "base_features", "head_hidden", "head"]
    values = run_data.steps[-1].layer_values
    for i, info in enumerate(run_data.steps[-1].layers):
        grads = values[i, [fmt.LAYER_STATS.index(s) for s in NOT_MEASURED]]
        acts = values[i, [fmt.LAYER_STATS.index(s) for s in ("act_std", "dead_frac_window")]]
        assert info.has_activation and np.isfinite(acts).all(), info
        assert np.isnan(grads).all() == (not info.has_weights), info
        assert info.has_weights == (info.name.startswith("head")), info
    assert cb.alerts == []
    assert DetectorSuite().replay(run_data.steps, run_data.epochs) == []
    status, text = check_output(tmp_path)
    assert status == 0 and "frozen" not in text, text

    default = HealthCallback(str(tmp_path / "default"), flush_every=5)
    model.fit(x[:320], y[:320], epochs=1, batch_size=32, verbose=0, callbacks=[default])
    default.close()
    run_reader = reader.RunReader(str(tmp_path / "default"))
    update = run_reader.poll(final=True)
    assert [i.name for i in update.steps[-1].layers] == ["base_relu", "head_hidden", "head"]
    assert run_reader.frozen_unmonitored == ("base_dense", "base_bn", "base_features")
    assert default.alerts == []


@pytest.mark.parametrize("feature_extractor", [False, True],
                         ids=["requires_grad_false", "no_grad_eval_backbone"])
def test_torch_frozen_first_layers_are_monitored_and_silent(tmp_path, feature_extractor):
    torch = pytest.importorskip("torch")
    import training_health.torch as tht

    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
            self.head = nn.Linear(32, 3)

        def forward(self, x):
            if feature_extractor:  # the usual feature extractor: no graph, eval() mode
                with torch.no_grad():
                    features = self.backbone(x)
                return self.head(features)
            return self.head(self.backbone(x))

    torch.manual_seed(0)
    model = Net()
    for p in model.backbone.parameters():
        p.requires_grad = False
    if feature_extractor:
        model.backbone.eval()
    optimizer = torch.optim.Adam(model.head.parameters(), 1e-2)
    explicit, default_dir = tmp_path / "explicit", tmp_path / "default"
    monitor = tht.HealthMonitor(str(explicit), model, optimizer,
                                layers=[r"backbone\.\d", "head"])
    default = tht.HealthMonitor(str(default_dir), model, optimizer)
    x_all, labels = teacher(6400, 16, 3, seed=2)
    x_all, labels = torch.from_numpy(x_all), torch.from_numpy(labels)
    for i in range(200):
        x, y = x_all[32 * i:32 * (i + 1)], labels[32 * i:32 * (i + 1)]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        monitor.step(loss)
        default.step(loss)
    monitor.close()
    default.close()
    run_data, _ = reader.read_run(str(explicit))
    infos = run_data.steps[-1].layers
    assert [(i.name, i.frozen, i.has_weights) for i in infos] == [
        ("backbone.0", True, False), ("backbone.1", False, False), ("backbone.2", True, False),
        ("backbone.3", False, False), ("head", False, True)]
    assert all(i.has_activation for i in infos)  # measured, also without gradients or in eval()
    values = run_data.steps[-1].layer_values
    act_std = values[:, fmt.LAYER_STATS.index("act_std")]
    assert np.isfinite(act_std).all()
    assert np.isnan(values[:4, fmt.LAYER_STATS.index("grad_norm")]).all()
    assert monitor.alerts == []
    assert DetectorSuite().replay(run_data.steps, run_data.epochs) == []
    status, text = check_output(explicit)
    assert status == 0 and "frozen" not in text, text
    # By default the frozen modules are left out and named in the metadata.
    run_reader = reader.RunReader(str(default_dir))
    update = run_reader.poll(final=True)
    assert [i.name for i in update.steps[-1].layers] == ["backbone.1", "backbone.3", "head"]
    assert run_reader.frozen_unmonitored == ("backbone.0", "backbone.2")
    assert default.alerts == []
