"""Incidents: alerts that follow from an earlier one are grouped under it,
the same way online (the suite) and offline (`group` over a record list)."""

import pytest

from test_detectors import stalled_cnn_stream, raised, stream
from training_health.detectors import DetectorSuite, incidents
from training_health.records import KINDS, Alert


def alert(kind, step, layer=None, cleared=False):
    return Alert(kind, step, layer, "critical", "%s at %d" % (kind, step), "hint", cleared=cleared)


def fields(alerts):
    return [(a.kind, a.step, a.layer, a.incident, a.caused_by) for a in alerts]


def test_divergence_then_nan_then_dead_units_then_stall_is_one_incident():
    # raised in detector order: nan_inf before exploding_gradients at step 3
    sequence = [alert("nan_inf", 3), alert("exploding_gradients", 3, "dense_1"),
                alert("dead_units", 20, "dense_0"), alert("dead_units", 20, "dense_1"),
                alert("stalled", 60)]
    assert fields(incidents.group(sequence)) == [
        ("exploding_gradients", 3, "dense_1", 1, None),
        ("nan_inf", 3, None, 1, "exploding_gradients@3/dense_1"),
        ("dead_units", 20, "dense_0", 1, "exploding_gradients@3/dense_1"),
        ("dead_units", 20, "dense_1", 1, "exploding_gradients@3/dense_1"),
        ("stalled", 60, None, 1, "exploding_gradients@3/dense_1"),
    ]


def test_unrelated_alerts_are_separate_incidents():
    # a stall does not cause NaN inputs; a NaN does not cause oscillation
    sequence = [alert("stalled", 50), alert("nan_inf", 80), alert("oscillating_loss", 120)]
    assert [(a.incident, a.caused_by) for a in incidents.group(sequence)] == [
        (1, None), (2, None), (3, None)]


def test_a_cause_counts_while_open_and_for_horizon_steps_after_it_closed():
    sequence = [alert("dead_units", 20, "conv"), alert("dead_units", 100, "conv", cleared=True),
                alert("stalled", 200), alert("saturation", 201, "out")]
    grouped = incidents.group(sequence, horizon=100)
    assert fields(grouped)[1] == ("dead_units", 100, "conv", 1, None)  # the clear keeps its incident
    assert [(a.incident, a.caused_by) for a in grouped[2:]] == [
        (1, "dead_units@20/conv"), (2, None)]  # 101 steps after it closed: too late
    assert grouped[3].incident == 2


def test_the_earliest_cause_is_taken():
    sequence = [alert("dead_units", 20, "conv"), alert("saturation", 40, "out"),
                alert("stalled", 60)]
    assert [a.caused_by for a in incidents.group(sequence)] == [
        None, "dead_units@20/conv", "dead_units@20/conv"]


def test_a_step_going_back_starts_a_new_run():
    grouper = incidents.Incidents()
    first = grouper.assign([alert("dead_units", 20, "conv"), alert("stalled", 60)])
    again = grouper.assign([alert("dead_units", 20, "conv"), alert("stalled", 60)])
    assert fields(first) == fields(again)


def test_every_kind_has_its_consequences_and_an_order():
    assert set(KINDS) <= set(incidents.CONSEQUENCES)
    assert set(incidents.CAUSE_ORDER) == set(incidents.CONSEQUENCES)
    for kinds in incidents.CONSEQUENCES.values():
        assert set(kinds) <= set(incidents.CONSEQUENCES)


def test_bad_horizon_is_refused():
    with pytest.raises(ValueError, match="horizon must be an integer >= 0 .*received -1"):
        incidents.Incidents(-1)


def test_the_suite_annotates_online_as_group_does_offline():
    steps = stalled_cnn_stream()
    online = DetectorSuite().replay(steps)
    plain = [a.__class__(a.kind, a.step, a.layer, a.severity, a.message, a.hint, a.cleared)
             for a in online]
    assert fields(incidents.group(plain)) == fields(online)
    grouped = raised(online)
    # the dead conv layer comes first; the constant output and the stall follow from it
    assert fields(grouped)[0][:5] == ("dead_units", grouped[0].step, "conv", 1, None)
    assert {a.incident for a in grouped} == {1}
    assert {a.caused_by for a in grouped[1:]} == {"dead_units@%d/conv" % grouped[0].step}


def test_by_incident_lists_roots_with_their_consequences():
    grouped = incidents.group([alert("dead_units", 20, "conv"), alert("stalled", 60),
                               alert("nan_inf", 70)])
    assert [(root.kind, [c.kind for c in rest]) for root, rest in incidents.by_incident(grouped)] \
        == [("dead_units", ["stalled"]), ("nan_inf", [])]


def test_healthy_stream_has_no_incident():
    assert DetectorSuite().replay(stream(300)) == []
