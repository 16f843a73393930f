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
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Counter

from streams.alarms.evaluator import STATE_KEY, AlarmEvent, AlarmSet, advance, due, observe
from streams.alarms.records import RecordCodec
from streams.config import Settings
from streams.storage.schema import quote_ident

log = logging.getLogger(__name__)

PARTITION_KEY = "_partition"
"""Key of a resource's samples partition in its state dict (the timer writes state back to it)."""

ALARM_EVENTS = Counter("streams_alarm_events_total", "Alarm events produced to the alarms topic.",
                       ["current", "transition"])

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

    def __init__(self, settings: Settings, definitions) -> None:
        self.settings = settings
        self.definitions = definitions
        self.grace_us = int(settings.alarms.grace * 1_000_000)
        self.codec = RecordCodec()
        self.topic = settings.kafka.alarms_topic
        self._conn = None

    @property
    def alarms(self) -> AlarmSet:
        return self.definitions()

    def on_record(self, samples: list[dict[str, Any]], state_for, partition: int) -> list[AlarmEvent]:
        """Feed one record's normalized samples (one resource); return events of windows it closes.

        ``state_for(resource_id)`` returns the batch's mutable state of the resource.
        """
        alarms = self.alarms
        if not alarms.by_meter or not any(s["name"] in alarms.by_meter for s in samples):
            return []
        rid = samples[0]["resource_id"]
        state = state_for(rid)
        if not observe(alarms, state, samples):
            return []
        state[PARTITION_KEY] = partition
        clock = max(s["timestamp"] for s in samples)
        return advance(alarms, state, rid, clock, self.grace_us)

    def close_windows(self, table, batch_state, active_partitions: set[int], now_us: int) -> tuple[int, list]:
        """Evaluate due windows of every resource with alarm state on ``active_partitions`` at ``now_us``.

        Reads through ``batch_state`` (so uncommitted states of batches being
        stored are seen) and only copies resources that are due.

        Returns:
            (resources touched, events).
        """
        alarms = self.alarms
        events: list[AlarmEvent] = []
        touched = 0
        for rid, value in list(table.items()):
            if not value or STATE_KEY not in value:
                continue
            pending = batch_state.pending.get(rid)
            current = pending[0] if pending is not None else value
            partition = current.get(PARTITION_KEY)
            if partition not in active_partitions or not due(alarms, current, now_us, self.grace_us):
                continue
            state = batch_state.get(rid, partition)
            events.extend(advance(alarms, state, rid, now_us, self.grace_us))
            touched += 1
        return touched, events

    # -- outputs ---------------------------------------------------------------------------------

    def encode(self, event: AlarmEvent) -> tuple[bytes, bytes]:
        """(key, value) of the ``alarms`` topic record: alarm_id, AlarmEvent single-object encoded."""
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
            from streams.storage.backend import open_connection

            c = self.settings.clickhouse
            self._conn = open_connection(c.url, c.database, c.insert_block_size)
        data = [[e.event_id for e in rows], [e.alarm_id for e in rows], [e.alarm_name for e in rows],
                [STATE_TRANSITION] * len(rows), [e.severity for e in rows], [e.project_id or "" for e in rows],
                [e.resource_id for e in rows], [e.previous for e in rows], [e.current for e in rows],
                [e.reason for e in rows], [e.to_record()["reason_data"] for e in rows],
                [e.timestamp_us for e in rows]]
        self._conn.insert_columns(f"{quote_ident(self._conn.database)}.alarm_history", HISTORY_COLUMNS, data)
        return len(rows)

    async def publish(self, producer, events: list[AlarmEvent]) -> None:
        """Store ``events``: history rows, then the topic; returns once the broker acknowledged all.

        Raises:
            any storage or producer error (the caller exits without acknowledging).
        """
        import asyncio

        await asyncio.to_thread(self.write_history, events)
        futures = []
        for e in events:
            key, value = self.encode(e)
            futures.append(await producer.send(self.topic, key, value, None, None, None))
        for f in futures:
            await f
        for e in events:
            ALARM_EVENTS.labels(current=e.current, transition=str(e.transition).lower()).inc()
            log.info("alarm %s (%s) on %s: %s -> %s: %s", e.alarm_id, e.alarm_name, e.resource_id,
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

    watcher = AlarmWatcher(ZooKeeperSession(settings.coordination))
    app.add_dependency(watcher)
    return AlarmStage(settings, lambda: watcher.alarms)
