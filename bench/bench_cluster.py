"""Cluster mode sizing: sink rows/s on one server vs a local 2x2 cluster, and disk per billion samples.

Starts a private 2x2 ClickHouse 18.16 cluster (streams.devenv, free ports, a unique
ZooKeeper chroot on the dev ZooKeeper), stops it at the end. For the same data
(bench_sink.make_batch: 7 host meters per resource and poll, 1,000 resources):

* rows/s through ``ClickHouseSink`` (70,000-sample flushes, the duplicate lookup on and
  off) on the dev single server and on the cluster (each flush split by shard and written
  to one replica per shard; the other replica fetches the parts);
* bytes on disk per sample after ``OPTIMIZE ... FINAL``: ``samples`` and the rollup and
  resource tables, on 18.16 (LZ4, no codecs) and on chdb (ClickHouse 26.x: codecs and
  LowCardinality), scaled to a billion samples per replica.

All servers share this machine's 2 cores, so the cluster numbers are a floor, not what
four machines would do. Usage: ``python bench/bench_cluster.py [--rows N]`` after
``streams dev up``; prints figures and writes ``bench/cluster-results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_sink import make_batch  # noqa: E402

from streams import devenv  # noqa: E402
from streams.config import ClickHouseSettings  # noqa: E402
from streams.storage.backend import EmbeddedConnection, ServerConnection, close_chdb  # noqa: E402
from streams.storage.clickhouse import ClickHouseSink  # noqa: E402
from streams.storage.migrations import apply  # noqa: E402
from streams.storage.schema import Layout  # noqa: E402

BATCH = 70_000
TABLES = ("samples", "rollups_1m", "rollups_1h", "resources")


def sink_rate(settings: ClickHouseSettings, rows: int, dedup: bool) -> float:
    sink = ClickHouseSink(settings.model_copy(update={"deduplicate": dedup}))
    base_us = time.time_ns() // 1000 - 86_400_000_000
    seconds = 0.0
    offset = 0 if dedup else rows  # other samples, so the dedup-off run stores new rows too
    try:
        for r in range(rows // BATCH):
            batch = make_batch(BATCH, offset + r * BATCH, base_us)
            t0 = time.perf_counter()
            sink.add(batch)
            sink.flush()
            seconds += time.perf_counter() - t0
    finally:
        sink.close()
    return rows // BATCH * BATCH / seconds


def disk_per_sample(conn, db: str, local: str = "") -> dict[str, float]:
    """Bytes on disk per stored sample, per table, after merging every table's parts."""
    for t in TABLES:
        conn.execute(f"OPTIMIZE TABLE {db}.{t}{local} FINAL")
    [(samples,)] = conn.execute(f"SELECT count() FROM {db}.samples{local}")
    out = {}
    for t in TABLES:
        [(b,)] = conn.execute("SELECT sum(bytes_on_disk) FROM system.parts WHERE active AND database = %(d)s "
                              "AND table = %(t)s", {"d": db, "t": t + local})
        out[t] = round(b / samples, 2)
    out["total"] = round(sum(out[t] for t in TABLES), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=700_000, help="samples per run (multiple of 70,000)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "cluster-results.json"))
    args = ap.parse_args()
    services = devenv.up()
    results: dict = {"rows": args.rows}

    db = f"benchcl{uuid.uuid4().hex[:8]}"
    single = ClickHouseSettings(url=f"clickhouse://default@{services['clickhouse']}/{db}")
    conn = ServerConnection(single.url)
    apply(conn)
    try:
        results["single_rows_per_s"] = {d: round(sink_rate(single, args.rows, d == "dedup_on"))
                                        for d in ("dedup_on", "dedup_off")}
        results["disk_bytes_per_sample_18_16"] = disk_per_sample(conn, db)
    finally:
        conn.execute(f"DROP DATABASE IF EXISTS {db}")
        conn.close()
    print(f"== one server (18.16): {results['single_rows_per_s']} rows/s; "
          f"bytes/sample {results['disk_bytes_per_sample_18_16']}")

    root = Path(tempfile.mkdtemp(prefix="streams-bench-cluster-"))
    chroot = f"/bench-{uuid.uuid4().hex[:8]}"
    layout = devenv.ClusterLayout(2, 2, zookeeper=services["zookeeper"], base_port=devenv.free_base_port(4),
                                  zookeeper_root=chroot)
    layout.ensure_zookeeper_root()
    nodes = layout.nodes(root)
    devenv.start(nodes)
    try:
        clustered = ClickHouseSettings(url=f"clickhouse://default@{nodes[0].address}/{db}", cluster="streams")
        conn = ServerConnection(clustered.url)
        apply(conn, layout=Layout("streams", "/bench"))
        rates = {d: sink_rate(clustered, args.rows, d == "dedup_on") for d in ("dedup_on", "dedup_off")}
        t0 = time.perf_counter()
        while True:  # replicas fetch the parts written to their shard sibling
            counts = [ServerConnection(f"clickhouse://default@{n.address}/{db}").execute(
                f"SELECT count() FROM {db}.samples_local")[0][0] for n in nodes]
            if counts[0] == counts[1] and counts[2] == counts[3] and counts[0] + counts[2] == 2 * args.rows:
                break
            time.sleep(0.2)
        results["cluster_2x2"] = {
            "rows_per_s": {k: round(v) for k, v in rates.items()},
            "rows_per_s_per_shard": {k: round(v / 2) for k, v in rates.items()},
            "replicas_caught_up_after_s": round(time.perf_counter() - t0, 2),
            "rows_per_shard": [counts[0], counts[2]],
        }
        node0 = ServerConnection(f"clickhouse://default@{nodes[0].address}/{db}")
        results["disk_bytes_per_sample_cluster_replica"] = disk_per_sample(node0, db, "_local")
        node0.close()
        conn.close()
    finally:
        devenv.stop(nodes)
        from kazoo.client import KazooClient

        zk = KazooClient(hosts=services["zookeeper"])
        zk.start(timeout=10)
        zk.delete(chroot, recursive=True)
        zk.stop()
    print(f"== cluster 2x2 (4 servers on this machine): {results['cluster_2x2']}")

    with tempfile.TemporaryDirectory() as tmp:
        url = f"chdb://{tmp}/chdb?database=b"
        conn = EmbeddedConnection(url)
        apply(conn)
        sink = ClickHouseSink(ClickHouseSettings(url=url), connection=conn)
        base_us = time.time_ns() // 1000 - 86_400_000_000
        for r in range(args.rows // BATCH):
            sink.add(make_batch(BATCH, r * BATCH, base_us), maybe_stored=False)
            sink.flush()
        results["disk_bytes_per_sample_chdb_26"] = disk_per_sample(conn, "b")
        close_chdb()
    print(f"== chdb (26.x, codecs): bytes/sample {results['disk_bytes_per_sample_chdb_26']}")
    for key in ("disk_bytes_per_sample_18_16", "disk_bytes_per_sample_chdb_26"):
        gb = results[key]["total"]  # bytes/sample x 1e9 samples = GB
        print(f"   {key}: {gb:.1f} GB per billion samples per replica")
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"== written to {args.out}")


if __name__ == "__main__":
    main()
