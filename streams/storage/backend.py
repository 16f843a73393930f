"""Storage connections chosen by URL scheme: a ClickHouse server or chdb in-process.

``clickhouse://user:password@host:port/database``
    A ClickHouse server over the native protocol (clickhouse-driver), port 9000 by default.
``clickhouses://user:password@host:port/database`` (or ``clickhouse://...?secure=true``)
    The same over TLS, port 9440 by default. The server's certificate is verified
    against ``ca_file`` (``clickhouse.ca_file``), else the system's CAs, and must
    name the host; there is no switch to turn verification off.
``chdb:///path/to/dir[/database]`` or ``chdb://relative/dir``
    ClickHouse 26.x embedded in this process (PyPI ``chdb``), data kept in a
    directory; no server needed. The database is ``streams`` unless the URL's
    query says otherwise (``chdb:///var/lib/streams?database=metering``).

Both speak through one small interface, :class:`Connection`: ``execute`` (SQL
with ``%(name)s`` parameters, rows as tuples), ``insert_columns`` (one
columnar INSERT) and ``existing_keys`` (which sample keys are already stored).
Queries, migrations and the sink are written once against it.

A chdb directory can be open in one process at a time (the engine takes a
lock on it), so the processor and ``streams query`` cannot share one while it
runs; a server has no such limit.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from streams.storage import native
from streams.storage.dialect import ServerVersion, quote_ident

log = logging.getLogger(__name__)

SCHEMES = ("clickhouse", "clickhouses", "chdb")
"""URL schemes with a storage backend."""

CHDB_INSTALL = "pip install 'chdb>=2.0'  (or: pip install 'streams-metering[chdb]')"


class Connection(abc.ABC):
    """One storage connection. Not thread-safe; one owner at a time.

    Attributes:
        database: the database this connection's tables live in.
        version: the engine's version (chooses DDL, see :mod:`streams.storage.schema`).
        embedded: True for chdb (no users, no network; one process per directory).
    """

    database: str
    embedded: bool = False

    @property
    @abc.abstractmethod
    def version(self) -> ServerVersion:
        """The engine's version (queried once)."""

    @abc.abstractmethod
    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        """Run ``sql`` (``%(name)s`` placeholders filled from ``params``); return rows as tuples.

        Raises:
            StorageError: the engine refused the statement (chdb), or
            clickhouse_driver.errors.Error (server).
        """

    @abc.abstractmethod
    def execute_with_names(self, sql: str) -> tuple[list[str], list[tuple]]:
        """Run a SELECT; return (column names, rows)."""

    @abc.abstractmethod
    def insert_columns(self, table: str, columns: Sequence[str], data: Sequence[list]) -> None:
        """One INSERT of ``data`` (one list per column, equal lengths) into ``table``."""

    @abc.abstractmethod
    def existing_keys(self, table: str, keys: Sequence[list]) -> set[str]:
        """``message_id`` of rows of ``table`` whose sort key is in ``keys``.

        ``keys`` is four columns: name, resource_id, timestamp_us, message_id
        (the ``samples`` ORDER BY), so the lookup uses the primary index.
        """

    def close(self) -> None:  # noqa: B027 (optional hook: chdb sessions stay open per process)
        """Release the connection (idempotent)."""


class StorageError(RuntimeError):
    """The embedded engine refused a statement (the server's errors are clickhouse_driver's)."""


_TRUE = ("1", "true", "yes", "on")


def is_secure(url: str) -> bool:
    """True for ``clickhouses://`` or ``?secure=true`` (also ``1``, ``yes``, ``on``)."""
    p = urlsplit(url)
    return p.scheme == "clickhouses" or (parse_qs(p.query).get("secure") or ["false"])[0].lower() in _TRUE


def client_kwargs(url: str, ca_file: str | None = None) -> dict[str, Any]:
    """Keyword arguments for :class:`clickhouse_driver.Client` from a server URL (database not selected).

    TLS (:func:`is_secure`) verifies the server's certificate and host name, against
    ``ca_file`` if given, else the system's CAs.
    """
    p = urlsplit(url)
    secure = is_secure(url)
    kw: dict[str, Any] = {"host": p.hostname, "port": p.port or (9440 if secure else 9000),
                          "user": unquote(p.username or "default"), "password": unquote(p.password or "")}
    if secure:
        kw.update(secure=True, verify=True)
        if ca_file:
            kw["ca_certs"] = ca_file
    return kw


class ServerConnection(Connection):
    """A ClickHouse server through clickhouse-driver (lazy: connects on first query).

    Args:
        settings: extra server settings for every query (e.g. ``insert_distributed_sync``).
    """

    def __init__(self, url: str, database: str | None = None, insert_block_size: int = 100_000,
                 send_receive_timeout: float = 60, ca_file: str | None = None,
                 settings: dict[str, Any] | None = None) -> None:
        p = urlsplit(url)
        self.database = database or p.path.strip("/") or "streams"
        self._kwargs = client_kwargs(url, ca_file)
        self._options = {"settings": {"insert_block_size": insert_block_size, **(settings or {})},
                         "connect_timeout": 5, "send_receive_timeout": send_receive_timeout}
        self.client = self._client(self._kwargs)
        self._version: ServerVersion | None = None

    def _client(self, kwargs: dict[str, Any]):
        from clickhouse_driver import Client

        return Client(**kwargs, **self._options)

    @property
    def address(self) -> str:
        """``host:port`` this connection talks to."""
        return f"{self._kwargs['host']}:{self._kwargs['port']}"

    def to_node(self, host: str, port: int) -> ServerConnection:
        """A connection to another server of the same cluster, with this one's user, password,
        TLS and settings (``host``/``port`` as ``system.clusters`` gives them)."""
        other = ServerConnection.__new__(ServerConnection)
        other.database, other._options, other._version = self.database, self._options, None
        other._kwargs = {**self._kwargs, "host": host, "port": int(port)}
        other.client = other._client(other._kwargs)
        return other

    @classmethod
    def from_client(cls, client, database: str) -> ServerConnection:
        """Wrap an existing clickhouse-driver ``Client`` (for callers that hold one)."""
        conn = cls.__new__(cls)
        conn.database, conn.client, conn._version = database, client, None
        conn._kwargs = {"host": client.connection.hosts[0][0], "port": client.connection.hosts[0][1]}
        conn._options = {}
        return conn

    @property
    def version(self) -> ServerVersion:
        if self._version is None:
            self._version = ServerVersion.parse(self.client.execute("SELECT version()")[0][0])
        return self._version

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        return self.client.execute(sql, params or {})

    def execute_with_names(self, sql: str) -> tuple[list[str], list[tuple]]:
        rows, types = self.client.execute(sql, with_column_types=True)
        return [name for name, _ in types], rows

    def insert_columns(self, table: str, columns: Sequence[str], data: Sequence[list]) -> None:
        """One INSERT; the column bytes are written in C where :mod:`streams.storage.native` can
        (the same bytes clickhouse-driver writes, about ten times faster), else by clickhouse-driver."""
        cols = ", ".join(f"`{c}`" for c in columns)
        query = f"INSERT INTO {table} ({cols}) VALUES"
        if native.available(self.client):
            native.insert_columns(self.client, query, data, self.client.connection.context.client_settings[
                "insert_block_size"])
        else:
            self.client.execute(query, data, columnar=True, types_check=False)

    def existing_keys(self, table: str, keys: Sequence[list]) -> set[str]:
        # name IN set, resource_id IN set and a timestamp range let the primary index skip every
        # granule of other meters and resources; the exact match is on message_id (a stored copy of
        # a sample has the same key). Two one-column sets rather than the (name, resource_id) pairs:
        # on 18.16 the tuple IN cost about 35 ms more per query whatever its size (100 keys: 45 against
        # 80 ms; 70,000 keys: 83-95 against 120-140 ms, on a 700,000-row table), and a batch's pairs
        # are nearly all of its names times its resources anyway.
        names, rids, stamps, mids = keys
        query = (f"SELECT message_id FROM {table} WHERE name IN _names AND resource_id IN _rids "
                 "AND timestamp_us >= %(lo)s AND timestamp_us <= %(hi)s AND message_id IN _ids")
        params = {"lo": min(stamps), "hi": max(stamps)}
        tables = [("_names", [("name", "String")], [list(set(names))]),  # (name, structure, columns)
                  ("_rids", [("resource_id", "String")], [list(set(rids))]),
                  ("_ids", [("message_id", "String")], [mids if isinstance(mids, list) else list(mids)])]
        if native.available(self.client):
            result = native.select_with_tables(self.client, query, params, tables)
            return set(result[0]) if result else set()
        ext = [{"name": name, "structure": structure, "data": list(zip(*columns, strict=True))}
               for name, structure, columns in tables]
        return {r[0] for r in self.client.execute(query, params, external_tables=ext)}

    def close(self) -> None:
        self.client.disconnect()


class _UTCContext:
    """What clickhouse-driver's parameter escaping needs to know about the engine."""

    class server_info:  # noqa: N801 (mirrors clickhouse_driver's attribute)
        @staticmethod
        def get_timezone() -> str:
            return "UTC"


_CHDB_LOCK = threading.Lock()
_CHDB_SESSIONS: dict[str, Any] = {}


def _chdb_session(path: str):
    """The process's chdb session for ``path`` (chdb allows one per process; shared here)."""
    try:
        import chdb.session
    except ImportError as exc:  # pragma: no cover - chdb is a dev dependency here
        raise StorageError(f"chdb:// needs the chdb package: {CHDB_INSTALL}") from exc
    with _CHDB_LOCK:
        if path not in _CHDB_SESSIONS:
            if _CHDB_SESSIONS:
                raise StorageError(f"chdb is already open on {next(iter(_CHDB_SESSIONS))}; one path per process")
            Path(path).mkdir(parents=True, exist_ok=True)
            _CHDB_SESSIONS[path] = chdb.session.Session(path)
        return _CHDB_SESSIONS[path]


def close_chdb() -> None:
    """Close this process's chdb session, releasing its directory (for tests and tools)."""
    with _CHDB_LOCK:
        for s in _CHDB_SESSIONS.values():
            s.close()
        _CHDB_SESSIONS.clear()


class EmbeddedConnection(Connection):
    """chdb: ClickHouse in this process, tables in a directory. Thread-safe through one lock."""

    embedded = True

    def __init__(self, url: str, database: str | None = None) -> None:
        p = urlsplit(url)
        path = (p.netloc + p.path) if p.netloc else p.path
        if not path:
            raise ValueError(f"chdb URL {url!r} names no directory")
        self.path = str(Path(unquote(path)).resolve())
        self.database = database or (parse_qs(p.query).get("database") or ["streams"])[0]
        quote_ident(self.database)
        self.session = _chdb_session(self.path)
        self._version: ServerVersion | None = None

    @property
    def version(self) -> ServerVersion:
        if self._version is None:
            self._version = ServerVersion.parse(self.execute("SELECT version()")[0][0])
        return self._version

    def _query(self, sql: str, fmt: str = "JSONCompact"):
        try:
            with _CHDB_LOCK:
                return self.session.query(sql, fmt)
        except Exception as exc:  # chdb raises its own ChdbError/RuntimeError
            raise StorageError(str(exc)) from exc

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        from clickhouse_driver.util.escape import escape_params

        if params:
            sql = sql % escape_params(params, _UTCContext)
        head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
        if head not in ("SELECT", "WITH", "SHOW", "DESCRIBE", "EXISTS"):
            self._query(sql, "CSV")
            return []
        table = self._query(sql, "ArrowTable")
        columns = [c.to_pylist() for c in table.columns]
        return list(zip(*columns, strict=True)) if columns else []

    def execute_with_names(self, sql: str) -> tuple[list[str], list[tuple]]:
        table = self._query(sql, "ArrowTable")
        columns = [c.to_pylist() for c in table.columns]
        return list(table.column_names), (list(zip(*columns, strict=True)) if columns else [])

    def _arrow(self, columns: Sequence[str], data: Sequence[list]):
        import pyarrow as pa

        arrays = []
        for name, col in zip(columns, data, strict=True):
            if name.endswith((".key", ".value")):
                arrays.append(pa.array(col, type=pa.list_(pa.string())))
            else:
                arrays.append(pa.array(col))
        return pa.table(arrays, names=[f"c{i}" for i in range(len(arrays))])

    def insert_columns(self, table: str, columns: Sequence[str], data: Sequence[list]) -> None:
        batch = self._arrow(columns, data)  # noqa: F841 (read by chdb's Python() table function)
        cols = ", ".join(f"`{c}`" for c in columns)
        self._query(f"INSERT INTO {table} ({cols}) SELECT * FROM Python(batch)", "CSV")

    def existing_keys(self, table: str, keys: Sequence[list]) -> set[str]:
        import pyarrow as pa

        batch = pa.table({"name": keys[0], "resource_id": keys[1],  # noqa: F841 (read by Python())
                          "timestamp_us": pa.array(keys[2], type=pa.int64()), "message_id": keys[3]})
        table_ = self._query(
            f"SELECT message_id FROM {table} WHERE (name, resource_id, timestamp_us, message_id) IN "
            "(SELECT name, resource_id, timestamp_us, message_id FROM Python(batch))", "ArrowTable")
        return set(table_.column(0).to_pylist())


def open_connection(url: str, database: str | None = None, insert_block_size: int = 100_000,
                    ca_file: str | None = None, settings: dict[str, Any] | None = None) -> Connection:
    """A :class:`Connection` for ``url``, by scheme (``clickhouse://``, ``clickhouses://`` or ``chdb://``).

    Raises:
        ValueError: unsupported scheme.
        StorageError: chdb requested but not installed (message has the install command).
    """
    scheme = urlsplit(url).scheme
    if scheme in ("clickhouse", "clickhouses"):
        return ServerConnection(url, database, insert_block_size, ca_file=ca_file, settings=settings)
    if scheme == "chdb":
        return EmbeddedConnection(url, database)
    raise ValueError(f"unsupported storage scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
