"""The first slice end to end: host metrics -> Kafka -> Faust -> ClickHouse, on real services."""

from __future__ import annotations

import re
import signal
import time

import pytest

from streams.codec import MAGIC
from streams.pollers.compute import HostPollster, LocalHostDiscovery, LocalProcessDiscovery, ProcessPollster
from streams.publisher import KafkaPublisher
from tests.conftest import make_test_sample
from tests.integration.conftest import wait_for


def _poll_and_publish(pipeline) -> list[dict]:
    """One real poll of this host (host + processes), published to the test's topic."""
    samples = HostPollster().get_samples(LocalHostDiscovery().discover())
    samples += ProcessPollster().get_samples(LocalProcessDiscovery(limit=50).discover())
    publisher = KafkaPublisher(pipeline.settings.kafka, pipeline.codec())
    publisher.publish(samples)
    assert publisher.flush(30) == 0
    assert publisher.failed == 0 and publisher.delivered == len(samples)
    return samples


def _stored(pipeline) -> int:
    return pipeline.rows("SELECT uniqExact(message_id) FROM {db}.samples")[0][0]


def test_polled_host_samples_arrive_with_correct_values_and_units(pipeline):
    samples = _poll_and_publish(pipeline)
    assert len(samples) > 10
    proc = pipeline.spawn("process")
    wait_for(lambda: _stored(pipeline) >= len(samples), 90, f"{len(samples)} rows in ClickHouse")

    rows = pipeline.rows(
        "SELECT message_id, name, type, unit, volume, resource_id, timestamp_us, toUnixTimestamp(timestamp), "
        "resource_metadata.key, resource_metadata.value, source FROM {db}.samples FINAL")
    assert len(rows) == len(samples)
    stored = {r[0]: r for r in rows}
    for s in samples:
        mid, name, typ, unit, volume, rid, ts_us, ts_s, mkeys, mvals, source = stored[s["message_id"]]
        assert (name, typ, unit, rid, source) == (s["name"], s["type"], s["unit"], s["resource_id"], s["source"])
        assert volume == pytest.approx(s["volume"])
        assert ts_us == s["timestamp"] and ts_s == s["timestamp"] // 1_000_000
        assert dict(zip(mkeys, mvals, strict=True)) == s["resource_metadata"]

    units = dict(pipeline.rows("SELECT DISTINCT name, unit FROM {db}.samples"))
    assert units["cpu"] == "ns" and units["memory.usage"] == "B" and units["disk.read.bytes"] == "B"
    assert units["network.incoming.bytes"] == "B"
    # Values are this host's: memory used is positive and below physical memory.
    import psutil

    host = LocalHostDiscovery().discover()[0].id
    [(mem,)] = pipeline.rows("SELECT volume FROM {db}.samples WHERE name = 'memory.usage' AND resource_id = %(r)s",
                             {"r": host})
    assert 0 < mem < psutil.virtual_memory().total
    # The processor counts a batch after acknowledging it, a moment after its rows are visible.
    wait_for(lambda: proc.metric("streams_samples_processed_total") == len(samples), 30, "processed metric")
    assert proc.metric("streams_sink_batch_rows_count") >= 1


def test_tampered_and_undecodable_records_go_to_dlq_and_nothing_else_is_lost(pipeline):
    codec = pipeline.codec()
    good = [[make_test_sample(resource_id=f"r{i}") for _ in range(3)] for i in range(20)]
    tampered = bytearray(codec.encode([make_test_sample(resource_id="evil", volume=1.0)]))
    tampered[-40] ^= 0x55  # a byte inside the signed body
    garbage = b"\x00\x01 definitely not avro"
    records = [(g[0]["resource_id"].encode(), codec.encode(g)) for g in good[:10]]
    records += [(b"evil", bytes(tampered)), (b"junk", garbage)]
    records += [(g[0]["resource_id"].encode(), codec.encode(g)) for g in good[10:]]
    pipeline.produce(records, headers=[("origin", b"test")])

    proc = pipeline.spawn("process")
    expected = sum(len(g) for g in good)
    wait_for(lambda: _stored(pipeline) >= expected, 90, f"{expected} good rows")

    dlq = pipeline.consume(pipeline.settings.kafka.dlq_topic, expected=2)
    assert len(dlq) == 2
    by_key = {m.key(): m for m in dlq}
    assert by_key[b"evil"].value() == bytes(tampered)  # original bytes, untouched
    assert by_key[b"junk"].value() == garbage
    evil = dict(by_key[b"evil"].headers())
    junk = dict(by_key[b"junk"].headers())
    assert (evil["streams.dlq.stage"], evil["streams.dlq.reason"]) == (b"verify", b"bad_signature")
    assert (junk["streams.dlq.stage"], junk["streams.dlq.reason"]) == (b"decode", b"not_single_object")
    assert evil["origin"] == b"test"  # original headers kept
    assert evil["streams.dlq.topic"] == pipeline.settings.kafka.samples_topic.encode()

    time.sleep(2)
    assert _stored(pipeline) == expected
    ids = {m for (m,) in pipeline.rows("SELECT message_id FROM {db}.samples")}
    assert ids == {s["message_id"] for g in good for s in g}
    assert proc.metric("streams_records_rejected_total") == 2
    # ... and noted for the pipeline-health dashboard
    letters = pipeline.rows("SELECT stage, reason, key FROM {db}.dead_letters FINAL ORDER BY key")
    assert letters == [("verify", "bad_signature", "evil"), ("decode", "not_single_object", "junk")]
    assert proc.proc.poll() is None, "worker must keep running after bad input"


def test_killing_processor_before_flush_loses_nothing(pipeline):
    codec = pipeline.codec()
    # A batch window far longer than the test: the first worker never flushes.
    first = pipeline.spawn("process", STREAMS_PROCESSOR__BATCH_TIMEOUT="600",
                           STREAMS_PROCESSOR__BATCH_SIZE="1000000")
    first.wait_ready()
    batches = [[make_test_sample(resource_id=f"res-{i % 37}") for _ in range(5)] for i in range(400)]
    pipeline.produce([(b[0]["resource_id"].encode(), codec.encode(b)) for b in batches])
    expected = {s["message_id"] for b in batches for s in b}
    # Let the worker fetch everything into its batch; none of it may be stored yet.
    time.sleep(5)
    assert _stored(pipeline) == 0
    assert first.kill(signal.SIGKILL) == -signal.SIGKILL

    second = pipeline.spawn("process")  # same consumer group, normal batch window
    wait_for(lambda: _stored(pipeline) >= len(expected), 90, f"{len(expected)} rows after restart")
    ids = {m for (m,) in pipeline.rows("SELECT message_id FROM {db}.samples")}
    assert ids == expected
    [(final_count,)] = pipeline.rows("SELECT count() FROM {db}.samples FINAL")
    assert final_count == len(expected)
    assert second.proc.poll() is None


def test_poller_service_publishes_on_interval_and_exposes_metrics(pipeline):
    processor = pipeline.spawn("process")
    poller = pipeline.spawn("poll", STREAMS_POLLER__INTERVAL="1", STREAMS_POLLER__MAX_PROCESSES="20")
    poller.wait_ready()
    host = LocalHostDiscovery().discover()[0].id
    # cpu_util needs two polls of the same resource: proves the interval loop runs.
    wait_for(lambda: pipeline.rows(
        "SELECT count() FROM {db}.samples WHERE name = 'cpu_util' AND resource_id = %(h)s", {"h": host})[0][0] >= 2,
        90, "two host cpu_util samples")
    [(util,)] = pipeline.rows(
        "SELECT argMax(volume, timestamp_us) FROM {db}.samples WHERE name = 'cpu_util' AND resource_id = %(h)s",
        {"h": host})
    assert 0.0 <= util <= 100.0
    assert poller.metric("streams_samples_polled_total") > 0
    assert poller.metric("streams_samples_published_total") > 0
    assert poller.metric("streams_publish_errors_total") == 0
    # The counter moves after the batch is fully handled (rows first, then state, then the metric).
    wait_for(lambda: processor.metric("streams_samples_processed_total") > 0, 10, "processed samples metric")

    # SIGTERM: the poller flushes what it holds, exits cleanly, and every sample it
    # reports delivered reaches ClickHouse.
    assert poller.kill(signal.SIGTERM) == 0
    m = re.search(r"poller stopped: (\d+) samples delivered, (\d+) failed", poller.tail(200))
    assert m, poller.tail()
    delivered, failed = int(m.group(1)), int(m.group(2))
    assert failed == 0 and delivered > 0
    wait_for(lambda: _stored(pipeline) == delivered, 60, f"{delivered} delivered samples stored")


def test_schema_migrate_is_idempotent_on_the_server(pipeline):
    from streams.storage.migrations import migrate, server_version

    tables = migrate(pipeline.ch, pipeline.db)
    assert "samples" in tables and migrate(pipeline.ch, pipeline.db) == tables
    types = dict(pipeline.rows(
        "SELECT name, type FROM system.columns WHERE database = %(d)s AND table = 'samples'", {"d": pipeline.db}))
    v = server_version(pipeline.ch)
    assert types["timestamp"] == ("DateTime64(6, 'UTC')" if v.has_datetime64 else "DateTime('UTC')")
    assert types["timestamp_us"] == "Int64"


def test_records_are_single_object_encoded_on_the_wire(pipeline):
    _poll_and_publish(pipeline)
    [msg] = pipeline.consume(pipeline.settings.kafka.samples_topic, expected=1, timeout=20)[:1]
    assert msg.value()[:2] == MAGIC
    assert msg.key().decode() == pipeline.codec().decode(msg.value())[0]["resource_id"]
