from __future__ import annotations

from streams.storage import schema
from streams.storage.migrations import MIGRATIONS, apply, status
from streams.storage.schema import Dialect, Layout, ServerVersion, Target, samples_ddl


def test_migrations_are_numbered_in_order():
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


def test_old_server_ddl_has_no_modern_features():
    t = Target("db", Dialect(ServerVersion(18, 16), retention_days=30))
    ddl = "\n".join([*schema.samples(t), *schema.resources(t), *schema.rollups(t), *schema.alarm_history(t),
                     *schema.events(t)])
    for feature in ("DateTime64", "LowCardinality", "CODEC", "TTL"):
        assert feature not in ddl
    assert "AggregatingMergeTree" in ddl and "ReplacingMergeTree" in ddl


def test_modern_ddl_uses_codecs_ttl_and_datetime64():
    ddl = samples_ddl("db", Dialect(ServerVersion(26, 9), retention_days=30))
    assert "DateTime64(6, 'UTC')" in ddl and "LowCardinality(String)" in ddl
    assert "CODEC(Gorilla, ZSTD(1))" in ddl and "CODEC(Delta, ZSTD(1))" in ddl
    assert "TTL toDateTime(timestamp) + INTERVAL 30 DAY" in ddl
    assert "TTL" not in samples_ddl("db", Dialect(ServerVersion(26, 9), retention_days=0))


def test_migrations_apply_on_chdb_once_and_are_recorded(chdb_conn):
    states = status(chdb_conn)
    assert all(s.applied_at for s in states) and len(states) == len(MIGRATIONS)
    assert apply(chdb_conn) == []  # idempotent: nothing pending
    tables = {r[0] for r in chdb_conn.execute("SHOW TABLES FROM t")}
    assert {"samples", "resources", "rollups_1m", "rollups_1h", "alarm_history", "sink_flushes",
            "dead_letters", "schema_migrations"} <= tables
    types = dict(chdb_conn.execute("SELECT name, type FROM system.columns WHERE database = 't' AND table = 'samples'"))
    assert types["timestamp"] == "DateTime64(6, 'UTC')" and types["name"] == "LowCardinality(String)"
    [(ddl,)] = chdb_conn.execute("SELECT create_table_query FROM system.tables WHERE database = 't' AND name = 'samples'")
    assert "TTL" in ddl and "Gorilla" in ddl
    assert states[5].note.startswith("skip: the read-only user is managed on every migrate")


def test_a_failed_migration_stays_pending(chdb_conn, monkeypatch):
    from streams.storage import migrations

    chdb_conn.execute("DROP TABLE t.alarm_history")
    chdb_conn.execute("ALTER TABLE t.schema_migrations DELETE WHERE version = 4 SETTINGS mutations_sync = 1")
    broken = migrations.Migration(4, "alarm_history", lambda t: ["CREATE TABLE nonsense"])
    monkeypatch.setattr(migrations, "MIGRATIONS", (*MIGRATIONS[:3], broken, *MIGRATIONS[4:]))
    try:
        apply(chdb_conn)
    except Exception:  # noqa: BLE001
        pass
    assert [s.version for s in status(chdb_conn) if s.applied_at is None] == [4]
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS)
    assert [s.version for s in apply(chdb_conn)] == [4]


def test_cluster_ddl_is_replicated_local_tables_distributed_reads_and_local_views():
    t = Target("db", Dialect(ServerVersion(18, 16)), Layout("streams", "/deploy/clickhouse"))
    ddl = [*schema.samples(t), *schema.resources(t), *schema.rollups(t), *schema.alarm_history(t),
           *schema.pipeline_health(t)]
    text = "\n".join(ddl)
    assert ("ENGINE = ReplicatedReplacingMergeTree('/deploy/clickhouse/tables/{shard}/db/samples', '{replica}')"
            in text)
    assert "ReplicatedReplacingMergeTree('/deploy/clickhouse/tables/{shard}/db/resources', '{replica}', timestamp_us)" in text
    assert "ReplicatedAggregatingMergeTree('/deploy/clickhouse/tables/{shard}/db/rollups_1h', '{replica}')" in text
    assert "ENGINE = Distributed(streams, db, samples_local, halfMD5(resource_id))" in text
    assert "Distributed(streams, db, rollups_1m_local, halfMD5(resource_id))" in text
    assert "Distributed(streams, db, alarm_history_local, halfMD5(alarm_id))" in text
    views = [s for s in ddl if "MATERIALIZED VIEW" in s]
    assert len(views) == 3 and all("FROM db.samples_local" in v and "_local AS" in v for v in views)
    # one server: no Replicated, no Distributed, no _local
    single = "\n".join(schema.samples(Target("db", Dialect(ServerVersion(18, 16)))))
    assert "Replicated" not in single and "_local" not in single and "Distributed" not in single
