"""``make bench``: what the pipeline costs on this machine, measured side by side in one run.

Figures:
  * codec, in-process: encode+sign, verify and decode, microseconds per sample
    (records of 7 samples, like one host's poll);
  * publisher: signed+encoded samples/s delivered to the local broker by one
    ``KafkaPublisher`` (includes the final flush); this pre-loads the topic;
  * three consumers of that same pre-loaded topic, one after the other, each
    with its own consumer group and ClickHouse database:
      1. the processor as shipped (``streams process``, one worker);
      2. a naive per-event Faust agent doing the same work (``bench/naive_agent.py``);
      3. a raw loop: confluent-kafka + fastavro + columnar insert (``bench/raw_loop.py``);
      4. what a user would pick instead: a Quix Streams application doing the same job
         (``bench/quix_app.py``, in ``.venv-quix``);
    samples/s (from readiness or the first record to the last row visible), peak RSS, ratios 1/2, 1/3, 1/4;
  * produce -> row-visible latency percentiles of a paced stream;
  * the sink alone (``bench/bench_sink.py``);
  * bounded state (``bench/bench_state.py``): 1,000,000 distinct resource ids through
    the processor with eviction on; peak RSS and the state table's size;
  * the Ceilometer bridge: Ceilometer samples/s through one ``streams bridge
    ceilometer`` process (``bench/bench_bridge.py``).

Usage: ``python bench/run.py [--samples N] [--out bench/results.json]``.
Needs the local services (``streams dev up``). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import fastavro
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams import devenv  # noqa: E402
from streams.codec import BATCH_SCHEMA, HEADER_SIZE, BatchCodec, SignedCodec, current_schema_reader  # noqa: E402
from streams.config import load_settings  # noqa: E402
from streams.publisher import KafkaPublisher  # noqa: E402
from streams.signing import Keyring  # noqa: E402
from streams.storage.clickhouse import connect  # noqa: E402
from streams.storage.migrations import migrate  # noqa: E402
from streams.topics import create_topics, delete_topics  # noqa: E402

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
    # The same records through fastavro, which wrote every record before the C sample writer.
    t = time.perf_counter()
    for r in records:
        SignedCodec.encode(codec, r)
    enc_fa = time.perf_counter() - t
    t = time.perf_counter()
    for e in encoded:
        codec.verify(e)
    ver = time.perf_counter() - t
    t = time.perf_counter()
    for e in encoded:
        codec.decode(e)
    dec = time.perf_counter() - t
    # The two Avro decoders side by side on the same bodies (streams.codec uses cavro for the current schema).
    bodies = [e[HEADER_SIZE:] for e in encoded]
    parsed = codec.store[BATCH_SCHEMA].parsed
    t = time.perf_counter()
    for b in bodies:
        fastavro.schemaless_reader(io.BytesIO(b), parsed, None)
    fa = time.perf_counter() - t
    fast = current_schema_reader(codec.store, BATCH_SCHEMA)
    t = time.perf_counter()
    for b in bodies:
        fast(b)
    ca = time.perf_counter() - t
    return {
        "samples": n,
        "bytes_per_sample": round(sum(map(len, encoded)) / n, 1),
        "encode_sign_us_per_sample": round(enc / n * 1e6, 2),
        "encode_sign_fastavro_us_per_sample": round(enc_fa / n * 1e6, 2),
        "verify_us_per_sample": round(ver / n * 1e6, 2),
        "verify_decode_us_per_sample": round(dec / n * 1e6, 2),
        "decode_fastavro_us_per_sample": round(fa / n * 1e6, 2),
        "decode_cavro_us_per_sample": round(ca / n * 1e6, 2),
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


class Variant:
    """One consumer of the pre-loaded topic: own consumer group, own ClickHouse database."""

    def __init__(self, base_env: dict[str, str], services: dict[str, str], label: str) -> None:
        self.label = label
        self.db = f"{base_env['BENCH_NAME']}_{label}"
        self.port = free_port()
        self.env = {**base_env,
                    "STREAMS_CLICKHOUSE__URL": f"clickhouse://default@{services['clickhouse']}/{self.db}",
                    "STREAMS_PROCESSOR__APP_ID": self.db,
                    "STREAMS_PROCESSOR__METRICS_PORT": str(self.port),
                    "STREAMS_PROCESSOR__DATA_DIR": str(devenv.dev_dir() / "bench" / self.db)}
        self.settings = load_settings(clickhouse={"url": self.env["STREAMS_CLICKHOUSE__URL"]})
        self.ch = connect(self.settings.clickhouse)
        migrate(self.ch, self.db)
        self.peak_rss = 0

    def rows(self) -> int:
        """Input samples stored (derived rows of the bench pipeline not counted)."""
        return self.ch.execute(f"SELECT count() FROM {self.db}.samples WHERE name != 'bench.cpu_rate'")[0][0]

    def spawn(self, argv: list[str]) -> subprocess.Popen:
        log = open(devenv.dev_dir() / f"bench-{self.label}.log", "w")
        return subprocess.Popen([sys.executable, *argv], env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def watch(self, proc: subprocess.Popen, until, limit_s: float) -> float:
        """Sample RSS every 0.25 s until ``until()`` or ``limit_s``; return elapsed seconds."""
        ps = psutil.Process(proc.pid)
        t = time.perf_counter()
        while not until() and time.perf_counter() - t < limit_s:
            if proc.poll() is not None:
                raise SystemExit(f"{self.label} exited with {proc.returncode}; see .dev/bench-{self.label}.log")
            try:
                self.peak_rss = max(self.peak_rss, ps.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.25)
        return time.perf_counter() - t

    def wait_ready(self, proc: subprocess.Popen) -> None:
        self.watch(proc, lambda: ready(self.port), 120)

    def drop(self) -> None:
        self.ch.execute(f"DROP DATABASE IF EXISTS {self.db}")


def run_processor(v: Variant, total: int) -> dict:
    proc = v.spawn(["-m", "streams.cli", "process"])
    try:
        v.wait_ready(proc)
        elapsed = v.watch(proc, lambda: v.rows() >= total, 900)
        stored = v.rows()
        return {"samples": stored, "seconds": round(elapsed, 2), "samples_per_s": round(stored / elapsed),
                "peak_rss_mib": round(v.peak_rss / 2**20, 1)}
    finally:
        proc.terminate()
        proc.wait(30)


def run_naive(v: Variant, total: int, window_s: float) -> dict:
    proc = v.spawn([str(ROOT / "bench" / "naive_agent.py")])
    try:
        v.wait_ready(proc)
        first = v.rows()
        elapsed = v.watch(proc, lambda: v.rows() >= total, window_s)
        stored = v.rows() - first
        return {"samples": stored, "seconds": round(elapsed, 2), "samples_per_s": round(stored / elapsed),
                "peak_rss_mib": round(v.peak_rss / 2**20, 1),
                "note": f"time-boxed to {window_s:.0f}s; one INSERT per record"}
    finally:
        proc.terminate()
        proc.wait(30)


def run_raw(v: Variant, total: int) -> dict:
    proc = v.spawn([str(ROOT / "bench" / "raw_loop.py"), "--samples", str(total)])
    v.watch(proc, lambda: proc.poll() is not None, 900)
    out = (devenv.dev_dir() / f"bench-{v.label}.log").read_text().split()
    done, elapsed = int(out[-2]), float(out[-1])
    return {"samples": done, "seconds": round(elapsed, 2), "samples_per_s": round(done / elapsed),
            "peak_rss_mib": round(v.peak_rss / 2**20, 1),
            "note": "confluent-kafka consume + fastavro decode + columnar insert; no verify/normalize/transform"}


QUIX_PYTHON = ROOT / ".venv-quix" / "bin" / "python"


def run_quix(v: Variant, total: int) -> dict:
    """The Quix Streams application (bench/quix_app.py) in its own virtualenv (.venv-quix, make bench)."""
    proc = subprocess.Popen([str(QUIX_PYTHON), str(ROOT / "bench" / "quix_app.py"), "--samples", str(total)],
                            env=v.env, stdout=open(devenv.dev_dir() / f"bench-{v.label}.log", "w"),
                            stderr=subprocess.STDOUT)
    v.watch(proc, lambda: proc.poll() is not None, 900)
    out = (devenv.dev_dir() / f"bench-{v.label}.log").read_text().split()
    done, elapsed = int(out[-2]), float(out[-1])
    return {"samples": done, "seconds": round(elapsed, 2), "samples_per_s": round(done / elapsed),
            "peak_rss_mib": round(v.peak_rss / 2**20, 1),
            "note": "Quix Streams 3.28: verify + fastavro + normalize + rate_of_change (RocksDB state, changelog) "
                    "+ columnar insert in a BatchingSink, committed after the flush"}


def measure_latency(v: Variant, samples_per_s: int = 5_000, seconds: float = 20.0) -> dict:
    """A steady stream into a running processor on its own empty topic: produce -> row visible, in ms.

    Records of 7 samples are produced at ``samples_per_s`` for ``seconds``, each stamped with its
    send time (µs); every 50 ms the processor's database is asked which records (their ``cpu``
    sample) are visible, and a record's latency is when it was first seen minus when it was sent.
    """
    topic = f"{v.db}.samples"
    v.env["STREAMS_KAFKA__SAMPLES_TOPIC"] = topic
    kafka = v.settings.kafka.model_copy(update={"samples_topic": topic})
    create_topics(kafka, [topic])
    pub = KafkaPublisher(kafka, BatchCodec(v.settings.signing.keyring()))
    proc = v.spawn(["-m", "streams.cli", "process"])
    try:
        v.wait_ready(proc)
        per_s = samples_per_s / PER_RECORD
        n = int(per_s * seconds)
        sent: dict[str, int] = {}

        def produce() -> None:
            start = time.time()
            for i in range(n):
                delay = start + i / per_s - time.time()
                if delay > 0:
                    time.sleep(delay)
                [record] = make_samples(1, resources=500, base_us=time.time_ns() // 1000)
                for s in record:
                    s["resource_id"] = f"lat-{i % 500}"
                sent[record[0]["message_id"]] = record[0]["timestamp"]
                pub.publish(record)
                pub.poll(0)
            pub.flush(30)

        sender = threading.Thread(target=produce, daemon=True)
        sender.start()
        seen: dict[str, float] = {}
        deadline = time.time() + seconds + 60
        while time.time() < deadline and (sender.is_alive() or len(seen) < len(sent)):
            since = time.time_ns() // 1000 - 5_000_000
            rows = v.ch.execute(f"SELECT message_id FROM {v.db}.samples WHERE name = 'cpu' "
                                f"AND timestamp_us >= %(since)s", {"since": since})
            now = time.time_ns() // 1000
            for (mid,) in rows:
                if mid not in seen and mid in sent:
                    seen[mid] = (now - sent[mid]) / 1000
            time.sleep(0.05)
        lats = sorted(seen.values())
        q = statistics.quantiles(lats, n=100)
        return {"p50": round(q[49]), "p95": round(q[94]), "p99": round(q[98]), "max": round(lats[-1]),
                "records": len(lats), "missing": len(sent) - len(seen), "samples_per_s": samples_per_s,
                "note": f"fresh topic, a steady {samples_per_s:,} samples/s for {seconds:.0f}s; rows polled every "
                        "50 ms; processor.batch_timeout bounds the wait of a batch's oldest record"}
    finally:
        proc.terminate()
        proc.wait(30)


def goals(results: dict) -> list[dict]:
    """Each performance goal of issue 16 with this run's figure: ``[{figure, value, goal, met}]``."""
    shipped, lat = results["shipped"], results["latency_ms"]
    rows = [
        ("processor / raw loop (x1000)", round(results["ratios"]["shipped_vs_raw"] * 1000), ">= 1000",
         results["ratios"]["shipped_vs_raw"] >= 1.0),
        ("processor, samples/s per worker", shipped["samples_per_s"], ">= 60,000", shipped["samples_per_s"] >= 60_000),
        ("processor / Quix Streams app (x1000)", round(results["ratios"]["shipped_vs_quix"] * 1000), "> 1000",
         results["ratios"]["shipped_vs_quix"] > 1.0),
        ("latency p99 at 5,000 samples/s, ms", lat["p99"], "< 1,000", lat["p99"] < 1000),
        ("sink, duplicate check on, rows/s", results["sink"]["best_rows_per_s"], ">= 200,000",
         results["sink"]["best_rows_per_s"] >= 200_000),
        ("processor peak RSS, MiB", round(shipped["peak_rss_mib"]), "<= 300", shipped["peak_rss_mib"] <= 300),
        ("poller, signed samples/s, one process", results["poller"]["published_samples_per_s"], ">= 100,000",
         results["poller"]["meets_goal"]),
    ]
    return [{"figure": f, "value": v, "goal": g, "met": bool(m)} for f, v, g, m in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=840_000, help="samples pre-loaded into the topic")
    ap.add_argument("--naive-window", type=float, default=30.0, help="seconds the naive agent runs")
    ap.add_argument("--state-resources", type=int, default=1_000_000,
                    help="distinct resource ids for the bounded-state figure")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    args = ap.parse_args()

    services = devenv.up()
    name = f"bench{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "BENCH_NAME": name,
        "STREAMS_KAFKA__BOOTSTRAP_SERVERS": services["kafka"],
        "STREAMS_KAFKA__SAMPLES_TOPIC": f"{name}.samples",
        "STREAMS_KAFKA__DLQ_TOPIC": f"{name}.samples.dlq",
        "STREAMS_SIGNING__KEYS": json.dumps(KEYS),
        "STREAMS_LOG_LEVEL": "WARNING",
        "STREAMS_PROCESSOR__PIPELINE": str(ROOT / "bench" / "pipeline.yaml"),
    }
    env.pop("STREAMS_CONFIG", None)
    os.environ.update({k: v for k, v in env.items() if k.startswith("STREAMS_")})
    settings = load_settings()
    # retention.ms is set explicitly: Quix Streams copies it onto its changelog topics, and the local
    # broker reports only the configs a topic was created with (Apache Kafka reports them all).
    create_topics(settings.kafka, config={"retention.ms": str(7 * 86_400_000)})
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}

    n_records = args.samples // PER_RECORD
    print(f"== codec ({n_records // 10 * PER_RECORD} samples in records of {PER_RECORD})")
    results["codec"] = bench_codec(make_samples(n_records // 10))
    for k, v in results["codec"].items():
        print(f"   {k:<30} {v}")

    print(f"== publisher: pre-loading {n_records * PER_RECORD} signed samples into {settings.kafka.samples_topic}")
    records = make_samples(n_records)
    pub = KafkaPublisher(settings.kafka, BatchCodec(settings.signing.keyring()))
    t = time.perf_counter()
    for r in records:
        pub.publish(r)
    pub.flush(120)
    pub_s = time.perf_counter() - t
    del records
    total = pub.delivered
    results["publisher"] = {"samples": total, "failed": pub.failed, "seconds": round(pub_s, 2),
                            "samples_per_s": round(total / pub_s)}
    print(f"   {total} delivered, {pub.failed} failed, {total / pub_s:,.0f} samples/s")
    # Issue 3's figures, from the two measurements above: one poller process's publisher and codec.
    results["poller"] = {"published_samples_per_s": round(total / pub_s),
                         "sign_encode_us_per_sample": results["codec"]["encode_sign_us_per_sample"],
                         "sign_encode_fastavro_us_per_sample": results["codec"]["encode_sign_fastavro_us_per_sample"],
                         "goal_samples_per_s": 100_000, "meets_goal": total / pub_s >= 100_000}
    print(f"== poller, one process: {total / pub_s:,.0f} signed+encoded samples/s published to the local broker; "
          f"sign+encode {results['codec']['encode_sign_us_per_sample']} us/sample "
          f"(fastavro: {results['codec']['encode_sign_fastavro_us_per_sample']}) (goal >= 100,000 samples/s)")

    variants = []
    try:
        for label, title, fn in (
            ("shipped", "1. processor as shipped (streams process, one worker)", lambda v: run_processor(v, total)),
            ("naive", "2. naive per-event Faust agent", lambda v: run_naive(v, total, args.naive_window)),
            ("raw", "3. raw loop: consumer + fastavro + columnar insert", lambda v: run_raw(v, total)),
            ("quix", "4. a Quix Streams application doing the same job (bench/quix_app.py)",
             lambda v: run_quix(v, total)),
        ):
            print(f"== {title}")
            v = Variant(env, services, label)
            variants.append(v)
            results[label] = fn(v)
            r = results[label]
            print(f"   {r['samples']} rows in {r['seconds']}s: {r['samples_per_s']:,} samples/s, "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB")
        shipped, naive, raw, quix = (results[k]["samples_per_s"] for k in ("shipped", "naive", "raw", "quix"))
        results["ratios"] = {"shipped_vs_naive": round(shipped / naive, 2), "shipped_vs_raw": round(shipped / raw, 2),
                             "shipped_vs_quix": round(shipped / quix, 2)}
        print(f"== ratios: shipped/naive {shipped / naive:.2f}x, shipped/raw {shipped / raw:.2f}, "
              f"shipped/quix {shipped / quix:.2f}")

        print("== latency: a steady 5,000 samples/s for 20 s on a fresh topic, produce -> row visible (processor)")
        v = Variant(env, services, "latency")
        variants.append(v)
        results["latency_ms"] = measure_latency(v)
        lat = results["latency_ms"]
        print(f"   p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms, max {lat['max']} ms")
    finally:
        for v in variants:
            v.drop()

    print("== sink alone: columnar inserts through ClickHouseSink (bench/bench_sink.py)")
    from bench_sink import run as run_sink

    results["sink"] = run_sink(settings)
    print(f"   best {results['sink']['best_rows_per_s']:,} rows/s (goal {results['sink']['goal_rows_per_s']:,})")

    print(f"== bounded state: {args.state_resources:,} distinct resource ids through the processor, "
          "state_ttl 20 s (bench/bench_state.py)")
    from bench_state import run as run_state

    results["state"] = st = run_state(env, services, args.state_resources, free_port=free_port)
    print(f"   {st['resources']:,} resources in {st['stream_s']}s ({st['samples_per_s']:,}/s): peak RSS "
          f"{st['peak_rss_mib']:.0f} MiB (goal < {st['goal_peak_rss_mib']}); states held: at most "
          f"{st['state_resources_max_seen']:,} seen, {st['state_resources_at_end_of_stream']:,} at the end, "
          f"{st['state_resources_after_eviction']:,} after eviction ({st['evicted']:,} evicted)")
    print("== Ceilometer bridge, one process (bench/bench_bridge.py)")
    from bench_bridge import bench as bench_bridge

    results["ceilometer_bridge"] = b = bench_bridge(6000, services["kafka"], env, ROOT / ".dev" / "bench-bridge.log")
    print(f"   {b['samples']} Ceilometer samples: {b['samples_per_s']:,} samples/s wall, "
          f"{b['samples_per_cpu_s']:,} per CPU-second (translate alone {b['translate_samples_per_cpu_s']:,}), "
          f"peak RSS {b['peak_rss_mib']} MiB, load {b['load_average_1m']} (goal {b['goal_samples_per_s']:,}/s)")

    results["goals"] = goals(results)
    print("== goals (issue 16; measured in this run, side by side)")
    for g in results["goals"]:
        print(f"   {'met  ' if g['met'] else 'UNMET'} {g['figure']:<44} {g['value']:>12,} (goal {g['goal']})")

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"== written to {args.out}")
    # The local broker keeps every topic in memory: the pre-loaded samples are a few hundred MB. (The
    # alarm topics keep their shared names: not this run's to delete.)
    for failure in delete_topics(settings.kafka, [settings.kafka.samples_topic, settings.kafka.dlq_topic]):
        print(f"could not delete a bench topic: {failure}", file=sys.stderr)


if __name__ == "__main__":
    main()
