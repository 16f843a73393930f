"""Ceilometer events into ClickHouse ``<db>.events`` (migration 7), each stored once.

Delivery contract: the bridge commits source offsets only after
:meth:`EventStore.store` has returned. If it raises, nothing is committed and
the records are read again. Before inserting, ``store`` asks which of the
batch's events are already stored (one lookup on the table's sort key) and
skips them, so a batch replayed after a crash inserts nothing twice; the
``ReplacingMergeTree`` is the backstop for two racing writers.

Works on both backends of :mod:`streams.storage.backend`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from tenacity import Retrying, before_sleep_log, retry_if_exception_type, stop_after_delay, wait_exponential

from streams.bridge.ceilometer import Event, trait_text
from streams.storage.backend import Connection
from streams.storage.clickhouse import TRANSIENT_ERRORS
from streams.storage.schema import EVENT_COLUMNS, quote_ident

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourcedEvent:
    """An event and the Kafka position it was read from."""

    event: Event
    topic: str
    partition: int
    offset: int


def event_columns(events: Sequence[SourcedEvent]) -> list[list]:
    """Columns in :data:`~streams.storage.schema.EVENT_COLUMNS` order."""
    cols: list[list] = [[] for _ in EVENT_COLUMNS]
    mid, etype, gen, tkey, tdtype, tval, raw, topic, part, off = cols
    for s in events:
        e = s.event
        mid.append(e.message_id)
        etype.append(e.event_type)
        gen.append(e.generated_us)
        tkey.append([t[0] for t in e.traits])
        tdtype.append([t[1] for t in e.traits])
        tval.append([trait_text(t[1], t[2]) for t in e.traits])
        raw.append(json.dumps(e.raw, separators=(",", ":"), sort_keys=True) if e.raw else "")
        topic.append(s.topic)
        part.append(s.partition)
        off.append(s.offset)
    return cols


class EventStore:
    """Inserts events not stored yet into ``<db>.events``.

    Args:
        conn: an open storage connection (its database holds ``events``).
        retry_for: seconds to keep retrying transient errors before raising.
    """

    def __init__(self, conn: Connection, retry_for: float = 300.0) -> None:
        self.conn = conn
        self.table = f"{quote_ident(conn.database)}.events"
        self.retry_for = retry_for

    def _columns(self, events: Sequence[SourcedEvent]) -> list:
        cols = event_columns(events)
        if self.conn.embedded:
            # chdb reads an Arrow table; a batch whose events all have no traits would infer
            # list<null> for the dtypes, which ClickHouse refuses for Array(UInt8).
            import pyarrow as pa

            i = EVENT_COLUMNS.index("traits.dtype")
            cols[i] = pa.array(cols[i], type=pa.list_(pa.uint8()))
        return cols

    def stored_ids(self, events: Sequence[SourcedEvent]) -> set[str]:
        """``message_id`` of ``events`` already in the table (the lookup uses the sort key's range)."""
        if not events:
            return set()
        stamps = [s.event.generated_us for s in events]
        rows = self.conn.execute(
            f"SELECT message_id FROM {self.table} WHERE event_type IN %(types)s AND generated_us >= %(lo)s "
            "AND generated_us <= %(hi)s AND message_id IN %(ids)s",
            {"types": tuple({s.event.event_type for s in events}), "lo": min(stamps), "hi": max(stamps),
             "ids": tuple({s.event.message_id for s in events})})
        return {r[0] for r in rows}

    def store(self, events: Sequence[SourcedEvent]) -> int:
        """Insert the events of ``events`` not stored yet (and not repeated in it), retrying transient errors.

        Returns:
            events inserted.

        Raises:
            clickhouse_driver.errors.Error / StorageError: a non-transient error,
                or transient errors for longer than ``retry_for`` seconds.
        """
        if not events:
            return 0
        inserted = 0
        for attempt in Retrying(retry=retry_if_exception_type(TRANSIENT_ERRORS),
                                wait=wait_exponential(multiplier=0.2, max=10),
                                stop=stop_after_delay(self.retry_for),
                                before_sleep=before_sleep_log(log, logging.WARNING), reraise=True):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    self.conn.close()
                # Checked on every attempt: an insert whose reply was lost may have landed.
                stored = self.stored_ids(events)
                seen: set[str] = set()
                new = []
                for s in events:
                    mid = s.event.message_id
                    if mid not in stored and mid not in seen:
                        seen.add(mid)
                        new.append(s)
                if new:
                    self.conn.insert_columns(self.table, EVENT_COLUMNS, self._columns(new))
                inserted = len(new)
        if inserted != len(events):
            log.info("events: %d of %d were stored already; skipped", len(events) - inserted, len(events))
        return inserted
