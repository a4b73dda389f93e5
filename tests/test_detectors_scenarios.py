"""The scenario suite through real Keras training: every buggy run gets its
expected alert kind, every healthy trap gets no alert at all."""

import os
import sys

import pytest

pytest.importorskip("tensorflow")

# Two epochs (200 batches for most) are enough to see every detection (all
# come within the first epoch) and every trap (the early plateau resolves
# after ~100 steps); the report script runs the full length.
MAX_EPOCHS = 2
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from benchmarks.scenarios import BUGGY, HEALTHY, HELDOUT2, SCENARIOS, run_scenario  # noqa: E402


def test_suite_has_ten_or_more_of_each():
    assert len(BUGGY) >= 10 and len(HEALTHY) >= 10
    assert all(SCENARIOS[name].expected for name in BUGGY)
    assert not any(SCENARIOS[name].expected for name in HEALTHY)


@pytest.mark.slow
@pytest.mark.parametrize("name", BUGGY)
def test_buggy_scenario_gets_its_expected_kind(name, tmp_path):
    result = run_scenario(SCENARIOS[name], str(tmp_path / name), max_epochs=MAX_EPOCHS)
    found = [(a.kind, a.step, a.layer) for a in result.alerts]
    assert result.expected in result.kinds, found
    # the online detectors (inside HealthCallback) saw it too
    assert result.expected in {a.kind for a in result.online_alerts}, result.online_alerts
    assert result.within_first_epoch, (result.delay, result.steps_per_epoch)


@pytest.mark.slow
@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_scenario_raises_nothing(name, tmp_path):
    result = run_scenario(SCENARIOS[name], str(tmp_path / name), max_epochs=MAX_EPOCHS)
    assert result.alerts == []
    assert result.online_alerts == []
    assert result.steps > 0


def test_the_first_hint_is_that_of_the_incident_of_the_expected_alert():
    from benchmarks.scenarios import Result
    from training_health.detectors import incidents
    from training_health.records import Alert

    alerts = incidents.group([
        Alert("dead_units", 20, "conv", "critical", "m", "inputs range 0..255: scale them"),
        Alert("stalled", 60, None, "critical", "m", "learning rate 0.05 is high"),
        Alert("nan_inf", 90, None, "critical", "m", "clean the data")])
    result = Result("x", "stalled", alerts, [], 100, 100, 0, 1.0, cause="inputs range")
    assert result.first_hint == "inputs range 0..255: scale them" and result.cause_named
    assert Result("x", "stalled", alerts, [], 100, 100, 0, 1.0, cause="too low").cause_named is False
    assert Result("x", "stalled", alerts, [], 100, 100, 0, 1.0).cause_named is None
    assert Result("x", "overfitting", alerts, [], 100, 100, 0, 1.0, cause="a").cause_named is False
    assert len(HELDOUT2) >= 8 and set(HELDOUT2).isdisjoint(BUGGY + HEALTHY)
    assert {SCENARIOS[n].expected for n in HELDOUT2} >= {"constant_output", "stalled", None}
