"""Batching sink: columnar inserts into ``<db>.samples``, each sample stored once.

Delivery contract: the processor acknowledges Kafka records only after
:meth:`ClickHouseSink.flush` has returned. If ``flush()`` raises, nothing of
the batch is acknowledged, so Kafka redelivers it.

Exactly-once rows (docs/storage.md): before inserting, ``flush`` drops
samples whose ``message_id`` is already in the batch, and asks the store
which of the batch's sort keys ``(name, resource_id, timestamp_us,
message_id)`` are already stored (one primary-index lookup) and drops those
too. So a batch replayed after a crash inserts only what the dead worker had
not stored, and the rollup views, which see every inserted block, never count
a sample twice. The ``ReplacingMergeTree`` on the same key is the backstop
for raw rows (e.g. two zombie workers racing); views cannot be backstopped,
which is why the check happens before the insert.

Works on both backends of :mod:`streams.storage.backend` (``clickhouse://``
and ``chdb://``).
"""

from __future__ import annotations

import logging
import socket
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
from streams.storage.backend import Connection, open_connection
from streams.storage.schema import SAMPLE_COLUMNS, quote_ident

log = logging.getLogger(__name__)

TRANSIENT_ERRORS = (NetworkError, SocketTimeoutError, EOFError, ConnectionError, OSError)
"""Errors worth retrying: the server is unreachable, not the data wrong."""

_KEY = (SAMPLE_COLUMNS.index("name"), SAMPLE_COLUMNS.index("resource_id"),
        SAMPLE_COLUMNS.index("timestamp_us"), SAMPLE_COLUMNS.index("message_id"))


def connect(settings: ClickHouseSettings, database: str | None = None) -> Client:
    """A clickhouse-driver client for a ``clickhouse://`` ``settings.url`` (lazy: connects on first query).

    Raises:
        ValueError: the URL is not ``clickhouse://`` (use :func:`open_connection` for chdb).
    """
    if not settings.url.startswith("clickhouse:"):
        raise ValueError(f"{settings.url!r} is not a ClickHouse server URL; use streams.storage.open_connection")
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
    """Accumulates samples as columns and inserts the new ones in one INSERT per flush.

    Not thread-safe: one owner calls :meth:`add` and :meth:`flush` (the
    processor calls ``flush`` in a worker thread so the event loop keeps
    heartbeating to Kafka).

    Args:
        settings: connection settings; the table is ``<database>.samples``.
        retry_for: seconds to keep retrying transient errors (server down,
            network) before :meth:`flush` raises.
        connection: an open :class:`~streams.storage.backend.Connection`
            (default: one for ``settings.url``).
    """

    def __init__(self, settings: ClickHouseSettings, retry_for: float = 300.0,
                 connection: Connection | None = None) -> None:
        self.settings = settings
        self.conn = connection or open_connection(settings.url, settings.database, settings.insert_block_size)
        db = quote_ident(self.conn.database)
        self.table = f"{db}.samples"
        self._flushes = f"{db}.sink_flushes"
        self._retry_for = retry_for
        self._host = socket.gethostname()
        self._columns: list[list] = [[] for _ in SAMPLE_COLUMNS]
        self._check: list[bool] = []  # per buffered row: may it be stored already?
        self.last_duplicates = 0
        """Samples the last flush skipped (stored already, or repeated in its batch)."""
        self.duplicates = 0
        """Samples dropped by flushes so far because they were already stored (or repeated in a batch)."""
        self.lookup_seconds = 0.0
        """Seconds spent so far finding stored samples (the exactly-once check)."""
        self.insert_seconds = 0.0
        """Seconds spent so far in INSERTs of samples (views included)."""

    def __len__(self) -> int:
        """Rows waiting for :meth:`flush`."""
        return len(self._columns[0])

    def add(self, samples: Iterable[Sample], maybe_stored: bool = True) -> None:
        """Buffer ``samples`` (dicts of the ``streams.Sample`` shape) as columns.

        Args:
            maybe_stored: whether these samples may already be in the table
                (a replay after a crash or rebalance); only such samples are
                looked up by :meth:`flush`. The processor passes False for
                records it knows are new (see streams.processor.app).
        """
        batch = samples if isinstance(samples, list) else list(samples)
        if not batch:
            return
        self._check.extend([maybe_stored] * len(batch))
        (mid, name, typ, unit, vol, uid, uname, pid, pname, rid, ts, mono, mkeys, mvals, src) = self._columns
        # One comprehension per column: about twice as fast as one loop appending to 15 lists.
        for col, key in ((mid, "message_id"), (name, "name"), (typ, "type"), (unit, "unit"), (vol, "volume"),
                         (rid, "resource_id"), (ts, "timestamp")):
            col.extend([s[key] for s in batch])
        for col, key in ((uid, "user_id"), (uname, "user_name"), (pid, "project_id"), (pname, "project_name"),
                         (mono, "monotonic_time")):
            col.extend([s.get(key) for s in batch])
        mds = [s.get("resource_metadata") or {} for s in batch]
        mkeys.extend([list(md) for md in mds])
        mvals.extend([list(md.values()) for md in mds])
        src.extend([s.get("source") or "" for s in batch])

    def _new_rows(self) -> list[list]:
        """The buffered columns without samples already stored or repeated in the batch."""
        cols = self._columns
        mids = cols[_KEY[3]]
        keep = None
        if len(set(mids)) != len(mids):
            seen: set[str] = set()
            keep = [i for i, m in enumerate(mids) if not (m in seen or seen.add(m))]
        if self.settings.deduplicate and any(self._check):
            candidates = [i for i in (keep if keep is not None else range(len(mids))) if self._check[i]]
            keys = [[cols[k][i] for i in candidates] for k in _KEY]
            stored = self.conn.existing_keys(self.table, keys) if candidates else set()
            if stored:
                idx = keep if keep is not None else range(len(mids))
                keep = [i for i in idx if not (self._check[i] and mids[i] in stored)]
        if keep is None:
            return cols
        return [[c[i] for i in keep] for c in cols]

    def flush(self) -> int:
        """Insert the buffered samples not stored yet, retrying transient errors; then clear the buffer.

        Returns:
            rows inserted (0 if the buffer was empty or everything was stored already).

        Raises:
            clickhouse_driver.errors.Error / StorageError: a non-transient error,
                or transient errors for longer than ``retry_for`` seconds. The
                buffer is kept, so a caller may call ``flush`` again.
        """
        rows = len(self)
        if not rows:
            return 0
        start = time.perf_counter()
        inserted = 0
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
                    self.conn.close()
                # Checked again on every attempt: an insert whose reply was lost may have landed.
                t0 = time.perf_counter()
                new = self._new_rows()
                t1 = time.perf_counter()
                inserted = len(new[0])
                if inserted:
                    self.conn.insert_columns(self.table, SAMPLE_COLUMNS, new)
                self.lookup_seconds += t1 - t0
                self.insert_seconds += time.perf_counter() - t1
        seconds = time.perf_counter() - start
        SINK_FLUSH_SECONDS.observe(seconds)
        SINK_BATCH_ROWS.observe(inserted)
        self.duplicates += rows - inserted
        if rows != inserted:
            log.info("flush: %d of %d samples were stored already; skipped", rows - inserted, rows)
        self._record_flush(inserted, rows - inserted, seconds, max(self._columns[_KEY[2]]))
        self._columns = [[] for _ in SAMPLE_COLUMNS]
        self._check = []
        self.last_duplicates = rows - inserted
        return inserted

    def _record_flush(self, rows: int, duplicates: int, seconds: float, newest_us: int) -> None:
        """One ``sink_flushes`` row (pipeline health); failures are logged, never raised."""
        now_us = time.time_ns() // 1000
        try:
            self.conn.insert_columns(
                self._flushes, ("flushed_at_us", "host", "rows", "duplicates", "seconds", "lag_seconds"),
                [[now_us], [self._host], [rows], [duplicates], [seconds], [(now_us - newest_us) / 1e6]])
        except Exception as exc:  # noqa: BLE001 (health data must not fail a stored batch)
            log.warning("could not record sink flush in %s: %s", self._flushes, exc)

    def close(self) -> None:
        """Drop the connection (buffered rows are not flushed)."""
        self.conn.close()
