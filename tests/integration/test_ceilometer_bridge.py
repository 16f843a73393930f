"""The Ceilometer bridge with Ceilometer itself: its own publisher writes, the bridge and the processor store.

Ceilometer 27 and ``oslo.messaging[kafka]`` live in ``.venv-ceilometer``
(``make ceilometer-venv``, run by ``make test``); ``ceilometer_publish.py``
loads Ceilometer's publisher as its pipeline does and publishes into the
local broker, on this test's own topics.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Producer

from streams.storage.backend import ServerConnection
from streams.topics import create_topics
from tests.integration.conftest import StreamsProcess, free_port, wait_for
from tests.unit.storage.test_sink import rollups_agree

ROOT = Path(__file__).resolve().parents[2]
CEILOMETER_PYTHON = ROOT / ".venv-ceilometer" / "bin" / "python"
PUBLISH = Path(__file__).with_name("ceilometer_publish.py")
SECRET = "integration-telemetry-secret"
MB = 2**20


@pytest.fixture(scope="module")
def ceilometer_python() -> Path:
    assert CEILOMETER_PYTHON.exists(), f"{CEILOMETER_PYTHON} is missing: run `make ceilometer-venv` (make test does)"
    return CEILOMETER_PYTHON


class Ceilometer:
    """This test's Ceilometer side: topic names, and publishing through Ceilometer's own publisher."""

    def __init__(self, pipeline, python: Path) -> None:
        self.pipeline = pipeline
        self.python = python
        self.bootstrap = pipeline.settings.kafka.bootstrap_servers
        self.metering = f"{pipeline.name}.metering"  # the publisher URL's topic= ; Kafka adds ".sample"
        self.event = f"{pipeline.name}.event"
        self.topics = [f"{self.metering}.sample", f"{self.event}.sample"]
        self.dlq = f"{pipeline.name}.ceilometer.dlq"
        create_topics(pipeline.settings.kafka, [*self.topics, self.dlq])

    def url(self, kind: str = "samples", per_meter: bool = False) -> str:
        topic = self.metering if kind == "samples" else self.event
        if per_meter:  # options beyond topic/driver need the host left out (transport_url then)
            return f"notifier://?topic={topic}&per_meter_topic=1"
        return f"notifier://{self.bootstrap}?driver=kafka&topic={topic}"

    def publish(self, batches: list, kind: str = "samples", per_meter: bool = False, pause: float = 0.0,
                secret: str = SECRET, wait: bool = True) -> subprocess.Popen:
        path = self.pipeline.tmp / f"input-{uuid.uuid4().hex[:8]}.json"
        path.write_text(json.dumps(batches))
        log = (self.pipeline.tmp / "ceilometer-publish.log").open("a")
        proc = subprocess.Popen(
            [str(self.python), str(PUBLISH), "--bootstrap", self.bootstrap, "--secret", secret,
             "--url", self.url(kind, per_meter), "--kind", kind, "--input", str(path), "--pause", str(pause)],
            stdout=log, stderr=subprocess.STDOUT)
        if wait:
            assert proc.wait(120) == 0, (self.pipeline.tmp / "ceilometer-publish.log").read_text()[-3000:]
        return proc

    def bridge(self, **env: str) -> StreamsProcess:
        port = free_port()
        full = {**self.pipeline.env,
                "STREAMS_CEILOMETER__TOPICS": json.dumps(self.topics),
                "STREAMS_CEILOMETER__GROUP_ID": f"{self.pipeline.name}-bridge",
                "STREAMS_CEILOMETER__TELEMETRY_SECRET": SECRET,
                "STREAMS_CEILOMETER__DLQ_TOPIC": self.dlq, **env}
        proc = StreamsProcess(["bridge", "ceilometer", "--metrics-port", str(port)], full,
                              self.pipeline.tmp / f"bridge-{len(self.pipeline.processes)}.log", port)
        self.pipeline.processes.append(proc)
        return proc.start()


@pytest.fixture
def ceilometer(pipeline, ceilometer_python) -> Ceilometer:
    return Ceilometer(pipeline, ceilometer_python)


def iso(t: datetime) -> str:
    return t.isoformat()


def sample(name: str, kind: str, unit: str, volume, resource: str, t: datetime, **extra) -> dict:
    return {"name": name, "type": kind, "unit": unit, "volume": volume, "user_id": "user-1",
            "project_id": "project-1", "resource_id": resource, "timestamp": iso(t),
            "resource_metadata": {"display_name": resource, "flavor": {"ram": 2048, "vcpus": 2},
                                  "security_groups": ["default"]},
            "source": "openstack", "id": str(uuid.uuid4()), **extra}


def instance_event(instance: str, t: datetime, memory_mb: int = 2048) -> dict:
    return {"message_id": str(uuid.uuid4()), "event_type": "compute.instance.create.end", "generated": iso(t),
            "traits": [["service", 1, "compute"], ["tenant_id", 1, "project-1"], ["user_id", 1, "user-1"],
                       ["instance_id", 1, instance], ["resource_id", 1, instance], ["host", 1, "compute-01"],
                       ["instance_type", 1, "m1.small"], ["memory_mb", 2, memory_mb], ["vcpus", 2, 2],
                       ["root_gb", 2, 20], ["ephemeral_gb", 2, 0],
                       ["launched_at", 4, iso((t - timedelta(seconds=9)).replace(tzinfo=None))],
                       ["progress", 3, 100.0]],
            "raw": {}}


def statistics(pipeline, meter: str, *args: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "streams.cli", "query", "statistics", "-m", meter, "--json", *args],
                         env=pipeline.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def stored(pipeline) -> int:
    return pipeline.rows("SELECT count() FROM {db}.samples")[0][0]


def test_samples_and_events_from_ceilometer_are_stored_with_ceilometers_values(pipeline, ceilometer):
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    calls = [[sample("cpu", "cumulative", "ns", 10**9 * (k + 1) * (i + 1), f"vm-{i}", base + timedelta(minutes=k))
              for i in range(3)] +
             [sample("memory.usage", "gauge", "MB", 100.5 + 10 * i + k, f"vm-{i}", base + timedelta(minutes=k))
              for i in range(3)] for k in range(3)]
    events = [instance_event("vm-0", base + timedelta(minutes=5)),
              {"message_id": str(uuid.uuid4()), "event_type": "image.update", "generated": iso(base),
               "traits": [["name", 1, "cirros"], ["size", 2, 13287936]],
               "raw": {"payload": {"id": "img-1", "tags": ["base"]}, "event_type": "image.update"}}]
    bridge = ceilometer.bridge()
    processor = pipeline.spawn("process")
    bridge.wait_ready()
    processor.wait_ready()
    ceilometer.publish(calls)
    wait_for(lambda: stored(pipeline) >= 18, 90, "Ceilometer's 18 samples stored")
    # The first call's 6 samples again, with per_meter_topic: once in full, once per meter (12 copies).
    # They are stored already, on partitions the processor has checked, so only the bridge's
    # streams.maybe-stored header makes the processor look them up.
    ceilometer.publish(calls[:1], per_meter=True)
    ceilometer.publish([events], kind="events")

    expected = 18 + 4  # Ceilometer's samples + memory, vcpus, disk.root.size, disk.ephemeral.size of the event
    wait_for(lambda: stored(pipeline) >= expected, 90, f"{expected} samples stored")
    # 3 calls, then per_meter_topic: one full record plus one per meter (2), then 1 of events
    wait_for(lambda: bridge.metric("streams_bridge_records_total") >= 3 + 3 + 1, 30, "every record read")
    dropped = lambda: bridge.metric("streams_bridge_duplicates_total") + pipeline.rows(  # noqa: E731
        "SELECT sum(duplicates) FROM {db}.sink_flushes")[0][0]
    wait_for(lambda: dropped() >= 12, 30, "the 12 copies dropped")
    time.sleep(2)  # anything stored twice would show now
    [(count, uniq)] = pipeline.rows("SELECT count(), uniqExact(message_id) FROM {db}.samples")
    assert count == uniq == expected and dropped() == 12

    mem = statistics(pipeline, "memory.usage")
    volumes = [s["volume"] for c in calls for s in c if s["name"] == "memory.usage"]
    assert mem[0]["count"] == 9 and mem[0]["unit"] == "B"
    assert mem[0]["sum"] == pytest.approx(sum(volumes) * MB)  # Ceilometer's MB are binary: stored in B
    assert (mem[0]["min"], mem[0]["max"]) == (min(volumes) * MB, max(volumes) * MB)
    cpu = {s["groupby"]["resource_id"]: s for s in statistics(pipeline, "cpu", "--groupby", "resource_id")}
    assert {r: (s["count"], s["max"]) for r, s in cpu.items()} == {
        f"vm-{i}": (3, 3 * 10**9 * (i + 1)) for i in range(3)}
    assert cpu["vm-0"]["duration_start"] == iso(base)
    [memory] = statistics(pipeline, "memory")  # derived from the event through meters.yaml
    assert memory["max"] == 2048 * MB and memory["count"] == 1
    [row] = pipeline.rows("SELECT resource_metadata.key, resource_metadata.value FROM {db}.samples "
                          "WHERE name = 'cpu' AND resource_id = 'vm-0' ORDER BY timestamp_us LIMIT 1")
    metadata = dict(zip(row[0], row[1], strict=True))
    assert json.loads(metadata["flavor"]) == {"ram": 2048, "vcpus": 2}

    rows = pipeline.rows("SELECT event_type, message_id, traits.key, traits.dtype, traits.value, raw, "
                         "source_topic FROM {db}.events ORDER BY event_type")
    assert [r[0] for r in rows] == ["compute.instance.create.end", "image.update"]
    create = rows[0]
    traits = {k: (t, v) for k, t, v in zip(create[2], create[3], create[4], strict=True)}
    assert traits["memory_mb"] == (2, "2048") and traits["progress"] == (3, "100.0")
    assert traits["launched_at"][0] == 4 and create[1] == events[0]["message_id"] and create[5] == ""
    assert json.loads(rows[1][5])["payload"]["tags"] == ["base"] and rows[1][6] == ceilometer.topics[1]
    assert bridge.metric("streams_bridge_dead_letters_total") == 0


def test_tampered_and_bad_records_land_in_the_dead_letter_topic_and_the_bridge_goes_on(pipeline, ceilometer):
    t = datetime.now(UTC) - timedelta(minutes=10)
    call = [sample("cpu", "cumulative", "ns", 7777, "vm-t", t), sample("cpu", "cumulative", "ns", 8888, "vm-u", t)]
    ceilometer.publish([call])
    [original] = pipeline.consume(ceilometer.topics[0], 1)
    value = original.value()
    assert value.count(b'\\"counter_volume\\": 7777') == 1
    tampered = value.replace(b'\\"counter_volume\\": 7777', b'\\"counter_volume\\": 7778')
    # A fresh topic for the bridge to read: the tampered copy, bytes that are not JSON, and a record
    # signed with another secret (Ceilometer's own publisher again).
    producer = Producer({"bootstrap.servers": ceilometer.bootstrap})
    producer.produce(ceilometer.topics[1], tampered)
    producer.produce(ceilometer.topics[1], b"\x00not json")
    assert producer.flush(30) == 0
    wrong = [sample("cpu", "cumulative", "ns", 1, "vm-w", t)]
    ceilometer.publish([wrong], secret="not-the-bridges-secret")
    ceilometer.publish([[sample("cpu", "cumulative", "ns", 5, "vm-ok", t)]])

    bridge = ceilometer.bridge()
    processor = pipeline.spawn("process")
    bridge.wait_ready()
    processor.wait_ready()
    letters = pipeline.consume(ceilometer.dlq, 3, timeout=60)
    by_reason = {}
    for m in letters:
        h = dict(m.headers())
        by_reason.setdefault(h["streams.dlq.reason"].decode(), []).append((h, m.value()))
    assert sorted((r, len(v)) for r, v in by_reason.items()) == [("bad_signature", 2), ("not_json", 1)]
    values = {v for _, v in by_reason["bad_signature"]}
    assert tampered in values  # the original bytes
    h = next(h for h, v in by_reason["bad_signature"] if v == tampered)
    assert h["streams.dlq.stage"] == b"verify" and h["streams.dlq.entries"] == b"0"
    assert h["streams.dlq.topic"] == ceilometer.topics[1].encode() and b"HMAC mismatch" in h["streams.dlq.detail"]
    assert dict(by_reason["not_json"][0][0])["streams.dlq.entries"] == b"*"
    # The good entries go on: both of Ceilometer's originals (the metering topic), the untampered
    # half of the tampered record (a repeat of vm-u's sample), and the last good record.
    wait_for(lambda: stored(pipeline) >= 3, 60, "the good samples stored")
    time.sleep(2)
    rows = dict(pipeline.rows("SELECT resource_id, volume FROM {db}.samples"))
    assert rows == {"vm-t": 7777.0, "vm-u": 8888.0, "vm-ok": 5.0}
    assert bridge.metric("streams_bridge_dead_letters_total") == 3
    assert bridge.metric("streams_bridge_rejected_total") == 3
    assert bridge.proc.poll() is None


def test_kill_9_of_the_bridge_mid_stream_loses_nothing_and_stores_nothing_twice(pipeline, ceilometer):
    """Ceilometer publishes while the bridge runs; the bridge is killed -9 mid-stream and restarted.

    The restarted bridge re-reads what was not committed: events already stored are skipped by the
    bridge, samples already stored by the processor (every bridge record is marked maybe-stored)."""
    base = datetime.now(UTC) - timedelta(hours=1)
    calls = [[sample(meter, kind, unit, float(k * 10 + j), f"vm-{j}", base + timedelta(seconds=10 * k))
              for j in range(5) for meter, kind, unit in (("cpu", "cumulative", "ns"),
                                                           ("memory.usage", "gauge", "MB"),
                                                           ("disk.read.bytes", "cumulative", "B"))]
             for k in range(60)]
    events = [[instance_event(f"vm-{k}-{j}", base + timedelta(seconds=10 * k), 512 + k) for j in range(2)]
              for k in range(30)]
    expected = sum(map(len, calls)) + 4 * sum(map(len, events))
    bridge = ceilometer.bridge(STREAMS_CEILOMETER__BATCH_SIZE="3")
    processor = pipeline.spawn("process")
    bridge.wait_ready()
    processor.wait_ready()
    samples_pub = ceilometer.publish(calls, pause=0.1, wait=False)
    events_pub = ceilometer.publish(events, kind="events", pause=0.2, wait=False)
    wait_for(lambda: bridge.metric("streams_bridge_records_total") >= 15, 120, "the bridge to be mid-stream")
    assert bridge.kill(signal.SIGKILL) == -signal.SIGKILL
    restarted = ceilometer.bridge()
    restarted.wait_ready()
    assert samples_pub.wait(180) == 0 and events_pub.wait(180) == 0
    wait_for(lambda: stored(pipeline) >= expected, 120, f"{expected} samples stored")
    wait_for(lambda: pipeline.rows("SELECT count() FROM {db}.events")[0][0] >= 60, 60, "60 events stored")
    time.sleep(3)  # a late duplicate would show now
    [(count, uniq)] = pipeline.rows("SELECT count(), uniqExact(message_id) FROM {db}.samples")
    assert count == uniq == expected
    [(count, uniq)] = pipeline.rows("SELECT count(), uniqExact(message_id) FROM {db}.events")
    assert count == uniq == 60
    conn = ServerConnection(pipeline.settings.clickhouse.url)

    class Renamed:
        def execute(self, sql, params=None):
            return conn.execute(sql.replace("t.", f"{pipeline.db}."), params)
    try:
        rollups_agree(Renamed(), "rollups_1m")
        rollups_agree(Renamed(), "rollups_1h")
    finally:
        conn.close()
    assert restarted.proc.poll() is None and processor.proc.poll() is None
