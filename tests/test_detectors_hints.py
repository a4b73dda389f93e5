"""Hints are drawn from what was measured: each clause appears exactly when
its measurement says so."""

import pytest

from test_detectors import LAYERS, make_step
from training_health.detectors import hints
from training_health.records import KINDS, LayerInfo


def test_raw_pixel_inputs_are_named_with_their_range():
    stats = make_step(0, input_min=0.0, input_max=255.0)
    text = hints.hint_for("stalled", stats)
    assert "inputs range 0..255" in text and "divide by 255" in text
    assert "inputs range" not in hints.hint_for("stalled", make_step(0))  # -3..3: scaled


def test_standardized_inputs_with_outliers_get_standardize_advice():
    text = hints.hint_for("saturation", make_step(0, input_min=-40.0, input_max=1200.0))
    assert "inputs range -40..1200" in text and "standardize them" in text


@pytest.mark.parametrize("lr, kind, expected", [
    (0.0, "stalled", "the learning rate is 0"),
    (1e-8, "stalled", "learning rate 1.0e-08 is very low"),
    (0.5, "oscillating_loss", "learning rate 0.5 is high: try 10x lower"),
    (0.5, "exploding_gradients", "learning rate 0.5 is high"),
])
def test_learning_rate_clause(lr, kind, expected):
    assert expected in hints.hint_for(kind, make_step(0, learning_rate=lr))


def test_usual_learning_rate_is_not_blamed():
    for kind in KINDS:
        assert "learning rate 0.001" not in hints.hint_for(kind, make_step(0))


def test_dead_relu_layers_are_named_with_their_fraction():
    stats = make_step(0, layer_overrides={"conv": {"dead_frac_window": 0.94}})
    assert "dead ReLU units (94% of conv)" in hints.hint_for("stalled", stats)
    assert "dead ReLU" not in hints.hint_for("stalled", make_step(0))


def test_single_unit_softmax_names_the_fix():
    layers = LAYERS[:2] + (LayerInfo("out", "Dense", "softmax", (0.0, 1.0), 1, True, True),)
    text = hints.hint_for("saturation", make_step(0, layers=layers))
    assert "out applies softmax to a single unit" in text and "sigmoid" in text


def test_deep_sigmoid_stack_is_named_for_vanishing_gradients():
    layers = tuple(LayerInfo("s%d" % i, "Dense", "sigmoid", (0.0, 1.0), 8, True, True)
                   for i in range(5))
    assert "5 stacked sigmoid/tanh layers" in hints.hint_for("vanishing_gradients",
                                                             make_step(0, layers=layers))


def test_huge_weights_and_updates_are_named_for_exploding_gradients():
    stats = make_step(0, layer_overrides={"hidden": {"weight_norm": 3e8, "update_ratio": 4.0}})
    text = hints.hint_for("exploding_gradients", stats)
    assert "weights of hidden have norm 3.0e+08" in text
    assert "changes weights by up to 400%" in text


def test_nonfinite_inputs_are_named_for_nan_inf():
    assert "holds 7 NaN/Inf values" in hints.hint_for("nan_inf", make_step(0, input_nonfinite=7.0))


def test_every_kind_has_a_fallback_and_unknown_kinds_are_refused():
    for kind in KINDS:
        assert hints.hint_for(kind, make_step(0))
    with pytest.raises(ValueError, match="unknown alert kind 'slow'"):
        hints.hint_for("slow", make_step(0))


def test_initializer_is_suspected_when_inputs_and_learning_rate_are_fine():
    text = hints.hint_for("saturation", make_step(0, layer_overrides={"hidden": {"weight_norm": 9.0}}))
    assert "inputs are scaled (-3..3) and the learning rate is usual" in text
    assert "check the initializers" in text
    # raw inputs or a high learning rate are the likelier causes: no suspicion then
    assert "check the initializers" not in hints.hint_for(
        "saturation", make_step(0, input_max=255.0))
    assert "check the initializers" not in hints.hint_for(
        "saturation", make_step(0, learning_rate=0.5))


def test_units_dead_from_the_first_step_blame_the_initializers_not_the_learning_rate():
    # dead before any update: a high learning rate cannot be the cause
    text = hints.hint_for("dead_units", make_step(0, learning_rate=0.5), "conv")
    assert text.startswith("inputs are scaled (-3..3) and the units were already dead at the "
                           "first step, before any update")
    assert "check the initializers (a negative constant bias_initializer" in text
    assert "learning rate" not in text
    # with raw inputs, the input scale comes first
    raw = hints.hint_for("dead_units", make_step(0, input_max=255.0, learning_rate=0.5), "conv")
    assert raw.startswith("inputs range -3..255") and "learning rate" not in raw


def test_nan_loss_with_finite_inputs_and_activations_points_at_the_targets():
    text = hints.hint_for("nan_inf", make_step(0, loss=float("nan")))
    assert "the loss is nan while inputs and activations are finite" in text
    assert "check the targets" in text
    with_bad_inputs = make_step(0, loss=float("nan"), input_nonfinite=3.0)
    assert "check the targets" not in hints.hint_for("nan_inf", with_bad_inputs)


def test_units_that_died_during_training_are_told_apart_from_a_bad_start():
    from test_detectors import raised, run, stream
    from training_health.detectors import DeadUnitsDetector

    text = hints.hint_for("dead_units", make_step(0), "conv", alive_at=(40, 0.1))
    assert "only 10% of its units were dead at step 40, so they died during training" in text
    assert "check the initializers" not in text
    assert "none of its units were dead at step 3" in hints.died_during_training((3, 0.0))

    # Alive (2% dead) for 100 steps, then 95% dead: the alert says they died.
    died = raised(run(DeadUnitsDetector(), stream(
        200, layer_fn=lambda s: {"conv": {"dead_frac_window": 0.95}} if s >= 100 else {})))
    assert [a.layer for a in died] == ["conv"]
    assert "only 2% of its units were dead at step 0, so they died during training" in died[0].hint
    assert "check the initializers" not in died[0].hint
    # Dead from the first step (inputs scaled, usual learning rate): the initialization.
    born_dead = raised(run(DeadUnitsDetector(), stream(
        100, layer_fn=lambda s: {"conv": {"dead_frac_window": 0.95, "dead_frac": 0.97}})))
    assert [a.layer for a in born_dead] == ["conv"]
    assert "check the initializers" in born_dead[0].hint and "died" not in born_dead[0].hint


def test_a_learning_rate_far_too_low_is_named_with_the_factor():
    from test_detectors import raised, run, stream
    from training_health.detectors import StalledDetector

    # Adam at 1e-6: weights move by ~3e-6 of their norm per step, the loss stays where it began
    steps = stream(200, loss=lambda s, r: 1.1 + 0.02 * r.standard_normal(),
                   global_fn=lambda s: {"learning_rate": 1e-6},
                   layer_fn=lambda s: {n: {"update_ratio": 3e-6} for n in ("conv", "hidden", "out")})
    alerts = raised(run(StalledDetector(), steps))
    assert [(a.kind, a.step, a.severity) for a in alerts] == [("stalled", 49, "warning")]
    assert "the weights move by 3.0e-06 of their norm per step" in alerts[0].message
    assert ("the learning rate (1.0e-06) looks roughly 300x too low; raise it (about 3.3e-04)"
            in alerts[0].hint)
    # the same tiny updates after the loss came down from its start: a converged tail
    tail = stream(200, loss=lambda s, r: (1.1 if s < 10 else 0.4) + 0.02 * r.standard_normal(),
                  layer_fn=lambda s: {n: {"update_ratio": 3e-6} for n in ("conv", "hidden", "out")})
    assert run(StalledDetector(), tail) == []
