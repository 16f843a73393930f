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

Errors (one policy, :func:`classify`): an error about reaching the server
(connection, timeout, overload: :data:`TRANSIENT_CODES`) is retried for
``retry_for`` seconds, then raised; an error about the store itself (unknown
table or database, authentication, read-only: :data:`STORE_CODES`) is
raised at once. Either way nothing is acknowledged. Any other error is about
the data: ``flush`` bisects the batch by record (the ``origins`` given to
:meth:`ClickHouseSink.add`) until it has stored every record the server
accepts, then raises :class:`RecordsRejected` naming the records it refused
with ClickHouse's code and message, for the processor to dead-letter. A
record is stored whole or not at all. If every record of a batch of several
is refused, the error is not about any one record, and it is raised as a
store error instead.

Works on both backends of :mod:`streams.storage.backend` (``clickhouse://``
and ``chdb://``).

Cluster mode (``clickhouse.cluster``): rows go straight to the shard that owns
them (``halfMD5(resource_id)``, as the ``Distributed`` table would route them),
into ``samples_local`` on a live replica of that shard, and the duplicate check
runs on the same replica (:class:`streams.storage.cluster.ShardWriter`). A dead
replica is skipped; a shard with no live replica is a transient error: the
flush retries and then raises, and nothing is acknowledged or dead-lettered.
Shards stored by an earlier attempt of a flush are not written again.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Iterable, Sequence
from typing import Any

from clickhouse_driver import Client
from clickhouse_driver.errors import NetworkError, ServerException, SocketTimeoutError
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from streams.codec import Sample, clip
from streams.columns import extend_from_dicts
from streams.config import ClickHouseSettings
from streams.observability import SINK_BATCH_ROWS, SINK_FLUSH_SECONDS, SINK_RETRIES
from streams.storage.backend import Connection, StorageError, open_connection
from streams.storage.cluster import ShardWriter
from streams.storage.schema import SAMPLE_COLUMNS, quote_ident

log = logging.getLogger(__name__)

TRANSIENT_ERRORS = (NetworkError, SocketTimeoutError, EOFError, ConnectionError, OSError)
"""Client-side errors worth retrying: the server is unreachable, not the data wrong."""

TRANSIENT_CODES = frozenset({
    3, 32,  # UNEXPECTED_END_OF_FILE, ATTEMPT_TO_READ_AFTER_EOF
    159, 202, 203, 209, 210,  # TIMEOUT_EXCEEDED, TOO_MANY_SIMULTANEOUS_QUERIES, NO_FREE_CONNECTION, SOCKET_TIMEOUT,
    # NETWORK_ERROR
    225, 236, 241, 242, 243,  # NO_ZOOKEEPER, ABORTED, MEMORY_LIMIT_EXCEEDED, TABLE_IS_READ_ONLY, NOT_ENOUGH_SPACE
    252,  # TOO_MANY_PARTS (merges behind inserts); "Too many partitions for single INSERT block" is data
    279,  # ALL_CONNECTION_TRIES_FAILED: a Distributed insert found no live replica of a shard
    285, 286, 289, 319,  # TOO_FEW_LIVE_REPLICAS, UNSATISFIED_QUORUM..., REPLICA_IS_NOT_IN_QUORUM,
    # UNKNOWN_STATUS_OF_INSERT
    394, 425, 999, 1000,  # QUERY_WAS_CANCELLED, SYSTEM_ERROR, KEEPER_EXCEPTION, POCO_EXCEPTION
})
"""ClickHouse error codes (``src/Common/ErrorCodes.cpp``) meaning "not now": retried, never dead-lettered."""

STORE_CODES = frozenset({
    16, 47, 60, 81,  # NO_SUCH_COLUMN_IN_TABLE, UNKNOWN_IDENTIFIER, UNKNOWN_TABLE, UNKNOWN_DATABASE
    164, 192, 193, 194, 195, 497, 516,  # READONLY, UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD,
    # IP_ADDRESS_NOT_ALLOWED, ACCESS_DENIED, AUTHENTICATION_FAILED
})
"""ClickHouse error codes about the store, not the data: raised at once, never dead-lettered."""

_CODE = re.compile(r"Code:\s*(\d+)")


def error_code(exc: BaseException) -> int | None:
    """ClickHouse's error code of ``exc`` (clickhouse-driver's ``.code``, or ``Code: N`` in chdb's text)."""
    code = getattr(exc, "code", None)
    if isinstance(exc, ServerException) and isinstance(code, int):
        return code
    m = _CODE.search(str(exc))
    return int(m.group(1)) if m else None


def classify(exc: BaseException) -> str:
    """``"transient"``, ``"store"`` or ``"data"``: the sink's error policy for ``exc`` (module docstring)."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return "transient"
    if not isinstance(exc, ServerException | StorageError):
        return "store"  # a bug or an unknown client error: never blame the data for it
    code = error_code(exc)
    if code == 252 and "partitions for single insert block" in str(exc).lower():
        return "data"
    if code in TRANSIENT_CODES:
        return "transient"
    if code in STORE_CODES:
        return "store"
    return "data"


class _Transient(Exception):
    """Internal: a transient server error, for tenacity to retry (wraps the original)."""


class RecordsRejected(Exception):
    """The server refused some records' rows for their data; every other row is stored.

    Raised by :meth:`ClickHouseSink.flush` after the rest of the batch is durable.

    Attributes:
        rejected: origin (as given to :meth:`ClickHouseSink.add`) -> ClickHouse's
            ``Code: N. message`` (clipped), for the dead-letter topic.
        inserted: rows stored by this flush.
        skipped: rows skipped as already stored.
    """

    def __init__(self, rejected: dict[int, str], inserted: int, skipped: int) -> None:
        super().__init__(f"{len(rejected)} records rejected by the store; {inserted} rows stored")
        self.rejected = rejected
        self.inserted = inserted
        self.skipped = skipped


class StoreRejectedEverything(RuntimeError):
    """Every record of a multi-record batch was refused: the error is the store's, not any record's."""

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
        self.conn = connection or open_connection(settings.url, settings.database, settings.insert_block_size,
                                                  ca_file=settings.ca_file)
        db = quote_ident(self.conn.database)
        self.table = f"{db}.samples"
        self._flushes = f"{db}.sink_flushes"
        self._shards = ShardWriter(self.conn, settings.cluster, f"{db}.samples_local") if settings.cluster else None
        self._stored_in: dict[int, tuple[int, dict[int, str]]] = {}  # shard -> (rows, refused) stored already
        self._retry_for = retry_for
        self._host = socket.gethostname()
        self._columns: list[list] = [[] for _ in SAMPLE_COLUMNS]
        self._check: list[bool] = []  # per buffered row: may it be stored already?
        self._origins: list[int] = []  # per buffered row: the record it came from
        self._next_origin = 0
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

    def add(self, samples: Iterable[Sample], maybe_stored: bool = True,
            origins: Sequence[int] | None = None) -> None:
        """Buffer ``samples`` (dicts of the ``streams.Sample`` shape) as columns.

        Args:
            maybe_stored: whether these samples may already be in the table
                (a replay after a crash or rebalance); only such samples are
                looked up by :meth:`flush`. The processor passes False for
                records it knows are new (see streams.processor.batch).
            origins: per sample, the id of the record it came from (the unit
                :meth:`flush` stores or rejects whole); default: this call's
                samples are one record.
        """
        batch = samples if isinstance(samples, list) else list(samples)
        if not batch:
            return
        if origins is None:
            self._next_origin -= 1  # negative: never collides with a caller's record ids
            origins = [self._next_origin] * len(batch)
        elif len(origins) != len(batch):
            raise ValueError(f"{len(origins)} origins for {len(batch)} samples")
        self._origins.extend(origins)
        self._check.extend([maybe_stored] * len(batch))
        extend_from_dicts(self._columns, batch)  # the 15 sample columns, in C where it can

    def add_columns(self, columns: Any, rows: Sequence[int] | None = None, maybe_stored: bool = True,
                    origins: Sequence[int] | None = None) -> None:
        """Buffer ``rows`` of ``columns`` (a :class:`~streams.columns.SampleColumns`; None: all of them):
        :meth:`add` without a dict per sample. ``maybe_stored`` and ``origins`` as in :meth:`add`."""
        n = len(columns) if rows is None else len(rows)
        if not n:
            return
        if origins is None:
            self._next_origin -= 1
            origins = [self._next_origin] * n
        elif len(origins) != n:
            raise ValueError(f"{len(origins)} origins for {n} samples")
        self._origins.extend(origins)
        self._check.extend([maybe_stored] * n)
        every = rows is None or (n == len(columns) and rows[0] == 0 and rows[-1] == n - 1)
        for mine, theirs in zip(self._columns, columns.cols, strict=False):  # 15 sample columns of 16
            mine.extend(theirs if every else [theirs[i] for i in rows])

    def _new_rows(self, conn: Connection, table: str, rows: list[int] | None = None
                  ) -> tuple[list[list], list[int] | None]:
        """The buffered columns (of buffer indices ``rows``; None: all) without samples already
        stored in ``table`` (asked on ``conn``) or repeated in the batch, and the buffer indices
        they are (None: all of them, in order)."""
        cols, check = self._columns, self._check
        mids = cols[_KEY[3]]
        every = range(len(mids)) if rows is None else rows
        keep = None
        sub = mids if rows is None else [mids[i] for i in rows]
        if len(set(sub)) != len(sub):
            seen: set[str] = set()
            keep = [i for i in every if not (mids[i] in seen or seen.add(mids[i]))]
        if self.settings.deduplicate:
            base = keep if keep is not None else every
            candidates = [i for i in base if check[i]]
            if candidates:
                # every buffered row, in order (the usual case): the columns themselves, not copies
                keys = ([cols[k] for k in _KEY] if len(candidates) == len(mids)
                        else [[cols[k][i] for i in candidates] for k in _KEY])
                t0 = time.perf_counter()
                stored = conn.existing_keys(table, keys)
                self.lookup_seconds += time.perf_counter() - t0
                if stored:
                    keep = [i for i in base if not (check[i] and mids[i] in stored)]
        if keep is None:
            if rows is None:
                return cols, None
            keep = list(rows)
        return [[c[i] for i in keep] for c in cols], keep

    def flush(self) -> int:
        """Insert the buffered samples not stored yet, retrying transient errors; then clear the buffer.

        Returns:
            rows inserted (0 if the buffer was empty or everything was stored already).

        Raises:
            RecordsRejected: the server refused some records for their data;
                everything else is stored and the buffer is cleared.
            clickhouse_driver.errors.Error / StorageError / StoreRejectedEverything:
                a store error, or transient errors for longer than ``retry_for``
                seconds. The buffer is kept, so a caller may call ``flush`` again.
        """
        rows = len(self)
        if not rows:
            return 0
        start = time.perf_counter()
        inserted = 0
        rejected: dict[int, str] = {}
        try:
            for attempt in Retrying(
                retry=retry_if_exception_type(_Transient),
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
                    t0, looked = time.perf_counter(), self.lookup_seconds
                    if self._shards is not None:
                        inserted, rejected = self._store_sharded()
                    else:
                        try:
                            new, kept = self._new_rows(self.conn, self.table)
                        except Exception as exc:
                            if classify(exc) == "transient":  # the lookup failed to reach the server
                                raise _Transient(str(exc)) from exc
                            raise
                        try:
                            inserted, rejected = self._insert(new, kept)
                        except _Transient:
                            self._check = [True] * rows  # part of the batch may be stored by now
                            raise
                    self.insert_seconds += time.perf_counter() - t0 - (self.lookup_seconds - looked)
        except _Transient as exc:
            raise exc.__cause__ from None  # the server's own error, after retry_for seconds of it
        seconds = time.perf_counter() - start
        SINK_FLUSH_SECONDS.observe(seconds)
        SINK_BATCH_ROWS.observe(inserted)
        dropped = sum(1 for o in self._origins if o in rejected) if rejected else 0
        skipped = rows - inserted - dropped
        self.duplicates += skipped
        if skipped:
            log.info("flush: %d of %d samples were stored already; skipped", skipped, rows)
        self._record_flush(inserted, skipped, seconds, max(self._columns[_KEY[2]]))
        self._clear()
        self.last_duplicates = skipped
        if rejected:
            raise RecordsRejected(rejected, inserted, skipped)
        return inserted

    def _clear(self) -> None:
        self._columns = [[] for _ in SAMPLE_COLUMNS]
        self._check = []
        self._origins = []
        self._stored_in = {}

    def _store_sharded(self) -> tuple[int, dict[int, str]]:
        """One attempt in cluster mode: each shard's new rows into ``samples_local`` on a live
        replica of it (:class:`~streams.storage.cluster.ShardWriter`); shards done by an earlier
        attempt are skipped. Returns (rows inserted, refused records) over the whole buffer.

        Raises:
            _Transient: a shard has no live replica (its rows may be partly stored: checked next time).
        """
        table = self._shards.local_table

        def transient(exc: BaseException) -> bool:
            return isinstance(exc, _Transient) or classify(exc) == "transient"

        for shard, idx in self._shards.split(self._columns[_KEY[1]]).items():
            if shard in self._stored_in:
                continue

            def work(conn: Connection, idx: list[int] = idx) -> tuple[int, dict[int, str]]:
                try:
                    new, kept = self._new_rows(conn, table, idx)
                    return self._insert(new, kept, conn, table)
                except _Transient:
                    for i in idx:  # part of the shard's rows may be stored by now
                        self._check[i] = True
                    raise

            needs_check = self.settings.deduplicate and any(self._check[i] for i in idx)
            try:
                self._stored_in[shard] = self._shards.run(shard, work, needs_check, transient)
            except Exception as exc:
                if not isinstance(exc, _Transient) and transient(exc):
                    raise _Transient(str(exc)) from exc
                raise
        return (sum(n for n, _ in self._stored_in.values()),
                {o: e for _, refused in self._stored_in.values() for o, e in refused.items()})

    def _insert(self, new: list[list], kept: list[int] | None, conn: Connection | None = None,
                table: str | None = None) -> tuple[int, dict[int, str]]:
        """Insert ``new`` (columns; buffer indices ``kept``) into ``table`` on ``conn`` (default: the
        sink's); on a data error bisect by record.

        Returns:
            (rows inserted, origin -> error text of the records refused).

        Raises:
            _Transient: a transient error (possibly after part of the rows was stored).
            StoreRejectedEverything / the store error: see :meth:`flush`.
        """
        if not new[0]:
            return 0, {}
        conn, table = conn or self.conn, table or self.table
        first = self._insert_or_data_error(conn, table, new)
        if first is None:
            return len(new[0]), {}
        # A data error: isolate the records the server refuses, by bisection over whole records.
        idx = kept if kept is not None else list(range(len(new[0])))
        groups: dict[int, list[int]] = {}
        for pos, i in enumerate(idx):
            groups.setdefault(self._origins[i], []).append(pos)
        log.warning("the store refused a batch of %d records (%s); isolating the records it refuses",
                    len(groups), clip(str(first), 300))
        rejected: dict[int, str] = {}
        inserted = self._bisect(new, list(groups.items()), rejected, first, conn, table)
        if len(groups) > 1 and len(rejected) == len(groups):
            raise StoreRejectedEverything(
                f"the store refused every one of {len(groups)} records: {clip(str(first), 300)}") from first
        return inserted, rejected

    @staticmethod
    def _insert_or_data_error(conn: Connection, table: str, cols: list[list]) -> Exception | None:
        """INSERT ``cols`` into ``table``: None once stored, else the server's data error.

        Raises:
            _Transient: the server is unreachable or busy (retried by the caller).
            Exception: a store error (:func:`classify`), as raised.
        """
        try:
            conn.insert_columns(table, SAMPLE_COLUMNS, cols)
            return None
        except Exception as exc:  # noqa: BLE001 - classified below
            kind = classify(exc)
            if kind == "transient":
                raise _Transient(str(exc)) from exc
            if kind == "store":
                raise
            return exc

    def _bisect(self, cols: list[list], groups: list[tuple[int, list[int]]], rejected: dict[int, str],
                error: Exception | None, conn: Connection, table: str) -> int:
        """Store ``groups`` (origin, row positions in ``cols``), splitting those that fail; return rows stored.

        ``error`` is the failure of this very set (known already), or None to try it first.
        """
        if error is None:
            positions = [pos for _, ps in groups for pos in ps]
            error = self._insert_or_data_error(conn, table, [[c[p] for p in positions] for c in cols])
            if error is None:
                return len(positions)
        if len(groups) == 1:
            code = error_code(error)
            rejected[groups[0][0]] = clip(f"Code: {code}. {error}" if code is not None and "Code:" not in str(error)
                                          else str(error), 1000)
            return 0
        mid = len(groups) // 2
        return (self._bisect(cols, groups[:mid], rejected, None, conn, table)
                + self._bisect(cols, groups[mid:], rejected, None, conn, table))

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
        if self._shards is not None:
            self._shards.close()
