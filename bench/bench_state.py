"""Bounded state: 1,000,000 distinct resource ids through the processor, then eviction.

Each record is the first sample of a new resource, so every one leaves per-resource state (the bench
pipeline's rate transformer). With ``processor.state_ttl`` short, idle states are evicted (changelog
tombstones) while the stream runs. Reports the processor's peak RSS and its state table size
(``streams_state_resources``) at the end of the stream and after eviction. Goal: peak RSS < 600 MiB.

Usage (``make bench`` calls :func:`run`): needs the local services and the bench environment.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from streams import devenv
from streams.codec import BatchCodec
from streams.config import load_settings
from streams.publisher import KafkaPublisher
from streams.storage.clickhouse import connect
from streams.storage.migrations import migrate
from streams.topics import create_topics

GOAL_MIB = 600


def _metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def run(env: dict[str, str], services: dict[str, str], resources: int = 1_000_000, ttl_s: float = 20.0,
        free_port=None) -> dict:
    """Produce ``resources`` one-sample records (distinct resource ids), process them with
    ``state_ttl`` = ``ttl_s``; return peak RSS and the table sizes."""
    name = f"{env['BENCH_NAME']}_state"
    port = free_port()
    topic = f"{name}.samples"
    run_env = {**env, "STREAMS_KAFKA__SAMPLES_TOPIC": topic, "STREAMS_KAFKA__DLQ_TOPIC": f"{topic}.dlq",
               "STREAMS_CLICKHOUSE__URL": f"clickhouse://default@{services['clickhouse']}/{name}",
               "STREAMS_PROCESSOR__APP_ID": name, "STREAMS_PROCESSOR__METRICS_PORT": str(port),
               "STREAMS_PROCESSOR__STATE_TTL": str(ttl_s), "STREAMS_CLICKHOUSE__DEDUPLICATE": "false",
               "STREAMS_PROCESSOR__DATA_DIR": str(devenv.dev_dir() / "bench" / name)}
    settings = load_settings(kafka={"samples_topic": topic, "dlq_topic": f"{topic}.dlq"},
                             clickhouse={"url": run_env["STREAMS_CLICKHOUSE__URL"]})
    create_topics(settings.kafka)
    ch = connect(settings.clickhouse)
    migrate(ch, name)
    pub = KafkaPublisher(settings.kafka, BatchCodec(settings.signing.keyring()))
    base = time.time_ns() // 1000 - 60_000_000
    md = {"kind": "process", "cpu_number": "1"}
    t0 = time.perf_counter()
    for i in range(resources):
        pub.publish([{"message_id": f"state-{i}", "name": "cpu", "type": "cumulative", "unit": "ns",
                      "volume": float(i), "user_id": None, "user_name": None, "project_id": "bench",
                      "project_name": None, "resource_id": f"host/process/{i}", "timestamp": base + i,
                      "monotonic_time": None, "resource_metadata": md, "source": "bench",
                      "message_signature": None}])
        if i % 10_000 == 0:
            pub.poll(0)
    pub.flush(300)
    produce_s = time.perf_counter() - t0
    log = open(devenv.dev_dir() / "bench-state.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "process"], env=run_env, stdout=log,
                            stderr=subprocess.STDOUT)
    ps = psutil.Process(proc.pid)
    peak = 0
    held_max = 0.0
    try:
        t0 = time.perf_counter()

        def sample() -> None:
            nonlocal peak, held_max
            if proc.poll() is not None:
                raise SystemExit(f"the processor exited with {proc.returncode}; see .dev/bench-state.log")
            peak = max(peak, ps.memory_info().rss)
            held_max = max(held_max, _metric(port, "streams_state_resources") or 0)

        while (ch.execute(f"SELECT count() FROM {name}.samples")[0][0] < resources
               and time.perf_counter() - t0 < 1200):
            sample()
            time.sleep(0.5)
        stream_s = time.perf_counter() - t0
        held_at_end = _metric(port, "streams_state_resources") or 0
        t1 = time.perf_counter()
        while time.perf_counter() - t1 < ttl_s * 4 and (_metric(port, "streams_state_resources") or 0) > 0:
            sample()
            time.sleep(0.5)
        held_after = _metric(port, "streams_state_resources")
        evicted = _metric(port, "streams_state_evicted_total")
    finally:
        proc.terminate()
        proc.wait(60)
        ch.execute(f"DROP DATABASE IF EXISTS {name}")
    return {"resources": resources, "state_ttl_s": ttl_s, "produce_s": round(produce_s, 1),
            "stream_s": round(stream_s, 1), "samples_per_s": round(resources / stream_s),
            "peak_rss_mib": round(peak / 2**20, 1), "state_resources_max_seen": int(held_max),
            "state_resources_at_end_of_stream": int(held_at_end),
            "state_resources_after_eviction": int(held_after or 0),
            "evicted": int(evicted or 0), "goal_peak_rss_mib": GOAL_MIB, "meets_goal": peak / 2**20 < GOAL_MIB}


if __name__ == "__main__":  # a quick run on its own: python bench/bench_state.py [resources]
    import json
    import os
    import socket
    import uuid

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

    def _free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    services = devenv.up()
    env = {**os.environ, "BENCH_NAME": f"bench{uuid.uuid4().hex[:8]}",
           "STREAMS_KAFKA__BOOTSTRAP_SERVERS": services["kafka"],
           "STREAMS_SIGNING__KEYS": json.dumps({"bench": "bench-secret"}), "STREAMS_LOG_LEVEL": "WARNING",
           "STREAMS_PROCESSOR__PIPELINE": str(Path(__file__).resolve().parent / "pipeline.yaml")}
    env.pop("STREAMS_CONFIG", None)
    os.environ.update({k: v for k, v in env.items() if k.startswith("STREAMS_")})
    print(json.dumps(run(env, services, int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000,
                         free_port=_free_port), indent=2))
