"""The HTTP layer with in-memory stand-ins for ZooKeeper and alarm_history: routes, bodies, codes, scoping.

The real stores, the real ``streams api`` process and the real python-aodhclient
are exercised in tests/integration/test_api.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from streams.alarms.definitions import AlarmExists, AlarmNotFound
from streams.alarms.model import parse_alarm
from streams.api.app import AodhApi
from streams.api.auth import NoAuth
from streams.api.history import Transition
from streams.api.store import StoredAlarm
from streams.config import Settings

NOW = 1_800_000_000_000_000
ADMIN = {"X-User-Id": "u-admin", "X-Project-Id": "p-admin", "X-Roles": "admin"}
MEMBER = {"X-User-Id": "u-1", "X-Project-Id": "p-1", "X-Roles": "member"}
OTHER = {"X-User-Id": "u-2", "X-Project-Id": "p-2", "X-Roles": "member"}


class MemoryRepository:
    def __init__(self) -> None:
        self.docs: dict[str, str] = {}

    def get(self, alarm_id: str) -> StoredAlarm:
        if alarm_id not in self.docs:
            raise AlarmNotFound(alarm_id)
        return StoredAlarm(parse_alarm(self.docs[alarm_id]), NOW - 10**6, NOW)

    def list(self) -> list[StoredAlarm]:
        return [self.get(i) for i in sorted(self.docs)]

    def create(self, definition) -> None:
        if definition.alarm_id in self.docs:
            raise AlarmExists(definition.alarm_id)
        self.docs[definition.alarm_id] = definition.to_json()

    def update(self, alarm_id: str, change):
        new = change(json.loads(self.get(alarm_id).definition.to_json()))
        self.docs[alarm_id] = new.to_json()
        return new

    def delete(self, alarm_id: str) -> None:
        self.get(alarm_id)
        del self.docs[alarm_id]


class MemoryHistory:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def latest(self, alarm_ids):
        out: dict[str, list[Transition]] = {}
        for r in sorted(self.rows, key=lambda r: r["timestamp_us"]):
            if r["alarm_id"] in alarm_ids:
                per = {t.resource_id: t for t in out.get(r["alarm_id"], [])}
                per[r["resource_id"]] = Transition(r["resource_id"], r["state"], r["timestamp_us"], r["reason"])
                out[r["alarm_id"]] = list(per.values())
        return out

    def changes(self, alarm_ids, limit, types=None, severity=None, since_us=None, until_us=None):
        rows = [r for r in self.rows if (alarm_ids is None or r["alarm_id"] in alarm_ids)
                and (not types or r["type"] in types)]
        return sorted(rows, key=lambda r: -r["timestamp_us"])[:limit]

    def record_state_change(self, definition, previous, state, now_us, actor):
        self.rows.append({"event_id": f"e{len(self.rows)}", "alarm_id": definition.alarm_id,
                          "type": "state transition", "severity": definition.severity,
                          "project_id": definition.project_id or "", "resource_id": "", "previous_state": previous,
                          "state": state, "reason": "Manually set via API",
                          "reason_data": json.dumps({"detail": {"state": state, "state_reason":
                                                                "Manually set via API"}, **actor}),
                          "timestamp_us": now_us})
        return self.rows[-1]["event_id"]

    def evaluated(self, alarm_id, resource_id, previous, state, ts):
        self.rows.append({"event_id": f"e{len(self.rows)}", "alarm_id": alarm_id, "type": "state transition",
                          "severity": "low", "project_id": "p-1", "resource_id": resource_id,
                          "previous_state": previous, "state": state, "reason": f"Transition to {state}",
                          "reason_data": "{}", "timestamp_us": ts})


class Harness:
    def __init__(self) -> None:
        self.repo = MemoryRepository()
        self.history = MemoryHistory()
        self.now = NOW
        self.api = AodhApi(Settings(), NoAuth(), lambda: self.repo, self.history, clock=lambda: self.now)

    def run(self, scenario) -> None:
        async def main():
            async with TestClient(TestServer(self.api.application())) as client:
                await scenario(client)
        asyncio.run(main())


def body(**rule):
    return {"name": "cpu high", "type": "gnocchi_resources_threshold", "alarm_actions": ["http://hook/a"],
            "gnocchi_resources_threshold_rule": {"metric": "cpu_util", "resource_id": "vm-1",
                                                 "resource_type": "instance", "aggregation_method": "mean",
                                                 "threshold": 80, "comparison_operator": "gt", **rule}}


def test_lifecycle_state_and_history():
    h = Harness()

    async def scenario(c):
        r = await c.post("/v2/alarms", json=body(), headers=MEMBER)
        assert r.status == 201
        alarm = await r.json()
        aid = alarm["alarm_id"]
        assert r.headers["Location"] == f"/v2/alarms/{aid}"
        assert (alarm["state"], alarm["project_id"], alarm["user_id"]) == ("insufficient data", "p-1", "u-1")

        # the processor reports two resources (vm-1 only matches, but history is what it is)
        h.history.evaluated(aid, "vm-1", "insufficient data", "alarm", NOW + 5)
        r = await c.get(f"/v2/alarms/{aid}/state", headers=MEMBER)
        assert await r.json() == "alarm"

        h.now = NOW + 10
        r = await c.put(f"/v2/alarms/{aid}/state", data='"ok"', headers=MEMBER)
        assert (r.status, await r.json()) == (200, "ok")
        stored = h.repo.get(aid).definition
        assert stored.state_override.state == "ok" and stored.state_override.timestamp == NOW + 10
        shown = await (await c.get(f"/v2/alarms/{aid}", headers=MEMBER)).json()
        assert (shown["state"], shown["state_reason"]) == ("ok", "vm-1: Manually set via API")

        hist = await (await c.get(f"/v2/alarms/{aid}/history", headers=MEMBER)).json()
        assert [(x["type"], json.loads(x["detail"])["state"]) for x in hist] == [
            ("state transition", "ok"), ("state transition", "alarm")]
        assert hist[0]["user_id"] == "u-1" and hist[0]["on_behalf_of"] == "p-1"

        # aodhclient's update: GET, change a field, PUT everything back
        shown["gnocchi_resources_threshold_rule"]["threshold"] = 95.0
        r = await c.put(f"/v2/alarms/{aid}", json=shown, headers=MEMBER)
        assert r.status == 200 and (await r.json())["gnocchi_resources_threshold_rule"]["threshold"] == 95.0
        assert h.repo.get(aid).definition.threshold_rule.threshold == 95.0
        assert len(h.history.rows) == 2  # the same state sent back is no state change

        shown["state"] = "alarm"  # a PUT with another state sets it, as PUT .../state
        h.now = NOW + 20
        r = await c.put(f"/v2/alarms/{aid}", json=shown, headers=MEMBER)
        assert (await r.json())["state"] == "alarm" and h.repo.get(aid).definition.state_override.state == "alarm"

        assert (await c.delete(f"/v2/alarms/{aid}", headers=MEMBER)).status == 204
        r = await c.get(f"/v2/alarms/{aid}", headers=MEMBER)
        assert r.status == 404
        assert await r.json() == {"error_message": {"faultcode": "Client", "faultstring": f"Alarm {aid} not found",
                                                    "debuginfo": None}}

    h.run(scenario)


def test_projects_are_scoped_as_in_aodh():
    h = Harness()

    async def scenario(c):
        aid = (await (await c.post("/v2/alarms", json=body(), headers=MEMBER)).json())["alarm_id"]
        for method in ("get", "delete"):
            r = await getattr(c, method)(f"/v2/alarms/{aid}", headers=OTHER)
            assert r.status == 404
        assert (await c.put(f"/v2/alarms/{aid}/state", data='"ok"', headers=OTHER)).status == 404
        assert await (await c.get("/v2/alarms", headers=OTHER)).json() == []
        assert [a["alarm_id"] for a in await (await c.get("/v2/alarms", headers=MEMBER)).json()] == [aid]
        r = await c.get("/v2/alarms?q.field=project_id&q.op=eq&q.value=p-1", headers=OTHER)
        assert r.status == 401
        r = await c.get("/v2/alarms?q.field=all_projects&q.op=eq&q.value=true", headers=OTHER)
        assert r.status == 403
        r = await c.get("/v2/alarms?q.field=all_projects&q.op=eq&q.value=true", headers=ADMIN)
        assert [a["alarm_id"] for a in await r.json()] == [aid]
        assert (await c.get(f"/v2/alarms/{aid}", headers=ADMIN)).status == 200
        found = await (await c.post("/v2/query/alarms", json={"filter": json.dumps({"=": {"name": "cpu high"}})},
                                    headers=OTHER)).json()
        assert found == []

    h.run(scenario)


def test_discovery_capabilities_errors_and_limits():
    h = Harness()

    async def scenario(c):
        versions = await (await c.get("/")).json()  # no authentication, as Aodh's version pipeline
        assert versions["versions"]["values"][0]["id"] == "v2"
        assert (await c.get("/v2/capabilities/")).status == 401
        caps = await (await c.get("/v2/capabilities/", headers=MEMBER)).json()
        assert caps["api"]["alarms:query:complex"] is True
        r = await c.post("/v2/alarms", json=body(comparison_operator="bigger"), headers=MEMBER)
        assert r.status == 400 and (await r.json())["error_message"]["faultstring"].startswith(
            "Invalid input for field/attribute comparison_operator. Value: 'bigger'.")
        r = await c.post("/v2/alarms", data=b"{", headers=MEMBER)
        assert r.status == 400
        r = await c.post("/v2/alarms", data=b"x" * (70 * 1024), headers=MEMBER)
        assert r.status == 413 and "api.max_body_bytes" in (await r.json())["error_message"]["faultstring"]
        r = await c.put("/v2/alarms/nope/state", data='"sideways"', headers=MEMBER)
        assert r.status == 400
        assert (await c.get("/v2/nothing-here", headers=MEMBER)).status == 404
        assert (await c.get("/v2/alarms/../../etc", headers=MEMBER)).status == 404
        assert h.repo.docs == {}

    h.run(scenario)


def test_a_store_that_does_not_answer_is_503():
    h = Harness()
    h.api.repository = lambda: None  # ZooKeeper session down

    async def scenario(c):
        r = await c.get("/v2/alarms", headers=MEMBER)
        assert r.status == 503
        assert (await r.json())["error_message"]["faultcode"] == "Server"

    h.run(scenario)
