"""Numbered schema migrations: their order, and the record of what each server applied.

The DDL itself comes from :mod:`streams.storage.schema`; a :class:`Migration`
only names which of it makes step N. :func:`apply` runs the pending ones in
order and records each in ``<db>.schema_migrations`` after all its statements
succeeded; a crash in the middle leaves it pending, and the next run repeats
it harmlessly (every statement is ``IF NOT EXISTS``). ``streams schema
migrate`` calls :func:`apply` under the ZooKeeper leader lock
``schema-migrate`` when coordination is configured, so two deployers never
interleave DDL.

In a cluster (:class:`~streams.storage.schema.Layout` with a cluster name),
:func:`apply` runs **node by node** over every server that ``system.clusters``
lists for the cluster, and each node records its own migrations in its own
(local, not replicated) ``schema_migrations``: so :func:`status` is right on
every node, a node that is down fails the run naming it (the others keep what
they applied), and the next run completes it. ``ON CLUSTER`` would work on
18.16 too, but waits ``distributed_ddl_task_timeout`` (180 s) for a dead node
and leaves its DDL queued behind the record; node by node is the same code on
every server version.

Numbers are forever: never edit an applied migration; add a new one.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from streams.storage import schema
from streams.storage.backend import Connection, ServerConnection
from streams.storage.cluster import cluster_nodes
from streams.storage.dialect import Dialect, ServerVersion, quote_ident
from streams.storage.schema import Layout, Target

log = logging.getLogger(__name__)

SINGLE = Layout()
"""One server, no cluster (the default)."""


@dataclass(frozen=True)
class Migration:
    """One numbered step. ``statements(target)`` returns SQL, or a string starting with
    ``skip:`` explaining why nothing is needed on this engine."""

    version: int
    name: str
    statements: Callable[[Target], list[str] | str] = field(repr=False)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "samples", schema.samples),
    Migration(2, "resources", schema.resources),
    Migration(3, "rollups_1m_1h", schema.rollups),
    Migration(4, "alarm_history", schema.alarm_history),
    Migration(5, "pipeline_health", schema.pipeline_health),
    Migration(6, "grafana_readonly_user",
              lambda t: "skip: the read-only user is managed on every migrate (streams.storage.access)"),
    Migration(7, "events", schema.events),
)
"""All migrations, in order."""


@dataclass(frozen=True)
class MigrationState:
    """One line of ``streams schema status``; ``node`` is ``host:port`` in a cluster, else ''."""

    version: int
    name: str
    applied_at: str | None  # "YYYY-MM-DD hh:mm:ss" UTC, None = pending
    note: str = ""
    node: str = ""


def nodes(conn: Connection, layout: Layout) -> list[tuple[str, Connection]]:
    """``('', conn)`` on one server; ``(host:port, connection)`` per node of the cluster
    (the caller closes those that are not ``conn``)."""
    if not layout.cluster:
        return [("", conn)]
    if not isinstance(conn, ServerConnection):
        raise ValueError("a cluster needs a ClickHouse server connection")
    return [(f"{host}:{port}", conn.to_node(host, port)) for host, port in cluster_nodes(conn, layout.cluster)]


def _node_status(conn: Connection, node: str) -> list[MigrationState]:
    for sql in schema.schema_migrations(conn.database):
        conn.execute(sql)
    db = quote_ident(conn.database)
    applied = {v: (str(t), note) for v, t, note in conn.execute(
        f"SELECT version, toString(min(applied_at)), any(note) FROM {db}.schema_migrations GROUP BY version")}
    return [MigrationState(m.version, m.name, *(applied.get(m.version) or (None, "")), node=node)
            for m in MIGRATIONS]


def status(conn: Connection, layout: Layout = SINGLE) -> list[MigrationState]:
    """Applied and pending migrations, in order, of the server (or of every node of the cluster,
    node by node); creates the database and the record table where missing.

    Raises:
        clickhouse_driver.errors.Error: a node is unreachable.
    """
    out: list[MigrationState] = []
    for node, c in nodes(conn, layout):
        try:
            out += _node_status(c, node)
        finally:
            if c is not conn:
                c.close()
    return out


def _apply_node(conn: Connection, node: str, options: Options) -> list[MigrationState]:
    dialect = Dialect(conn.version, options.retention_days)
    target = Target(conn.database, dialect, options.layout)
    db = quote_ident(conn.database)
    done = []
    for state in _node_status(conn, node):
        if state.applied_at is not None:
            continue
        m = MIGRATIONS[state.version - 1]
        stmts = m.statements(target)
        note = ""
        if isinstance(stmts, str):
            note, stmts = stmts, []
        for sql in stmts:
            conn.execute(sql)
        conn.insert_columns(f"{db}.schema_migrations", ("version", "name", "server_version", "host", "note"),
                            [[m.version], [m.name], [str(dialect.version)], [socket.gethostname()], [note]])
        log.info("applied migration %d %s to %s%s%s", m.version, m.name, db, f" on {node}" if node else "",
                 f" ({note})" if note else "")
        done.append(MigrationState(m.version, m.name, "now", note, node))
    return done


@dataclass(frozen=True)
class Options:
    """Deployment choices that shape DDL: retention and where tables live."""

    retention_days: int = 0
    layout: Layout = SINGLE


def apply(conn: Connection, retention_days: int = 0, layout: Layout = SINGLE) -> list[MigrationState]:
    """Apply pending migrations in order (on every node of a cluster, node by node);
    return the states of those applied now.

    Raises:
        clickhouse_driver.errors.Error, StorageError: a statement was refused or a
            node is unreachable; that migration stays pending there (earlier ones
            and other nodes keep theirs).
    """
    options = Options(retention_days, layout)
    done: list[MigrationState] = []
    for node, c in nodes(conn, layout):
        try:
            done += _apply_node(c, node, options)
        finally:
            if c is not conn:
                c.close()
    return done


def server_version(client) -> ServerVersion:
    """Ask the server its version (``client``: a clickhouse-driver Client or a storage Connection)."""
    return ServerVersion.parse(client.execute("SELECT version()")[0][0])


def migrate(client, database: str, retention_days: int = 0, layout: Layout = SINGLE) -> list[str]:
    """Apply every pending migration to ``database``; return its table names. Idempotent.

    ``client`` is a clickhouse-driver ``Client`` or a
    :class:`~streams.storage.backend.Connection`; see :func:`apply`.

    Raises:
        clickhouse_driver.errors.Error, StorageError: the engine refused a statement.
    """
    conn = client if isinstance(client, Connection) else ServerConnection.from_client(client, database)
    apply(conn, retention_days=retention_days, layout=layout)
    return sorted(r[0] for r in conn.execute(f"SHOW TABLES FROM {quote_ident(database)}"))
