"""Alarm states and history for the API, from ClickHouse ``alarm_history``.

**An alarm's state.** The processor evaluates an alarm per matching
resource and records each resource's transitions (``resource_id`` set). The
API shows one state per alarm, as Aodh does, aggregated over the newest
transition of each resource (:func:`alarm_state`):

* ``alarm`` if any resource is in alarm; else ``ok`` if any is ok; else
  ``insufficient data`` (also when nothing was evaluated yet: Aodh's
  "Not evaluated yet");
* ``state_timestamp`` and ``state_reason`` are those of the newest
  transition into that state (the reason is prefixed with its resource, and
  with how many resources are in that state when more than one);
* a state set through the API (the definition's ``state_override``, which
  every resource's evaluation adopts) stands for each resource whose newest
  transition is older than it, and for the alarm when no resource has any.

**What the API writes.** ``PUT .../state`` (and a ``PUT`` that changes
``state``) appends a row with Aodh's change type ``state transition``,
``resource_id`` empty (the whole alarm), the caller in ``reason_data``
(``{"detail": {"state", "state_reason"}, "user_id", "project_id",
"on_behalf_of"}``). The processor's rows and these are read back as Aodh's
AlarmChange (:func:`alarm_change`).
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from streams.alarms.model import ALARM, OK, UNKNOWN, AlarmDefinition
from streams.alarms.stage import HISTORY_COLUMNS, STATE_TRANSITION
from streams.api.mapping import REASON_DEFAULT, REASON_MANUAL, AlarmState, iso
from streams.storage.schema import quote_ident


@dataclass(frozen=True)
class Transition:
    """The newest transition of one resource of an alarm (``resource_id`` empty: made through the API)."""

    resource_id: str
    state: str
    timestamp_us: int
    reason: str


def alarm_state(definition: AlarmDefinition, transitions: list[Transition]) -> AlarmState:
    """The alarm's state from its resources' newest transitions and its state override (module docstring)."""
    override = definition.state_override
    per_resource: list[Transition] = []
    for t in transitions:
        if not t.resource_id:
            continue  # the API's own rows: the definition's override is authoritative
        if override is not None and t.timestamp_us <= override.timestamp:
            per_resource.append(Transition(t.resource_id, override.state, override.timestamp, REASON_MANUAL))
        else:
            per_resource.append(t)
    if not per_resource:
        if override is not None:
            return AlarmState(override.state, override.timestamp, REASON_MANUAL)
        return AlarmState(UNKNOWN, None, REASON_DEFAULT)
    for state in (ALARM, OK, UNKNOWN):
        group = [t for t in per_resource if t.state == state]
        if group:
            newest = max(group, key=lambda t: (t.timestamp_us, t.resource_id))
            prefix = f"{len(group)} of {len(per_resource)} resources in {state}; " if len(group) > 1 else ""
            return AlarmState(state, newest.timestamp_us, f"{prefix}{newest.resource_id}: {newest.reason}")
    raise AssertionError("unreachable: states are ok, alarm or insufficient data")


def alarm_change(row: dict[str, Any], on_behalf_of: str | None) -> dict[str, Any]:
    """An ``alarm_history`` row as Aodh's AlarmChange.

    A processor row's ``detail`` is Aodh's evaluator detail (``state``,
    ``transition_reason``) plus ``previous_state`` and ``resource_id``; it has
    no initiating user or project (the evaluator is not a Keystone user).
    """
    if row["resource_id"]:
        detail: Any = {"state": row["state"], "transition_reason": row["reason"],
                       "previous_state": row["previous_state"], "resource_id": row["resource_id"]}
        user_id = project_id = None
    else:
        try:
            extra = json.loads(row["reason_data"] or "{}")
        except ValueError:
            extra = {}
        detail = extra.get("detail", {"state": row["state"], "state_reason": row["reason"]})
        user_id, project_id = extra.get("user_id"), extra.get("project_id")
        on_behalf_of = extra.get("on_behalf_of", on_behalf_of)
    return {"event_id": row["event_id"], "alarm_id": row["alarm_id"], "type": row["type"],
            "detail": json.dumps(detail), "user_id": user_id, "project_id": project_id,
            "on_behalf_of": on_behalf_of if on_behalf_of is not None else row["project_id"] or None,
            "timestamp": iso(row["timestamp_us"]), "severity": row["severity"]}


_ROW_COLUMNS = ("event_id", "alarm_id", "type", "severity", "project_id", "resource_id", "previous_state",
                "state", "reason", "reason_data", "timestamp_us")


class HistoryStore:
    """Reads and appends ``<db>.alarm_history`` through one storage connection (blocking; thread-safe).

    Raises (every method): clickhouse_driver errors or
    :class:`~streams.storage.backend.StorageError` when the store fails.
    """

    def __init__(self, url: str, database: str, ca_file: str | None = None, cluster: str | None = None) -> None:
        self.url = url
        self.database = database
        self.ca_file = ca_file  # clickhouse.ca_file: verifies the server's TLS certificate
        self.cluster = cluster  # clickhouse.cluster: inserts into the Distributed table are synchronous
        self._conn = None
        self._lock = threading.Lock()

    def _open(self):
        from streams.storage.backend import open_connection

        return open_connection(self.url, self.database, ca_file=self.ca_file,
                               settings={"insert_distributed_sync": 1} if self.cluster else None)

    def _execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        with self._lock:
            if self._conn is None:
                self._conn = self._open()
            try:
                return self._conn.execute(sql.replace("{table}", self._table), params or {})
            except Exception:
                self._close()
                raise

    @property
    def _table(self) -> str:
        return f"{quote_ident(self.database)}.alarm_history"

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close()

    def latest(self, alarm_ids: list[str]) -> dict[str, list[Transition]]:
        """Per alarm, the newest transition of each resource (and of the API's own rows)."""
        if not alarm_ids:
            return {}
        rows = self._execute(
            "SELECT alarm_id, resource_id, argMax(state, timestamp_us), max(timestamp_us), "
            "argMax(reason, timestamp_us) FROM {table} FINAL "
            "WHERE alarm_id IN %(ids)s AND type = %(t)s GROUP BY alarm_id, resource_id",
            {"ids": tuple(alarm_ids), "t": STATE_TRANSITION})
        out: dict[str, list[Transition]] = {}
        for alarm_id, rid, state, ts, reason in rows:
            out.setdefault(alarm_id, []).append(Transition(rid, state, int(ts), reason))
        return out

    def changes(self, alarm_ids: list[str] | None, limit: int, types: list[str] | None = None,
                severity: str | None = None, since_us: tuple[int, bool] | None = None,
                until_us: tuple[int, bool] | None = None) -> list[dict[str, Any]]:
        """Rows, newest first: of ``alarm_ids`` (None: every alarm), at most ``limit``.

        ``since_us`` / ``until_us`` are (µs, inclusive).
        """
        where, params = ["1"], {"limit": int(limit)}
        if alarm_ids is not None:
            if not alarm_ids:
                return []
            where.append("alarm_id IN %(ids)s")
            params["ids"] = tuple(alarm_ids)
        if types:
            where.append("type IN %(types)s")
            params["types"] = tuple(types)
        if severity is not None:
            where.append("severity = %(sev)s")
            params["sev"] = severity
        if since_us is not None:
            where.append(f"timestamp_us {'>=' if since_us[1] else '>'} %(since)s")
            params["since"] = since_us[0]
        if until_us is not None:
            where.append(f"timestamp_us {'<=' if until_us[1] else '<'} %(until)s")
            params["until"] = until_us[0]
        rows = self._execute(
            f"SELECT {', '.join(_ROW_COLUMNS)} FROM {{table}} FINAL WHERE {' AND '.join(where)} "
            "ORDER BY timestamp_us DESC, event_id LIMIT %(limit)s", params)
        return [dict(zip(_ROW_COLUMNS, r, strict=True)) for r in rows]

    def record_state_change(self, definition: AlarmDefinition, previous: str, state: str, now_us: int,
                            actor: dict[str, Any]) -> str:
        """Append the API's ``state transition`` row for ``definition``; return its event id."""
        event_id = str(uuid.uuid4())
        reason_data = json.dumps({"detail": {"state": state, "state_reason": REASON_MANUAL}, **actor})
        row = {"event_id": event_id, "alarm_id": definition.alarm_id, "alarm_name": definition.name,
               "type": STATE_TRANSITION, "severity": definition.severity,
               "project_id": definition.project_id or "", "resource_id": "", "previous_state": previous,
               "state": state, "reason": REASON_MANUAL, "reason_data": reason_data, "timestamp_us": now_us}
        with self._lock:
            if self._conn is None:
                self._conn = self._open()
            try:
                self._conn.insert_columns(self._table, HISTORY_COLUMNS, [[row[c]] for c in HISTORY_COLUMNS])
            except Exception:
                self._close()
                raise
        return event_id
