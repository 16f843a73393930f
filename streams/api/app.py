"""The aiohttp application: Aodh's v2 REST API.

Routes (shapes, status codes and error bodies as Aodh's ``aodh/api/controllers``):

==========================================  ==============================================
``GET /``                                   version discovery (no authentication, as Aodh)
``GET /v2/capabilities``                    what the API supports
``GET /v2/alarms`` / ``POST``               list (``q.*`` filters, ``limit``, ``marker``, ``sort``) / create (201)
``GET|PUT|DELETE /v2/alarms/{id}``          one alarm (DELETE: 204)
``GET|PUT /v2/alarms/{id}/state``           its state, as a JSON string
``GET /v2/alarms/{id}/history``             its changes, newest first
``POST /v2/query/alarms``                   complex query on alarms
``POST /v2/query/alarms/history``           complex query on history
==========================================  ==============================================

Every ``/v2`` request is authenticated (:mod:`streams.api.auth`). A
non-admin sees only its project's alarms; another project's alarm is "not
found", as in Aodh. Blocking ZooKeeper and ClickHouse calls run in worker
threads; either store unreachable answers 503 and changes nothing that the
message does not name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web
from kazoo.exceptions import KazooException
from prometheus_client import Counter, Histogram

from streams.alarms.definitions import AlarmExists, AlarmNotFound
from streams.alarms.model import STATES, UNKNOWN, AlarmDefinitionError, parse_alarm
from streams.api.auth import Authenticator
from streams.api.errors import AodhError, alarm_not_found, invalid_input, unavailable
from streams.api.history import HistoryStore, alarm_change, alarm_state
from streams.api.mapping import (
    REASON_MANUAL,
    AlarmState,
    Identity,
    build_definition,
    iso,
    render,
    translate,
)
from streams.api.query import (
    ALARM_FIELDS,
    ALARM_SORT_KEYS,
    CHANGE_FIELDS,
    CHANGE_SORT_KEYS,
    alarm_filter,
    apply_complex,
    complex_query,
    history_filter,
    matches_filter,
    parse_simple,
    sort_and_page,
)
from streams.api.store import AlarmRepository, StoredAlarm
from streams.config import Settings

log = logging.getLogger(__name__)

API_REQUESTS = Counter("streams_api_requests_total", "Aodh API requests by route and status.",
                       ["method", "route", "status"])
API_SECONDS = Histogram("streams_api_request_seconds", "Aodh API request latency.", ["method", "route"],
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
API_STATE_CHANGES = Counter("streams_api_state_changes_total", "Alarm states set through the API.", ["state"])

IDENTITY: Any = web.RequestKey("identity", Identity) if hasattr(web, "RequestKey") else "streams.api.identity"
"""Request key of the caller's :class:`~streams.api.mapping.Identity` (``web.RequestKey`` from aiohttp 3.13)."""
MEDIA_TYPE = "application/vnd.openstack.telemetry-%s+%s"
CAPABILITIES = {
    "api": {"alarms:query:simple": True, "alarms:query:complex": True,
            "alarms:history:query:simple": True, "alarms:history:query:complex": True},
    "alarm_storage": {"storage:production_ready": True},
}
"""Aodh's flattened capabilities (``alarms: {query: {simple, complex}, history: {query: ...}}``)."""


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, headers=headers,
                        content_type="application/json")


class AodhApi:
    """The handlers, over an alarm repository (ZooKeeper) and ``alarm_history`` (ClickHouse).

    Args:
        settings: ``api`` (rate meters, limits), ``clickhouse`` (history).
        authenticator: maps requests to identities.
        repository: returns the :class:`AlarmRepository` (None while ZooKeeper is not connected).
        history: reads and appends ``alarm_history``.
        clock: now, µs since the epoch.
    """

    def __init__(self, settings: Settings, authenticator: Authenticator,
                 repository: Callable[[], AlarmRepository | None], history: HistoryStore,
                 clock: Callable[[], int] = lambda: time.time_ns() // 1000) -> None:
        self.settings = settings
        self.authenticator = authenticator
        self.repository = repository
        self.history = history
        self.clock = clock

    # -- plumbing ----------------------------------------------------------------------------------

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._metrics, self._errors, self._authenticate],
                              client_max_size=self.settings.api.max_body_bytes)
        routes = [
            ("GET", "/", self.versions),
            ("GET", "/v2/capabilities", self.capabilities),
            ("GET", "/v2/alarms", self.list_alarms),
            ("POST", "/v2/alarms", self.create_alarm),
            ("GET", "/v2/alarms/{alarm_id}", self.get_alarm),
            ("PUT", "/v2/alarms/{alarm_id}", self.put_alarm),
            ("DELETE", "/v2/alarms/{alarm_id}", self.delete_alarm),
            ("GET", "/v2/alarms/{alarm_id}/state", self.get_state),
            ("PUT", "/v2/alarms/{alarm_id}/state", self.put_state),
            ("GET", "/v2/alarms/{alarm_id}/history", self.alarm_history),
            ("POST", "/v2/query/alarms", self.query_alarms),
            ("POST", "/v2/query/alarms/history", self.query_history),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
            if path != "/":
                app.router.add_route(method, path + "/", handler)  # python-aodhclient asks v2/capabilities/
        return app

    @web.middleware
    async def _metrics(self, request: web.Request, handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        name = route.canonical.rstrip("/") or "/" if route is not None else "unmatched"
        start = time.monotonic()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            API_REQUESTS.labels(request.method, name, str(status)).inc()
            API_SECONDS.labels(request.method, name).observe(time.monotonic() - start)

    @web.middleware
    async def _errors(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except AodhError as exc:
            if exc.status >= 500:
                log.warning("%s %s: %s", request.method, request.path, exc.faultstring)
            return _json(exc.body(), exc.status)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            text = {404: "The resource could not be found.", 405: "The method is not allowed for this resource.",
                    413: f"Request body larger than api.max_body_bytes ({self.settings.api.max_body_bytes} bytes)"}
            return _json(AodhError(text.get(exc.status, exc.reason), exc.status).body(), exc.status)
        except Exception:  # noqa: BLE001 - one bad request must not stop the service; details only in the log
            log.exception("%s %s failed", request.method, request.path)
            return _json(AodhError("Internal Server Error", 500).body(), 500)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler) -> web.StreamResponse:
        if request.path.startswith("/v2"):
            request[IDENTITY] = await self.authenticator.identify(request.headers)
        return await handler(request)

    async def _zk(self, fn: Callable, *args: Any) -> Any:
        repo = self.repository()
        if repo is None:
            raise AodhError("alarm definitions (ZooKeeper) unavailable: not connected", 503)
        try:
            return await asyncio.to_thread(getattr(repo, fn), *args)
        except (KazooException, TimeoutError) as exc:
            raise unavailable("alarm definitions (ZooKeeper)", exc) from None

    async def _ch(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except AodhError:
            raise
        except Exception as exc:  # noqa: BLE001 - clickhouse_driver and chdb raise many kinds
            raise unavailable("alarm history (ClickHouse)", exc) from None

    @staticmethod
    async def _body(request: web.Request) -> Any:
        raw = await request.read()
        try:
            return json.loads(raw or b"null")
        except (ValueError, RecursionError) as exc:
            raise AodhError(f"Invalid JSON body: {exc}") from None

    async def _visible(self, request: web.Request) -> StoredAlarm:
        """The alarm of the path, if the caller may see it (Aodh's ``_enforce_rbac``), else 404."""
        alarm_id = request.match_info["alarm_id"]
        identity = request[IDENTITY]
        try:
            stored = await self._zk("get", alarm_id)
        except (AlarmNotFound, AlarmDefinitionError):
            raise alarm_not_found(alarm_id) from None
        if not identity.is_admin and stored.definition.project_id != identity.project_id:
            raise alarm_not_found(alarm_id)
        return stored

    async def _states(self, stored: list[StoredAlarm]) -> dict[str, AlarmState]:
        latest = await self._ch(self.history.latest, [s.definition.alarm_id for s in stored])
        return {s.definition.alarm_id: alarm_state(s.definition, latest.get(s.definition.alarm_id, []))
                for s in stored}

    async def _render_all(self, stored: list[StoredAlarm]) -> list[dict[str, Any]]:
        states = await self._states(stored)
        return [render(s.definition, states[s.definition.alarm_id], s.mtime_us, s.ctime_us) for s in stored]

    @staticmethod
    def _actor(identity: Identity, on_behalf_of: str | None) -> dict[str, Any]:
        return {"user_id": identity.user_id, "project_id": identity.project_id, "on_behalf_of": on_behalf_of}

    # -- handlers ----------------------------------------------------------------------------------

    async def versions(self, request: web.Request) -> web.Response:
        """Aodh's VersionsController: the one version, v2."""
        url = f"{request.scheme}://{request.host}/v2"
        return _json({"versions": {"values": [{
            "id": "v2", "status": "stable", "updated": "2013-02-13T00:00:00Z",
            "links": [{"href": url, "rel": "self"},
                      {"href": "https://docs.openstack.org/", "rel": "describedby", "type": "text/html"}],
            "media-types": [{"base": "application/json", "type": MEDIA_TYPE % ("v2", "json")},
                            {"base": "application/xml", "type": MEDIA_TYPE % ("v2", "xml")}],
        }]}})

    async def capabilities(self, request: web.Request) -> web.Response:
        return _json(CAPABILITIES)

    async def list_alarms(self, request: web.Request) -> web.Response:
        identity = request[IDENTITY]
        f = alarm_filter(parse_simple(request.query), identity)
        stored = await self._zk("list")
        if not f.all_projects or not identity.is_admin:
            project = f.equals.get("project_id")
            stored = [s for s in stored if s.definition.project_id == project]
        alarms = [a for a in await self._render_all(stored) if matches_filter(a, f)]
        q = request.query
        alarms = sort_and_page(alarms, q.getall("sort", []), q.get("limit"), q.get("marker"), ALARM_SORT_KEYS,
                               "alarm_id", [("timestamp", "desc")], _bad_marker)
        return _json(alarms[: self.settings.api.max_results])

    async def create_alarm(self, request: web.Request) -> web.Response:
        identity = request[IDENTITY]
        t = translate(await self._body(request), identity, self.settings.api.rate_meters)
        now = self.clock()
        override = {"state": t.state, "timestamp": now} if t.state not in (None, UNKNOWN) else None
        definition = build_definition(str(uuid.uuid4()), t, now, state_override=override)
        try:
            await self._zk("create", definition)
        except AlarmExists:  # a uuid4 collision
            raise AodhError("Alarm incorrect: the generated id exists; retry", 409) from None
        state = AlarmState(t.state, now, REASON_MANUAL) if override else AlarmState(timestamp_us=None)
        body = render(definition, state)
        return _json(body, 201, {"Location": f"/v2/alarms/{definition.alarm_id}"})

    async def get_alarm(self, request: web.Request) -> web.Response:
        stored = await self._visible(request)
        return _json((await self._render_all([stored]))[0])

    async def put_alarm(self, request: web.Request) -> web.Response:
        """Aodh's AlarmController.put: the body replaces the alarm (defaults for what it omits).

        A ``state`` different from the current one sets it, as ``PUT .../state``
        does; an omitted ``state`` keeps it (Aodh would reset it to its default).
        """
        identity = request[IDENTITY]
        current = await self._visible(request)
        alarm_id = current.definition.alarm_id
        previous = (await self._states([current]))[alarm_id]
        t = translate(await self._body(request), identity, self.settings.api.rate_meters,
                      owner=(current.definition.user_id, current.definition.project_id))
        now = self.clock()
        new_state = t.state or previous.state
        override = {"state": new_state, "timestamp": now} if new_state != previous.state else None
        try:
            definition = await self._zk("update", alarm_id, lambda doc: build_definition(
                alarm_id, t, now, base=doc, state_override=override, created=iso(current.ctime_us)))
        except AlarmNotFound:
            raise alarm_not_found(alarm_id) from None
        state = previous
        if override is not None:
            await self._record_state(definition, previous.state, new_state, now, identity)
            state = AlarmState(new_state, now, REASON_MANUAL)
        return _json(render(definition, state))

    async def delete_alarm(self, request: web.Request) -> web.Response:
        stored = await self._visible(request)
        try:
            await self._zk("delete", stored.definition.alarm_id)
        except AlarmNotFound:
            raise alarm_not_found(stored.definition.alarm_id) from None
        return web.Response(status=204)

    async def get_state(self, request: web.Request) -> web.Response:
        stored = await self._visible(request)
        return _json((await self._states([stored]))[stored.definition.alarm_id].state)

    async def put_state(self, request: web.Request) -> web.Response:
        """Aodh's put_state: the evaluator continues from this state (``state_override``), history records it."""
        identity = request[IDENTITY]
        body = await self._body(request)
        if body not in STATES:
            raise invalid_input("state", body, f"Value should be one of: {', '.join(sorted(STATES))}")
        stored = await self._visible(request)
        alarm_id = stored.definition.alarm_id
        previous = (await self._states([stored]))[alarm_id]
        now = self.clock()
        override = {"state": body, "timestamp": now}
        try:
            definition = await self._zk("update", alarm_id,
                                        lambda doc: parse_alarm({**doc, "state_override": override}))
        except AlarmNotFound:
            raise alarm_not_found(alarm_id) from None
        await self._record_state(definition, previous.state, body, now, identity)
        return _json(body)

    async def _record_state(self, definition, previous: str, state: str, now: int, identity: Identity) -> None:
        API_STATE_CHANGES.labels(state).inc()
        log.info("alarm %s (%s) set to %s by user %s of project %s", definition.alarm_id, definition.name, state,
                 identity.user_id, identity.project_id)
        try:
            await asyncio.to_thread(self.history.record_state_change, definition, previous, state, now,
                                    self._actor(identity, definition.project_id))
        except Exception as exc:  # noqa: BLE001
            raise AodhError(f"the state is set (the evaluator continues from {state}), but its history row "
                            f"could not be stored: {type(exc).__name__}: {exc}", 503) from None

    async def alarm_history(self, request: web.Request) -> web.Response:
        identity = request[IDENTITY]
        stored = await self._visible(request)
        f = history_filter(parse_simple(request.query), identity)
        rows = await self._ch(self.history.changes, [stored.definition.alarm_id], self.settings.api.max_results,
                              f.types, f.severity, f.since_us, f.until_us)
        changes = [alarm_change(r, stored.definition.project_id) for r in rows]
        changes = [c for c in changes if (f.user is None or c["user_id"] == f.user)
                   and (f.project is None or c["project_id"] == f.project)]
        q = request.query
        changes = sort_and_page(changes, q.getall("sort", []), q.get("limit"), q.get("marker"), CHANGE_SORT_KEYS,
                                "event_id", [("timestamp", "desc")], _bad_marker)
        return _json(changes)

    async def query_alarms(self, request: web.Request) -> web.Response:
        identity = request[IDENTITY]
        cq = complex_query(await self._body(request), ALARM_FIELDS, identity, "project_id")
        stored = await self._zk("list")
        if not identity.is_admin:
            stored = [s for s in stored if s.definition.project_id == identity.project_id]
        alarms = await self._render_all(stored)
        for a in alarms:
            a["rule"] = a[f"{a['type']}_rule"]
        found = apply_complex(alarms, cq)[: self.settings.api.max_results]
        for a in found:
            del a["rule"]
        return _json(found)

    async def query_history(self, request: web.Request) -> web.Response:
        identity = request[IDENTITY]
        cq = complex_query(await self._body(request), CHANGE_FIELDS, identity, "on_behalf_of")
        stored = await self._zk("list")
        owners = {s.definition.alarm_id: s.definition.project_id for s in stored}
        ids = None if identity.is_admin else [a for a, p in owners.items() if p == identity.project_id]
        rows = await self._ch(self.history.changes, ids, self.settings.api.max_results)
        changes = [alarm_change(r, owners.get(r["alarm_id"])) for r in rows]
        return _json(apply_complex(changes, cq))


def _bad_marker(marker: str) -> AodhError:
    return invalid_input("marker", marker, "Marker not found")
