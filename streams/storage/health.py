"""Pipeline-health rows for Grafana: dead-lettered records.

``sink_flushes`` is written by :class:`~streams.storage.clickhouse.ClickHouseSink`
on every flush. ``dead_letters`` is written here, one row per record sent to
the dead-letter topic, keyed by (topic, partition, offset) so a replayed batch
does not count twice (``ReplacingMergeTree``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from streams.codec import clip
from streams.storage.backend import Connection
from streams.storage.schema import quote_ident

COLUMNS = ("timestamp_us", "stage", "reason", "detail", "topic", "partition", "offset", "key")


@dataclass(frozen=True)
class DeadLetter:
    """A record that failed a stage (``streams.dlq.*`` headers); ``timestamp_us`` 0 = now."""

    stage: str
    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    timestamp_us: int = 0


def record_dead_letters(conn: Connection, letters: Iterable[DeadLetter]) -> int:
    """Insert ``letters`` into ``<db>.dead_letters`` in one INSERT; return how many.

    Raises:
        clickhouse_driver.errors.Error, StorageError: the insert failed.
    """
    now = time.time_ns() // 1000
    rows = [(d.timestamp_us or now, d.stage, d.reason, clip(d.detail), d.topic, d.partition, d.offset,
             clip((d.key or b"")[:4096].decode("utf-8", "replace"), 256)) for d in letters]
    if rows:
        conn.insert_columns(f"{quote_ident(conn.database)}.dead_letters", COLUMNS,
                            [list(c) for c in zip(*rows, strict=True)])
    return len(rows)
