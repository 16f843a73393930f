import pytest

from streams.storage.schema import SAMPLE_COLUMNS, ServerVersion, quote_ident, samples_ddl


@pytest.mark.parametrize("text, want", [("18.16.1", (18, 16)), ("26.9.2.1", (26, 9)), (" 20.1.0\n", (20, 1))])
def test_server_version_parse(text, want):
    v = ServerVersion.parse(text)
    assert (v.major, v.minor) == want


def test_server_version_rejects_garbage():
    with pytest.raises(ValueError):
        ServerVersion.parse("latest")


def test_ddl_is_version_aware():
    old = samples_ddl("db", ServerVersion(18, 16))
    new = samples_ddl("db", ServerVersion(26, 9))
    assert "DateTime64" not in old and "LowCardinality" not in old
    assert "DateTime64(6, 'UTC')" in new and "LowCardinality(String)" in new
    for ddl in (old, new):
        assert "ReplacingMergeTree" in ddl
        assert "ORDER BY (name, resource_id, timestamp_us, message_id)" in ddl


@pytest.mark.parametrize("bad", ["a-b", "x; DROP TABLE y", "", "1abc"])
def test_identifiers_are_checked(bad):
    with pytest.raises(ValueError):
        quote_ident(bad)


def test_modern_ddl_applies_on_current_clickhouse(tmp_path):
    """chdb is ClickHouse 26.x in-process: the modern DDL must create, insert and query."""
    from chdb import session

    s = session.Session(str(tmp_path / "chdb"))
    version = ServerVersion.parse(s.query("SELECT version()", "TSV").bytes().decode())
    assert version.has_datetime64
    s.query("CREATE DATABASE t")
    s.query(samples_ddl("t", version))
    cols = ", ".join(f"`{c}`" for c in SAMPLE_COLUMNS)
    s.query(
        f"INSERT INTO t.samples ({cols}) VALUES "
        "('m1', 'cpu', 'cumulative', 'ns', 1.5, NULL, NULL, 'p', NULL, 'r1', 1795317321738703, 2.5, "
        "['kind'], ['host'], 'tests'), "
        "('m1', 'cpu', 'cumulative', 'ns', 1.5, NULL, NULL, 'p', NULL, 'r1', 1795317321738703, 2.5, "
        "['kind'], ['host'], 'tests')"
    )
    out = s.query(
        "SELECT toString(timestamp), toTypeName(timestamp), count() FROM t.samples FINAL GROUP BY timestamp",
        "TSVRaw").bytes().decode().strip()
    assert out == "2026-11-22 03:15:21.738703\tDateTime64(6, 'UTC')\t1"  # duplicate message_id collapsed
    s.close()
