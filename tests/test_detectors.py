"""Detectors on synthetic streams: each bug caught with the right kind and step,
healthy streams (including the false-alarm traps) silent, episodes and clears.

`make_step` / `stream` build `StepStats` the way the reader returns them,
starting from healthy values; other test modules import them.
"""

import collections
import math

import numpy as np
import pytest

from training_health import format as fmt
from training_health.detectors import (
    DeadUnitsDetector,
    DetectorSuite,
    ExplodingGradientsDetector,
    NanInfDetector,
    OscillatingLossDetector,
    SaturationDetector,
    StalledDetector,
    VanishingGradientsDetector,
    default_detectors,
)
from training_health.detectors.base import StepWindow
from training_health.records import KINDS, LayerInfo, StepStats

pytestmark = pytest.mark.compat

LAYERS = (
    LayerInfo("conv", "Conv2D", "relu", None, 16, True, True),
    LayerInfo("hidden", "Dense", "tanh", (-1.0, 1.0), 32, True, True),
    LayerInfo("out", "Dense", "softmax", (0.0, 1.0), 3, True, True),
)

HEALTHY_LAYER = dict(
    grad_norm=0.5, grad_max_abs=0.1, grad_zero_frac=0.0, grad_nonfinite=0.0,
    weight_norm=5.0, update_ratio=1e-3, act_mean=0.3, act_std=0.5, act_example_std=0.3,
    act_zero_frac=0.0, act_saturated_frac=0.02, act_nonfinite=0.0,
    dead_frac=0.05, dead_frac_window=0.02,
)
HEALTHY_GLOBAL = dict(
    loss=1.0, grad_norm=1.0, grad_nonfinite=0.0, input_mean=0.0, input_std=1.0,
    input_min=-3.0, input_max=3.0, input_nonfinite=0.0, learning_rate=1e-3, accuracy=0.5,
)


def make_step(step, layers=LAYERS, layer_overrides=None, **global_overrides):
    """A StepStats with healthy values, changed where told.

    Args:
        layer_overrides: {layer name: {stat: value}}.
        **global_overrides: global values to change (loss=..., learning_rate=...).
    """
    values = np.array([[HEALTHY_LAYER[s] for s in fmt.LAYER_STATS] for _ in layers],
                      dtype=np.float32)
    for name, stats in (layer_overrides or {}).items():
        row = [l.name for l in layers].index(name)
        for stat, value in stats.items():
            values[row, fmt.LAYER_STATS.index(stat)] = value
    glob = dict(HEALTHY_GLOBAL)
    glob.update(global_overrides)
    return StepStats(step, tuple(layers), tuple(fmt.LAYER_STATS), values, glob)


def stream(n, loss=None, layers=LAYERS, every=1, seed=0, layer_fn=None, global_fn=None):
    """n logged steps (0, every, 2*every, ...).

    Args:
        loss: callable(step, rng) -> loss. Defaults to a healthy decreasing loss.
        layer_fn: callable(step) -> layer overrides.
        global_fn: callable(step) -> dict of global overrides.
    """
    rng = np.random.default_rng(seed)
    if loss is None:
        loss = lambda s, r: 1.0 * math.exp(-s / 300) + 0.05 * r.standard_normal() ** 2  # noqa: E731
    out = []
    for i in range(n):
        step = i * every
        glob = dict(global_fn(step)) if global_fn else {}
        glob.setdefault("loss", loss(step, rng))
        out.append(make_step(step, layers, layer_fn(step) if layer_fn else None, **glob))
    return out


def run(detector, steps):
    alerts = []
    for s in steps:
        alerts.extend(detector.update(s.step, s))
    return alerts


def raised(alerts):
    return [a for a in alerts if not a.cleared]


# -- healthy streams: no detector says anything -------------------------------


def noisy_small_batch_loss(step, rng):
    """A learning run with very noisy per-batch loss (batches of 4, dropout).

    45% relative noise: more than the 33% (std/mean) of the noisy
    small-batch scenario of benchmarks/scenarios.
    """
    level = 0.05 + 1.05 * math.exp(-step / 400)
    return level * abs(1 + 0.45 * rng.standard_normal())


def converged_loss(step, rng):
    """Falls to ~1e-4 and stays flat."""
    return 1e-4 + 1.0 * math.exp(-step / 20) + 1e-5 * rng.random()


def early_plateau_loss(step, rng):
    """Flat at 0.69 for 80 steps, then falls."""
    base = 0.693 if step < 80 else 0.693 * math.exp(-(step - 80) / 100)
    return base + 0.01 * rng.standard_normal()


@pytest.mark.parametrize("loss_fn", [None, noisy_small_batch_loss, converged_loss,
                                     early_plateau_loss])
@pytest.mark.parametrize("every", [1, 7])
def test_default_suite_is_silent_on_healthy_streams(loss_fn, every):
    steps = stream(2000 // every, loss=loss_fn, every=every)
    assert DetectorSuite().replay(steps) == []


def test_converged_sgd_with_tiny_updates_is_not_a_stall():
    # SGD at convergence: gradients and updates shrink towards 0 with the loss.
    steps = stream(400, loss=converged_loss,
                   layer_fn=lambda s: {n: {"update_ratio": 1e-9, "grad_norm": 1e-6}
                                       for n in ("conv", "hidden", "out")})
    assert run(StalledDetector(), steps) == []


def test_flat_loss_with_moving_weights_is_not_a_stall():
    # A hard task (or random labels): no progress, but the weights learn.
    steps = stream(400, loss=lambda s, r: 1.1 + 0.05 * r.standard_normal())
    assert run(StalledDetector(), steps) == []


def test_healthy_relu_net_with_some_dead_units_is_silent():
    steps = stream(300, layer_fn=lambda s: {"conv": {"dead_frac_window": 0.6, "dead_frac": 0.7}})
    assert run(DeadUnitsDetector(), steps) == []


def test_shallow_sigmoid_net_is_not_vanishing():
    layers = tuple(LayerInfo("s%d" % i, "Dense", "sigmoid", (0.0, 1.0), 32, True, True)
                   for i in range(3)) + (LAYERS[2],)
    grads = {"s0": 0.005, "s1": 0.02, "s2": 0.1, "out": 0.5}  # ratio 1e-2
    steps = stream(300, layers=layers,
                   layer_fn=lambda s: {n: {"grad_norm": g} for n, g in grads.items()})
    assert run(VanishingGradientsDetector(), steps) == []


def test_confident_binary_head_of_a_multi_output_model_is_not_saturation():
    layers = (LayerInfo("hidden", "Dense", "tanh", (-1.0, 1.0), 32, True, True),
              LayerInfo("is_spam", "Dense", "sigmoid", (0.0, 1.0), 1, True, True),
              LayerInfo("topic", "Dense", "softmax", (0.0, 1.0), 5, True, True))
    steps = stream(300, layers=layers, layer_fn=lambda s: {"is_spam": {"act_saturated_frac": 1.0}})
    assert run(SaturationDetector(), steps) == []


def test_confident_output_layer_is_not_saturation():
    steps = stream(300, layer_fn=lambda s: {"out": {"act_saturated_frac": 0.99}})
    assert run(SaturationDetector(), steps) == []


def test_large_gradients_while_the_loss_falls_are_not_exploding():
    # regression on unscaled targets: big gradients, but learning
    steps = stream(200, global_fn=lambda s: {"grad_norm": 5e4 * 0.99 ** s,
                                             "loss": 1e6 * 0.97 ** s})
    assert run(ExplodingGradientsDetector(), steps) == []


def test_gradient_growth_while_loss_falls_is_not_exploding():
    # A net leaving a flat start: tiny gradients grow 1000x as the loss drops.
    steps = stream(300, global_fn=lambda s: {"grad_norm": 1e-4 * min(1000.0, 1.05 ** s)})
    assert run(ExplodingGradientsDetector(), steps) == []


# -- buggy streams: the right kind at the right step --------------------------


def test_nan_inf_raised_at_first_nonfinite_input_once_then_cleared():
    # NaN rows in a few batches: 40-59, 100 and 150, then clean data
    bad = set(range(40, 60)) | {100, 150}
    steps = stream(400, global_fn=lambda s: {"input_nonfinite": 12.0} if s in bad else {})
    alerts = run(NanInfDetector(), steps)
    assert [(a.kind, a.step, a.layer, a.severity, a.cleared) for a in alerts] == [
        ("nan_inf", 40, None, "critical", False),
        ("nan_inf", 351, None, "critical", True),  # 200 steps without NaN close the episode
    ]
    assert "12 NaN/Inf input values" in alerts[0].message
    assert "clean the data" in alerts[0].hint


def test_nan_inf_names_the_first_layer_with_nonfinite_activations():
    steps = stream(30, layer_fn=lambda s: {"hidden": {"act_nonfinite": 5.0},
                                           "out": {"act_nonfinite": 3.0}} if s >= 10 else {},
                   global_fn=lambda s: {"loss": float("nan")} if s >= 10 else {})
    alerts = raised(run(NanInfDetector(), steps))
    assert [(a.step, a.layer) for a in alerts] == [(10, "hidden")]
    assert "loss nan" in alerts[0].message


def test_nan_inf_a_nan_loss_alone_before_any_finite_one_is_no_loss_given():
    """A run that logs no loss (NaN at every step) raises nothing; a NaN loss
    after finite ones does, and one at the first step does where the
    gradients are NaN too (it was back-propagated); an infinite loss always."""
    nan = float("nan")
    assert raised(run(NanInfDetector(), stream(30, global_fn=lambda s: {"loss": nan}))) == []
    late = raised(run(NanInfDetector(), stream(30, global_fn=lambda s: {"loss": nan}
                                                if s >= 12 else {})))
    assert [(a.step, a.message) for a in late] == [(12, "non-finite values at step 12: loss nan")]
    first = raised(run(NanInfDetector(), stream(
        30, global_fn=lambda s: {"loss": nan, "grad_nonfinite": 40.0} if s == 0 else {})))
    assert [a.step for a in first] == [0] and "loss nan" in first[0].message
    inf = raised(run(NanInfDetector(), stream(30, global_fn=lambda s: {"loss": float("inf")})))
    assert [a.step for a in inf] == [0] and "loss inf" in inf[0].message
    detector = NanInfDetector()  # (reset forgets the finite losses seen)
    run(detector, stream(5))
    detector.reset()
    assert raised(run(detector, stream(10, global_fn=lambda s: {"loss": nan}))) == []


def test_dead_units_after_patience_on_the_window_measure():
    steps = stream(200, layer_fn=lambda s: {"conv": {"dead_frac_window": 1.0, "dead_frac": 1.0}}
                   if s >= 100 else {})
    alerts = run(DeadUnitsDetector(), steps)
    assert [(a.kind, a.step, a.layer, a.severity) for a in alerts] == [
        ("dead_units", 120, "conv", "critical")]
    assert "100% of 16 units of conv" in alerts[0].message


def test_dead_units_with_zero_gradient_before_the_window_fills():
    steps = stream(100, layer_fn=lambda s: {"conv": {"dead_frac": 1.0, "dead_frac_window": 0.2,
                                                     "grad_norm": 0.0}} if s >= 10 else {})
    alerts = run(DeadUnitsDetector(), steps)
    assert [(a.step, a.layer) for a in alerts] == [(30, "conv")]
    assert "no gradient" in alerts[0].message


def test_dead_units_patience_counts_steps_when_logging_every_10_batches():
    steps = stream(30, every=10,
                   layer_fn=lambda s: {"conv": {"dead_frac_window": 0.95}} if s >= 100 else {})
    alerts = run(DeadUnitsDetector(), steps)
    assert [(a.step, a.severity) for a in alerts] == [(120, "warning")]


def test_leaky_units_do_not_die():
    layers = (LayerInfo("leaky", "Dense", "leaky_relu", None, 16, True, True), LAYERS[2])
    steps = stream(200, layers=layers, layer_fn=lambda s: {"leaky": {"dead_frac_window": 1.0}})
    assert run(DeadUnitsDetector(), steps) == []


def test_dead_units_episode_clears_and_recurs():
    def layer_fn(s):
        dead = 100 <= s < 200 or s >= 300
        return {"conv": {"dead_frac_window": 1.0 if dead else 0.1}}

    alerts = run(DeadUnitsDetector(), stream(400, layer_fn=layer_fn))
    assert [(a.step, a.cleared) for a in alerts] == [(120, False), (250, True), (320, False)]


def test_vanishing_gradients_in_a_deep_sigmoid_stack():
    layers = tuple(LayerInfo("s%d" % i, "Dense", "sigmoid", (0.0, 1.0), 32, True, True)
                   for i in range(8)) + (LAYERS[2],)
    overrides = {"s%d" % i: {"grad_norm": 0.5 * 0.15 ** (8 - i)} for i in range(8)}
    steps = stream(200, layers=layers, layer_fn=lambda s: overrides)
    alerts = run(VanishingGradientsDetector(), steps)
    assert [(a.kind, a.step, a.layer) for a in alerts] == [("vanishing_gradients", 50, "s0")]
    assert "8 stacked sigmoid/tanh layers" in alerts[0].hint


def test_zero_gradients_are_dead_not_vanishing():
    layers = tuple(LayerInfo("r%d" % i, "Dense", "relu", None, 32, True, True)
                   for i in range(4)) + (LAYERS[2],)
    steps = stream(200, layers=layers, layer_fn=lambda s: {
        "r0": {"grad_norm": 1e-12, "grad_zero_frac": 1.0},
        "r1": {"grad_norm": 0.0, "grad_zero_frac": 1.0}})
    assert run(VanishingGradientsDetector(), steps) == []


def test_exploding_gradients_when_a_learning_rate_diverges():
    def global_fn(s):
        if s < 50:
            return {}
        return {"grad_norm": 10.0 ** min(s - 49, 30), "loss": 10.0 ** min(s - 49, 30)}

    alerts = run(ExplodingGradientsDetector(), stream(100, global_fn=global_fn))
    assert [(a.kind, a.cleared) for a in alerts] == [("exploding_gradients", False)]
    # 10x, 100x (growth 100 with the loss up: warning) ... 1e5x: conclusive at once.
    assert alerts[0].step == 54 and alerts[0].severity == "critical"


def test_exploding_gradients_from_the_first_step_by_size():
    steps = stream(20, global_fn=lambda s: {"grad_norm": 3e5, "loss": 7e4})
    alerts = run(ExplodingGradientsDetector(), steps)
    assert [(a.step, a.severity) for a in alerts] == [(5, "warning")]
    assert "above 1e+04" in alerts[0].message


def test_exploding_gradients_then_overflow_is_immediate():
    def global_fn(s):
        if s < 20:
            return {}
        return {"grad_norm": 30.0 if s == 20 else float("inf"), "loss": 5.0}

    alerts = run(ExplodingGradientsDetector(), stream(25, global_fn=global_fn))
    assert [(a.step, a.severity) for a in alerts] == [(21, "critical")]
    assert "reached 30 (30x its early median), then the gradients overflowed" in alerts[0].message


def test_huge_gradient_then_overflow_from_the_first_logged_step():
    # logged every 5 batches: one huge finite norm, then NaN
    steps = stream(3, every=5, global_fn=lambda s: {"grad_norm": 3e5 if s == 0 else float("nan"),
                                                    "loss": 7e4})
    alerts = run(ExplodingGradientsDetector(), steps)
    assert [(a.step, a.severity) for a in alerts] == [(5, "critical")]


def test_saturated_hidden_tanh():
    steps = stream(200, layer_fn=lambda s: {"hidden": {"act_saturated_frac": 0.95}})
    alerts = run(SaturationDetector(), steps)
    assert [(a.kind, a.step, a.layer) for a in alerts] == [("saturation", 50, "hidden")]
    assert "95%" in alerts[0].message


def test_output_that_always_gives_the_same_answer():
    layers = LAYERS[:2] + (LayerInfo("out", "Dense", "softmax", (0.0, 1.0), 1, True, True),)
    steps = stream(200, layers=layers,
                   layer_fn=lambda s: {"out": {"act_example_std": 0.0, "act_mean": 1.0}})
    alerts = run(SaturationDetector(), steps)
    assert [(a.step, a.layer, a.severity) for a in alerts] == [(49, "out", "critical")]
    assert "same output for every example" in alerts[0].message
    assert "sigmoid" in alerts[0].hint  # single-unit softmax


def test_constant_output_measured_with_float32_rounding_noise():
    # exactly constant, but the logger's moments give 0 or ~1e-4 on alternate steps
    steps = stream(200, layer_fn=lambda s: {"out": {"act_example_std": 0.0 if s % 2 else 1e-4}})
    alerts = run(SaturationDetector(), steps)
    assert [(a.step, a.layer) for a in alerts] == [(49, "out")]


def test_nearly_constant_output_at_an_initial_plateau_is_not_saturation():
    # tiny initial weights: outputs vary by 2e-4..6e-4 across examples, then more
    steps = stream(200, layer_fn=lambda s: {"out": {"act_example_std": 2e-4 + 4e-6 * s}})
    assert run(SaturationDetector(), steps) == []


def test_oscillating_loss_from_a_too_high_learning_rate():
    def loss(s, rng):
        return 1.5 if s < 20 else float(rng.choice([0.4, 0.9, 2.5, 4.0]))

    alerts = run(OscillatingLossDetector(), stream(
        200, loss=loss, global_fn=lambda s: {"learning_rate": 0.5},
        layer_fn=lambda s: {n: {"update_ratio": 0.04} for n in ("conv", "hidden", "out")}))
    # reference: steps 0..19; the first 50-step window after it ends at 70.
    assert [(a.kind, a.step, a.layer) for a in raised(alerts)] == [("oscillating_loss", 70, None)]
    assert "learning rate 0.5 is high" in alerts[0].hint


def test_noisy_stationary_loss_is_not_oscillation():
    steps = stream(500, loss=lambda s, r: 1.1 * (1 + 0.25 * r.standard_normal()))
    assert run(OscillatingLossDetector(), steps) == []


def test_very_noisy_slow_learner_with_usual_updates_is_not_oscillation():
    # 45% batch noise on a slow trend passes the loss tests alone; the
    # weights move by the usual 1e-3 per step, so it is not a learning
    # rate problem.
    def loss(s, rng):
        return (0.05 + 1.05 * math.exp(-s / 1000)) * abs(1 + 0.45 * rng.standard_normal())

    assert run(OscillatingLossDetector(), stream(1000, loss=loss)) == []
    bouncing = stream(1000, loss=loss, layer_fn=lambda s: {
        n: {"update_ratio": 0.05} for n in ("conv", "hidden", "out")})
    assert raised(run(OscillatingLossDetector(), bouncing))  # same loss, huge steps


def class_sorted_loss(block=30):
    """Batches of one class at a time: the loss falls while the model fits
    the current class (from 2.5 to 0.1 over a block of `block` batches) and
    jumps when the next class starts; 10% batch noise."""
    def loss(s, rng):
        return (0.1 + 2.4 * math.exp(-(s % block) / (block / 5))) * abs(1 + 0.1 * rng.standard_normal())
    return loss


@pytest.mark.parametrize("block", [10, 30, 60])
def test_loss_swinging_with_the_data_order_asks_to_shuffle(block):
    alerts = raised(run(OscillatingLossDetector(), stream(600, loss=class_sorted_loss(block))))
    assert alerts, "no alert for batches sorted by class in blocks of %d" % block
    first = alerts[0]
    assert first.kind == "oscillating_loss" and first.layer is None
    assert first.step <= 200  # the first full 200-step window
    assert "order of the batches" in first.message and "shuffle" in first.hint
    # The same run with shuffled batches: each batch a fresh draw of the classes.
    shuffled = stream(600, loss=lambda s, r: class_sorted_loss(block)(int(r.integers(0, 10**6)), r))
    assert run(OscillatingLossDetector(), shuffled) == []


def test_heavy_tailed_batch_losses_are_not_a_data_order():
    # Mislabeled examples: now and then a batch's loss is several times the
    # usual (lognormal noise, sigma 0.6), on a falling trend.
    def loss(s, rng):
        return (0.2 + math.exp(-s / 300)) * float(rng.lognormal(0.0, 0.6))

    for seed in range(5):
        assert run(OscillatingLossDetector(), stream(1500, loss=loss, seed=seed)) == []


def test_loss_rising_with_a_cyclic_learning_rate_is_not_a_data_order():
    # Triangular schedule with a 100-step period: the loss rises with the
    # rate every cycle (three rises a window), which the schedule explains.
    def lr(s):
        phase = (s % 100) / 50.0
        return 1e-4 + 1e-2 * (phase if phase <= 1 else 2 - phase)

    def loss(s, rng):
        return (0.3 + 40 * lr(s)) * abs(1 + 0.05 * rng.standard_normal())

    assert run(OscillatingLossDetector(), stream(
        800, loss=loss, global_fn=lambda s: {"learning_rate": lr(s)})) == []


def test_warm_restarts_are_not_a_data_order():
    # SGDR: one jump at each restart (every 300 steps), then a smooth fall.
    def loss(s, rng):
        return (0.2 + 1.5 * math.exp(-(s % 300) / 40)) * abs(1 + 0.05 * rng.standard_normal())

    assert run(OscillatingLossDetector(), stream(1500, loss=loss)) == []


def stalled_cnn_stream(n=200):
    """The seed report: raw pixels, the conv layer dead from step 8, accuracy at the prior."""

    def layer_fn(s):
        if s < 8:
            return {}
        return {"conv": {"grad_norm": 0.0, "grad_zero_frac": 1.0,
                         "update_ratio": 1e-3 * 0.9 ** (s - 8), "dead_frac": 1.0,
                         "dead_frac_window": min(1.0, 0.1 + s / 60)},
                "out": {"act_example_std": 0.0}}

    return stream(n, loss=lambda s, r: (16.0 if s < 8 else 1.09) + 0.01 * r.standard_normal(),
                  layer_fn=layer_fn,
                  global_fn=lambda s: {"input_min": 0.0, "input_max": 255.0, "input_mean": 110.0,
                                       "accuracy": 0.4473 + 0.05 * math.sin(s)})


def test_stalled_cnn_stalls_and_the_hint_names_inputs_and_dead_relus():
    alerts = run(StalledDetector(), stalled_cnn_stream())
    # the condition holds from step 55 on; the window (patience 50) is
    # judged every 5 steps from the first full window: 49, 54, 59
    assert [(a.kind, a.step, a.layer) for a in alerts] == [("stalled", 59, None)]
    assert "no gradient reaches conv (exactly 0 on 90%+" in alerts[0].message
    assert "inputs range 0..255" in alerts[0].hint
    assert "divide by 255" in alerts[0].hint
    assert "dead ReLU units (100% of conv)" in alerts[0].hint


def test_stalled_cnn_full_suite_finds_stall_dead_units_and_constant_output():
    alerts = raised(DetectorSuite().replay(stalled_cnn_stream()))
    assert {(a.kind, a.layer) for a in alerts} == {
        ("stalled", None), ("dead_units", "conv"), ("saturation", "out")}


def test_zero_learning_rate_is_a_critical_stall():
    steps = stream(100, loss=lambda s, r: 1.1 + 0.05 * r.standard_normal(),
                   global_fn=lambda s: {"learning_rate": 0.0},
                   layer_fn=lambda s: {n: {"update_ratio": 0.0} for n in ("conv", "hidden", "out")})
    alerts = run(StalledDetector(), steps)
    assert [(a.step, a.severity) for a in alerts] == [(49, "critical")]
    assert "learning rate is 0" in alerts[0].message
    assert "learning rate is 0" in alerts[0].hint


def test_stall_clears_when_training_resumes():
    def layer_fn(s):
        ratio = 0.0 if s < 150 else 1e-3
        return {n: {"update_ratio": ratio} for n in ("conv", "hidden", "out")}

    def loss(s, r):
        return 1.1 + 0.01 * r.standard_normal() if s < 150 else 1.1 * math.exp(-(s - 150) / 30)

    alerts = run(StalledDetector(), stream(300, loss=loss, layer_fn=layer_fn))
    assert [(a.kind, a.cleared) for a in alerts] == [("stalled", False), ("stalled", True)]
    assert alerts[0].step == 49 and alerts[1].step > 150


def test_open_stall_is_not_closed_by_batch_noise():
    # weights still all along; the batches get easier for a while (the loss
    # drifts down over 80 steps without any learning)
    def loss(s, r):
        drift = 0.004 * min(max(s - 100, 0), 80)
        return 1.4 - drift + 0.01 * r.standard_normal()

    steps = stream(400, loss=loss, layer_fn=lambda s: {
        n: {"update_ratio": 0.0} for n in ("conv", "hidden", "out")})
    alerts = run(StalledDetector(), steps)
    assert [(a.kind, a.cleared) for a in alerts] == [("stalled", False)]


def test_stall_patience_with_spaced_steps():
    steps = stream(40, every=10, loss=lambda s, r: 1.1 + 0.01 * r.standard_normal(),
                   layer_fn=lambda s: {n: {"update_ratio": 0.0} for n in ("conv", "hidden")})
    alerts = run(StalledDetector(), steps)
    assert [a.step for a in alerts] == [90]  # window 0..90 spans the 50-step patience; 10 logs


# -- suite, knobs, episodes -----------------------------------------------------


def test_default_detectors_cover_every_kind():
    assert sorted(d.kind for d in default_detectors()) == sorted(KINDS)


def test_suite_reset_and_replay_give_the_same_alerts():
    steps = stalled_cnn_stream()
    suite = DetectorSuite()
    first = suite.replay(steps)
    again = suite.replay(steps)  # replay resets first
    assert first == again and first


def test_step_going_backwards_starts_a_new_episode():
    steps = stream(60, layer_fn=lambda s: {"conv": {"dead_frac_window": 1.0}})
    detector = DeadUnitsDetector()
    first = run(detector, steps)
    second = run(detector, steps)  # steps restart at 0: state is reset
    assert [a.step for a in first] == [20] and [a.step for a in second] == [20]


def test_suite_rejects_objects_that_are_not_detectors():
    with pytest.raises(ValueError, match="update\\(step, stats\\) and reset\\(\\)"):
        DetectorSuite([object()])


@pytest.mark.parametrize("factory, message", [
    (lambda: StalledDetector(patience=0), "patience must be >= 1; received 0"),
    (lambda: StalledDetector(min_delta=-1), "min_delta must be >= 0; received -1"),
    (lambda: DeadUnitsDetector(threshold=1.5), "threshold must be <= 1; received 1.5"),
    (lambda: DeadUnitsDetector(threshold=0), "threshold must be > 0; received 0"),
    (lambda: DeadUnitsDetector(activations="relu"), "sequence of activation names"),
    (lambda: VanishingGradientsDetector(min_layers=1), "min_layers must be >= 2"),
    (lambda: ExplodingGradientsDetector(growth=1), "growth must be > 1"),
    (lambda: SaturationDetector(patience=2.5), "patience must be an integer; received 2.5"),
    (lambda: OscillatingLossDetector(spread="big"), "spread must be a number; received 'big'"),
    (lambda: NanInfDetector(start_from_step=-3), "start_from_step must be >= 0"),
])
def test_bad_knobs_raise_value_errors_that_say_what_was_received(factory, message):
    with pytest.raises(ValueError, match=message.replace("(", "\\(").replace(")", "\\)")):
        factory()


def test_start_from_step_delays_alerts():
    steps = stream(200, layer_fn=lambda s: {"hidden": {"act_saturated_frac": 0.95}})
    alerts = run(SaturationDetector(start_from_step=120), steps)
    assert [a.step for a in alerts] == [120]


def trim_window(history, step, window, min_observations):
    """The window rule on a deque of (step, ...) tuples, written plainly."""
    while len(history) > min_observations and history[1][0] <= step - window:
        history.popleft()
    if len(history) < min_observations:
        return False
    spacing = history[-1][0] - history[-2][0] if len(history) > 1 else 0
    return step - history[0][0] >= window - spacing


@pytest.mark.parametrize("seed", range(5))
def test_step_window_keeps_what_the_window_rule_keeps(seed):
    # StepWindow against the rule on a deque (above): on every step the same
    # rows kept and the same verdict.
    rng = np.random.default_rng(seed)
    window, min_observations = int(rng.integers(5, 40)), int(rng.integers(1, 8))
    rows = StepWindow(2)
    history = collections.deque()
    step = 0
    for _ in range(400):
        step += int(rng.integers(1, 4))
        row = rng.normal(size=2)
        rows.append(step, row)
        history.append((step, *row))
        assert rows.trim(step, window, min_observations) == trim_window(
            history, step, window, min_observations)
        assert rows.first_step() == history[0][0]
        np.testing.assert_array_equal(rows.values(), np.array([h[1:] for h in history]))
    rows.drop_before(step - 3)
    assert rows.first_step() >= step - 3 and len(rows) >= 1
    rows.add_column(fill=7.0)
    assert rows.values().shape[1] == 3 and np.all(rows.values()[:, 2] == 7.0)
    rows.clear()
    assert len(rows) == 0
