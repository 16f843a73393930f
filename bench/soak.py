"""``make soak``: the pipeline under a steady load for a long time; does anything grow?

Runs the processor, the notifier and a load generator standing in for a fleet of pollers
(signed records through the project's own ``KafkaPublisher``, ``--rate`` samples/s spread over
``--resources`` resources, each record stamped with its send time), plus a few alarms on the
generator's resources with ``log://`` actions, against the local services. Every ``--every``
seconds it samples:

* the processor's and the notifier's RSS (MiB), and the local broker's (``broker_rss_mib``; the
  stand-in broker keeps every record of every topic in memory, so this is what it holds: start it
  afresh with ``streams dev down --purge`` to compare runs; each of its fetches lists every batch the
  partition holds, so its CPU, and the p99 with it, climbs as the run goes on: README "Round 4");
* the processor's consumer lag (records: high watermark minus committed offset, summed over partitions);
* produce -> row visible, p99 over the interval (ms): one record in ten is a probe, of one of 16
  probe resources, whose rows are looked for every 100 ms by the table's sorting key (probe
  resources, timestamps since the oldest probe not yet seen: a backlog's probes are found late, not
  lost, and the query reads a few granules however large the table grows);
  also the age of the oldest probe not yet visible, which a growing backlog shows at once;
* records and probes the generator produced in the interval (it runs in this process: a stalled
  generator shows here, not as missing probes);
* CPU of the processor, the notifier, the broker, ClickHouse and this process (generator and
  probe queries), in cores: on a small machine the load generator and the services share the
  cores with the processor, and this says which one is short.

At the end it prints the series and a verdict: RSS flat (the last third's mean within 10 % of the
middle third's), lag flat (the last third's mean no higher than the middle third's plus one
second of load), p99 under ``--p99-goal`` ms in every interval after the first; it exits 1 unless all
three hold. Not part of CI.

Usage: ``python bench/soak.py [--minutes 30] [--rate 10000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
from confluent_kafka import Consumer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams import devenv  # noqa: E402
from streams.codec import BatchCodec  # noqa: E402
from streams.config import load_settings  # noqa: E402
from streams.processor.app import ensure_state_topic  # noqa: E402
from streams.publisher import KafkaPublisher  # noqa: E402
from streams.storage.clickhouse import connect  # noqa: E402
from streams.storage.migrations import migrate  # noqa: E402
from streams.topics import admin, create_topics, delete_topics  # noqa: E402

METERS = [("cpu", "cumulative", "ns"), ("cpu_util", "gauge", "%"), ("memory.usage", "gauge", "B"),
          ("disk.read.bytes", "cumulative", "B"), ("disk.write.bytes", "cumulative", "B"),
          ("network.incoming.bytes", "cumulative", "B"), ("network.outgoing.bytes", "cumulative", "B")]


PROBE_RESOURCES = tuple(f"soak-probe-{k}" for k in range(16))
"""The resources of the probe records (one record in ten), spread over the partitions by key."""


def record(i: int, resources: int) -> list[dict]:
    rid = PROBE_RESOURCES[(i // 10) % len(PROBE_RESOURCES)] if i % 10 == 0 else f"soak-host-{i % resources}"
    now = time.time_ns() // 1000
    base = uuid.uuid4().hex[:30]  # one uuid per record, its samples numbered: unique, and a seventh of the cost
    return [{"message_id": f"{base}{j:02x}", "name": m, "type": t, "unit": u,
             "volume": float((i // resources) * 1e9 if m == "cpu" else (i * 7 + j) % 97), "user_id": None,
             "user_name": None, "project_id": "soak", "project_name": None, "resource_id": rid, "timestamp": now,
             "monotonic_time": None, "resource_metadata": {"kind": "host", "cpu_number": "4"}, "source": "soak",
             "message_signature": None} for j, (m, t, u) in enumerate(METERS)]


class Generator(threading.Thread):
    """Produces ``rate`` samples/s; remembers the send time of one record in ten (the probes)."""

    def __init__(self, settings, rate: int, resources: int) -> None:
        super().__init__(daemon=True)
        self.pub = KafkaPublisher(settings.kafka, BatchCodec(settings.signing.keyring()))
        self.per_s = rate / len(METERS)
        self.resources = resources
        self.stop = threading.Event()
        self.probes: dict[str, tuple[float, int]] = {}  # message_id -> (send time, sample timestamp µs)
        self.lock = threading.Lock()
        self.produced = 0  # records
        self.probes_made = 0

    def run(self) -> None:
        # Every 10 ms, the records due by then, back to back: a poller publishes its cycle's samples in a
        # burst too, and one wake-up per record (1,430 a second at 10,000 samples/s) cost this process
        # CPU that the processor shares on a small machine.
        start = time.time()
        i = 0
        while not self.stop.is_set():
            due = int((time.time() - start) * self.per_s) + 1
            while i < due:
                samples = record(i, self.resources)
                if i % 10 == 0:
                    with self.lock:
                        self.probes[samples[0]["message_id"]] = (time.time(), samples[0]["timestamp"])
                        self.probes_made += 1
                self.pub.publish(samples)
                i += 1
            self.pub.poll(0)
            self.produced = i
            time.sleep(0.01)
        self.pub.flush(30)


def lag(settings, group: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": group})
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
        committed = c.committed(parts, timeout=10)
        total = 0
        for tp in committed:
            _, high = c.get_watermark_offsets(tp, timeout=10)
            total += high - (tp.offset if tp.offset >= 0 else 0)
        return total
    finally:
        c.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rate", type=int, default=10_000, help="samples/s")
    ap.add_argument("--resources", type=int, default=2_000)
    ap.add_argument("--every", type=float, default=30.0, help="seconds between measurements")
    ap.add_argument("--p99-goal", type=float, default=1000.0, help="ms")
    ap.add_argument("--out", default=str(ROOT / "bench" / "soak.json"))
    args = ap.parse_args()

    services = devenv.up()
    name = f"soak{uuid.uuid4().hex[:8]}"
    env = {**os.environ,
           "STREAMS_KAFKA__BOOTSTRAP_SERVERS": services["kafka"],
           "STREAMS_KAFKA__SAMPLES_TOPIC": f"{name}.samples", "STREAMS_KAFKA__DLQ_TOPIC": f"{name}.samples.dlq",
           "STREAMS_KAFKA__ALARMS_TOPIC": f"{name}.alarms", "STREAMS_KAFKA__ALARMS_DLQ_TOPIC": f"{name}.alarms.dlq",
           "STREAMS_CLICKHOUSE__URL": f"clickhouse://default@{services['clickhouse']}/{name}",
           "STREAMS_COORDINATION__HOSTS": services["zookeeper"], "STREAMS_COORDINATION__ROOT": f"/{name}",
           "STREAMS_SIGNING__KEYS": json.dumps({"soak": "soak-secret"}),
           "STREAMS_PROCESSOR__APP_ID": name, "STREAMS_PROCESSOR__PIPELINE": str(ROOT / "etc" / "pipeline.yaml"),
           "STREAMS_PROCESSOR__DATA_DIR": str(devenv.dev_dir() / "soak" / name),
           "STREAMS_NOTIFIER__GROUP_ID": f"{name}-notifier",
           "STREAMS_LOG_LEVEL": os.environ.get("SOAK_LOG_LEVEL", "WARNING")}
    env.pop("STREAMS_CONFIG", None)
    os.environ.update({k: v for k, v in env.items() if k.startswith("STREAMS_")})
    settings = load_settings()
    create_topics(settings.kafka)
    create_topics(settings.kafka, [settings.kafka.alarms_topic, settings.kafka.alarms_dlq_topic])
    ensure_state_topic(settings)
    ch = connect(settings.clickhouse)
    migrate(ch, name)
    logs = devenv.dev_dir() / "soak"
    logs.mkdir(parents=True, exist_ok=True)

    def spawn(*argv: str) -> subprocess.Popen:
        out = open(logs / f"{name}-{argv[0]}.log", "w")
        prefix = os.environ.get("SOAK_PROFILE_PROCESSOR", "").split() if argv[0] == "process" else []
        return subprocess.Popen([*prefix, sys.executable, "-m", "streams.cli", *argv], env=env, stdout=out,
                                stderr=subprocess.STDOUT)

    for i, threshold in enumerate((50, 80, 95)):
        subprocess.run([sys.executable, "-m", "streams.cli", "alarm", "create", "--id", f"soak-{i}", "--name",
                        f"soak {i}", "--meter", "cpu_util", "--operator", "gt", "--threshold", str(threshold),
                        "--period", "10", "--evaluation-periods", "2", "--resource-id", f"soak-host-{i}*",
                        "--alarm-action", "log://", "--ok-action", "log://"], env=env, check=True,
                       capture_output=True)
    processor, notifier = spawn("process"), spawn("notify", "--metrics-port", "0")
    watched = {"processor": psutil.Process(processor.pid), "notifier": psutil.Process(notifier.pid),
               "soak": psutil.Process()}
    for service, info in devenv.status().items():
        if info.get("pid"):
            watched[service] = psutil.Process(info["pid"])
    time.sleep(10)
    gen = Generator(settings, args.rate, args.resources)
    gen.start()
    series = []
    end = time.time() + args.minutes * 60

    def rss_mib(proc: psutil.Process) -> float | None:
        try:
            return round(proc.memory_info().rss / 2**20, 1)
        except psutil.Error:
            return None

    def cpu_times() -> dict[str, float]:
        out = {}
        for key, proc in watched.items():
            try:
                t = proc.cpu_times()
                out[key] = t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                out[key] = 0.0
        return out

    try:
        while time.time() < end:
            window_start, cpu_start = time.time(), cpu_times()
            made_start, probes_start = gen.produced, gen.probes_made
            window_end = window_start + args.every
            lats: list[float] = []
            while time.time() < window_end:
                with gen.lock:
                    oldest = next(iter(gen.probes.values()), None)
                if oldest is not None:
                    # The probes' rows since the oldest probe not yet seen: (name, resource_id, timestamp_us)
                    # is the table's sorting key, so this reads a few granules, whatever the table's size.
                    rows = ch.execute(f"SELECT message_id FROM {name}.samples WHERE name = 'cpu' "
                                      "AND resource_id IN %(probes)s AND timestamp_us >= %(since)s",
                                      {"probes": PROBE_RESOURCES, "since": oldest[1]})
                    now = time.time()
                    with gen.lock:
                        for (mid,) in rows:
                            sent = gen.probes.pop(mid, None)
                            if sent is not None:
                                lats.append((now - sent[0]) * 1000)
                time.sleep(0.1)
            for p in (processor, notifier):
                if p.poll() is not None:
                    raise SystemExit(f"{p.args[3]} exited with {p.returncode}; see {logs}")
            point = {"t_s": round(args.minutes * 60 - (end - time.time())),
                     "processor_rss_mib": rss_mib(watched["processor"]),
                     "notifier_rss_mib": rss_mib(watched["notifier"]),
                     "lag_records": lag(settings, name, settings.kafka.samples_topic),
                     "p99_ms": round(statistics.quantiles(lats, n=100)[98]) if len(lats) > 10 else None,
                     "probes_visible": len(lats)}
            if "kafka" in watched:  # the local broker keeps every record in memory: what it holds, all topics
                point["broker_rss_mib"] = rss_mib(watched["kafka"])
            with gen.lock:
                oldest = next(iter(gen.probes.values()), None)
            elapsed, cpu_end = time.time() - window_start, cpu_times()
            point.update({
                "oldest_unseen_s": round(time.time() - oldest[0], 1) if oldest is not None else 0.0,
                "records_made": gen.produced - made_start, "probes_made": gen.probes_made - probes_start,
                "cpu_cores": {k: round((cpu_end[k] - cpu_start[k]) / elapsed, 2) for k in watched}})
            series.append(point)
            print(json.dumps(point), flush=True)
    finally:
        gen.stop.set()
        gen.join(60)
        for p in (processor, notifier):
            p.terminate()
            p.wait(60)
    third = max(1, len(series) // 3)
    middle, last = series[third:2 * third] or series, series[-third:]

    def mean(key: str, points: list[dict]) -> float:
        return statistics.fmean(p[key] for p in points)

    rss_flat = mean("processor_rss_mib", last) <= 1.10 * mean("processor_rss_mib", middle)
    lag_flat = mean("lag_records", last) <= mean("lag_records", middle) + args.rate / len(METERS)
    p99s = [p["p99_ms"] for p in series[1:] if p["p99_ms"] is not None]
    p99_ok = bool(p99s) and max(p99s) < args.p99_goal
    verdict = {"rss_flat": rss_flat, "lag_flat": lag_flat, "p99_under_goal": p99_ok,
               "ok": rss_flat and lag_flat and p99_ok}
    result = {"minutes": args.minutes, "rate": args.rate, "series": series, "verdict": verdict}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("== verdict:", json.dumps(verdict))
    ch.execute(f"DROP DATABASE IF EXISTS {name}")
    # The run's topics (samples, dead letters, alarms, the state changelog, Faust's own): the local broker
    # keeps every record in memory, about 1 GB per 30-minute run.
    listed = admin(settings.kafka).list_topics(timeout=30).topics
    for failure in delete_topics(settings.kafka, [t for t in listed if t.startswith(name)]):
        print("could not delete topic:", failure, file=sys.stderr)
    if not verdict["ok"]:
        sys.exit(1)  # make soak fails with the verdict


if __name__ == "__main__":
    main()
