"""Storage on the real services: migrations, exactly-once rows after a crash, rollups, chdb, queries."""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import pytest

from streams.columns import SampleColumns
from streams.storage import native
from streams.storage.backend import EmbeddedConnection, ServerConnection, close_chdb
from streams.storage.clickhouse import ClickHouseSink
from streams.storage.schema import SAMPLE_COLUMNS
from tests.conftest import fuzzed_sample, make_test_sample, recent_hour_us
from tests.integration.conftest import wait_for
from tests.unit.storage.test_sink import rollups_agree


def streams_cli(pipeline, *args: str, **env: str) -> str:
    out = subprocess.run([sys.executable, "-m", "streams.cli", *args], env={**pipeline.env, **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _batches(n: int, per: int = 5, base_us: int | None = None) -> list[list[dict]]:
    base_us = base_us or time.time_ns() // 1000 - 3_600_000_000
    return [[make_test_sample(name=("cpu_util", "memory.usage")[j % 2], resource_id=f"res-{i % 23}",
                              volume=float((i * 7 + j) % 101), timestamp=base_us + i * 2_000_000 + j)
             for j in range(per)] for i in range(n)]


def _on(db: str, table: str = "samples") -> str:
    return f"{db}.{table}"


def test_schema_migrate_and_status_under_the_zookeeper_lock(pipeline, services):
    db = f"m{uuid.uuid4().hex[:10]}"
    env = {"STREAMS_CLICKHOUSE__URL": f"clickhouse://default@{services['clickhouse']}/{db}",
           "STREAMS_COORDINATION__HOSTS": services["zookeeper"],
           "STREAMS_COORDINATION__ROOT": f"/{pipeline.name}"}
    try:
        assert "7 pending" in streams_cli(pipeline, "schema", "status", **env)
        out = streams_cli(pipeline, "schema", "migrate", **env)
        assert "applied   1 samples" in out and "read-only user is managed on every migrate" in out
        assert "user grafana: WARNING no clickhouse.readonly_password set" in out  # 18.16: users.xml
        again = streams_cli(pipeline, "schema", "migrate", **env, STREAMS_CLICKHOUSE__READONLY_PASSWORD="pw",
                            STREAMS_CLICKHOUSE__READONLY_NETWORKS='["10.1.0.0/16"]')
        assert "nothing to apply" in again  # the user step runs anyway, on every migrate:
        assert "<networks><ip>10.1.0.0/16</ip></networks>" in again and "<password_sha256_hex>" in again
        status = streams_cli(pipeline, "schema", "status", **env)
        assert "7 applied, 0 pending" in status and status.count("pending") == 1
        from kazoo.client import KazooClient

        zk = KazooClient(hosts=services["zookeeper"])
        zk.start(timeout=10)
        try:  # the lock recipe leaves its parent znode behind: proof the lock was taken
            assert zk.exists(f"/{pipeline.name}/locks/schema-migrate")
            zk.delete(f"/{pipeline.name}", recursive=True)
        finally:
            zk.stop()
            zk.close()
        types = dict(pipeline.ch.execute(
            "SELECT name, type FROM system.columns WHERE database = %(d)s AND table = 'samples'", {"d": db}))
        assert types["timestamp"] == "DateTime('UTC')" and types["name"] == "String"  # 18.16 fallbacks
        engines = dict(pipeline.ch.execute("SELECT name, engine FROM system.tables WHERE database = %(d)s",
                                           {"d": db}))
        assert engines["rollups_1m"] == engines["rollups_1h"] == "AggregatingMergeTree"
        assert engines["resources"] == engines["samples"] == "ReplacingMergeTree"
        assert engines["rollups_1m_mv"] == "MaterializedView"
    finally:
        pipeline.ch.execute(f"DROP DATABASE IF EXISTS {db}")


def test_kill_between_insert_and_offset_commit_stores_every_sample_once(pipeline):
    """processor.commit_interval=600: rows are inserted, offsets never committed, then kill -9.

    The restarted worker re-reads everything; the sink skips what is stored, so
    even without FINAL count() == uniqExact(message_id) == produced, and the
    rollup views (which see every insert) agree with the raw rows."""
    codec = pipeline.codec()
    batches = _batches(600)
    expected = sum(len(b) for b in batches)
    first = pipeline.spawn("process", STREAMS_PROCESSOR__COMMIT_INTERVAL="600",
                           STREAMS_PROCESSOR__BATCH_SIZE="200")
    first.wait_ready()
    pipeline.produce([(b[0]["resource_id"].encode(), codec.encode(b)) for b in batches])
    wait_for(lambda: pipeline.rows("SELECT count() FROM {db}.samples")[0][0] >= expected, 90,
             f"{expected} rows inserted by the first worker")
    assert first.kill(signal.SIGKILL) == -signal.SIGKILL

    second = pipeline.spawn("process")
    # The replay shows up as duplicates skipped by the second worker's flushes.
    wait_for(lambda: pipeline.rows("SELECT sum(duplicates) FROM {db}.sink_flushes")[0][0] >= expected, 90,
             "the redelivered batches to be skipped")
    [(count, uniq)] = pipeline.rows("SELECT count(), uniqExact(message_id) FROM {db}.samples")
    assert count == uniq == expected
    conn = ServerConnection(pipeline.settings.clickhouse.url)
    try:
        _check_rollups(conn, pipeline.db)
    finally:
        conn.close()
    assert second.proc.poll() is None


def _check_rollups(conn, db: str) -> None:
    class Renamed:
        def execute(self, sql, params=None):
            return conn.execute(sql.replace("t.", f"{db}."), params)
    rollups_agree(Renamed(), "rollups_1m")
    rollups_agree(Renamed(), "rollups_1h")


def test_sink_and_statistics_on_the_server(pipeline):
    sink = ClickHouseSink(pipeline.settings.clickhouse)
    base_us = recent_hour_us()
    rows = [s for b in _batches(40, per=3, base_us=base_us) for s in b]
    sink.add(rows)
    assert sink.flush() == len(rows)
    sink.add(rows[:30])
    assert sink.flush() == 0
    _check_rollups(ServerConnection(pipeline.settings.clickhouse.url), pipeline.db)
    out = json.loads(streams_cli(pipeline, "query", "statistics", "--meter", "cpu_util", "--period", "60",
                                 "--start", str(base_us // 1_000_000), "--json"))
    cpu = [r["volume"] for r in rows if r["name"] == "cpu_util"]
    assert sum(s["count"] for s in out) == len(cpu)
    assert sum(s["sum"] for s in out) == pytest.approx(sum(cpu))
    assert out[0]["period_start"] == datetime.fromtimestamp(base_us / 1e6, UTC).isoformat() and out[0]["period"] == 60
    assert min(s["min"] for s in out) == min(cpu) and max(s["max"] for s in out) == max(cpu)
    table = streams_cli(pipeline, "query", "statistics", "-m", "cpu_util", "--groupby", "resource_id")
    assert table.splitlines()[0].split()[:4] == ["groupby", "period_start", "period_end", "count"]
    assert len(table.splitlines()) == 1 + 23
    listed = json.loads(streams_cli(pipeline, "query", "samples", "-m", "memory.usage", "--limit", "5", "--json"))
    assert len(listed) == 5 and listed[0]["meter"] == "memory.usage"


def test_processor_stores_into_chdb_without_a_server(pipeline, tmp_path):
    url = f"chdb://{tmp_path / 'embedded'}?database=metering"
    streams_cli(pipeline, "schema", "migrate", STREAMS_CLICKHOUSE__URL=url)
    codec = pipeline.codec()
    batches = _batches(100, per=4)
    expected = sum(len(b) for b in batches)
    proc = pipeline.spawn("process", STREAMS_CLICKHOUSE__URL=url)
    proc.wait_ready()
    pipeline.produce([(b[0]["resource_id"].encode(), codec.encode(b)) for b in batches])
    wait_for(lambda: proc.metric("streams_samples_processed_total") >= expected, 90, f"{expected} samples processed")
    assert proc.kill(signal.SIGTERM) == 0
    out = json.loads(streams_cli(pipeline, "query", "statistics", "-m", "cpu_util", "--json",
                                 STREAMS_CLICKHOUSE__URL=url))
    assert out[0]["count"] == sum(1 for b in batches for s in b if s["name"] == "cpu_util")
    conn = EmbeddedConnection(url)
    try:
        [(count, uniq)] = conn.execute("SELECT count(), uniqExact(message_id) FROM metering.samples")
        assert count == uniq == expected
        _check_rollups(conn, "metering")
    finally:
        close_chdb()


def _stored(conn, table: str) -> list[tuple]:
    cols = ", ".join(f"`{c}`" for c in (*SAMPLE_COLUMNS, "timestamp"))
    rows = conn.execute(f"SELECT {cols} FROM {table} ORDER BY message_id")
    return [tuple(repr(v) if isinstance(v, float) else v for v in row) for row in rows]  # NaN == NaN


def test_inserts_with_c_written_columns_store_what_clickhouse_driver_stores(pipeline, monkeypatch):
    rng, base_us = random.Random(16), recent_hour_us()
    samples = [{**fuzzed_sample(rng, {"shared": "é"}), "message_id": f"m{i:04}", "timestamp": base_us + i}
               for i in range(400)]
    columns = SampleColumns()
    columns.extend_dicts(samples)
    data = [list(c) for c in columns.cols[:len(SAMPLE_COLUMNS)]]
    url, db = pipeline.settings.clickhouse.url, pipeline.db
    fast = ServerConnection(url, insert_block_size=150)  # three blocks, the last one short
    plain = ServerConnection(url)
    plain.execute(f"CREATE TABLE {db}.plain AS {db}.samples")
    encoded: list[str] = []

    def spy(spec: str, values: list):  # which columns the C encoder wrote
        out = c_encoder(spec, values)
        if out is not None:
            encoded.append(spec)
        return out

    c_encoder = native.native_column
    monkeypatch.setattr(native, "native_column", spy)
    try:
        assert native.available(fast.client)
        fast.insert_columns(f"{db}.samples", SAMPLE_COLUMNS, data)
        assert len(encoded) == 3 * len(SAMPLE_COLUMNS)  # every column of the three blocks: 18.16 has no other type
        keys = [data[SAMPLE_COLUMNS.index(c)] for c in ("name", "resource_id", "timestamp_us", "message_id")]
        asked = [k + extra for k, extra in zip(keys, (["x"], ["y"], [base_us], ["not-stored"]), strict=True)]
        assert fast.existing_keys(f"{db}.samples", asked) == set(data[0])
        with monkeypatch.context() as m:
            m.setattr(native, "available", lambda client: False)  # clickhouse-driver writes every column
            plain.insert_columns(f"{db}.plain", SAMPLE_COLUMNS, data)
            assert plain.existing_keys(f"{db}.plain", asked) == set(data[0])
        stored = _stored(plain, f"{db}.samples")
        assert len(stored) == 400 and stored == _stored(plain, f"{db}.plain")
        assert any(math.isnan(s["volume"]) for s in samples) and any(s["user_id"] is None for s in samples)

        # A value the C encoder refuses is left to clickhouse-driver: its error, and the connection recovers.
        bad = [list(c) for c in data]
        bad[SAMPLE_COLUMNS.index("source")][3] = 42
        with pytest.raises(Exception) as ours:
            fast.insert_columns(f"{db}.samples", SAMPLE_COLUMNS, bad)
        with monkeypatch.context() as m, pytest.raises(Exception) as theirs:
            m.setattr(native, "available", lambda client: False)
            plain.insert_columns(f"{db}.plain", SAMPLE_COLUMNS, bad)
        assert type(ours.value) is type(theirs.value) and str(ours.value) == str(theirs.value)
        assert fast.execute(f"SELECT count() FROM {db}.samples") == [(400,)]
    finally:
        fast.close()
        plain.close()
