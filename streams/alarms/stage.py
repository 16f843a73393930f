"""The processor's alarm stage: feeds windows per record, closes idle windows on a timer, stores events.

Delivery (the processor's contract, streams/processor/app.py): events are
computed against the batch's copy of each resource's state, in ``prepare``;
in ``store`` they are inserted into ClickHouse ``alarm_history``
(transitions only) and produced to the ``alarms`` topic (every event), then
the states are committed to the changelog, then the records acknowledged. A
crash anywhere replays: the same events come out again with the same
``event_id`` (history collapses on it, notifier receivers de-duplicate on it).

The timer (:meth:`AlarmStage.close_windows`) evaluates, with wall-clock
time, the resources of the partitions this worker owns (never standbys),
through a :class:`~streams.processor.state.BatchState` of its own, which the
processor stores like a batch without records.

Errors (the failure policy for "one alarm definition"): if handling one
alarm raises (a time constraint croniter cannot compute, a bug), that alarm
is disabled at once in this worker, logged once, counted in
``streams_alarms_disabled_total``, and persisted to ZooKeeper as
``enabled: false`` with ``disabled_reason`` (shown by ``streams alarm show``
and ``list``); every other alarm, and the batch, go on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge

from streams.alarms.evaluator import STATE_KEY, AlarmEvent, AlarmSet, advance, due, observe
from streams.alarms.records import AlarmRecordCodec
from streams.codec import clip
from streams.config import Settings
from streams.processor.state import PARTITION_KEY
from streams.storage.schema import quote_ident

log = logging.getLogger(__name__)

ALARM_EVENTS = Counter("streams_alarm_events_total", "Alarm events produced to the alarms topic.",
                       ["current", "transition"])
ALARMS_DISABLED = Counter("streams_alarms_disabled_total", "Alarms disabled because their evaluation raised.")
ALARM_EVALUATIONS = Counter("streams_alarm_evaluations_total",
                            "Alarm evaluation passes (records and timer runs that advanced alarm windows).")
ALARM_DEFINITIONS = Gauge("streams_alarm_definitions", "Alarm definitions loaded from ZooKeeper.")

HISTORY_COLUMNS = ("event_id", "alarm_id", "alarm_name", "type", "severity", "project_id", "resource_id",
                   "previous_state", "state", "reason", "reason_data", "timestamp_us")
STATE_TRANSITION = "state transition"
"""``alarm_history.type`` of a state change (Aodh's AlarmChange.STATE_TRANSITION)."""


class AlarmStage:
    """Alarm evaluation inside the processor.

    Args:
        settings: all settings (``alarms``, ``clickhouse``, ``kafka.alarms_topic``).
        definitions: returns the current :class:`AlarmSet` (e.g. ``lambda: watcher.alarms``).
    """

    def __init__(self, settings: Settings, definitions: Callable[[], AlarmSet],
                 disable: Callable[[str, str, str], None] | None = None) -> None:
        self.settings = settings
        self.definitions = definitions
        self.grace_us = int(settings.alarms.grace * 1_000_000)
        self.codec = AlarmRecordCodec(settings.signing.alarm_keyring())
        self.topic = settings.kafka.alarms_topic
        self._conn = None
        self._persist_disable = disable
        self._broken: dict[str, tuple[str, str]] = {}  # alarm_id -> (definition JSON, reason)
        self._view: tuple[int, int, AlarmSet] | None = None

    @property
    def alarms(self) -> AlarmSet:
        """The definitions to evaluate: without alarms disabled for an error (here or in ZooKeeper)."""
        snapshot = self.definitions()
        key = (id(snapshot), len(self._broken))
        if self._view is not None and self._view[:2] == key:
            return self._view[2]
        broken = {a for a, (doc, _) in self._broken.items()
                  if a in snapshot.by_id and snapshot.by_id[a].to_json() == doc}
        excluded = broken | {a.alarm_id for a in snapshot.by_id.values() if a.disabled_reason}
        view = snapshot if not excluded else AlarmSet(a for a in snapshot.by_id.values() if a.alarm_id not in excluded)
        self._view = (*key, view)
        return view

    def _on_error(self, alarm_id: str, exc: Exception) -> None:
        alarm = self.definitions().by_id.get(alarm_id)
        doc = alarm.to_json() if alarm is not None else ""
        if self._broken.get(alarm_id, ("",))[0] == doc:
            return  # already disabled for this definition: logged once
        reason = clip(f"evaluation raised {type(exc).__name__}: {exc}", 500)
        self._broken[alarm_id] = (doc, reason)
        ALARMS_DISABLED.inc()
        log.error("alarm %s disabled: %s", alarm_id, reason, exc_info=(type(exc), exc, exc.__traceback__))
        if self._persist_disable is not None and alarm is not None:
            self._persist_disable(alarm_id, reason, doc)

    def on_record(self, samples: list[dict[str, Any]], state_for, partition: int,
                  clock_us: int | None = None) -> list[AlarmEvent]:
        """Feed one record's normalized samples (one resource); return events of windows it closes.

        ``state_for(resource_id)`` returns the batch's mutable state of the resource;
        ``clock_us`` is the record's newest sample time (default: the newest of ``samples``,
        which may be only the samples an alarm watches).
        Never raises for an alarm's error (the alarm is disabled, module docstring).
        """
        alarms = self.alarms
        if not alarms.by_meter or not any(s["name"] in alarms.by_meter for s in samples):
            return []
        rid = samples[0]["resource_id"]
        state = state_for(rid)
        if not observe(alarms, state, samples, self._on_error):
            return []
        state[PARTITION_KEY] = partition
        clock = clock_us if clock_us is not None else max(s["timestamp"] for s in samples)
        ALARM_EVALUATIONS.inc()
        return advance(alarms, state, rid, clock, self.grace_us, self._on_error)

    def close_windows(self, table, batch_state, clocks: dict[int, int]) -> tuple[int, list]:
        """Evaluate due windows of every resource with alarm state on the partitions of ``clocks``,
        each at its partition's clock (partition -> µs; see ``BatchProcessor.timer_clocks``).

        Reads through ``batch_state`` (so uncommitted states of batches being
        stored are seen) and only copies resources that are due.

        Returns:
            (resources touched, events).
        """
        alarms = self.alarms
        events: list[AlarmEvent] = []
        touched = 0
        ALARM_EVALUATIONS.inc()
        for rid, value in list(table.items()):
            if not value or STATE_KEY not in value:
                continue
            pending = batch_state.pending.get(rid)
            current = pending[0] if pending is not None else value
            partition = current.get(PARTITION_KEY)
            now_us = clocks.get(partition)
            if now_us is None:
                continue
            try:
                if not due(alarms, current, now_us, self.grace_us):
                    continue
            except Exception as exc:  # noqa: BLE001 - a state this version cannot read: re-evaluate it
                log.warning("alarm state of %s unreadable (%s); evaluating it", clip(rid, 200), clip(repr(exc)))
            state = batch_state.get(rid, partition)
            events.extend(advance(alarms, state, rid, now_us, self.grace_us, self._on_error))
            touched += 1
        return touched, events

    # -- outputs ---------------------------------------------------------------------------------

    def encode(self, event: AlarmEvent) -> tuple[bytes, bytes]:
        """(key, value) of the ``alarms`` topic record: alarm_id, a signed ``streams.AlarmRecord``."""
        return event.alarm_id.encode(), self.codec.encode(event.to_record())

    def write_history(self, events: list[AlarmEvent]) -> int:
        """Insert the transitions among ``events`` into ``<db>.alarm_history`` (blocking; worker thread).

        Raises:
            clickhouse_driver errors / StorageError: the insert failed (the processor exits, unacked).
        """
        rows = [e for e in events if e.transition]
        if not rows:
            return 0
        if self._conn is None:
            from streams.storage import open_connection

            self._conn = open_connection(self.settings.clickhouse)
        data = [[e.event_id for e in rows], [e.alarm_id for e in rows], [e.alarm_name for e in rows],
                [STATE_TRANSITION] * len(rows), [e.severity for e in rows], [e.project_id or "" for e in rows],
                [e.resource_id for e in rows], [e.previous for e in rows], [e.current for e in rows],
                [e.reason for e in rows], [e.to_record()["reason_data"] for e in rows],
                [e.timestamp_us for e in rows]]
        self._conn.insert_columns(f"{quote_ident(self._conn.database)}.alarm_history", HISTORY_COLUMNS, data)
        return len(rows)

    def produce(self, producer, events: list[AlarmEvent]) -> list[AlarmEvent]:
        """Queue ``events`` on ``producer`` (a :class:`~streams.processor.state.ChangelogWriter`, flushed
        by the caller). An event that cannot be encoded disables its alarm instead.

        Returns:
            the events queued.
        """
        queued = []
        for e in events:
            try:
                key, value = self.encode(e)
            except Exception as exc:  # noqa: BLE001 - one alarm's bad event must not stop the batch
                self._on_error(e.alarm_id, exc)
                continue
            producer.produce(self.topic, value, key)
            queued.append(e)
        return queued

    @staticmethod
    def delivered(events: list[AlarmEvent]) -> None:
        """Count and log ``events`` once the broker has acknowledged them."""
        for e in events:
            ALARM_EVENTS.labels(current=e.current, transition=str(e.transition).lower()).inc()
            log.info("alarm %s (%s) on %s: %s -> %s: %s", e.alarm_id, e.alarm_name, clip(e.resource_id, 200),
                     e.previous, e.current, e.reason)


def create_alarm_stage(settings: Settings, app) -> AlarmStage | None:
    """The stage, with a ZooKeeper watcher added to ``app``'s services; None if alarms are off.

    Alarms need ``coordination.hosts`` (definitions live in ZooKeeper) and ``alarms.enabled``.
    """
    if not settings.alarms.enabled or not settings.coordination.hosts:
        log.info("alarm evaluation off (%s)", "alarms.enabled is false" if not settings.alarms.enabled
                 else "coordination.hosts is not set")
        return None
    from streams.alarms.definitions import AlarmWatcher
    from streams.coordination.session import ZooKeeperSession

    watcher = AlarmWatcher(ZooKeeperSession(settings.coordination),
                           on_change=lambda alarms: ALARM_DEFINITIONS.set(len(alarms.by_id)))
    app.add_dependency(watcher)
    return AlarmStage(settings, lambda: watcher.alarms, watcher.disable)
