"""constant_output on synthetic streams: a gradient that is exactly 0 from the
first step (whatever the loss, 0 included), an output that collapsed to one
answer while the loss sits still; silence on an initial plateau and on a run
whose gradient dies later (other detectors speak for that)."""

from test_detectors import LAYERS, raised, run, stream
from training_health.detectors import ConstantOutputDetector, DetectorSuite, StalledDetector
from training_health.records import LayerInfo

ONE_UNIT_SOFTMAX = LAYERS[:2] + (LayerInfo("out", "Dense", "softmax", (0.0, 1.0), 1, True, True),)


def flat(level):
    return lambda s, r: level + 0.01 * r.standard_normal()


def test_zero_loss_without_gradient_from_the_first_step_is_not_convergence():
    # softmax over one unit with categorical crossentropy: loss exactly 0, no gradient
    steps = stream(60, layers=ONE_UNIT_SOFTMAX, loss=lambda s, r: 0.0,
                   global_fn=lambda s: {"grad_norm": 0.0},
                   layer_fn=lambda s: {n: {"grad_norm": 0.0, "update_ratio": 0.0}
                                       for n in ("conv", "hidden", "out")})
    alerts = run(ConstantOutputDetector(), steps)
    assert [(a.kind, a.step, a.layer, a.severity) for a in alerts] == [
        ("constant_output", 10, None, "critical")]
    assert "exactly 0 on every step; the loss is 0 at step 10" in alerts[0].message
    assert "out applies softmax to a single unit" in alerts[0].hint
    assert run(StalledDetector(), steps) == []  # a zero loss reads as converged there
    suite = raised(DetectorSuite().replay(steps))
    assert suite[0].kind == "constant_output" and suite[0].caused_by is None


def test_a_loss_exactly_the_same_on_every_batch_from_the_first_step():
    # Keras's categorical crossentropy on a one-unit softmax: the loss is 0 on
    # every batch while a (meaningless) gradient still reaches the weights
    steps = stream(60, layers=ONE_UNIT_SOFTMAX, loss=lambda s, r: 0.0)
    alerts = run(ConstantOutputDetector(), steps)
    assert [(a.step, a.severity) for a in alerts] == [(10, "critical")]
    assert "the loss is exactly the same on every batch, whatever the examples" in alerts[0].message


def test_a_gradient_that_dies_later_is_not_still_from_the_first_step():
    steps = stream(100, loss=flat(1.1), global_fn=lambda s: {"grad_norm": 0.0 if s > 0 else 0.3})
    assert run(ConstantOutputDetector(), steps) == []


def test_collapsed_output_with_a_still_loss():
    steps = stream(300, loss=flat(1.09), layer_fn=lambda s: {"out": {"act_example_std": 3e-4}})
    alerts = run(ConstantOutputDetector(), steps)
    assert [(a.kind, a.step, a.layer, a.severity) for a in alerts] == [
        ("constant_output", 99, "out", "warning")]
    assert "by at most 3.0e-04 of its range over the last 99 steps (from step 0)" in alerts[0].message


def test_initial_plateau_whose_output_spread_grows_is_silent():
    # tiny initial weights: the output spread grows from 2e-4 while the loss sits at 0.69
    steps = stream(300, loss=flat(0.693),
                   layer_fn=lambda s: {"out": {"act_example_std": 2e-4 * 1.01 ** s}})
    assert run(ConstantOutputDetector(), steps) == []


def test_collapsed_output_while_the_loss_falls_is_silent():
    steps = stream(300, layer_fn=lambda s: {"out": {"act_example_std": 3e-4}})
    assert run(ConstantOutputDetector(), steps) == []


def test_healthy_streams_are_silent():
    assert run(ConstantOutputDetector(), stream(500)) == []
    assert run(ConstantOutputDetector(), stream(500, loss=flat(0.6))) == []  # flat but varying output


def test_one_answer_per_batch_of_one_class_is_the_data_order_not_a_collapse():
    # Batches sorted by class: the model answers the current class for every
    # example of the batch (its output barely varies within a batch), and the
    # loss jumps at each class change. The data order is the finding.
    from test_detectors import class_sorted_loss

    steps = stream(400, loss=class_sorted_loss(40),
                   layer_fn=lambda s: {"out": {"act_example_std": 3e-4}})
    assert raised(run(ConstantOutputDetector(), steps)) == []
    kinds = {a.kind for a in raised(DetectorSuite().replay(steps))}
    assert "oscillating_loss" in kinds and "constant_output" not in kinds
