"""ClickHouse schema: every table's DDL, chosen by server version.

One set of columns and queries works on ClickHouse 18.16 (Debian's server)
and on current releases (proved on chdb, ClickHouse 26.x in-process); only
column *types*, codecs and TTL differ:

===============  ================================  ===========================
what             current ClickHouse (>= 20.1)      18.16
===============  ================================  ===========================
timestamp        DateTime64(6, 'UTC')              DateTime('UTC') (seconds)
name, unit, ...  LowCardinality(String)            String
codecs           Delta/DoubleDelta, Gorilla, ZSTD  none (LZ4 default)
retention        TTL from ``clickhouse.retention_days``  none (drop partitions)
===============  ================================  ===========================

``timestamp_us`` (Int64, microseconds since the epoch, UTC) is the exact time
on every version; ``timestamp`` is derived from it by the server (a DEFAULT
expression), so inserts send integers only and Grafana gets a time column.

Tables (all in one database; see docs/storage.md):

``samples``
    raw samples, ``ReplacingMergeTree`` ordered by
    ``(name, resource_id, timestamp_us, message_id)``: a redelivered sample
    collapses at merge time; until then exact counts use ``FINAL`` or
    ``uniqExact(message_id)``.
``resources``
    latest metadata per resource (``ReplacingMergeTree(timestamp_us)``), fed by
    the materialized view ``resources_mv``; read with ``FINAL``.
``rollups_1m``, ``rollups_1h``
    ``AggregatingMergeTree`` of min, max, avg, sum, count and last (argMax by
    time) per ``(name, unit, project_id, resource_id, bucket)``, fed by the
    views ``rollups_1m_mv`` and ``rollups_1h_mv``; read with the ``-Merge``
    combinators and ``GROUP BY``.
``alarm_history``
    alarm state transitions (Aodh's alarm change events), idempotent by ``event_id``.
``sink_flushes``, ``dead_letters``
    pipeline health: one row per sink flush (rows, duplicates skipped,
    seconds), one row per dead-lettered record.
``events``
    Ceilometer events (audit and billing; Panko's job), written by the
    Ceilometer bridge, ``ReplacingMergeTree`` by ``(event_type,
    generated_us, message_id)`` so a replayed event collapses.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = (
    "message_id",
    "name",
    "type",
    "unit",
    "volume",
    "user_id",
    "user_name",
    "project_id",
    "project_name",
    "resource_id",
    "timestamp_us",
    "monotonic_time",
    "resource_metadata.key",
    "resource_metadata.value",
    "source",
)
"""Columns the sink inserts, in order. ``timestamp`` and ``inserted_at`` are filled by the server."""

ROLLUP_TABLES = {"1m": ("rollups_1m", 60), "1h": ("rollups_1h", 3600)}
"""Rollup resolution -> (table, bucket width in seconds)."""

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ServerVersion:
    """A ClickHouse version, e.g. ``ServerVersion(18, 16)``."""

    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> ServerVersion:
        """Parse ``SELECT version()`` output such as ``18.16.1`` or ``26.9.1.1``.

        Raises:
            ValueError: not a dotted version.
        """
        m = re.match(r"^(\d+)\.(\d+)", text.strip())
        if not m:
            raise ValueError(f"unrecognised ClickHouse version {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def has_datetime64(self) -> bool:
        """DateTime64 arrived in ClickHouse 20.1."""
        return (self.major, self.minor) >= (20, 1)

    @property
    def has_low_cardinality(self) -> bool:
        """LowCardinality is usable without experimental settings from 19.0."""
        return self.major >= 19

    @property
    def has_codecs(self) -> bool:
        """Column codecs arrived in 19.1 (Delta, ZSTD); Gorilla and DoubleDelta in 19.3."""
        return (self.major, self.minor) >= (19, 3)

    @property
    def has_ttl(self) -> bool:
        """Table TTL arrived in 19.6."""
        return (self.major, self.minor) >= (19, 6)

    @property
    def has_sql_users(self) -> bool:
        """``CREATE USER`` (SQL-driven access control) arrived in 20.4; before, users live in users.xml."""
        return (self.major, self.minor) >= (20, 4)


def quote_ident(name: str) -> str:
    """Return ``name`` if it is a plain identifier.

    Raises:
        ValueError: anything else (we never build DDL from arbitrary text).
    """
    if not _IDENT.match(name):
        raise ValueError(f"invalid ClickHouse identifier {name!r}")
    return name


@dataclass(frozen=True)
class Dialect:
    """Type, codec and TTL choices for one server version.

    Args:
        version: the server's version.
        retention_days: raw data and 1-minute rollups older than this are
            deleted by TTL where the server has TTL; 0 keeps everything.
    """

    version: ServerVersion
    retention_days: int = 0

    @property
    def lc(self) -> str:
        return "LowCardinality(String)" if self.version.has_low_cardinality else "String"

    def codec(self, spec: str) -> str:
        """`` CODEC(spec)`` on servers with codecs, else nothing."""
        return f" CODEC({spec})" if self.version.has_codecs else ""

    def ts_expr(self, column: str = "timestamp_us") -> str:
        """Expression converting microseconds in ``column`` to this version's time type."""
        if self.version.has_datetime64:
            return f"fromUnixTimestamp64Micro({column}, 'UTC')"
        return f"toDateTime(intDiv({column}, 1000000), 'UTC')"

    def ts_from_us(self, column: str = "timestamp_us") -> str:
        """Type and DEFAULT of a time column derived from microseconds in ``column``."""
        kind = "DateTime64(6, 'UTC')" if self.version.has_datetime64 else "DateTime('UTC')"
        return f"{kind} DEFAULT {self.ts_expr(column)}"

    def ttl(self, column: str, days: int | None = None) -> str:
        """A TTL clause on ``column`` (a DateTime), or nothing (no TTL support, or keep forever)."""
        days = self.retention_days if days is None else days
        if not days or not self.version.has_ttl:
            return ""
        return f"\nTTL toDateTime({column}) + INTERVAL {int(days)} DAY"


def samples_ddl(database: str, dialect: Dialect | ServerVersion) -> str:
    """``CREATE TABLE IF NOT EXISTS <database>.samples`` (migration 1)."""
    d = dialect if isinstance(dialect, Dialect) else Dialect(dialect)
    db, lc = quote_ident(database), d.lc
    return f"""
CREATE TABLE IF NOT EXISTS {db}.samples
(
    message_id String{d.codec("ZSTD(1)")},
    name {lc},
    type {lc},
    unit {lc},
    volume Float64{d.codec("Gorilla, ZSTD(1)")},
    user_id Nullable(String),
    user_name Nullable(String),
    project_id Nullable(String),
    project_name Nullable(String),
    resource_id String{d.codec("ZSTD(1)")},
    timestamp_us Int64{d.codec("Delta, ZSTD(1)")},
    timestamp {d.ts_from_us()}{d.codec("Delta, ZSTD(1)")},
    monotonic_time Nullable(Float64),
    resource_metadata Nested(key String, value String),
    source {lc},
    inserted_at DateTime DEFAULT now(){d.codec("Delta, ZSTD(1)")}
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(timestamp)
ORDER BY (name, resource_id, timestamp_us, message_id){d.ttl("timestamp")}
"""


def resources_ddl(database: str, d: Dialect) -> list[str]:
    """``resources`` (latest row per resource wins by ``timestamp_us``) and its view (migration 2)."""
    db = quote_ident(database)
    return [f"""
CREATE TABLE IF NOT EXISTS {db}.resources
(
    resource_id String,
    project_id String,
    project_name String,
    user_id String,
    user_name String,
    source {d.lc},
    timestamp_us Int64,
    last_seen {d.ts_from_us()},
    metadata_keys Array(String),
    metadata_values Array(String)
)
ENGINE = ReplacingMergeTree(timestamp_us)
ORDER BY resource_id
""", f"""
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.resources_mv TO {db}.resources AS
SELECT
    resource_id,
    ifNull(project_id, '') AS project_id,
    ifNull(project_name, '') AS project_name,
    ifNull(user_id, '') AS user_id,
    ifNull(user_name, '') AS user_name,
    source,
    timestamp_us,
    {d.ts_expr()} AS last_seen,
    resource_metadata.key AS metadata_keys,
    resource_metadata.value AS metadata_values
FROM {db}.samples
ORDER BY resource_id, timestamp_us DESC
LIMIT 1 BY resource_id
"""]


def rollup_ddl(database: str, d: Dialect, resolution: str) -> list[str]:
    """A rollup table and the view that fills it from ``samples`` (migration 3).

    The bucket is ``intDiv(timestamp_us, width)`` in whole seconds, the same
    expression on every server version.
    """
    db = quote_ident(database)
    table, width = ROLLUP_TABLES[resolution]
    ttl = d.ttl("bucket") if resolution == "1m" else ""
    return [f"""
CREATE TABLE IF NOT EXISTS {db}.{table}
(
    name {d.lc},
    unit {d.lc},
    project_id String,
    resource_id String,
    bucket DateTime('UTC'){d.codec("DoubleDelta, ZSTD(1)")},
    min AggregateFunction(min, Float64),
    max AggregateFunction(max, Float64),
    avg AggregateFunction(avg, Float64),
    sum AggregateFunction(sum, Float64),
    count AggregateFunction(count),
    last AggregateFunction(argMax, Float64, Int64)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(bucket)
ORDER BY (name, unit, project_id, resource_id, bucket){ttl}
""", f"""
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{table}_mv TO {db}.{table} AS
SELECT
    name,
    unit,
    ifNull(project_id, '') AS project_id,
    resource_id,
    toDateTime(intDiv(timestamp_us, {width * 1_000_000}) * {width}, 'UTC') AS bucket,
    minState(volume) AS min,
    maxState(volume) AS max,
    avgState(volume) AS avg,
    sumState(volume) AS sum,
    countState() AS count,
    argMaxState(volume, timestamp_us) AS last
FROM {db}.samples
GROUP BY name, unit, project_id, resource_id, bucket
"""]


def alarm_history_ddl(database: str, d: Dialect) -> str:
    """``alarm_history``: one row per alarm state transition (migration 4).

    ``event_id`` is the transition's id (deterministic in the evaluator), so a
    redelivered transition collapses like a sample does.
    """
    db = quote_ident(database)
    return f"""
CREATE TABLE IF NOT EXISTS {db}.alarm_history
(
    event_id String,
    alarm_id String,
    alarm_name String,
    type {d.lc},
    severity {d.lc},
    project_id String,
    resource_id String,
    previous_state {d.lc},
    state {d.lc},
    reason String,
    reason_data String,
    timestamp_us Int64,
    timestamp {d.ts_from_us()}
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(timestamp)
ORDER BY (alarm_id, timestamp_us, event_id)
"""


def pipeline_health_ddl(database: str, d: Dialect) -> list[str]:
    """``sink_flushes`` and ``dead_letters`` (migration 5)."""
    db = quote_ident(database)
    return [f"""
CREATE TABLE IF NOT EXISTS {db}.sink_flushes
(
    flushed_at_us Int64,
    flushed_at {d.ts_from_us("flushed_at_us")},
    host String,
    rows UInt32,
    duplicates UInt32,
    seconds Float64,
    lag_seconds Float64
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(flushed_at)
ORDER BY flushed_at_us{d.ttl("flushed_at", 30 if d.retention_days else 0)}
""", f"""
CREATE TABLE IF NOT EXISTS {db}.dead_letters
(
    timestamp_us Int64,
    timestamp {d.ts_from_us()},
    stage {d.lc},
    reason {d.lc},
    detail String,
    topic String,
    partition Int32,
    offset Int64,
    key String
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(timestamp)
ORDER BY (topic, partition, offset)
"""]


EVENT_COLUMNS = (
    "message_id",
    "event_type",
    "generated_us",
    "traits.key",
    "traits.dtype",
    "traits.value",
    "raw",
    "source_topic",
    "source_partition",
    "source_offset",
)
"""Columns the Ceilometer bridge inserts into ``events``, in order."""


def events_ddl(database: str, d: Dialect) -> str:
    """``events``: Ceilometer events, one row per event (migration 7).

    ``generated_us`` (Int64, µs since the epoch, UTC) is exact; ``generated``
    is derived from it like ``samples.timestamp``. ``traits`` is
    ``Nested(key, dtype, value)``: Ceilometer's trait name, dtype code (0 none,
    1 string, 2 integer, 3 float, 4 datetime) and value as text. ``raw`` is the
    original notification as JSON text when Ceilometer stores it (``[event]
    store_raw``), else ''. ``source_*`` is the Kafka position the event was read
    from. ``ReplacingMergeTree``: a replayed event (same key) collapses at merge
    time, and the bridge skips events already stored before inserting.
    """
    db = quote_ident(database)
    return f"""
CREATE TABLE IF NOT EXISTS {db}.events
(
    message_id String{d.codec("ZSTD(1)")},
    event_type {d.lc},
    generated_us Int64{d.codec("Delta, ZSTD(1)")},
    generated {d.ts_from_us("generated_us")},
    traits Nested(key String, dtype UInt8, value String),
    raw String{d.codec("ZSTD(3)")},
    source_topic {d.lc},
    source_partition Int32,
    source_offset Int64,
    inserted_at DateTime DEFAULT now()
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(generated)
ORDER BY (event_type, generated_us, message_id){d.ttl("generated")}
"""


def server_version(client) -> ServerVersion:
    """Ask the server its version (``client``: a clickhouse-driver Client or a storage Connection)."""
    return ServerVersion.parse(client.execute("SELECT version()")[0][0])


def migrate(client, database: str, retention_days: int = 0) -> list[str]:
    """Apply every pending migration to ``database``; return its table names. Idempotent.

    ``client`` is a clickhouse-driver ``Client`` or a
    :class:`~streams.storage.backend.Connection`. See
    :func:`streams.storage.migrations.apply` for the full contract.

    Raises:
        clickhouse_driver.errors.Error, StorageError: the engine refused a statement.
    """
    from streams.storage.migrations import apply, as_connection

    conn = as_connection(client, database)
    apply(conn, retention_days=retention_days)
    return sorted(r[0] for r in conn.execute(f"SHOW TABLES FROM {quote_ident(database)}"))
