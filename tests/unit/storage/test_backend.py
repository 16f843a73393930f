from __future__ import annotations

import pytest

from streams.config import ConfigError, load_settings
from streams.storage import open_connection, open_sink
from streams.storage.backend import EmbeddedConnection, ServerConnection, close_chdb


def test_sink_url_scheme_selects_the_backend(tmp_path):
    server = load_settings(clickhouse={"url": "clickhouse://u:p@db.example:9440/metrics"})
    conn = open_connection(server)
    assert isinstance(conn, ServerConnection) and conn.database == "metrics"  # lazy: no network yet
    embedded = load_settings(clickhouse={"url": f"chdb://{tmp_path}/store?database=m1"})
    assert embedded.clickhouse.database == "m1"
    try:
        sink = open_sink(embedded)
        assert isinstance(sink.conn, EmbeddedConnection) and sink.table == "m1.samples"
        assert sink.conn.version.has_datetime64
    finally:
        close_chdb()


@pytest.mark.parametrize("url, problem", [("mysql://h/db", "unsupported sink scheme 'mysql'"),
                                           ("chdb://", "names no directory"),
                                           ("clickhouse:///db", "no host")])
def test_bad_sink_urls_are_rejected_at_load(url, problem):
    with pytest.raises(ConfigError, match=problem):
        load_settings(clickhouse={"url": url})


def test_chdb_database_name_is_checked(tmp_path):
    with pytest.raises(ValueError, match="identifier"):
        EmbeddedConnection(f"chdb://{tmp_path}?database=a-b")
