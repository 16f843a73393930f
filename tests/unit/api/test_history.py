"""An alarm's state aggregated over its resources, with operator overrides; history rows as Aodh's AlarmChange."""

from __future__ import annotations

import json

from streams.alarms.model import parse_alarm
from streams.api.history import Transition, alarm_change, alarm_state

T = 1_800_000_000_000_000


def alarm(override=None):
    doc = {"alarm_id": "a1", "name": "cpu", "project_id": "p-1",
           "threshold_rule": {"meter_name": "cpu_util", "threshold": 90}}
    if override:
        doc["state_override"] = {"state": override[0], "timestamp": override[1]}
    return parse_alarm(doc)


def test_nothing_evaluated_yet():
    s = alarm_state(alarm(), [])
    assert (s.state, s.timestamp_us, s.reason) == ("insufficient data", None, "Not evaluated yet")


def test_alarm_if_any_resource_is_in_alarm_else_ok_if_any_is_ok():
    rows = [Transition("vm-1", "ok", T, "Transition to ok"), Transition("vm-2", "alarm", T + 5, "Transition to alarm"),
            Transition("vm-3", "insufficient data", T + 9, "2 datapoints are unknown")]
    s = alarm_state(alarm(), rows)
    assert (s.state, s.timestamp_us, s.reason) == ("alarm", T + 5, "vm-2: Transition to alarm")
    s = alarm_state(alarm(), [rows[0], rows[2], Transition("vm-4", "ok", T + 7, "Transition to ok")])
    assert (s.state, s.timestamp_us) == ("ok", T + 7)
    assert s.reason == "2 of 3 resources in ok; vm-4: Transition to ok"
    assert alarm_state(alarm(), [rows[2]]).state == "insufficient data"


def test_an_override_stands_for_resources_that_did_not_move_since():
    rows = [Transition("vm-1", "alarm", T, "Transition to alarm"), Transition("", "ok", T + 10, "Manually set via API")]
    s = alarm_state(alarm(("ok", T + 10)), rows)
    assert (s.state, s.timestamp_us, s.reason) == ("ok", T + 10, "vm-1: Manually set via API")
    # vm-1 transitions again after the override: its own state counts.
    s = alarm_state(alarm(("ok", T + 10)), [Transition("vm-1", "alarm", T + 20, "Transition to alarm"), rows[1]])
    assert (s.state, s.timestamp_us) == ("alarm", T + 20)
    # no resource history at all: the override is the alarm's state
    s = alarm_state(alarm(("alarm", T)), [])
    assert (s.state, s.timestamp_us, s.reason) == ("alarm", T, "Manually set via API")


def test_evaluator_rows_as_alarm_changes():
    row = {"event_id": "e1", "alarm_id": "a1", "type": "state transition", "severity": "low", "project_id": "p-x",
           "resource_id": "vm-1", "previous_state": "insufficient data", "state": "alarm",
           "reason": "Transition to alarm due to 2 samples outside threshold, most recent: 95.0", "reason_data": "{}",
           "timestamp_us": T}
    change = alarm_change(row, "p-1")
    assert change["type"] == "state transition" and change["on_behalf_of"] == "p-1"
    assert json.loads(change["detail"]) == {"state": "alarm", "transition_reason": row["reason"],
                                            "previous_state": "insufficient data", "resource_id": "vm-1"}
    assert change["timestamp"] == "2027-01-15T08:00:00" and change["user_id"] is None


def test_api_rows_as_alarm_changes_carry_the_caller():
    row = {"event_id": "e2", "alarm_id": "a1", "type": "state transition", "severity": "low", "project_id": "p-1",
           "resource_id": "", "previous_state": "alarm", "state": "ok", "reason": "Manually set via API",
           "reason_data": json.dumps({"detail": {"state": "ok", "state_reason": "Manually set via API"},
                                      "user_id": "u-admin", "project_id": "p-admin", "on_behalf_of": "p-1"}),
           "timestamp_us": T}
    change = alarm_change(row, None)
    assert json.loads(change["detail"]) == {"state": "ok", "state_reason": "Manually set via API"}
    assert (change["user_id"], change["project_id"], change["on_behalf_of"]) == ("u-admin", "p-admin", "p-1")
