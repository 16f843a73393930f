"""ClickHouse schema: every table's and view's DDL, in one place, for one server or a cluster.

One set of columns and queries works on ClickHouse 18.16 (Debian's server)
and on current releases (proved on chdb, ClickHouse 26.x in-process); only
column *types*, codecs and TTL differ (:class:`~streams.storage.dialect.Dialect`):

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

Where tables live is a :class:`Layout`. On one server, each table is a
``*MergeTree`` under its own name. In a cluster (``clickhouse.cluster``), each
table is a ``Replicated*MergeTree`` named ``<table>_local`` on every node (ZooKeeper
path ``<zookeeper_path>/tables/{shard}/<db>/<table>``, replica ``{replica}``: the
servers' macros), plus a ``Distributed`` table under the plain name that reads
every shard and routes inserts by :attr:`Table.shard_key`. Materialized views sit
on every node, from local table to local table. So queries and Grafana read the
same names in both layouts.

Tables (all in one database; see docs/storage.md):

``samples``
    raw samples, ``ReplacingMergeTree`` ordered by
    ``(name, resource_id, timestamp_us, message_id)``: a redelivered sample
    collapses at merge time; until then exact counts use ``FINAL`` or
    ``uniqExact(message_id)``. Sharded by ``halfMD5(resource_id)``
    (:data:`RESOURCE_SHARD_KEY`), as the sink routes rows.
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
``schema_migrations``
    which migrations this server applied; always local to each server, never
    replicated, so ``streams schema status`` is right on every node.
``events``
    Ceilometer events (audit and billing; Panko's job), written by the
    Ceilometer bridge, ``ReplacingMergeTree`` by ``(event_type,
    generated_us, message_id)`` so a replayed event collapses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from streams.storage.dialect import Dialect, ServerVersion, quote_ident

__all__ = ["SAMPLE_COLUMNS", "ROLLUP_TABLES", "RESOURCE_SHARD_KEY", "Dialect", "Layout", "ServerVersion", "Table",
           "Target", "quote_ident"]

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

RESOURCE_SHARD_KEY = "halfMD5(resource_id)"
"""Sharding expression of every table keyed by resource: the first 8 bytes of
MD5(resource_id), big-endian, as UInt64 (the same on 18.16 and current servers),
so :func:`streams.storage.cluster.shard_hash` computes it in Python."""


@dataclass(frozen=True)
class Layout:
    """Where the tables live.

    Args:
        cluster: ``None`` for one server; else the cluster's name in the servers'
            ``remote_servers`` (``clickhouse.cluster``).
        zookeeper_path: root of the Replicated tables' znodes (``clickhouse.zookeeper_path``),
            relative to the servers' ZooKeeper chroot if they have one.
    """

    cluster: str | None = None
    zookeeper_path: str = "/streams/clickhouse"

    def local(self, table: str) -> str:
        """Name of the table that holds the rows on a node: ``<table>_local`` in a cluster."""
        return f"{table}_local" if self.cluster else table


@dataclass(frozen=True)
class Target:
    """What DDL is rendered for: a database, a server version's dialect and a layout."""

    database: str
    dialect: Dialect
    layout: Layout = Layout()

    @property
    def db(self) -> str:
        return quote_ident(self.database)


@dataclass(frozen=True)
class Table:
    """One table, independent of layout: columns (SQL), MergeTree family, keys.

    ``engine`` is the non-replicated name (``ReplacingMergeTree``, ``AggregatingMergeTree``,
    ``MergeTree``); ``engine_args`` its parameters (e.g. the version column);
    ``shard_key`` the ``Distributed`` sharding expression in a cluster.
    """

    name: str
    columns: str
    engine: str
    order_by: str
    engine_args: str = ""
    partition_by: str = ""
    ttl: str = ""
    shard_key: str = "rand()"

    def ddl(self, t: Target) -> list[str]:
        """``CREATE TABLE IF NOT EXISTS`` statements for ``t``: one table, or in a cluster the
        replicated local table and the ``Distributed`` table over it."""
        db, lay = t.db, t.layout
        engine = f"{self.engine}({self.engine_args})"
        if lay.cluster:
            zk = f"{lay.zookeeper_path.rstrip('/')}/tables/{{shard}}/{t.database}/{self.name}"
            args = ", ".join(a for a in (f"'{zk}'", "'{replica}'", self.engine_args) if a)
            engine = f"Replicated{self.engine}({args})"
        partition = f"\nPARTITION BY {self.partition_by}" if self.partition_by else ""
        stmts = [f"CREATE TABLE IF NOT EXISTS {db}.{lay.local(self.name)}\n(\n{self.columns}\n)\n"
                 f"ENGINE = {engine}{partition}\nORDER BY {self.order_by}{self.ttl}\n"]
        if lay.cluster:
            stmts.append(f"CREATE TABLE IF NOT EXISTS {db}.{self.name} AS {db}.{lay.local(self.name)}\n"
                         f"ENGINE = Distributed({quote_ident(lay.cluster)}, {db}, {lay.local(self.name)}, "
                         f"{self.shard_key})\n")
        return stmts


def view_ddl(t: Target, name: str, target: str, select: Callable[[str], str]) -> str:
    """``CREATE MATERIALIZED VIEW IF NOT EXISTS <db>.<name> TO <target>``; ``select(samples)``
    gets the name of the table the rows land in on this node (local in a cluster)."""
    db, lay = t.db, t.layout
    source = f"{db}.{lay.local('samples')}"
    return f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{name} TO {db}.{lay.local(target)} AS\n{select(source)}"


# --------------------------------------------------------------------------- tables


def samples_table(d: Dialect) -> Table:
    """Raw samples (migration 1)."""
    lc = d.lc
    return Table("samples", f"""    message_id String{d.codec("ZSTD(1)")},
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
    inserted_at DateTime DEFAULT now(){d.codec("Delta, ZSTD(1)")}""",
                 "ReplacingMergeTree", "(name, resource_id, timestamp_us, message_id)",
                 partition_by="toYYYYMM(timestamp)", ttl=d.ttl("timestamp"), shard_key=RESOURCE_SHARD_KEY)


def samples(t: Target) -> list[str]:
    """``samples`` (migration 1)."""
    return samples_table(t.dialect).ddl(t)


def resources(t: Target) -> list[str]:
    """``resources`` (latest row per resource wins by ``timestamp_us``) and its view (migration 2)."""
    d = t.dialect
    table = Table("resources", f"""    resource_id String,
    project_id String,
    project_name String,
    user_id String,
    user_name String,
    source {d.lc},
    timestamp_us Int64,
    last_seen {d.ts_from_us()},
    metadata_keys Array(String),
    metadata_values Array(String)""", "ReplacingMergeTree", "resource_id", engine_args="timestamp_us",
                  shard_key=RESOURCE_SHARD_KEY)
    return [*table.ddl(t), view_ddl(t, "resources_mv", "resources", lambda src: f"""SELECT
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
FROM {src}
ORDER BY resource_id, timestamp_us DESC
LIMIT 1 BY resource_id
""")]


def rollup(t: Target, resolution: str) -> list[str]:
    """A rollup table and the view that fills it from ``samples`` (migration 3).

    The bucket is ``intDiv(timestamp_us, width)`` in whole seconds, the same
    expression on every server version.
    """
    d = t.dialect
    name, width = ROLLUP_TABLES[resolution]
    table = Table(name, f"""    name {d.lc},
    unit {d.lc},
    project_id String,
    resource_id String,
    bucket DateTime('UTC'){d.codec("DoubleDelta, ZSTD(1)")},
    min AggregateFunction(min, Float64),
    max AggregateFunction(max, Float64),
    avg AggregateFunction(avg, Float64),
    sum AggregateFunction(sum, Float64),
    count AggregateFunction(count),
    last AggregateFunction(argMax, Float64, Int64)""", "AggregatingMergeTree",
                  "(name, unit, project_id, resource_id, bucket)", partition_by="toYYYYMM(bucket)",
                  ttl=d.ttl("bucket") if resolution == "1m" else "", shard_key=RESOURCE_SHARD_KEY)
    return [*table.ddl(t), view_ddl(t, f"{name}_mv", name, lambda src: f"""SELECT
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
FROM {src}
GROUP BY name, unit, project_id, resource_id, bucket
""")]


def rollups(t: Target) -> list[str]:
    """``rollups_1m`` and ``rollups_1h`` with their views (migration 3)."""
    return rollup(t, "1m") + rollup(t, "1h")


def alarm_history(t: Target) -> list[str]:
    """``alarm_history``: one row per alarm state transition (migration 4).

    ``event_id`` is the transition's id (deterministic in the evaluator), so a
    redelivered transition collapses like a sample does; one alarm's history
    stays on one shard.
    """
    d = t.dialect
    return Table("alarm_history", f"""    event_id String,
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
    timestamp {d.ts_from_us()}""", "ReplacingMergeTree", "(alarm_id, timestamp_us, event_id)",
                 partition_by="toYYYYMM(timestamp)", shard_key="halfMD5(alarm_id)").ddl(t)


def pipeline_health(t: Target) -> list[str]:
    """``sink_flushes`` and ``dead_letters`` (migration 5)."""
    d = t.dialect
    flushes = Table("sink_flushes", f"""    flushed_at_us Int64,
    flushed_at {d.ts_from_us("flushed_at_us")},
    host String,
    rows UInt32,
    duplicates UInt32,
    seconds Float64,
    lag_seconds Float64""", "MergeTree", "flushed_at_us", partition_by="toYYYYMM(flushed_at)",
                    ttl=d.ttl("flushed_at", 30 if d.retention_days else 0))
    letters = Table("dead_letters", f"""    timestamp_us Int64,
    timestamp {d.ts_from_us()},
    stage {d.lc},
    reason {d.lc},
    detail String,
    topic String,
    partition Int32,
    offset Int64,
    key String""", "ReplacingMergeTree", "(topic, partition, offset)", partition_by="toYYYYMM(timestamp)",
                    shard_key="cityHash64(topic, partition, offset)")
    return flushes.ddl(t) + letters.ddl(t)


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


def events(t: Target) -> list[str]:
    """``events``: Ceilometer events, one row per event (migration 7).

    ``generated_us`` (Int64, µs since the epoch, UTC) is exact; ``generated``
    is derived from it like ``samples.timestamp``. ``traits`` is
    ``Nested(key, dtype, value)``: Ceilometer's trait name, dtype code (0 none,
    1 string, 2 integer, 3 float, 4 datetime) and value as text. ``raw`` is the
    original notification as JSON text when Ceilometer stores it (``[event]
    store_raw``), else ''. ``source_*`` is the Kafka position the event was read
    from. ``ReplacingMergeTree``: a replayed event (same key) collapses at merge
    time, and the bridge skips events already stored before inserting. In a
    cluster, an event's copies meet on one shard (sharded by ``message_id``).
    """
    d = t.dialect
    return Table("events", f"""    message_id String{d.codec("ZSTD(1)")},
    event_type {d.lc},
    generated_us Int64{d.codec("Delta, ZSTD(1)")},
    generated {d.ts_from_us("generated_us")},
    traits Nested(key String, dtype UInt8, value String),
    raw String{d.codec("ZSTD(3)")},
    source_topic {d.lc},
    source_partition Int32,
    source_offset Int64,
    inserted_at DateTime DEFAULT now()""", "ReplacingMergeTree", "(event_type, generated_us, message_id)",
                 partition_by="toYYYYMM(generated)", ttl=d.ttl("generated"),
                 shard_key="halfMD5(message_id)").ddl(t)


def schema_migrations(database: str) -> list[str]:
    """The database and the migrations' own record, local to the server it is run on."""
    db = quote_ident(database)
    return [f"CREATE DATABASE IF NOT EXISTS {db}", f"""
CREATE TABLE IF NOT EXISTS {db}.schema_migrations
(
    version UInt32,
    name String,
    applied_at DateTime('UTC') DEFAULT now(),
    server_version String,
    host String,
    note String
)
ENGINE = ReplacingMergeTree()
ORDER BY version
"""]


# Single-server shorthands (the DDL of one server, as the tests and older callers know it).

def samples_ddl(database: str, dialect: Dialect | ServerVersion) -> str:
    """``CREATE TABLE IF NOT EXISTS <database>.samples`` on one server."""
    d = dialect if isinstance(dialect, Dialect) else Dialect(dialect)
    return samples(Target(database, d))[0]
