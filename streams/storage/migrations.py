"""Numbered schema migrations, recorded in ``<db>.schema_migrations``.

Each :class:`Migration` is a list of idempotent statements (``IF NOT EXISTS``)
rendered for the server's version (:class:`~streams.storage.schema.Dialect`).
:func:`apply` runs the pending ones in order and records each after all its
statements succeeded; a crash in the middle leaves it pending, and the next
run repeats it harmlessly. ``streams schema migrate`` calls :func:`apply`
under the ZooKeeper leader lock ``schema-migrate`` when coordination is
configured, so two deployers never interleave DDL.

Numbers are forever: never edit an applied migration; add a new one.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from streams.storage.backend import Connection, ServerConnection
from streams.storage.schema import (
    Dialect,
    alarm_history_ddl,
    events_ddl,
    pipeline_health_ddl,
    quote_ident,
    resources_ddl,
    rollup_ddl,
    samples_ddl,
)

log = logging.getLogger(__name__)

GRAFANA_USER = "grafana"
"""The read-only user Grafana connects as (users.xml on 18.16, ``CREATE USER`` on >= 20.4)."""


@dataclass(frozen=True)
class Options:
    """Deployment choices that shape DDL: retention and the Grafana user's password."""

    retention_days: int = 0
    readonly_password: str = ""


@dataclass(frozen=True)
class Migration:
    """One numbered step. ``statements(conn, dialect, options)`` returns SQL, or a
    string starting with ``skip:`` explaining why this engine needs nothing."""

    version: int
    name: str
    statements: Callable[[Connection, Dialect, Options], list[str] | str] = field(repr=False)


def _readonly_user(conn: Connection, d: Dialect, o: Options) -> list[str] | str:
    if conn.embedded:
        return "skip: chdb has no users (in-process, no network)"
    if not d.version.has_sql_users:
        return f"skip: ClickHouse {d.version} has no SQL users; user {GRAFANA_USER!r} is in users.xml"
    db = quote_ident(conn.database)
    # sha256 of the password is sent, never the password in the query log.
    import hashlib

    digest = hashlib.sha256(o.readonly_password.encode()).hexdigest()
    return [
        f"CREATE USER IF NOT EXISTS {GRAFANA_USER} IDENTIFIED WITH sha256_hash BY '{digest}' "
        "SETTINGS readonly = 2",
        f"GRANT SELECT ON {db}.* TO {GRAFANA_USER}",
    ]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "samples", lambda c, d, o: [samples_ddl(c.database, d)]),
    Migration(2, "resources", lambda c, d, o: resources_ddl(c.database, d)),
    Migration(3, "rollups_1m_1h", lambda c, d, o: rollup_ddl(c.database, d, "1m") + rollup_ddl(c.database, d, "1h")),
    Migration(4, "alarm_history", lambda c, d, o: [alarm_history_ddl(c.database, d)]),
    Migration(5, "pipeline_health", lambda c, d, o: pipeline_health_ddl(c.database, d)),
    Migration(6, "grafana_readonly_user", _readonly_user),
    Migration(7, "events", lambda c, d, o: [events_ddl(c.database, d)]),
)
"""All migrations, in order."""


@dataclass(frozen=True)
class MigrationState:
    """One line of ``streams schema status``."""

    version: int
    name: str
    applied_at: str | None  # "YYYY-MM-DD hh:mm:ss" UTC, None = pending
    note: str = ""


def as_connection(client, database: str) -> Connection:
    """Wrap a clickhouse-driver ``Client`` as a :class:`Connection` (a Connection passes through)."""
    if isinstance(client, Connection):
        return client
    conn = ServerConnection.__new__(ServerConnection)
    conn.database, conn.client, conn._version = database, client, None
    return conn


def _ensure_table(conn: Connection) -> None:
    db = quote_ident(conn.database)
    conn.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
    conn.execute(f"""
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
""")


def status(conn: Connection) -> list[MigrationState]:
    """Applied and pending migrations, in order (creates the database and table if missing)."""
    _ensure_table(conn)
    db = quote_ident(conn.database)
    applied = {v: (str(t), note) for v, t, note in conn.execute(
        f"SELECT version, toString(min(applied_at)), any(note) FROM {db}.schema_migrations GROUP BY version")}
    return [MigrationState(m.version, m.name, *(applied.get(m.version) or (None, ""))) for m in MIGRATIONS]


def apply(conn: Connection, retention_days: int = 0, readonly_password: str = "") -> list[MigrationState]:
    """Apply pending migrations in order; return the states of those applied now.

    Raises:
        clickhouse_driver.errors.Error, StorageError: a statement was refused;
            that migration stays pending (earlier ones are recorded).
    """
    options = Options(retention_days, readonly_password)
    dialect = Dialect(conn.version, retention_days)
    db = quote_ident(conn.database)
    done = []
    for state in status(conn):
        if state.applied_at is not None:
            continue
        m = MIGRATIONS[state.version - 1]
        stmts = m.statements(conn, dialect, options)
        note = ""
        if isinstance(stmts, str):
            note = stmts
            stmts = []
        for sql in stmts:
            conn.execute(sql)
        conn.insert_columns(f"{db}.schema_migrations", ("version", "name", "server_version", "host", "note"),
                            [[m.version], [m.name], [str(dialect.version)], [socket.gethostname()], [note]])
        log.info("applied migration %d %s to %s%s", m.version, m.name, db, f" ({note})" if note else "")
        done.append(MigrationState(m.version, m.name, "now", note))
    return done
