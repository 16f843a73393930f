"""Aodh documents <-> alarm definitions: validation with Aodh's messages, the mapping, the round trip."""

from __future__ import annotations

import json

import pytest

from streams.alarms.evaluator import AlarmSet, observe
from streams.alarms.model import parse_alarm
from streams.api.errors import AodhError
from streams.api.mapping import (
    AlarmState,
    Identity,
    aodh_type_and_rule,
    build_definition,
    render,
    resource_query,
    translate,
)
from tests.conftest import make_test_sample

ADMIN = Identity("u-admin", "p-admin", ("admin",))
MEMBER = Identity("u-1", "p-1", ("member",))
NOW = 1_800_000_000_000_000


def resources_alarm(**rule):
    return {"name": "cpu high", "type": "gnocchi_resources_threshold",
            "gnocchi_resources_threshold_rule": {"metric": "cpu_util", "resource_id": "host-a",
                                                 "resource_type": "generic", "aggregation_method": "mean",
                                                 "threshold": 80, **rule}}


def heat_alarm(query='{"=": {"server_group": "stack-1"}}'):
    """What Heat's OS::Aodh::GnocchiAggregationByResourcesAlarm sends (unset properties as null)."""
    return {"name": "stack-cpu_alarm_high-x", "type": "gnocchi_aggregation_by_resources_threshold",
            "description": None, "enabled": True, "alarm_actions": ["http://heat:8000/v1/signal/arn?Sig=1"],
            "ok_actions": [], "insufficient_data_actions": [], "repeat_actions": True, "severity": "low",
            "time_constraints": [],
            "gnocchi_aggregation_by_resources_threshold_rule": {
                "metric": "cpu_util", "query": query, "resource_type": "instance", "comparison_operator": "gt",
                "evaluation_periods": None, "aggregation_method": "mean", "granularity": 300, "threshold": 80.0}}


def error(body, identity=ADMIN, rate_meters=None) -> AodhError:
    with pytest.raises(AodhError) as exc:
        translate(body, identity, rate_meters or {})
    return exc.value


def test_resources_threshold_maps_onto_a_threshold_rule_with_aodh_defaults():
    t = translate(resources_alarm(), ADMIN, {})
    assert t.type == "gnocchi_resources_threshold"
    assert t.rule == {"granularity": 60, "comparison_operator": "eq", "threshold": 80.0, "aggregation_method": "mean",
                      "evaluation_periods": 1, "metric": "cpu_util", "resource_id": "host-a",
                      "resource_type": "generic"}
    rule = t.fields["threshold_rule"]
    assert rule == {"meter_name": "cpu_util", "query": {"resource_id": "host-a"}, "statistic": "avg",
                    "comparison_operator": "eq", "threshold": 80.0, "period": 60.0, "evaluation_periods": 1}
    assert (t.fields["project_id"], t.fields["user_id"]) == ("p-admin", "u-admin")


def test_resource_ids_match_literally_even_with_pattern_characters():
    t = translate(resources_alarm(resource_id="vm-[1]*"), ADMIN, {})
    q = t.fields["threshold_rule"]["query"]["resource_id"]
    alarm = parse_alarm({"name": "x", "threshold_rule": {**t.fields["threshold_rule"], "threshold": 1}})
    s = make_test_sample(name="cpu_util", resource_id="vm-[1]*")
    assert alarm.threshold_rule.query.matches(s)
    assert not alarm.threshold_rule.query.matches({**s, "resource_id": "vm-1x"})
    assert q != "vm-[1]*"


def test_heat_body_is_accepted_and_its_server_group_selects_resources_by_metadata():
    t = translate(heat_alarm(), ADMIN, {})
    assert t.rule["evaluation_periods"] == 1  # null = Aodh's default
    rule = t.fields["threshold_rule"]
    assert rule["query"] == {"metadata": {"server_group": "stack-1"}}
    assert rule["period"] == 300.0 and rule["statistic"] == "avg"
    definition = build_definition("a1", t, NOW)
    alarms = AlarmSet([definition])
    member = make_test_sample(name="cpu_util", resource_id="vm-1", resource_metadata={"server_group": "stack-1"})
    other = make_test_sample(name="cpu_util", resource_id="vm-2", resource_metadata={"server_group": "stack-2"})
    assert observe(alarms, {}, [member]) and not observe(alarms, {}, [other])


@pytest.mark.parametrize("query, expected", [
    ('{"and": [{"=": {"ended_at": null}}, {"=": {"server_group": "g"}}]}', {"metadata": {"server_group": "g"}}),
    ('{"=": {"id": "vm-1"}}', {"resource_id": "vm-1"}),
    ('{"like": {"id": "vm-%"}}', {"resource_id": "vm-*"}),
    ('{"and": [{"==": {"project_id": "p"}}, {"eq": {"flavor_id": 2}}]}', {"project_id": "p", "metadata": {"flavor_id": "2"}}),
    ("{}", {}),
])
def test_gnocchi_queries_map_onto_resource_queries(query, expected):
    assert resource_query(query) == expected


@pytest.mark.parametrize("query, why", [
    ('{"or": [{"=": {"id": "a"}}, {"=": {"id": "b"}}]}', "operator 'or' is not supported"),
    ('{">": {"cpu": 1}}', "operator '>' is not supported"),
    ('{"and": [{"=": {"id": "a"}}, {"=": {"id": "b"}}]}', "two different conditions on 'id'"),
    ('{"=": {"ended_at": "2020-01-01"}}', "'ended_at' can only be tested '= null'"),
])
def test_queries_that_cannot_be_evaluated_are_rejected_with_why(query, why):
    e = error(heat_alarm(query))
    assert e.status == 400
    assert e.faultstring.startswith("Invalid input for field/attribute rule/query.")
    assert why in e.faultstring and "'and' of '=' or 'like'" in e.faultstring


def test_bad_json_query_is_aodhs_invalid_input():
    assert error(heat_alarm("{nope")).faultstring == "Invalid input for field/attribute rule/query. Value: '{nope'. "


@pytest.mark.parametrize("kind", ["prometheus", "event", "gnocchi_aggregation_by_metrics_threshold",
                                  "loadbalancer_member_health", "threshold"])
def test_unsupported_types_are_400_with_the_reason(kind):
    e = error({"name": "x", "type": kind, f"{kind}_rule": {}})
    assert e.status == 400
    assert e.faultstring.startswith(f"Invalid input for field/attribute type. Value: '{kind}'. "
                                    f"Alarm type {kind} is not supported here: ")
    assert e.faultstring.endswith("Value should be one of: composite, gnocchi_aggregation_by_resources_threshold, "
                                  "gnocchi_resources_threshold")


@pytest.mark.parametrize("body, status, message", [
    ({**resources_alarm(), "gnocchi_resources_threshold_rule": None}, 400,
     "gnocchi_resources_threshold_rule must be set for gnocchi_resources_threshold type alarm"),
    (resources_alarm(comparison_operator="bigger"), 400,
     "Invalid input for field/attribute comparison_operator. Value: 'bigger'. "
     "Value should be one of: eq, ge, gt, le, lt, ne"),
    (resources_alarm(threshold=False), 400,
     "Invalid input for field/attribute threshold. Value: 'False'. Wrong type. "
     "Expected '<class 'float'>', got '<class 'bool'>'"),
    (resources_alarm(evaluation_periods=0), 400,
     "Invalid input for field/attribute evaluation_periods. Value: '0'. Value should be greater or equal to 1"),
    ({**resources_alarm(), "name": None}, 400, "Invalid input for field/attribute name. Value: 'None'. "
                                               "Mandatory field missing."),
    ({**resources_alarm(), "bogus": 1}, 400, "Unknown attribute for argument data: bogus"),
    ({**resources_alarm(), "severity": "high"}, 400,
     "Invalid input for field/attribute severity. Value: 'high'. Value should be one of: critical, low, moderate"),
    ({**resources_alarm(), "alarm_actions": ["gopher://x"]}, 400, "Unsupported action gopher://x: supported schemes"),
    ({**resources_alarm(), "alarm_actions": ["trust+http://heat/signal"]}, 400, "Unsupported action trust+http"),
    ({**resources_alarm(), "time_constraints": [{"name": "a", "start": "* * * * *", "duration": 1},
                                                {"name": "a", "start": "* * * * *", "duration": 2}]}, 400,
     "Time constraint names must be unique for a given alarm."),
    ({**resources_alarm(), "time_constraints": [{"name": "a", "start": "* * * * *", "duration": 1,
                                                 "timezone": "Mars/Olympus"}]}, 400, "Timezone Mars/Olympus is not valid"),
    ({**resources_alarm(), "composite_rule": {"or": []}}, 400,
     "gnocchi_resources_threshold_rule and composite_rule cannot be set at the same time"),
])
def test_invalid_bodies_get_aodhs_status_and_message(body, status, message):
    e = error(body)
    assert e.status == status
    assert e.faultstring.startswith(message), e.faultstring


def test_non_admins_own_their_alarms_and_cannot_log_or_name_another_project():
    t = translate(resources_alarm(), MEMBER, {})
    assert (t.fields["project_id"], t.fields["user_id"]) == ("p-1", "u-1")
    assert t.fields["threshold_rule"]["query"]["project_id"] == "p-1"  # sees only its project's samples
    e = error({**resources_alarm(), "project_id": "p-2"}, MEMBER)
    assert (e.status, e.faultstring) == (401, "Not Authorized to access project p-2")
    e = error({**resources_alarm(), "alarm_actions": ["log://"]}, MEMBER)
    assert (e.status, e.faultstring) == (401, "You are not authorized to create action: log://")


def test_admin_on_behalf_of_another_project_is_scoped_to_it():
    t = translate({**resources_alarm(), "project_id": "p-9"}, ADMIN, {})
    assert t.fields["project_id"] == "p-9"
    assert t.fields["threshold_rule"]["query"]["project_id"] == "p-9"
    assert "project_id" not in translate(resources_alarm(), ADMIN, {}).fields["threshold_rule"]["query"]


def test_aggregation_methods_and_rates():
    assert error(resources_alarm(aggregation_method="median")).faultstring.startswith(
        "aggregation_method should be in ['mean', 'min', 'max', 'sum', 'count', 'last', 'rate:mean', 'rate:min', "
        "'rate:max', 'rate:last'] not median: ")
    e = error(resources_alarm(metric="cpu", aggregation_method="rate:mean"))
    assert "no per-second rate meter is configured for metric 'cpu'" in e.faultstring
    t = translate(resources_alarm(metric="disk.read.bytes", aggregation_method="rate:mean", threshold=3000,
                                  granularity=300), ADMIN, {"disk.read.bytes": "disk.read.bytes.rate"})
    rule = t.fields["threshold_rule"]
    assert (rule["meter_name"], rule["statistic"], rule["threshold"]) == ("disk.read.bytes.rate", "avg", 10.0)
    assert t.rule["metric"] == "disk.read.bytes" and t.rule["aggregation_method"] == "rate:mean"
    for method, stat in (("min", "min"), ("max", "max"), ("sum", "sum"), ("count", "count"), ("last", "last")):
        assert translate(resources_alarm(aggregation_method=method), ADMIN, {}).fields["threshold_rule"][
            "statistic"] == stat


def composite_body():
    sub = {"type": "gnocchi_resources_threshold", "metric": "cpu_util", "resource_id": "vm-1",
           "resource_type": "instance", "aggregation_method": "max", "threshold": 90, "comparison_operator": "gt"}
    sub2 = {"type": "gnocchi_aggregation_by_resources_threshold", "metric": "memory.usage",
            "query": '{"=": {"id": "vm-1"}}', "resource_type": "instance", "aggregation_method": "mean",
            "threshold": 1e9, "comparison_operator": "gt", "granularity": 120}
    return {"name": "busy", "type": "composite", "composite_rule": {"or": [sub, {"and": [sub, sub2]}]}}


def test_composite_rules_map_onto_and_or_of_threshold_rules():
    t = translate(composite_body(), ADMIN, {})
    definition = build_definition("c1", t, NOW)
    assert definition.type == "composite"
    assert [r.meter_name for r in definition.leaves()] == ["cpu_util", "cpu_util", "memory.usage"]
    assert t.rule["or"][0]["granularity"] == 60 and t.rule["or"][0]["type"] == "gnocchi_resources_threshold"
    assert aodh_type_and_rule(definition) == ("composite", t.rule)


@pytest.mark.parametrize("rule, message", [
    ({"xor": []}, 'Threshold rules should be combined with "and" or "or"'),
    ({"or": [{"metric": "x", "threshold": 1}]}, "type must be set in every rule"),
    ({"or": [{"type": "prometheus", "query": "up", "threshold": 1}]}, "Unsupported sub-rule type :prometheus"),
    ({"and": "nope"}, "Invalid input composite rule: "),
])
def test_bad_composite_rules(rule, message):
    assert error({"name": "x", "type": "composite", "composite_rule": rule}).faultstring.startswith(message)


def test_round_trip_returns_what_was_created():
    body = {**resources_alarm(comparison_operator="gt", granularity=120, evaluation_periods=3),
            "description": "hot", "severity": "critical", "alarm_actions": ["http://hook/a", "http://hook/a"],
            "time_constraints": [{"name": "office", "start": "0 9 * * 1-5", "duration": 3600,
                                  "timezone": "Europe/Paris"}]}
    t = translate(body, ADMIN, {})
    definition = build_definition("a1", t, NOW)
    stored = parse_alarm(definition.to_json())  # as the processor and the API read it back from ZooKeeper
    out = render(stored, AlarmState())
    assert out["gnocchi_resources_threshold_rule"] == {
        "granularity": 120, "comparison_operator": "gt", "threshold": 80.0, "aggregation_method": "mean",
        "evaluation_periods": 3, "metric": "cpu_util", "resource_id": "host-a", "resource_type": "generic"}
    assert out["alarm_actions"] == ["http://hook/a"]  # de-duplicated, as Aodh
    assert out["time_constraints"] == [{"name": "office", "description": "Time constraint at 0 9 * * 1-5 lasting "
                                        "for 3600 seconds", "start": "0 9 * * 1-5", "duration": 3600,
                                        "timezone": "Europe/Paris"}]
    assert (out["description"], out["severity"], out["state"], out["state_reason"]) == (
        "hot", "critical", "insufficient data", "Not evaluated yet")
    assert out["timestamp"] == out["state_timestamp"] == "2027-01-15T08:00:00"
    # The definition the processor evaluates carries no Aodh-only surprises.
    assert stored.threshold_rule.period == 120 and stored.threshold_rule.statistic == "avg"


def test_rule_changed_outside_the_api_is_shown_from_the_streams_rule():
    definition = build_definition("a1", translate(resources_alarm(), ADMIN, {}), NOW)
    doc = json.loads(definition.to_json())
    doc["threshold_rule"]["threshold"] = 95  # streams alarm update --threshold 95
    kind, rule = aodh_type_and_rule(parse_alarm(doc))
    assert kind == "gnocchi_resources_threshold" and rule["threshold"] == 95 and rule["resource_id"] == "host-a"


def test_alarms_made_with_streams_alarm_create_are_shown_as_gnocchi_alarms():
    alarm = parse_alarm({"alarm_id": "cpu-high", "name": "cpu", "threshold_rule": {
        "meter_name": "cpu_util", "threshold": 90, "statistic": "max", "comparison_operator": "gt", "period": 10,
        "evaluation_periods": 2, "query": {"resource_id": "host-*", "metadata": {"kind": "host"}}}})
    kind, rule = aodh_type_and_rule(alarm)
    assert kind == "gnocchi_aggregation_by_resources_threshold"
    assert json.loads(rule["query"]) == {"and": [{"like": {"id": "host-%"}}, {"=": {"kind": "host"}}]}
    assert (rule["aggregation_method"], rule["granularity"], rule["evaluation_periods"]) == ("max", 10, 2)
    # and reading that query back selects the same resources
    assert resource_query(rule["query"]) == {"resource_id": "host-*", "metadata": {"kind": "host"}}
    out = render(alarm, AlarmState(), mtime_us=NOW, ctime_us=NOW - 10**6)
    assert out["timestamp"] == "2027-01-15T08:00:00" and out["state_timestamp"] == "2027-01-15T07:59:59"


def test_put_replaces_the_aodh_fields_and_keeps_the_rest():
    first = build_definition("a1", translate(resources_alarm(), ADMIN, {}), NOW,
                             state_override={"state": "alarm", "timestamp": NOW})
    doc = {**json.loads(first.to_json()), "grace": 5.0}
    t = translate({**resources_alarm(threshold=70), "enabled": False}, ADMIN, {}, owner=("u-x", "p-x"))
    second = build_definition("a1", t, NOW + 1, base=doc)
    assert second.grace == 5.0 and second.state_override.state == "alarm"
    assert (second.user_id, second.project_id) == ("u-x", "p-x")  # an admin's PUT keeps the owner
    assert second.threshold_rule.threshold == 70 and not second.enabled
    assert second.aodh["created"] == first.aodh["created"]


def test_an_alarm_the_processor_disabled_shows_why_and_an_api_update_that_reenables_it_clears_the_reason():
    first = build_definition("a1", translate(resources_alarm(), ADMIN, {}), NOW)
    doc = {**json.loads(first.to_json()), "enabled": False, "disabled_reason": "evaluation raised: boom"}
    out = render(parse_alarm(doc), AlarmState())
    assert (out["enabled"], out["state_reason"]) == (False, "evaluation raised: boom")
    reenabled = build_definition("a1", translate(resources_alarm(), ADMIN, {}, owner=("u", "p")), NOW + 1, base=doc)
    assert reenabled.enabled and reenabled.disabled_reason is None
