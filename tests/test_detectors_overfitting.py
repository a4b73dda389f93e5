"""OverfittingDetector on constructed epoch sequences, and how the suite feeds epochs."""

import math

import numpy as np
import pytest

from training_health import format as fmt
from training_health.detectors import DetectorSuite, OverfittingDetector, in_step_order
from training_health.records import EpochStats, StepStats

from test_detectors import run as feed

STEPS_PER_EPOCH = 100


def epochs(train, val, **extra):
    """EpochStats of the given loss sequences (val None: not validated)."""
    out = []
    for i, (t, v) in enumerate(zip(train, val)):
        metrics = {"loss": t}
        if v is not None:
            metrics["val_loss"] = v
        metrics.update({k: values[i] for k, values in extra.items()})
        out.append(EpochStats((i + 1) * STEPS_PER_EPOCH - 1, i + 1, metrics))
    return out


# A classic overfitting curve: the training loss keeps falling, the
# validation loss bottoms out at epoch 5 and climbs.
TRAIN = [2.0, 1.4, 1.0, 0.75, 0.55, 0.42, 0.33, 0.26, 0.2, 0.16]
VAL = [2.1, 1.6, 1.3, 1.15, 1.1, 1.13, 1.18, 1.25, 1.33, 1.42]


def test_raised_once_when_the_validation_loss_rises_for_patience_epochs():
    alerts = feed(OverfittingDetector(), epochs(TRAIN, VAL))
    assert len(alerts) == 1
    alert = alerts[0]
    assert (alert.kind, alert.layer, alert.severity, alert.cleared) == ("overfitting", None, "warning", False)
    assert alert.step == 8 * STEPS_PER_EPOCH - 1  # epoch 8: 3 validated epochs after the best (5)
    assert "epoch 8" in alert.message and "lowest, 1.1 at epoch 5" in alert.message
    assert "fell from 0.55 to 0.26" in alert.message
    assert "lowest at epoch 5 (1.1)" in alert.hint and "EarlyStopping" in alert.hint
    assert "regularisation" in alert.hint and "more training data" in alert.hint


def test_patience_and_min_delta_are_keras_style_knobs():
    assert feed(OverfittingDetector(patience=5), epochs(TRAIN, VAL))[0].step == 10 * STEPS_PER_EPOCH - 1
    assert feed(OverfittingDetector(patience=6), epochs(TRAIN, VAL)) == []
    # 1.25 at epoch 8 is 13.6% above 1.1: a 20% min_delta waits for 1.33 (21%)
    assert feed(OverfittingDetector(min_delta=0.2), epochs(TRAIN, VAL))[0].step == 9 * STEPS_PER_EPOCH - 1
    for bad in (dict(patience=0), dict(patience=1.5), dict(min_delta=-0.1), dict(min_delta=2.0),
                dict(min_delta=float("nan")), dict(patience=True)):
        with pytest.raises(ValueError):
            OverfittingDetector(**bad)


def test_converged_run_with_both_losses_flat_is_silent():
    rng = np.random.default_rng(0)
    train = [0.3 * (1 + 0.003 * rng.standard_normal()) for _ in range(30)]
    val = [0.35 * (1 + 0.004 * rng.standard_normal()) for _ in range(30)]
    assert feed(OverfittingDetector(), epochs(train, val)) == []


def test_validation_loss_that_levels_off_while_training_falls_is_silent():
    train = [1.0 * 0.8 ** i for i in range(15)]
    val = [1.2, 1.0, 0.9, 0.85, 0.84] + [0.84 * (1 + 0.003 * (-1) ** i) for i in range(10)]
    assert feed(OverfittingDetector(), epochs(train, val)) == []


def test_rising_validation_loss_with_a_rising_training_loss_is_not_overfitting():
    # both go up: divergence (the step-level detectors' business), not overfitting
    train = [1.0, 0.8, 0.7, 0.75, 0.85, 0.95, 1.1]
    val = [1.1, 0.9, 0.8, 0.85, 0.95, 1.05, 1.2]
    assert feed(OverfittingDetector(), epochs(train, val)) == []


def test_epochs_without_validation_never_raise():
    assert feed(OverfittingDetector(), epochs(TRAIN, [None] * len(TRAIN))) == []


def test_patience_counts_validated_epochs_only():
    # validation_freq=2: val_loss at every other epoch; 3 validated epochs after the best
    val = [v if i % 2 else None for i, v in enumerate([2.1, 2.0, 1.6, 1.5, 1.3, 1.2, 1.3, 1.35, 1.4,
                                                       1.45, 1.5, 1.55, 1.6, 1.65])]
    train = [1.0 * 0.85 ** i for i in range(len(val))]
    alerts = feed(OverfittingDetector(), epochs(train, val))
    assert [a.step for a in alerts] == [12 * STEPS_PER_EPOCH - 1]  # best at epoch 6, then 8, 10, 12


def test_cleared_when_the_validation_loss_reaches_a_new_best_and_raised_again_later():
    train = TRAIN + [0.13, 0.11, 0.1, 0.09, 0.08, 0.07]
    val = VAL + [1.0, 1.05, 1.1, 1.2, 1.3, 1.4]  # a new best at epoch 11 (a schedule kicked in)
    alerts = feed(OverfittingDetector(), epochs(train, val))
    assert [(a.step // STEPS_PER_EPOCH + 1, a.cleared) for a in alerts] == [
        (8, False), (11, True), (14, False)]
    assert "new best, 1" in alerts[1].message


def test_non_finite_or_missing_values_are_skipped():
    val = list(VAL)
    val[6] = float("nan")
    assert len(feed(OverfittingDetector(), epochs(TRAIN, val))) == 1
    no_train = [EpochStats(e.step, e.epoch, {"val_loss": e.metrics["val_loss"]})
                for e in epochs(TRAIN, VAL)]
    assert feed(OverfittingDetector(), no_train) == []


def test_a_step_that_goes_back_starts_a_new_run():
    detector = OverfittingDetector()
    first = epochs(TRAIN[:7], VAL[:7])
    assert feed(detector, first) == []
    # a new run: its epochs restart at step 99; the old best must not count
    assert feed(detector, epochs([1.0, 0.9], [1.5, 1.6])) == []


def _step(step, loss=1.0):
    return StepStats(step, (), fmt.LAYER_STATS, np.zeros((0, len(fmt.LAYER_STATS)), np.float32),
                     {"loss": loss})


def test_suite_feeds_epochs_to_epoch_detectors_and_steps_to_the_others():
    seen = []

    class StepProbe:
        def update(self, step, stats):
            seen.append(("step", type(stats).__name__))
            return []

        def reset(self):
            pass

    suite = DetectorSuite([StepProbe(), OverfittingDetector()])
    steps = [_step(s) for s in range(0, 10 * STEPS_PER_EPOCH, 50)]
    alerts = suite.replay(steps, epochs(TRAIN, VAL))
    assert set(seen) == {("step", "StepStats")}
    assert [(a.kind, a.step, a.incident, a.caused_by) for a in alerts] == [
        ("overfitting", 8 * STEPS_PER_EPOCH - 1, 1, None)]


def test_steps_and_epochs_merge_with_each_epoch_after_its_steps():
    steps = [_step(s) for s in (0, 50, 99, 100, 150, 199, 250)]
    merged = in_step_order(steps, epochs([1.0, 0.9], [1.0, 0.9]))
    order = [("E" if isinstance(x, EpochStats) else "S", x.step) for x in merged]
    assert order == [("S", 0), ("S", 50), ("S", 99), ("E", 99), ("S", 100), ("S", 150), ("S", 199),
                     ("E", 199), ("S", 250)]
    assert in_step_order([], epochs([1.0], [1.0]))[0].epoch == 1


def test_suite_replay_is_the_same_as_feeding_online():
    suite = DetectorSuite()
    sequence = epochs(TRAIN, VAL)
    steps = [_step(s, loss=2.0 * math.exp(-s / 300)) for s in range(0, 10 * STEPS_PER_EPOCH, 10)]
    offline = suite.replay(steps, sequence)
    online = []
    suite.reset()
    for stats in in_step_order(steps, sequence):
        if isinstance(stats, EpochStats):
            online.extend(suite.update_epoch(stats.step, stats))
        else:
            online.extend(suite.update(stats.step, stats))
    assert [a.kind for a in offline] == [a.kind for a in online]
    assert "overfitting" in [a.kind for a in offline]
