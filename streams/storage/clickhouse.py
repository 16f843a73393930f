"""Batching ClickHouse sink: columnar inserts with clickhouse-driver.

Delivery contract: the processor acknowledges Kafka records only after
:meth:`ClickHouseSink.flush` has returned. If ``flush()`` raises, nothing of
the batch is acknowledged, so Kafka redelivers it; the ``ReplacingMergeTree``
on ``message_id`` (see :mod:`streams.storage.schema`) makes the redelivery
harmless.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from clickhouse_driver import Client
from clickhouse_driver.errors import NetworkError, SocketTimeoutError
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from streams.codec import Sample
from streams.config import ClickHouseSettings
from streams.observability import SINK_BATCH_ROWS, SINK_FLUSH_SECONDS, SINK_RETRIES
from streams.storage.schema import SAMPLE_COLUMNS, quote_ident

log = logging.getLogger(__name__)

TRANSIENT_ERRORS = (NetworkError, SocketTimeoutError, EOFError, ConnectionError, OSError)
"""Errors worth retrying: the server is unreachable, not the data wrong."""


def connect(settings: ClickHouseSettings, database: str | None = None) -> Client:
    """A clickhouse-driver client for ``settings.url`` (lazy: connects on first query)."""
    kwargs = settings.client_kwargs()
    if database:
        kwargs["database"] = database
    return Client(
        **kwargs,
        settings={"insert_block_size": settings.insert_block_size},
        connect_timeout=5,
        send_receive_timeout=60,
    )


class ClickHouseSink:
    """Accumulates samples as columns and inserts them in one INSERT per flush.

    Not thread-safe: one owner calls :meth:`add` and :meth:`flush` (the
    processor calls ``flush`` in a worker thread so the event loop keeps
    heartbeating to Kafka).

    Args:
        settings: connection settings; the table is ``<database>.samples``.
        retry_for: seconds to keep retrying transient errors (server down,
            network) before :meth:`flush` raises.
    """

    def __init__(self, settings: ClickHouseSettings, retry_for: float = 300.0) -> None:
        self.settings = settings
        self.client = connect(settings)
        self.table = f"{quote_ident(settings.database)}.samples"
        self._insert = f"INSERT INTO {self.table} ({', '.join(f'`{c}`' for c in SAMPLE_COLUMNS)}) VALUES"
        self._retry_for = retry_for
        self._columns: list[list] = [[] for _ in SAMPLE_COLUMNS]

    def __len__(self) -> int:
        """Rows waiting for :meth:`flush`."""
        return len(self._columns[0])

    def add(self, samples: Iterable[Sample]) -> None:
        """Buffer ``samples`` (dicts of the ``streams.Sample`` shape) as columns."""
        (mid, name, typ, unit, vol, uid, uname, pid, pname, rid, ts, mono, mkeys, mvals, src) = self._columns
        for s in samples:
            mid.append(s["message_id"])
            name.append(s["name"])
            typ.append(s["type"])
            unit.append(s["unit"])
            vol.append(s["volume"])
            uid.append(s.get("user_id"))
            uname.append(s.get("user_name"))
            pid.append(s.get("project_id"))
            pname.append(s.get("project_name"))
            rid.append(s["resource_id"])
            ts.append(s["timestamp"])
            mono.append(s.get("monotonic_time"))
            md = s.get("resource_metadata") or {}
            mkeys.append(list(md.keys()))
            mvals.append(list(md.values()))
            src.append(s.get("source") or "")

    def flush(self) -> int:
        """Insert everything buffered, retrying transient errors; then clear the buffer.

        Returns:
            rows inserted (0 if the buffer was empty).

        Raises:
            clickhouse_driver.errors.Error: a non-transient error, or transient
                errors for longer than ``retry_for`` seconds. The buffer is kept,
                so a caller may call ``flush`` again.
        """
        rows = len(self)
        if not rows:
            return 0
        start = time.perf_counter()
        for attempt in Retrying(
            retry=retry_if_exception_type(TRANSIENT_ERRORS),
            wait=wait_exponential(multiplier=0.2, max=10),
            stop=stop_after_delay(self._retry_for),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        ):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    SINK_RETRIES.inc()
                    self.client.disconnect()
                self.client.execute(self._insert, self._columns, columnar=True, types_check=False)
        SINK_FLUSH_SECONDS.observe(time.perf_counter() - start)
        SINK_BATCH_ROWS.observe(rows)
        self._columns = [[] for _ in SAMPLE_COLUMNS]
        return rows

    def close(self) -> None:
        """Drop the connection (buffered rows are not flushed)."""
        self.client.disconnect()
