"""``make bench``: what the pipeline costs on this machine, measured in one run.

Figures:
  1. codec, in-process: encode+sign, verify and decode, microseconds per sample
     (records of 7 samples, like one host's poll);
  2. publisher: signed+encoded samples/s delivered to the local broker by one
     ``KafkaPublisher`` (includes the final flush);
  3. processor, end to end: one ``streams process`` worker drains the topic
     filled in (2) into ClickHouse; samples/s from its readiness to the last
     row visible, its peak RSS, and produce->row-visible latency percentiles
     of a small paced stream that follows.

Usage: ``python bench/run.py [--samples N] [--out bench/results.json]``.
Needs the local services (``streams dev up``). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams import devenv  # noqa: E402
from streams.codec import BatchCodec  # noqa: E402
from streams.config import load_settings  # noqa: E402
from streams.publisher import KafkaPublisher  # noqa: E402
from streams.signing import Keyring  # noqa: E402
from streams.storage.clickhouse import connect  # noqa: E402
from streams.storage.schema import migrate  # noqa: E402
from streams.topics import create_topics  # noqa: E402

KEYS = {"bench": "bench-secret"}
PER_RECORD = 7


def make_samples(n_records: int, resources: int = 1000, base_us: int | None = None) -> list[list[dict]]:
    base_us = base_us or time.time_ns() // 1000 - 3_600_000_000
    meters = [("cpu", "cumulative", "ns"), ("cpu_util", "gauge", "%"), ("memory.usage", "gauge", "B"),
              ("disk.read.bytes", "cumulative", "B"), ("disk.write.bytes", "cumulative", "B"),
              ("network.incoming.bytes", "cumulative", "B"), ("network.outgoing.bytes", "cumulative", "B")]
    out = []
    for i in range(n_records):
        rid = f"bench-host-{i % resources}"
        ts = base_us + i * 1000
        md = {"kind": "host", "host": rid, "cpu_number": "4"}
        out.append([{
            "message_id": str(uuid.uuid4()), "name": m, "type": t, "unit": u, "volume": float(i * 10 + j),
            "user_id": None, "user_name": None, "project_id": "bench", "project_name": None,
            "resource_id": rid, "timestamp": ts, "monotonic_time": ts / 1e6, "resource_metadata": md,
            "source": "bench", "message_signature": None,
        } for j, (m, t, u) in enumerate(meters[:PER_RECORD])])
    return out


def bench_codec(records: list[list[dict]]) -> dict:
    codec = BatchCodec(Keyring({k: v.encode() for k, v in KEYS.items()}, "bench"))
    n = len(records) * PER_RECORD
    t = time.perf_counter()
    encoded = [codec.encode(r) for r in records]
    enc = time.perf_counter() - t
    t = time.perf_counter()
    for e in encoded:
        codec.verify(e)
    ver = time.perf_counter() - t
    t = time.perf_counter()
    for e in encoded:
        codec.decode(e)
    dec = time.perf_counter() - t
    return {
        "samples": n,
        "bytes_per_sample": round(sum(map(len, encoded)) / n, 1),
        "encode_sign_us_per_sample": round(enc / n * 1e6, 2),
        "verify_us_per_sample": round(ver / n * 1e6, 2),
        "verify_decode_us_per_sample": round(dec / n * 1e6, 2),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=420_000, help="samples to publish and process")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    args = ap.parse_args()

    services = devenv.up()
    name = f"bench{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "STREAMS_KAFKA__BOOTSTRAP_SERVERS": services["kafka"],
        "STREAMS_KAFKA__SAMPLES_TOPIC": f"{name}.samples",
        "STREAMS_KAFKA__DLQ_TOPIC": f"{name}.samples.dlq",
        "STREAMS_CLICKHOUSE__URL": f"clickhouse://default@{services['clickhouse']}/{name}",
        "STREAMS_SIGNING__KEYS": json.dumps(KEYS),
        "STREAMS_PROCESSOR__APP_ID": name,
        "STREAMS_PROCESSOR__DATA_DIR": str(devenv.dev_dir() / "bench-faust"),
        "STREAMS_LOG_LEVEL": "WARNING",
    }
    env.pop("STREAMS_CONFIG", None)
    os.environ.update({k: v for k, v in env.items() if k.startswith("STREAMS_")})
    settings = load_settings()
    create_topics(settings.kafka)
    ch = connect(settings.clickhouse)
    migrate(ch, name)
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}

    n_records = args.samples // PER_RECORD
    print(f"== codec ({n_records // 10 * PER_RECORD} samples in records of {PER_RECORD})")
    results["codec"] = bench_codec(make_samples(n_records // 10))
    for k, v in results["codec"].items():
        print(f"   {k:<30} {v}")

    print(f"== publisher: {n_records * PER_RECORD} samples to the local broker")
    records = make_samples(n_records)
    pub = KafkaPublisher(settings.kafka, BatchCodec(settings.signing.keyring()))
    t = time.perf_counter()
    for r in records:
        pub.publish(r)
    pub.flush(120)
    pub_s = time.perf_counter() - t
    results["publisher"] = {
        "samples": pub.delivered, "failed": pub.failed, "seconds": round(pub_s, 2),
        "samples_per_s": round(pub.delivered / pub_s),
    }
    print(f"   {pub.delivered} delivered, {pub.failed} failed, {pub.delivered / pub_s:,.0f} samples/s")

    print("== processor: one worker drains the topic into ClickHouse")
    port = free_port()
    env["STREAMS_PROCESSOR__METRICS_PORT"] = str(port)
    log = open(devenv.dev_dir() / "bench-processor.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "process"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    ps = psutil.Process(proc.pid)
    peak_rss = 0
    try:
        while not ready(port):
            if proc.poll() is not None:
                raise SystemExit(f"processor exited with {proc.returncode}; see {log.name}")
            time.sleep(0.05)
        t = time.perf_counter()
        total = pub.delivered
        stored = 0
        while stored < total and time.perf_counter() - t < 600:
            time.sleep(0.25)
            peak_rss = max(peak_rss, ps.memory_info().rss)
            stored = ch.execute(f"SELECT count() FROM {name}.samples")[0][0]
        drain_s = time.perf_counter() - t
        results["processor"] = {
            "samples": stored, "seconds": round(drain_s, 2), "samples_per_s": round(stored / drain_s),
            "peak_rss_mib": round(peak_rss / 2**20, 1),
            "note": "includes the consumer's first fetches; readiness = joined the consumer group",
        }
        print(f"   {stored} rows in {drain_s:.1f}s: {stored / drain_s:,.0f} samples/s, "
              f"peak RSS {peak_rss / 2**20:.0f} MiB")

        print("== latency: 200 records, one every 20 ms, produce -> row visible")
        lat_records = make_samples(200, resources=50, base_us=time.time_ns() // 1000)
        sent: dict[str, float] = {}
        for r in lat_records:
            sent[r[0]["message_id"]] = time.time()
            pub.publish(r)
            pub.poll(0)
            time.sleep(0.02)
        pub.flush(30)
        ids = list(sent)
        deadline = time.time() + 60
        seen: dict[str, float] = {}
        while len(seen) < len(ids) and time.time() < deadline:
            rows = ch.execute(
                f"SELECT message_id, toUnixTimestamp(inserted_at) FROM {name}.samples WHERE message_id IN %(ids)s",
                {"ids": [i for i in ids if i not in seen]})
            now = time.time()
            for mid, _ in rows:
                seen.setdefault(mid, now)
            time.sleep(0.05)
        lats = sorted((seen[m] - sent[m]) * 1000 for m in seen)
        if lats:
            q = statistics.quantiles(lats, n=100)
            results["latency_ms"] = {"p50": round(q[49]), "p95": round(q[94]), "p99": round(q[98]),
                                     "max": round(lats[-1]), "records": len(lats),
                                     "note": "polled every 50 ms; batch_timeout 1 s bounds it"}
            print(f"   p50 {q[49]:.0f} ms, p95 {q[94]:.0f} ms, p99 {q[98]:.0f} ms ({len(lats)} records)")
    finally:
        proc.terminate()
        proc.wait(30)
        ch.execute(f"DROP DATABASE IF EXISTS {name}")

    if "processor" in results and "publisher" in results:
        results["ratios"] = {
            "processor_vs_publisher": round(results["processor"]["samples_per_s"]
                                            / results["publisher"]["samples_per_s"], 2),
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"== written to {args.out}")


if __name__ == "__main__":
    main()
