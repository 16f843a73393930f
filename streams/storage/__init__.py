"""Storage: ClickHouse schema migrations, the batching sink, queries, and the embedded default (chdb).

Backends are chosen by the URL scheme of ``clickhouse.url``
(:mod:`streams.storage.backend`): ``clickhouse://`` for a server,
``chdb://`` for ClickHouse in-process. See docs/storage.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.config import ClickHouseSettings, Settings
    from streams.storage.backend import Connection
    from streams.storage.clickhouse import ClickHouseSink
    from streams.storage.schema import Layout


def open_connection(settings: Settings | ClickHouseSettings) -> Connection:
    """A :class:`~streams.storage.backend.Connection` for ``clickhouse.url`` (TLS verified with
    ``clickhouse.ca_file``; in cluster mode inserts into Distributed tables are synchronous).

    Raises:
        ValueError: unsupported scheme.
        streams.storage.backend.StorageError: chdb requested but not installed.
    """
    from streams.storage.backend import open_connection as _open

    s = getattr(settings, "clickhouse", settings)
    extra = {"insert_distributed_sync": 1} if s.cluster else None
    return _open(s.url, s.database, s.insert_block_size, ca_file=s.ca_file, settings=extra)


def layout(settings: Settings) -> Layout:
    """Where tables live: one server, or ``clickhouse.cluster`` with its ZooKeeper path
    (``clickhouse.zookeeper_path``, default ``<coordination.root>/clickhouse``)."""
    from streams.storage.schema import Layout

    c = settings.clickhouse
    path = c.zookeeper_path or f"{settings.coordination.root.rstrip('/')}/clickhouse"
    return Layout(c.cluster, path) if c.cluster else Layout()


def open_sink(settings: Settings, retry_for: float = 300.0) -> ClickHouseSink:
    """The sink for ``settings.clickhouse.url`` (server or chdb), as the processor uses it.

    ``retry_for``: seconds of transient errors before ``flush`` raises.
    """
    from streams.storage.clickhouse import ClickHouseSink

    return ClickHouseSink(settings.clickhouse, retry_for=retry_for, connection=open_connection(settings))
