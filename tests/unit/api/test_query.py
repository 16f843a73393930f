"""Aodh's simple (q.field/q.op/q.value) and complex query languages."""

from __future__ import annotations

import json

import pytest
from multidict import MultiDict

from streams.api.errors import AodhError
from streams.api.mapping import Identity
from streams.api.query import (
    ALARM_FIELDS,
    CHANGE_FIELDS,
    alarm_filter,
    apply_complex,
    complex_query,
    history_filter,
    matches_filter,
    parse_simple,
    sort_and_page,
)

ADMIN = Identity("u-a", "p-a", ("admin",))
MEMBER = Identity("u-1", "p-1", ())
ALARMS = [
    {"alarm_id": "a", "name": "cpu", "project_id": "p-1", "user_id": "u-1", "state": "alarm", "enabled": True,
     "severity": "low", "type": "gnocchi_resources_threshold", "timestamp": "2027-01-01T00:00:00"},
    {"alarm_id": "b", "name": "mem", "project_id": "p-1", "user_id": "u-2", "state": "ok", "enabled": False,
     "severity": "critical", "type": "composite", "timestamp": "2027-01-02T00:00:00"},
    {"alarm_id": "c", "name": "cpu", "project_id": "p-2", "user_id": "u-3", "state": "ok", "enabled": True,
     "severity": "low", "type": "composite", "timestamp": "2027-01-03T00:00:00"},
]


def q(*triples):
    params = MultiDict()
    for field, op, value in triples:
        params.add("q.field", field)
        params.add("q.op", op)
        params.add("q.value", value)
    return parse_simple(params)


def listed(identity, *triples):
    f = alarm_filter(q(*triples), identity)
    return [a["alarm_id"] for a in ALARMS if matches_filter(a, f)]


def test_list_defaults_to_the_callers_project_and_filters_by_equality():
    assert listed(MEMBER) == ["a", "b"]
    assert listed(MEMBER, ("enabled", "eq", "true")) == ["a"]
    assert listed(MEMBER, ("state", "eq", "ok"), ("severity", "eq", "critical")) == ["b"]
    assert listed(ADMIN) == []  # as Aodh: an admin's plain list is its own project too
    assert listed(ADMIN, ("all_projects", "eq", "true")) == ["a", "b", "c"]
    assert listed(ADMIN, ("project_id", "eq", "p-2")) == ["c"]


@pytest.mark.parametrize("identity, triples, status, message", [
    (MEMBER, [("project_id", "eq", "p-2")], 401, "Not Authorized to access project p-2"),
    (MEMBER, [("all_projects", "eq", "true")], 403, "RBAC Authorization Failed"),
    (MEMBER, [("alarm_id", "eq", "a")], 400, "Invalid input for field/attribute field. Value: '{'alarm_id'}'. "
                                             "only fields {'all_projects', 'enabled', 'name', 'project_id', "
                                             "'repeat_actions', 'severity', 'state', 'timestamp', 'type', 'user_id'} "
                                             "are allowed"),
    (MEMBER, [("name", "ne", "cpu")], 400, "Invalid input for field/attribute op. Value: '{'ne'}'. "
                                           "only operations {'eq'} are allowed"),
    (MEMBER, [("enabled", "eq", "maybe")], 400, "Unable to convert the value maybe to the expected data type boolean."),
])
def test_list_filter_errors(identity, triples, status, message):
    with pytest.raises(AodhError) as exc:
        alarm_filter(q(*triples), identity)
    assert (exc.value.status, exc.value.faultstring) == (status, message)


def test_history_filters():
    f = history_filter(q(("type", "eq", "state transition"), ("timestamp", "gt", "2027-01-01T00:00:00"),
                         ("search_offset", "eq", "10")), MEMBER)
    assert f.types == ["state transition"]
    assert f.since_us == (1798761600_000000 - 600_000_000, False)
    with pytest.raises(AodhError) as exc:
        history_filter(q(("alarm_id", "eq", "a")), MEMBER)
    assert exc.value.faultstring == ('Unknown argument: "alarm_id": unrecognized field in query: '
                                     "[<Query 'alarm_id' eq 'a' Unset>], valid keys: ['project', 'search_offset', "
                                     "'severity', 'timestamp', 'type', 'user']")
    with pytest.raises(AodhError) as exc:
        history_filter(q(("project", "eq", "p-2")), MEMBER)
    assert exc.value.status == 401


def test_sort_limit_marker():
    items = [dict(a) for a in ALARMS]
    out = sort_and_page(items, ["name:asc", "timestamp:desc"], "2", None, ("name", "timestamp", "alarm_id"),
                        "alarm_id", [("timestamp", "desc")], lambda m: AodhError(m))
    assert [a["alarm_id"] for a in out] == ["c", "a"]
    out = sort_and_page([dict(a) for a in ALARMS], [], None, "c", ("timestamp", "alarm_id"), "alarm_id",
                        [("timestamp", "desc")], lambda m: AodhError(m))
    assert [a["alarm_id"] for a in out] == ["b", "a"]
    with pytest.raises(AodhError):
        sort_and_page(items, ["bogus"], None, None, ("name",), "alarm_id", [], lambda m: AodhError(m))


def complex(body, identity=ADMIN, fields=ALARM_FIELDS, visibility="project_id"):
    return [a["alarm_id"] for a in apply_complex([dict(a) for a in ALARMS],
                                                 complex_query(body, fields, identity, visibility))]


def test_complex_queries():
    assert complex({"filter": json.dumps({"=": {"name": "cpu"}})}) == ["a", "c"]  # how aodhclient finds by name
    assert complex({"filter": json.dumps({"=": {"name": "cpu"}})}, MEMBER) == ["a"]
    assert complex({"filter": json.dumps({"and": [{"=": {"state": "ok"}}, {"!=": {"project": "p-1"}}]})}) == ["c"]
    assert complex({"filter": json.dumps({"or": [{"=~": {"name": "^m"}}, {"in": {"alarm_id": ["c"]}}]})}) == ["b", "c"]
    assert complex({"filter": json.dumps({"not": {">": {"timestamp": "2027-01-01T12:00:00"}}})}) == ["a"]
    assert complex({"orderby": json.dumps([{"timestamp": "desc"}]), "limit": 2}) == ["c", "b"]


@pytest.mark.parametrize("body, status, start", [
    ({"filter": "{"}, 400, "Filter expression not valid: "),
    ({"filter": json.dumps({"and": [{"=": {"name": "x"}}]})}, 400, "Filter expression not valid: 'and' needs"),
    ({"filter": json.dumps({"=": {"bogus": 1}})}, 400, "Filter expression not valid: 'bogus' is not a valid field"),
    ({"filter": json.dumps({"=": {"project_id": "p-2"}})}, 401, "Not Authorized to access project p-2"),
    ({"orderby": json.dumps([{"name": "sideways"}])}, 400, "Order-by expression not valid: "),
    ({"limit": 0}, 400, "Limit should be positive"),
])
def test_complex_query_errors(body, status, start):
    with pytest.raises(AodhError) as exc:
        complex_query(body, ALARM_FIELDS, MEMBER, "project_id")
    assert exc.value.status == status and exc.value.faultstring.startswith(start), exc.value.faultstring


def test_history_search_is_scoped_by_on_behalf_of():
    changes = [{"event_id": "1", "on_behalf_of": "p-1", "type": "state transition"},
               {"event_id": "2", "on_behalf_of": "p-2", "type": "state transition"}]
    cq = complex_query({"filter": json.dumps({"=": {"type": "state transition"}})}, CHANGE_FIELDS, MEMBER,
                       "on_behalf_of")
    assert [c["event_id"] for c in apply_complex(changes, cq)] == ["1"]
