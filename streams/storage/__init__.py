"""Storage: ClickHouse schema migrations, the batching sink, queries, and the embedded default (chdb).

Backends are chosen by the URL scheme of ``clickhouse.url``
(:mod:`streams.storage.backend`): ``clickhouse://`` for a server,
``chdb://`` for ClickHouse in-process. See docs/storage.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.config import Settings
    from streams.storage.backend import Connection
    from streams.storage.clickhouse import ClickHouseSink


def open_connection(settings: Settings) -> Connection:
    """A :class:`~streams.storage.backend.Connection` for ``settings.clickhouse.url``.

    Raises:
        ValueError: unsupported scheme.
        streams.storage.backend.StorageError: chdb requested but not installed.
    """
    from streams.storage.backend import open_connection as _open

    s = settings.clickhouse
    return _open(s.url, s.database, s.insert_block_size)


def open_sink(settings: Settings, retry_for: float = 300.0) -> ClickHouseSink:
    """The sink for ``settings.clickhouse.url`` (server or chdb), as the processor uses it.

    ``retry_for``: seconds of transient errors before ``flush`` raises.
    """
    from streams.storage.clickhouse import ClickHouseSink

    return ClickHouseSink(settings.clickhouse, retry_for=retry_for, connection=open_connection(settings))
