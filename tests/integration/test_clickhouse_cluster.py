"""Cluster mode against a real local 2x2 ClickHouse cluster (2 shards x 2 replicas, 18.16).

The module starts its own four nodes with ``streams dev up --clickhouse-cluster 2x2`` in a
private dev dir (the shared broker, ZooKeeper and single ClickHouse answer there and are
left alone), on free ports and a unique ZooKeeper chroot, and stops them with
``streams dev down`` at the end. The shared single ClickHouse is only read and written,
never restarted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from clickhouse_driver import Client

from streams import devenv
from streams.config import load_settings
from streams.observability import SINK_RETRIES
from streams.storage.backend import ServerConnection
from streams.storage.clickhouse import ClickHouseSink
from streams.storage.cluster import Topology
from streams.storage.migrations import MIGRATIONS
from tests.conftest import make_test_sample, recent_hour_us
from tests.integration.conftest import wait_for
from tests.integration.test_grafana import run_dashboards, seed
from tests.integration.test_storage import _batches, streams_cli
from tests.unit.storage.test_sink import rollups_agree


@dataclass
class LocalCluster:
    root: Path
    env: dict[str, str]
    nodes: list[devenv.ClickHouseNode]

    def dev(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "streams.cli", "dev", *args], env=self.env,
                             capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    def node(self, name: str) -> devenv.ClickHouseNode:
        return next(n for n in self.nodes if n.name == name)

    def client(self, name: str) -> Client:
        return Client("127.0.0.1", self.node(name).port, connect_timeout=5, send_receive_timeout=60)

    def local_rows(self, name: str, db: str, table: str = "samples_local") -> list[tuple]:
        c = self.client(name)
        try:
            return c.execute(f"SELECT resource_id, message_id FROM {db}.{table}")
        finally:
            c.disconnect()


@pytest.fixture(scope="module")
def cluster(services, tmp_path_factory):
    root = tmp_path_factory.mktemp("clickhouse-cluster")
    chroot = f"/t{uuid.uuid4().hex[:10]}-clickhouse"
    env = {**os.environ, "STREAMS_DEV_DIR": str(root),
           "STREAMS_DEV_CLICKHOUSE_CLUSTER_PORT": str(devenv.free_base_port(4)),
           "STREAMS_DEV_CLICKHOUSE_CLUSTER_ZK_ROOT": chroot}
    env.pop("STREAMS_CONFIG", None)
    c = LocalCluster(root, env, [])
    try:
        out = c.dev("up", "--clickhouse-cluster", "2x2")
        for name in ("clickhouse-s1r1", "clickhouse-s1r2", "clickhouse-s2r1", "clickhouse-s2r2"):
            assert f"{name} " in out and "started pid" in out.split(name)[1].splitlines()[0]
        assert "already answering" in out.split("clickhouse ", 1)[1].splitlines()[0]  # the shared one, left alone
        c.nodes = devenv.ClusterLayout.load(root).nodes(root)
        yield c
    finally:
        down = c.dev("down")  # also after a failed up: the nodes that did start are stopped
        assert all(f"{n.name:<16} stopped pid" in down for n in c.nodes), down
        assert "clickhouse       external, left alone" in down
        from kazoo.client import KazooClient

        zk = KazooClient(hosts=services["zookeeper"])
        zk.start(timeout=10)
        try:
            zk.delete(chroot, recursive=True)
        finally:
            zk.stop()
            zk.close()


@dataclass
class ClusterDb:
    env: dict[str, str]
    settings: object
    db: str

    def conn(self) -> ServerConnection:
        return ServerConnection(self.settings.clickhouse.url)


@pytest.fixture
def cdb(pipeline, cluster, monkeypatch):
    """The pipeline's database on the cluster (cluster mode settings), migrated node by node; dropped after."""
    env = {"STREAMS_CLICKHOUSE__URL": f"clickhouse://default@{cluster.nodes[0].address}/{pipeline.db}",
           "STREAMS_CLICKHOUSE__CLUSTER": "streams",
           "STREAMS_COORDINATION__ROOT": f"/{pipeline.name}"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = streams_cli(pipeline, "schema", "migrate", **env)
    assert out.count("applied   1 samples on 127.0.0.1:") == 4, out
    yield ClusterDb(env, load_settings(), pipeline.db)
    for n in cluster.nodes:
        c = cluster.client(n.name)
        try:
            c.execute(f"DROP DATABASE IF EXISTS {pipeline.db}")
        except Exception:  # noqa: BLE001 (a node a test left down)
            pass
        finally:
            c.disconnect()


def test_migrations_create_replicated_tables_distributed_reads_and_views_on_every_node(pipeline, cluster, cdb):
    status = streams_cli(pipeline, "schema", "status", **cdb.env)
    assert status.strip().splitlines()[-1] == f"{4 * len(MIGRATIONS)} applied, 0 pending on 4 nodes"
    for n in cluster.nodes:
        mine = [line.split()[1:3] for line in status.splitlines() if line.startswith(n.address + " ")]
        assert mine == [[str(m.version), m.name] for m in MIGRATIONS]
        c = cluster.client(n.name)
        try:
            engines = dict(c.execute("SELECT name, engine FROM system.tables WHERE database = %(d)s", {"d": cdb.db}))
            [(zk_path, replica)] = c.execute(
                "SELECT zookeeper_path, replica_name FROM system.replicas WHERE database = %(d)s "
                "AND table = 'samples_local'", {"d": cdb.db})
        finally:
            c.disconnect()
        assert engines["samples_local"] == "ReplicatedReplacingMergeTree"
        assert engines["rollups_1m_local"] == engines["rollups_1h_local"] == "ReplicatedAggregatingMergeTree"
        assert engines["sink_flushes_local"] == "ReplicatedMergeTree"
        assert engines["events_local"] == "ReplicatedReplacingMergeTree"
        for table in ("samples", "resources", "rollups_1m", "rollups_1h", "alarm_history", "sink_flushes",
                      "dead_letters", "events"):
            assert engines[table] == "Distributed", table
        assert engines["rollups_1m_mv"] == engines["resources_mv"] == "MaterializedView"
        assert engines["schema_migrations"] == "ReplacingMergeTree"  # each node's own record
        assert zk_path == f"/{pipeline.name}/clickhouse/tables/{n.shard}/{cdb.db}/samples" and replica == n.name
    assert "nothing to apply" in streams_cli(pipeline, "schema", "migrate", **cdb.env)


def _stats(pipeline, env, *args) -> list[dict]:
    return json.loads(streams_cli(pipeline, "query", "statistics", *args, "--json", **env))


def _rollups(conn, db: str, table: str) -> list[tuple]:
    return conn.execute(f"""
        SELECT name, resource_id, bucket, countMerge(count), minMerge(min), maxMerge(max), sumMerge(sum),
               avgMerge(avg), argMaxMerge(last)
        FROM {db}.{table} GROUP BY name, resource_id, bucket ORDER BY name, resource_id, bucket""")


def _same(a, b) -> None:
    """Equal rows; floats equal to 1e-12 relative (shards sum in another order)."""
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            x, y = list(x.values()), list(y.values())
        assert [v if not isinstance(v, float) else pytest.approx(v, rel=1e-12) for v in x] == list(y)


def test_same_input_gives_the_same_statistics_and_rollups_as_one_server(pipeline, cluster, cdb):
    base_us = recent_hour_us()
    rows = [s for b in _batches(300, per=4, base_us=base_us) for s in b]
    for settings in (pipeline.settings, cdb.settings):
        sink = ClickHouseSink(settings.clickhouse)
        sink.add(rows)
        assert sink.flush() == len(rows)
        sink.add(rows[:50])  # a replay: skipped on the cluster as on one server
        assert sink.flush() == 0
        sink.close()
    single_env = {"STREAMS_CLICKHOUSE__URL": pipeline.settings.clickhouse.url, "STREAMS_CLICKHOUSE__CLUSTER": ""}
    for args in (["-m", "cpu_util"], ["-m", "cpu_util", "--period", "600", "--groupby", "resource_id"],
                 ["-m", "memory.usage", "--period", "3600", "--groupby", "project_id",
                  "--start", str(base_us // 1_000_000)]):
        _same(_stats(pipeline, cdb.env, *args), _stats(pipeline, single_env, *args))
    single, clustered = ServerConnection(pipeline.settings.clickhouse.url), cdb.conn()
    try:
        for table in ("rollups_1m", "rollups_1h"):
            _same(_rollups(clustered, cdb.db, table), _rollups(single, pipeline.db, table))
        assert (clustered.execute(f"SELECT count() FROM {cdb.db}.resources FINAL")
                == single.execute(f"SELECT count() FROM {pipeline.db}.resources FINAL") == [(23,)])
        topo = Topology.read(clustered, "streams")
    finally:
        single.close()
        clustered.close()
    # Each resource lives on the one shard halfMD5(resource_id) picks, on both of its replicas.
    shards = {}
    for n in cluster.nodes:
        got = cluster.local_rows(n.name, cdb.db)
        assert {rid for rid, _ in got} == {r["resource_id"] for r in rows
                                            if topo.shard_of(r["resource_id"]) == n.shard - 1}
        shards.setdefault(n.shard, []).append(sorted(got))
    assert all(a == b for a, b in shards.values())
    assert sum(len(a) for a, _ in shards.values()) == len(rows)


def test_every_grafana_panel_runs_on_the_distributed_tables(pipeline, cluster, cdb):
    seed(cdb.conn(), cdb.settings.clickhouse)
    grafana = ServerConnection(f"clickhouse://grafana@{cluster.nodes[0].address}/{cdb.db}")
    try:
        seen = run_dashboards(grafana, cdb.db)
        assert seen["Resources seen"] == 1
    finally:
        grafana.close()


def _kill(cluster: LocalCluster, *names: str) -> None:
    devenv.stop([cluster.node(n) for n in names], sig=signal.SIGKILL)


def _caught_up(cluster: LocalCluster, db: str, expected: int) -> bool:
    """Every replica has pulled its log and fetched every part, of every table; shard siblings agree."""
    per_node = {}
    for n in cluster.nodes:
        c = cluster.client(n.name)
        try:
            [(behind,)] = c.execute(
                "SELECT sum(queue_size + if(log_pointer = 0 AND log_max_index = 0, 0, "
                "greatest(0, toInt64(log_max_index) + 1 - toInt64(log_pointer)))) "
                "FROM system.replicas WHERE database = %(d)s", {"d": db})
            per_node[n.name] = (behind, c.execute(f"SELECT count() FROM {db}.samples_local")[0][0])
        finally:
            c.disconnect()
    counts = {k: v[1] for k, v in per_node.items()}
    return (all(b == 0 for b, _ in per_node.values())
            and counts["clickhouse-s1r1"] == counts["clickhouse-s1r2"]
            and counts["clickhouse-s2r1"] == counts["clickhouse-s2r2"]
            and counts["clickhouse-s1r1"] + counts["clickhouse-s2r1"] == expected)


def test_ingest_goes_on_with_a_replica_of_each_shard_down_and_they_catch_up(pipeline, cluster, cdb):
    codec = pipeline.codec()
    batches = _batches(600)
    expected = sum(len(b) for b in batches)
    proc = pipeline.spawn("process", STREAMS_PROCESSOR__BATCH_SIZE="100", **cdb.env)
    proc.wait_ready()
    stored = cdb.conn()
    count = lambda: stored.execute(f"SELECT count() FROM {cdb.db}.samples")[0][0]  # noqa: E731
    try:
        pipeline.produce([(b[0]["resource_id"].encode(), codec.encode(b)) for b in batches[:300]])
        half = sum(len(b) for b in batches[:300])
        wait_for(lambda: count() >= half, 60, "the first half stored")
        # Killed between inserts: a replica killed inside an INSERT may keep the samples part without its
        # views' parts (ClickHouse writes them one after the other), see docs/storage.md. The samples of the
        # last insert are visible before its rollup parts are written, so wait for those too (a kill in
        # between failed a clean-clone run: rollups_1m then had 864 of 934 buckets).
        def rolled_up() -> bool:
            return all(stored.execute(f"SELECT countMerge(count) FROM {cdb.db}.{t}")[0][0] >= half
                       for t in ("rollups_1m", "rollups_1h"))
        wait_for(rolled_up, 60, "the first half in the rollups")
        _kill(cluster, "clickhouse-s1r2", "clickhouse-s2r1")  # s2r1 is shard 2's first (current) replica
        pipeline.produce([(b[0]["resource_id"].encode(), codec.encode(b)) for b in batches[300:]])
        wait_for(lambda: count() >= expected, 120, f"{expected} rows stored with two replicas down")
        assert proc.proc.poll() is None
        [(n, uniq)] = stored.execute(f"SELECT count(), uniqExact(message_id) FROM {cdb.db}.samples")
        assert n == uniq == expected
        assert pipeline.consume(pipeline.settings.kafka.dlq_topic, 0, timeout=3) == []  # nothing dead-lettered
        for name in ("clickhouse-s1r2", "clickhouse-s2r1"):
            assert "restarted" in cluster.dev("restart", name)
        wait_for(lambda: _caught_up(cluster, cdb.db, expected), 120, "the restarted replicas to catch up")
        for table in ("rollups_1m", "rollups_1h"):
            rollups_agree(_Renamed(stored, cdb.db), table)
    finally:
        stored.close()


class _Renamed:
    """``rollups_agree`` reads ``t.<table>``: point it at the cluster's database."""

    def __init__(self, conn, db: str):
        self.conn, self.db = conn, db

    def execute(self, sql, params=None):
        return self.conn.execute(sql.replace("t.", f"{self.db}."), params)


def test_processor_kill_between_insert_and_commit_stores_every_sample_once_in_cluster_mode(pipeline, cluster, cdb):
    codec = pipeline.codec()
    batches = _batches(600)
    expected = sum(len(b) for b in batches)
    first = pipeline.spawn("process", STREAMS_PROCESSOR__COMMIT_INTERVAL="600", STREAMS_PROCESSOR__BATCH_SIZE="200",
                           **cdb.env)
    first.wait_ready()
    pipeline.produce([(b[0]["resource_id"].encode(), codec.encode(b)) for b in batches])
    conn = cdb.conn()
    try:
        wait_for(lambda: conn.execute(f"SELECT count() FROM {cdb.db}.samples")[0][0] >= expected, 90,
                 f"{expected} rows inserted by the first worker")
        assert first.kill(signal.SIGKILL) == -signal.SIGKILL
        second = pipeline.spawn("process", **cdb.env)
        wait_for(lambda: conn.execute(f"SELECT sum(duplicates) FROM {cdb.db}.sink_flushes")[0][0] >= expected, 90,
                 "the redelivered batches to be skipped")
        [(count, uniq)] = conn.execute(f"SELECT count(), uniqExact(message_id) FROM {cdb.db}.samples")
        assert count == uniq == expected
        for table in ("rollups_1m", "rollups_1h"):
            rollups_agree(_Renamed(conn, cdb.db), table)
        assert second.proc.poll() is None
    finally:
        conn.close()


def test_a_shard_without_a_live_replica_makes_the_flush_wait_and_lose_nothing(pipeline, cluster, cdb):
    sink = ClickHouseSink(cdb.settings.clickhouse, retry_for=600)
    topo = Topology.read(sink.conn, "streams")
    rows = [make_test_sample(resource_id=f"r-{i}", timestamp=recent_hour_us() + i) for i in range(40)]
    assert {topo.shard_of(r["resource_id"]) for r in rows} == {0, 1}
    _kill(cluster, "clickhouse-s2r1", "clickhouse-s2r2")
    retries_before = SINK_RETRIES._value.get()
    sink.add(rows)
    result: dict = {}
    flusher = threading.Thread(target=lambda: result.setdefault("inserted", sink.flush()), daemon=True)
    flusher.start()
    try:
        wait_for(lambda: SINK_RETRIES._value.get() >= retries_before + 2, 60, "the flush retrying shard 2")
        assert flusher.is_alive() and "inserted" not in result  # waiting, not acknowledging
    finally:
        for name in ("clickhouse-s2r1", "clickhouse-s2r2"):
            cluster.dev("restart", name)
    flusher.join(120)
    assert result.get("inserted") == len(rows)
    conn = cdb.conn()
    try:
        wait_for(lambda: conn.execute(f"SELECT count() FROM {cdb.db}.samples")[0][0] == len(rows), 60,
                 "every row readable through the Distributed table")
    finally:
        conn.close()
        sink.close()
