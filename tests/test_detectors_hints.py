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
    stats = make_step(0, layer_overrides={"hidden": {"update_ratio": 4.0}})
    assert "changes weights by up to 400%" in hints.hint_for("exploding_gradients", stats)
    # huge weights explain the huge updates: the update size is not listed as a cause
    stats = make_step(0, layer_overrides={"hidden": {"weight_norm": 3e8, "update_ratio": 4.0}})
    text = hints.hint_for("exploding_gradients", stats)
    assert text.startswith("weights of hidden have norm 3.0e+08") and "400%" not in text


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


# -- causes checked in order against the run's own numbers ---------------------

SIGMOIDS = tuple(LayerInfo("s%d" % i, "Dense", "sigmoid", (0.0, 1.0), 32, True, True)
                 for i in range(6)) + (LAYERS[2],)
RELUS = tuple(LayerInfo("r%d" % i, "Dense", "relu", None, 64, True, True)
              for i in range(8)) + (LAYERS[2],)


def test_activations_that_grow_with_depth_at_step_0_blame_the_initializer():
    # std 0.6 kernels in 64-unit ReLU layers (He: 0.18): ~3.3x per layer, 1.5e4 at r7
    grown = {"r%d" % i: {"act_std": 3.3 ** (i + 1)} for i in range(8)}
    first = make_step(0, layers=RELUS, layer_overrides=grown)
    text = hints.hint_for("exploding_gradients", make_step(1, layers=RELUS), first=first)
    assert text.startswith("at step 0, before any update, activations reach std 1.4e+04 in r7 "
                           "from inputs of std 1 (3.3x per layer): the kernel initializer is "
                           "too large")
    # the same growth seen at step 5000 of a resumed run says nothing about the initializer
    resumed = make_step(5000, layers=RELUS, layer_overrides=grown)
    assert hints.hint_for("exploding_gradients", make_step(5001, layers=RELUS),
                          first=resumed).startswith("no measured cause singles one out")
    # raw pixels (std 60) give first-layer activations of std ~20: no amplification
    raw = make_step(0, input_std=60.0, input_max=255.0,
                    layer_overrides={"conv": {"act_std": 20.0}})
    assert hints.start_gain(raw) is None
    # healthy ReLU activations at step 0 (std 0.5)
    assert hints.start_gain(make_step(0, layers=RELUS)) is None


def test_a_spread_that_washes_out_through_a_sigmoid_stack_at_step_0_is_named():
    # each sigmoid layer scales the spread across examples by ~0.25x
    washed = {"s%d" % i: {"act_example_std": 0.15 * 0.25 ** i} for i in range(6)}
    first = make_step(0, layers=SIGMOIDS, layer_overrides=dict(washed, out={"act_example_std": 1e-4}))
    text = hints.hint_for("saturation", make_step(60, layers=SIGMOIDS), "out", first=first)
    assert text.startswith("at step 0 the spread across examples falls from 0.15 in s0 to "
                           "1.5e-04 in s5 through 6 stacked sigmoid/tanh layers")
    assert "initializer (kernel stddev" not in text
    # a stack whose spread holds (1.5x over the stack) is not washed out
    kept = {"s%d" % i: {"act_example_std": 0.15 * 0.92 ** i} for i in range(6)}
    assert hints.start_washout(make_step(0, layers=SIGMOIDS, layer_overrides=kept)) is None


def test_units_dead_at_step_0_with_scaled_inputs_blame_the_initializers():
    first = make_step(0, layer_overrides={"conv": {"dead_frac": 1.0}})
    text = hints.hint_for("dead_units", make_step(30), "conv", first=first)
    assert text.startswith("100% of conv's units were dead at step 0, before any update, with "
                           "inputs scaled (-3..3): check the initializers")
    # raw inputs can put every pre-activation below zero on their own: the scale is named
    raw_first = make_step(0, input_max=255.0, layer_overrides={"conv": {"dead_frac": 1.0}})
    raw = hints.hint_for("dead_units", make_step(30, input_max=255.0), "conv", first=raw_first)
    assert raw.startswith("inputs range -3..255") and "initializers" not in raw


def test_saturation_at_step_0_is_the_initializer_and_later_the_updates():
    pinned = make_step(0, layer_overrides={"hidden": {"act_saturated_frac": 0.91}})
    later = make_step(100, layer_overrides={"hidden": {"act_saturated_frac": 0.95}})
    text = hints.hint_for("saturation", later, "hidden", first=pinned)
    assert text.startswith("91% of hidden's outputs (tanh) were at its bounds at step 0, before "
                           "any update, with inputs scaled (-3..3): the kernel initializer is "
                           "too large")
    text = hints.hint_for("saturation", later, "hidden", first=make_step(0))
    assert text.startswith("hidden was 2% saturated at step 0 and 95% now: updates drove it "
                           "there; lower the learning rate")
    assert "initializer" not in text
    # with a high learning rate that blew the weights up, the rate is named with its numbers
    blown = make_step(100, learning_rate=0.5, layer_overrides={
        "hidden": {"act_saturated_frac": 0.95, "weight_norm": 400.0}})
    assert hints.hint_for("saturation", blown, "hidden", first=make_step(0)) == (
        "learning rate 0.5 is high: the weights of hidden grew from norm 5 at step 0 to 400; "
        "try 10x lower")


def test_nan_gradients_only_in_the_first_layer_point_at_unsampled_inputs():
    # the NaN input example was not among the few the input statistics saw
    stats = make_step(2, layer_overrides={"conv": {"grad_nonfinite": 32.0}}, grad_nonfinite=32.0)
    text = hints.hint_for("nan_inf", stats, "conv", first=make_step(0))
    assert text.startswith("NaN/Inf gradients (32) only in conv, the first layer, with the loss "
                           "and activations finite: the input batch holds NaN/Inf values")
    # a later layer's gradient is non-finite too: weights or an overflow, not the data
    both = make_step(2, layer_overrides={"conv": {"grad_nonfinite": 32.0},
                                         "hidden": {"grad_nonfinite": 5.0}})
    assert hints.nonfinite_inputs_unsampled(both) is None
    # a NaN loss: the targets or the loss, not the inputs
    nan_loss = make_step(2, loss=float("nan"), layer_overrides={"conv": {"grad_nonfinite": 32.0}})
    assert hints.nonfinite_inputs_unsampled(nan_loss) is None


def test_tiny_updates_at_a_usual_learning_rate_are_tiny_gradients_not_a_low_rate():
    # SGD at 0.05 moving weights by 2e-7: a usual step would need a rate of 250
    stats = make_step(60, learning_rate=0.05, layer_overrides={
        n: {"update_ratio": 2e-7} for n in ("conv", "hidden", "out")})
    text = hints.hint_for("stalled", stats, first=make_step(0))
    assert "too low" not in text and "is high" not in text
    assert text.startswith("weights move by 2.0e-07 of their norm per step at learning rate "
                           "0.05: the gradients are tiny, not the rate; no measured cause "
                           "singles one out; in order: the initializers")


def test_several_causes_are_listed_in_the_order_checked():
    first = make_step(0, input_std=1.0, input_max=255.0,
                      layer_overrides={"conv": {"act_std": 2e4}})
    text = hints.hint_for("exploding_gradients", make_step(3, input_max=255.0), first=first)
    assert text.startswith("2 causes fit, in the order checked: (1) at step 0, before any update, "
                           "activations reach std 2.0e+04 in conv")
    assert "; (2) inputs range -3..255" in text
    # nothing measured: said so, and the usual causes in the same order
    assert hints.hint_for("exploding_gradients", make_step(3), first=make_step(0)) == (
        "no measured cause singles one out; in order: the initializer's scale, the input "
        "scale, the learning rate (lower it), and clip gradients (clipnorm=1.0)")


def test_a_stall_names_a_high_learning_rate_only_with_the_damage_it_did():
    grown = make_step(80, learning_rate=0.5, layer_overrides={"conv": {"weight_norm": 5e3}})
    assert hints.hint_for("stalled", grown, first=make_step(0)).startswith(
        "learning rate 0.5 is high: the weights of conv grew from norm 5 at step 0 to 5000")
    same = make_step(80, learning_rate=0.5)
    assert "learning rate" not in hints.hint_for("stalled", same, first=make_step(0)).split(
        "in order:")[0]


def test_detectors_hand_the_first_logged_step_to_the_hint():
    from test_detectors import raised, run, stream
    from training_health.detectors import ExplodingGradientsDetector

    def layer_fn(s):
        if s == 0:  # initial weights that amplify: 3.3x per layer
            return {"r%d" % i: {"act_std": 3.3 ** (i + 1)} for i in range(8)}
        return {}

    steps = stream(20, layers=RELUS, layer_fn=layer_fn,
                   global_fn=lambda s: {"grad_norm": 1.0 if s < 10 else 1e9,
                                        "loss": 1.0 if s < 10 else 1e6})
    (alert,) = raised(run(ExplodingGradientsDetector(), steps))
    assert "the kernel initializer is too large" in alert.hint
    # a run resumed at step 1000: its first logged step is not the initialization
    resumed = stream(20, layers=RELUS, layer_fn=lambda s: layer_fn(0) if s == 0 else {},
                     global_fn=lambda s: {"grad_norm": 1.0 if s < 10 else 1e9,
                                          "loss": 1.0 if s < 10 else 1e6})
    for stats in resumed:
        stats.step += 1000
    (alert,) = raised(run(ExplodingGradientsDetector(), resumed))
    assert "initializer is too large" not in alert.hint
