from __future__ import annotations

import pytest

from streams.config import ClickHouseSettings
from streams.storage.backend import EmbeddedConnection, close_chdb
from streams.storage.migrations import apply


@pytest.fixture
def chdb_conn(tmp_path):
    """A migrated chdb database (ClickHouse 26.x in-process) in a temporary directory."""
    url = f"chdb://{tmp_path / 'chdb'}?database=t"
    conn = EmbeddedConnection(url)
    apply(conn, retention_days=7)
    conn.settings = ClickHouseSettings(url=url)
    try:
        yield conn
    finally:
        close_chdb()
