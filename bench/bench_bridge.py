"""Ceilometer bridge throughput: Ceilometer samples/s through one ``streams bridge ceilometer`` process.

Records are shaped like the captures in ``tests/data/ceilometer/`` (one
``publish_samples`` call of a compute agent: every meter of several
instances, full instance metadata, signed with Ceilometer's algorithm,
oslo.messaging 2.0 envelope). They are pre-loaded into a topic, then one
bridge process reads them all and republishes signed SampleBatch records
(broker acknowledgements and offset commits included). Figures:

* ``translate_samples_per_s``: :class:`~streams.bridge.batch.BatchTranslator`
  alone, in this process (unwrap, verify, normalize, group, encode+sign);
* ``samples_per_s``: the bridge process end to end, from ready to its last
  commit (``streams_bridge_records_total`` reaching the record count);
* ``samples_per_cpu_s``: the same samples over the CPU time the bridge
  process used meanwhile (all its threads, librdkafka's included): the
  figure for one process with a core of its own, which the wall-clock
  figure is not on a shared 2-core machine (``load_average_1m`` says how shared);
* ``peak_rss_mib`` of the bridge.

Usage: ``python bench/bench_bridge.py [--records N]``, or from ``bench/run.py``.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
from confluent_kafka import Producer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams.bridge.signing import compute_signature  # noqa: E402

SECRET = "bench-telemetry-secret"
METERS = [("cpu", "cumulative", "ns"), ("memory.usage", "gauge", "MB"), ("disk.read.bytes", "cumulative", "B"),
          ("disk.write.bytes", "cumulative", "B"), ("network.incoming.bytes", "cumulative", "B"),
          ("network.outgoing.bytes", "cumulative", "B"), ("vcpus", "gauge", "vcpu"), ("memory", "gauge", "MB")]
INSTANCES_PER_RECORD = 5


def instance_metadata(i: int) -> dict:
    """Shaped like the compute pollsters' instance metadata (capture.py's ``instance_metadata``)."""
    return {"display_name": f"web-{i:03d}", "name": f"instance-{i:08x}", "instance_id": f"vm-{i}",
            "instance_type": "m1.small", "host": "b7a1c0d2e3f4a5b6c7d8e9f0a1b2c3d4", "instance_host": "compute-01",
            "flavor": {"id": "2", "name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20, "ephemeral": 0, "swap": 0},
            "status": "active", "state": "running", "task_state": None,
            "image": {"id": "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f"}, "image_ref_url": None,
            "architecture": "x86_64", "os_type": "hvm", "vcpus": 1, "memory_mb": 2048, "disk_gb": 20,
            "root_gb": 20, "ephemeral_gb": 0, "cpu_number": 1, "security_groups": ["default", "web"]}


def make_records(n_records: int, instances: int = 500) -> tuple[list[bytes], int]:
    """``n_records`` envelopes of ``INSTANCES_PER_RECORD`` instances x every meter; returns (values, samples)."""
    base = datetime.now(UTC) - timedelta(hours=1)
    values, samples = [], 0
    for r in range(n_records):
        ts = (base + timedelta(milliseconds=r)).isoformat()
        payload = []
        for k in range(INSTANCES_PER_RECORD):
            i = (r * INSTANCES_PER_RECORD + k) % instances
            md = instance_metadata(i)
            for j, (name, kind, unit) in enumerate(METERS):
                msg = {"source": "openstack", "counter_name": name, "counter_type": kind, "counter_unit": unit,
                       "counter_volume": r * 1000 + j if kind == "cumulative" else 512.5 + j,
                       "user_id": "5f4e3d2c1b0a49e8a7b6c5d4e3f2a1b0", "user_name": None,
                       "project_id": "8a3c1f2e9b7d4e6fa0c1d2e3f4a5b6c7", "project_name": None,
                       "resource_id": f"vm-{i}", "timestamp": ts, "resource_metadata": md,
                       "message_id": str(uuid.uuid1()), "monotonic_time": None}
                msg["message_signature"] = compute_signature(msg, SECRET)
                payload.append(msg)
        samples += len(payload)
        inner = {"message_id": str(uuid.uuid4()), "publisher_id": "telemetry.publisher.bench",
                 "event_type": "metering", "priority": "SAMPLE", "payload": payload,
                 "timestamp": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"), "_context": {}}
        values.append(json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(inner)}).encode())
    return values, samples


def bench_translate(values: list[bytes], samples: int) -> dict:
    """The pure translation in this process, in batches of 2000 records."""
    from streams.bridge.batch import BatchTranslator
    from streams.bridge.ceilometer import CeilometerReader
    from streams.bridge.meters import load_meters
    from streams.bridge.signing import Verifier
    from streams.codec import BatchCodec
    from streams.processor.normalize import Normalizer
    from streams.signing import Keyring

    class Msg:
        def __init__(self, v: bytes) -> None:
            self.v = v

        def value(self) -> bytes:
            return self.v

        def topic(self) -> str:
            return "bench"

        partition = offset = lambda self: 0  # noqa: E731

    translator = BatchTranslator(CeilometerReader(Verifier(SECRET), Normalizer()), load_meters(),
                                 BatchCodec(Keyring({"bench": b"bench-secret"}, "bench")))
    msgs = [Msg(v) for v in values]
    started, cpu = time.perf_counter(), time.process_time()
    out_samples = 0
    for i in range(0, len(msgs), 2000):
        out = translator.translate(msgs[i:i + 2000])
        assert not out.dead_letters, out.dead_letters[:1]
        out_samples += out.samples
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"translate_samples_per_s": round(samples / seconds),
            "translate_samples_per_cpu_s": round(samples / cpu),
            "translate_cpu_us_per_sample": round(cpu / samples * 1e6, 1)}


def metric(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name)] in " {")


def run_bridge(env: dict[str, str], values: list[bytes], samples: int, bootstrap: str, port: int,
               topic: str) -> dict:
    """Pre-load ``values`` into ``topic``, run one bridge process over them; samples/s and peak RSS."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10_000,
                         "queue.buffering.max.messages": 1_000_000})
    for i, v in enumerate(values):
        while True:
            try:
                producer.produce(topic, v, key=str(i).encode())
                break
            except BufferError:
                producer.poll(0.5)
    assert producer.flush(120) == 0
    log = open(env["BENCH_LOG"], "ab")  # noqa: SIM115
    argv = [sys.executable, "-m", "streams.cli", "bridge", "ceilometer", "--metrics-port", str(port)]
    if env.get("BENCH_PYSPY"):  # py-spy record --gil: where the bridge's Python time goes (collapsed stacks)
        argv = [str(Path(sys.executable).with_name("py-spy")), "record", "--gil", "--format", "raw", "-r", "200",
                "-o", env["BENCH_PYSPY"], "--", *argv]
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    ps = psutil.Process(proc.pid)
    if env.get("BENCH_PYSPY"):
        time.sleep(1)
        ps = ps.children()[0] if ps.children() else ps
    peak = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # ready = joined the group; reading starts then
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"bridge exited with {proc.returncode}; see {env['BENCH_LOG']}")
            time.sleep(0.05)
        started, cpu0 = time.perf_counter(), sum(ps.cpu_times()[:2])
        while metric(port, "streams_bridge_records_total") < len(values):
            peak = max(peak, ps.memory_info().rss)
            if proc.poll() is not None or time.perf_counter() - started > 600:
                raise RuntimeError(f"bridge stopped early; see {env['BENCH_LOG']}")
            time.sleep(0.2)
        seconds, cpu = time.perf_counter() - started, sum(ps.cpu_times()[:2]) - cpu0
        published = metric(port, "streams_bridge_samples_total")
    finally:
        (ps if env.get("BENCH_PYSPY") else proc).terminate()
        proc.wait(30)
    return {"records": len(values), "samples": samples, "republished": int(published),
            "seconds": round(seconds, 2), "samples_per_s": round(samples / seconds),
            "cpu_seconds": round(cpu, 2), "samples_per_cpu_s": round(samples / cpu),
            "peak_rss_mib": round(peak / 2**20), "goal_samples_per_s": 20_000,
            "load_average_1m": round(os.getloadavg()[0], 1)}


def bench(records: int, bootstrap: str, base_env: dict[str, str], log_path: Path) -> dict:
    """Both figures; topics of their own (created here) and the bridge's own consumer group."""
    from streams.config import KafkaSettings
    from streams.topics import create_topics

    name = f"bench-bridge-{uuid.uuid4().hex[:8]}"
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    source, samples_topic = f"{name}.metering.sample", f"{name}.samples"
    topics = [source, samples_topic, f"{name}.dlq"]
    create_topics(kafka, topics)
    try:
        return _bench(records, bootstrap, base_env, log_path, name, source, samples_topic)
    finally:  # about 400 MB per run: the local broker keeps topics in memory
        from streams.topics import delete_topics

        for failure in delete_topics(kafka, topics):
            print(f"could not delete a bench topic: {failure}", file=sys.stderr)


def _bench(records: int, bootstrap: str, base_env: dict[str, str], log_path: Path, name: str, source: str,
           samples_topic: str) -> dict:
    values, samples = make_records(records)
    result = {"per_record": INSTANCES_PER_RECORD * len(METERS),
              "bytes_per_sample": round(sum(map(len, values)) / samples)}
    result.update(bench_translate(values, samples))
    port = _free_port()
    env = {**base_env, "STREAMS_KAFKA__BOOTSTRAP_SERVERS": bootstrap, "STREAMS_KAFKA__SAMPLES_TOPIC": samples_topic,
           "STREAMS_CEILOMETER__TOPICS": json.dumps([source]), "STREAMS_CEILOMETER__GROUP_ID": name,
           "STREAMS_CEILOMETER__TELEMETRY_SECRET": SECRET, "STREAMS_CEILOMETER__DLQ_TOPIC": f"{name}.dlq",
           "STREAMS_CEILOMETER__STORE_EVENTS": "false", "STREAMS_SIGNING__KEYS": '{"bench": "bench-secret"}',
           "STREAMS_LOG_LEVEL": "WARNING", "BENCH_LOG": str(log_path)}
    result.update(run_bridge(env, values, samples, bootstrap, port, source))
    return result


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=6000, help="Ceilometer records (40 samples each)")
    ap.add_argument("--bootstrap", default="127.0.0.1:19092")
    ap.add_argument("--profile", help="write py-spy collapsed stacks (--gil) of the bridge here")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "STREAMS_CONFIG"}
    if args.profile:
        env["BENCH_PYSPY"] = str(Path(args.profile).resolve())
    r = bench(args.records, args.bootstrap, env, ROOT / ".dev" / "bench-bridge.log")
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
