"""The evaluator as pure logic: Aodh's threshold and composite semantics on event-time windows."""

from __future__ import annotations

import pytest

from streams.alarms.evaluator import STATE_KEY, AlarmSet, advance, due, observe
from streams.alarms.model import ALARM, OK, UNKNOWN, parse_alarm
from tests.conftest import make_test_sample

P = 10_000_000  # 10 s in µs
T0 = 1_700_000_000_000_000 - 1_700_000_000_000_000 % P


def threshold(op="gt", value=50.0, statistic="avg", n=1, repeat=False, **extra):
    return parse_alarm({"alarm_id": "a1", "name": "cpu high", "repeat_actions": repeat,
                        "threshold_rule": {"meter_name": "cpu_util", "threshold": value, "comparison_operator": op,
                                           "statistic": statistic, "period": P / 1e6, "evaluation_periods": n},
                        "alarm_actions": ["log://"], **extra})


def sample(volume, ts, name="cpu_util", rid="vm-1", **kw):
    return make_test_sample(name=name, type="gauge", unit="%", volume=volume, resource_id=rid, timestamp=ts, **kw)


def run(alarm, windows, state=None, grace=0):
    """Feed window i's values (None = no samples) and close it; return (state after each window, events)."""
    alarms = AlarmSet([alarm])
    state = {} if state is None else state
    states, events = [], []
    for i, values in enumerate(windows):
        start = T0 + i * P
        for j, v in enumerate(values or []):
            observe(alarms, state, [sample(v, start + 1000 + j)])
        events += advance(alarms, state, "vm-1", start + P + grace, grace)
        states.append(state.get(STATE_KEY, {}).get(alarm.alarm_id, {}).get("state", UNKNOWN))
    return states, events, state


def test_all_breach_alarms_none_breach_ok():
    states, events, _ = run(threshold(n=2), [[60], [70], [10], [20]])
    assert states == [UNKNOWN, ALARM, ALARM, OK]
    assert [(e.previous, e.current) for e in events] == [(UNKNOWN, ALARM), (ALARM, OK)]
    assert events[0].reason == "Transition to alarm due to 2 samples outside threshold, most recent: 70.0"
    assert events[0].reason_data["statistics"] == [60.0, 70.0]
    assert events[1].reason == "Transition to ok due to 2 samples inside threshold, most recent: 20.0"
    assert events[0].actions == ["log://"] and events[1].actions == []
    assert all(e.transition for e in events)


def test_mixed_keeps_state():
    states, events, _ = run(threshold(n=2), [[60], [70], [10], [80], [90]])
    assert states == [UNKNOWN, ALARM, ALARM, ALARM, ALARM]
    assert len(events) == 1


def test_mixed_from_insufficient_data_takes_the_trending_state():
    # Aodh: from 'insufficient data', a mixed verdict becomes the newest window's.
    states, events, _ = run(threshold(n=2), [[60], [10]])
    assert states == [UNKNOWN, OK]
    assert events[0].reason.startswith("Transition to ok due to 1 samples inside threshold")


def test_insufficient_data_when_windows_are_missing_and_after_stopping():
    # Aodh's look_back: n + 1 windows are searched, so one gap is tolerated.
    states, events, st = run(threshold(n=2), [[60], None, [70], None, None])
    assert states == [UNKNOWN, UNKNOWN, ALARM, UNKNOWN, UNKNOWN]
    assert events[-1].current == UNKNOWN and events[-1].reason == "2 datapoints are unknown"
    # Nothing left to remember: the resource's alarm state is dropped.
    advance(AlarmSet([threshold(n=2)]), st, "vm-1", T0 + 9 * P, 0)
    assert STATE_KEY not in st


def test_repeat_actions_renotify_each_evaluation():
    states, events, _ = run(threshold(n=1, repeat=True), [[60], [70], [80]])
    assert states == [ALARM, ALARM, ALARM]
    assert [e.transition for e in events] == [True, False, False]
    assert events[1].reason.startswith("Remaining as alarm due to 1 samples outside threshold")
    assert len({e.event_id for e in events}) == 3


def test_repeat_actions_mixed_renotifies_current_state():
    states, events, _ = run(threshold(n=2, repeat=True), [[60], [70], [10]])
    assert states == [UNKNOWN, ALARM, ALARM]
    assert [(e.current, e.transition) for e in events] == [(UNKNOWN, False), (ALARM, True), (ALARM, False)]


@pytest.mark.parametrize(("op", "value", "expected"), [
    ("gt", 50, ALARM), ("gt", 60, OK), ("ge", 60, ALARM), ("lt", 61, ALARM), ("lt", 60, OK),
    ("le", 60, ALARM), ("eq", 60, ALARM), ("eq", 61, OK), ("ne", 61, ALARM), ("ne", 60, OK),
])
def test_each_operator(op, value, expected):
    states, _, _ = run(threshold(op=op, value=value), [[60]])
    assert states == [expected]


@pytest.mark.parametrize(("statistic", "value"), [
    ("avg", 20.0), ("min", 10.0), ("max", 40.0), ("sum", 60.0), ("count", 3.0), ("last", 10.0)])
def test_each_statistic(statistic, value):
    # samples 10, 40, 10 in one window (last = the newest timestamp)
    states, events, _ = run(threshold(op="eq", value=value, statistic=statistic), [[10, 40, 10]])
    assert states == [ALARM]
    assert events[0].reason_data["most_recent"] == value


def test_late_samples_within_grace_count_after_it_are_dropped():
    alarm = threshold(n=1)
    alarms = AlarmSet([alarm])
    st: dict = {}
    observe(alarms, st, [sample(10, T0 + 1)])
    assert advance(alarms, st, "vm-1", T0 + P + 1_000_000, 2_000_000) == []  # grace not over
    observe(alarms, st, [sample(1000, T0 + 2)])  # late but within grace: counts (avg 505)
    [event] = advance(alarms, st, "vm-1", T0 + P + 2_000_000, 2_000_000)
    assert event.current == ALARM
    observe(alarms, st, [sample(0, T0 + 3)])  # window evaluated: dropped
    assert st[STATE_KEY]["a1"]["late"] == 1


def test_time_constraints_skip_evaluation_outside():
    # 1700000000 s is 2023-11-14 22:13:20 UTC; a constraint of 22:00-22:10 UTC excludes it.
    outside = threshold(time_constraints=[{"name": "evening", "start": "0 22 * * *", "duration": 600}])
    states, events, _ = run(outside, [[60], [70]])
    assert states == [UNKNOWN, UNKNOWN] and events == []
    inside = threshold(time_constraints=[{"name": "late", "start": "0 22 * * *", "duration": 3600,
                                          "timezone": "UTC"}])
    states, _, _ = run(inside, [[60]])
    assert states == [ALARM]
    paris = threshold(time_constraints=[{"name": "p", "start": "0 23 * * *", "duration": 900,
                                         "timezone": "Europe/Paris"}])  # 23:13 in Paris: inside
    assert run(paris, [[60]])[0] == [ALARM]


def composite(rule, repeat=False):
    return parse_alarm({"alarm_id": "c1", "name": "both", "type": "composite", "composite_rule": rule,
                        "repeat_actions": repeat})


def leaf(meter, op="gt", value=50.0, n=1):
    return {"meter_name": meter, "threshold": value, "comparison_operator": op, "period": P / 1e6,
            "evaluation_periods": n}


def run_composite(alarm, windows):
    alarms = AlarmSet([alarm])
    st: dict = {}
    states, events = [], []
    for i, values in enumerate(windows):
        start = T0 + i * P
        for meter, v in values.items():
            observe(alarms, st, [sample(v, start + 1, name=meter)])
        events += advance(alarms, st, "vm-1", start + P, 0)
        states.append(st.get(STATE_KEY, {}).get("c1", {}).get("state", UNKNOWN))
    return states, events


def test_composite_and():
    alarm = composite({"and": [leaf("cpu_util"), leaf("memory.usage")]})
    states, events = run_composite(alarm, [{"cpu_util": 60, "memory.usage": 10}, {"cpu_util": 60, "memory.usage": 60},
                                           {"cpu_util": 10, "memory.usage": 60}])
    assert states == [OK, ALARM, OK]
    assert events[1].reason == ("Composite rule alarm with composition form: (rule1 and rule2) transition to alarm, "
                                "due to rules: rule1, rule2 outside their threshold.")
    assert set(events[1].reason_data["causative_rules"]) == {"rule1", "rule2"}


def test_composite_or_and_nesting_and_unknown():
    alarm = composite({"or": [leaf("cpu_util"), {"and": [leaf("disk"), leaf("net")]}]})
    states, events = run_composite(alarm, [{"cpu_util": 10, "disk": 10, "net": 10}, {"disk": 60, "net": 60},
                                           {"cpu_util": 10}, {"cpu_util": 10}])
    # window 1: disk and net breach -> alarm; window 2: still seen (look_back); window 3: disk/net unknown,
    # cpu ok -> neither expression holds -> insufficient data
    assert states == [OK, ALARM, ALARM, UNKNOWN]
    assert events[1].reason_data["composition_form"] == "(rule1 or (rule2 and rule3))"


def test_definition_update_keeps_windows_and_deletion_drops_state():
    st: dict = {}
    _, _, st = run(threshold(value=50), [[60]], state=st)
    assert st[STATE_KEY]["a1"]["state"] == ALARM
    higher = AlarmSet([threshold(value=90, n=1)])
    observe(higher, st, [sample(60, T0 + P + 1)])
    [e] = advance(higher, st, "vm-1", T0 + 2 * P, 0)
    assert e.current == OK
    empty = AlarmSet([])
    assert due(empty, st, T0, 0)
    advance(empty, st, "vm-1", T0 + 3 * P, 0)
    assert STATE_KEY not in st


def test_samples_of_other_meters_or_resources_are_ignored():
    alarm = threshold(value=50)
    alarm = alarm.model_copy(update={"threshold_rule": alarm.threshold_rule.model_copy(
        update={"query": alarm.threshold_rule.query.model_copy(update={"resource_id": "vm-*",
                                                                        "metadata": {"kind": "host"}})})})
    alarms = AlarmSet([alarm])
    st: dict = {}
    assert not observe(alarms, st, [sample(60, T0, name="memory")])
    assert not observe(alarms, st, [sample(60, T0, rid="host-1")])
    assert not observe(alarms, st, [sample(60, T0, resource_metadata={"kind": "process"})])
    assert observe(alarms, st, [sample(60, T0)])
    assert advance(alarms, st, "vm-1", T0 + P, 0)[0].current == ALARM


# -- state overrides (Aodh's PUT .../state through streams api) ----------------------------------


def overridden(alarm, state, ts):
    return parse_alarm({**alarm.model_dump(mode="json", by_alias=True, exclude_none=True),
                        "state_override": {"state": state, "timestamp": ts}})


def test_override_is_adopted_once_by_every_existing_resource_state_and_evaluation_continues_from_it():
    base = threshold(n=1)
    alarms = AlarmSet([base])
    states = {"vm-1": {}, "vm-2": {}}
    for rid, state in states.items():  # both resources breach: alarm
        observe(alarms, state, [sample(80, T0 + 1000, rid=rid)])
        assert [e.current for e in advance(alarms, state, rid, T0 + P, 0)] == [ALARM]
    # An operator sets ok at T0 + 1.5 P; both resources adopt it at their next advance, with no event.
    ov = T0 + P + P // 2
    alarms = AlarmSet([overridden(base, OK, ov)])
    assert all(due(alarms, s, T0 + P + 1, 0) for s in states.values())
    for rid, state in states.items():
        assert advance(alarms, state, rid, T0 + P + P // 2 + 1, 0) == []
        assert state[STATE_KEY]["a1"]["state"] == OK
        assert state[STATE_KEY]["a1"]["override"] == ov
        assert not due(alarms, state, T0 + P + P // 2 + 1, 0)
    # Evaluation continues from ok: vm-1 keeps breaching -> ok -> alarm, stamped after the override.
    observe(alarms, states["vm-1"], [sample(90, T0 + P + P // 2 + 2, rid="vm-1")])
    events = advance(alarms, states["vm-1"], "vm-1", T0 + 2 * P, 0)
    assert [(e.previous, e.current) for e in events] == [(OK, ALARM)]
    assert events[0].timestamp_us > ov
    # Seen once: the same override is not adopted again.
    observe(alarms, states["vm-1"], [sample(95, T0 + 2 * P + 1, rid="vm-1")])
    advance(alarms, states["vm-1"], "vm-1", T0 + 3 * P, 0)
    assert states["vm-1"][STATE_KEY]["a1"]["state"] == ALARM


def test_override_skips_boundaries_up_to_its_time_so_no_event_predates_it():
    base = threshold(n=1)
    state: dict = {}
    observe(AlarmSet([base]), state, [sample(80, T0 + 1000)])
    # Window [T0, T0+P) closed but not yet evaluated (grace) when the operator sets ok at T0 + P + 1.
    alarms = AlarmSet([overridden(base, OK, T0 + P + 1)])
    assert advance(alarms, state, "vm-1", T0 + P + 2, 0) == []  # boundary T0 + P <= override: skipped
    assert state[STATE_KEY]["a1"]["state"] == OK
    assert state[STATE_KEY]["a1"]["until"] == T0 + P


def test_override_ahead_of_the_resource_clock_still_skips_boundaries_up_to_it():
    base = threshold(n=1)
    state: dict = {}
    observe(AlarmSet([base]), state, [sample(80, T0 + 1000)])
    # The resource's newest sample (its clock) is behind the override: samples in flight, or a backlog.
    alarms = AlarmSet([overridden(base, OK, T0 + 2 * P + 5)])
    assert advance(alarms, state, "vm-1", T0 + P + 1, 0) == []
    assert state[STATE_KEY]["a1"]["until"] == T0 + 2 * P
    observe(alarms, state, [sample(90, T0 + P + 2), sample(90, T0 + 2 * P + 6)])
    events = advance(alarms, state, "vm-1", T0 + 3 * P, 0)  # window [T0+P, T0+2P) was decided by the operator
    assert [(e.previous, e.current, e.timestamp_us) for e in events] == [(OK, ALARM, T0 + 3 * P)]


def test_override_from_a_clock_far_ahead_stalls_evaluation_at_most_an_hour():
    base = threshold(n=1)
    state: dict = {}
    observe(AlarmSet([base]), state, [sample(80, T0 + 1000)])
    alarms = AlarmSet([overridden(base, ALARM, T0 + 1000 * P)])  # the API host's clock is hours ahead
    advance(alarms, state, "vm-1", T0 + 1000, 0)
    assert state[STATE_KEY]["a1"]["state"] == ALARM
    assert state[STATE_KEY]["a1"]["until"] == T0 + 3600 * 1_000_000


def test_resource_state_created_after_the_override_starts_as_usual():
    alarms = AlarmSet([overridden(threshold(n=1), ALARM, T0 - P)])
    state: dict = {}
    observe(alarms, state, [sample(10, T0 + 1000)])
    events = advance(alarms, state, "vm-1", T0 + P, 0)
    assert [(e.previous, e.current) for e in events] == [(UNKNOWN, OK)]
    assert not due(alarms, state, T0 + P, 0)


def test_a_newer_override_is_adopted_again():
    base = threshold(n=1)
    state: dict = {}
    observe(AlarmSet([base]), state, [sample(80, T0 + 1000)])
    advance(AlarmSet([base]), state, "vm-1", T0 + P, 0)
    advance(AlarmSet([overridden(base, OK, T0 + P + 1)]), state, "vm-1", T0 + P + 2, 0)
    assert state[STATE_KEY]["a1"]["state"] == OK
    advance(AlarmSet([overridden(base, UNKNOWN, T0 + P + 3)]), state, "vm-1", T0 + P + 4, 0)
    assert state[STATE_KEY]["a1"]["state"] == UNKNOWN
