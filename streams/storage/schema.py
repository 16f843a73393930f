"""ClickHouse schema: the ``samples`` table, with DDL chosen by server version.

One set of columns and queries works on ClickHouse 18.16 (Debian's server)
and on current releases; only the column *types* differ:

============  =========================  ===========================
column        current ClickHouse          18.16
============  =========================  ===========================
timestamp     DateTime64(6, 'UTC')        DateTime('UTC') (seconds)
name, unit,   LowCardinality(String)      String
type, source
============  =========================  ===========================

``timestamp_us`` (Int64, microseconds since the epoch, UTC) is the exact time
on every version; ``timestamp`` is derived from it by the server (a DEFAULT
expression), so inserts send integers only and Grafana gets a time column.

Rows are idempotent: the engine is ``ReplacingMergeTree`` ordered by
``(name, resource_id, timestamp_us, message_id)``, so a sample redelivered by
Kafka after a crash collapses into one row at merge time. Until a merge runs,
exact counts use ``FINAL`` or ``uniqExact(message_id)``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from clickhouse_driver import Client

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

    @property
    def has_datetime64(self) -> bool:
        """DateTime64 arrived in ClickHouse 20.1."""
        return (self.major, self.minor) >= (20, 1)

    @property
    def has_low_cardinality(self) -> bool:
        """LowCardinality is usable without experimental settings from 19.0."""
        return self.major >= 19


def quote_ident(name: str) -> str:
    """Return ``name`` if it is a plain identifier.

    Raises:
        ValueError: anything else (we never build DDL from arbitrary text).
    """
    if not _IDENT.match(name):
        raise ValueError(f"invalid ClickHouse identifier {name!r}")
    return name


def samples_ddl(database: str, version: ServerVersion) -> str:
    """``CREATE TABLE IF NOT EXISTS <database>.samples`` for ``version``."""
    db = quote_ident(database)
    lc = "LowCardinality(String)" if version.has_low_cardinality else "String"
    if version.has_datetime64:
        ts = "DateTime64(6, 'UTC') DEFAULT fromUnixTimestamp64Micro(timestamp_us, 'UTC')"
    else:
        ts = "DateTime('UTC') DEFAULT toDateTime(intDiv(timestamp_us, 1000000), 'UTC')"
    return f"""
CREATE TABLE IF NOT EXISTS {db}.samples
(
    message_id String,
    name {lc},
    type {lc},
    unit {lc},
    volume Float64,
    user_id Nullable(String),
    user_name Nullable(String),
    project_id Nullable(String),
    project_name Nullable(String),
    resource_id String,
    timestamp_us Int64,
    timestamp {ts},
    monotonic_time Nullable(Float64),
    resource_metadata Nested(key String, value String),
    source {lc},
    inserted_at DateTime DEFAULT now()
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(timestamp)
ORDER BY (name, resource_id, timestamp_us, message_id)
"""


def server_version(client: Client) -> ServerVersion:
    """Ask the server its version."""
    return ServerVersion.parse(client.execute("SELECT version()")[0][0])


def migrate(client: Client, database: str) -> list[str]:
    """Create ``database`` and its tables if missing. Idempotent.

    Returns:
        the names of tables that exist afterwards.

    Raises:
        clickhouse_driver.errors.Error: the server refused a statement.
    """
    version = server_version(client)
    db = quote_ident(database)
    client.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
    client.execute(samples_ddl(database, version))
    log.info("schema of %s is current (ClickHouse %d.%d)", db, version.major, version.minor)
    return [r[0] for r in client.execute(f"SHOW TABLES FROM {db}")]
