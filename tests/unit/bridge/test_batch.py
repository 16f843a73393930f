"""One batch: captured records in, signed SampleBatch records, events and dead letters out."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from streams.bridge.batch import BatchTranslator
from streams.bridge.ceilometer import CeilometerReader, parse_timestamp
from streams.bridge.meters import load_meters
from streams.bridge.signing import Verifier, compute_signature
from streams.processor.normalize import Normalizer
from tests.unit.bridge.conftest import SECRET, records

NOW_US = parse_timestamp("2025-06-02T00:00:00")


@dataclass
class Msg:
    """A stand-in for confluent_kafka.Message (unit tests need no broker)."""

    _value: bytes | None
    _topic: str = "metering.sample"
    _partition: int = 0
    _offset: int = 0
    _key: bytes | None = None
    _headers: list = field(default_factory=list)

    def value(self): return self._value
    def key(self): return self._key
    def headers(self): return self._headers
    def topic(self): return self._topic
    def partition(self): return self._partition
    def offset(self): return self._offset


def translator(codec, secret: str = SECRET) -> BatchTranslator:
    return BatchTranslator(CeilometerReader(Verifier(secret), Normalizer()), load_meters(), codec)


def captured(name: str = "kafka_metering_samples.json") -> list[Msg]:
    return [Msg(r["value"].encode(), r["topic"], r["partition"], r["offset"]) for r in records(name)]


def test_captured_records_become_one_signed_record_per_resource(codec):
    out = translator(codec).translate(captured() + captured("kafka_events.json"), NOW_US)
    assert not out.dead_letters and not out.rejected
    # per_meter_topic sends 3 of the default scenario's samples twice (6), virtual_host_path memory.usage
    # again: all dropped in the batch, by message_id.
    assert out.duplicates == 7
    assert out.samples == 5 + 2 and out.derived == 2  # 5 distinct Ceilometer samples + memory, vcpus of an event
    assert len(out.events) == 2 and out.events[0].topic == "event.sample"
    decoded = {key.decode(): codec.decode(value) for key, value in out.records}
    instance = "3b8f6c2a-1d4e-4f5a-9b6c-7d8e9f0a1b2c"
    assert sorted(s["name"] for s in decoded[instance]) == ["cpu", "cpu", "memory", "memory.usage", "vcpus"]
    assert {s["resource_id"] for batch in decoded.values() for s in batch} == set(decoded)
    assert decoded["edge-r\u00e9source-1"][0]["volume"] == -0.1


def test_refused_entries_dead_letter_their_record_once_with_headers(codec):
    rec = records()[0]
    inner = json.loads(json.loads(rec["value"])["oslo.message"])
    inner["payload"][0]["counter_volume"] = 1.0  # tampered
    inner["payload"][2]["message_signature"] = ""  # unsigned
    value = json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(inner)}).encode()
    msgs = [Msg(value, "metering.sample", 3, 41, None, [("x-origin", b"test")]), Msg(b"{", "metering.sample", 1, 7)]
    out = translator(codec).translate(msgs, NOW_US)
    assert out.samples == 2
    assert out.rejected == [("verify", "bad_signature"), ("verify", "unsigned"), ("unwrap", "not_json")]
    tampered, broken = out.dead_letters
    headers = dict(tampered.headers())
    assert headers["x-origin"] == b"test"
    assert headers["streams.dlq.stage"] == b"verify" and headers["streams.dlq.reason"] == b"bad_signature"
    assert headers["streams.dlq.topic"] == b"metering.sample"
    assert (headers["streams.dlq.partition"], headers["streams.dlq.offset"]) == (b"3", b"41")
    assert headers["streams.dlq.entries"] == b"0,2" and b"has no signature" in headers["streams.dlq.detail"]
    assert tampered.record.value() == value  # the original bytes
    assert dict(broken.headers())["streams.dlq.entries"] == b"*"


def test_an_unencodable_sample_dead_letters_its_record_not_the_batch(codec):
    # Only reachable with an empty secret: a signature check already refuses text with no UTF-8 form.
    def unsigned(resource_id: str, mid: str) -> dict:
        return {"source": "s", "counter_name": "cpu", "counter_type": "gauge", "counter_unit": "%",
                "counter_volume": 1, "user_id": None, "user_name": None, "project_id": None, "project_name": None,
                "resource_id": resource_id, "timestamp": "2025-06-01T00:00:00", "resource_metadata": {},
                "message_id": mid, "monotonic_time": None, "message_signature": ""}

    def record(*payload) -> bytes:
        return json.dumps({"oslo.message": json.dumps({"payload": list(payload)})}).encode()

    msgs = [Msg(record(unsigned("r1", "a")), _offset=1), Msg(record(unsigned("r1", "b\ud800")), _offset=2)]
    out = translator(codec, secret="").translate(msgs, NOW_US)
    assert out.samples == 1 and [codec.decode(v)[0]["message_id"] for _, v in out.records] == ["a"]
    [dead] = out.dead_letters
    assert dead.record.offset() == 2 and dead.error.reason == "unencodable"


def test_records_stay_within_the_processors_limits(codec):
    """A resource with more samples than processor.max_samples_per_record, or more bytes than
    max_record_bytes, is split into several records; a sample alone over the limit is dead-lettered."""
    from streams.codec import RecordLimits

    def sample(mid: str, resource: str = "r1", big: str = "") -> dict:
        msg = {"source": "s", "counter_name": "cpu", "counter_type": "gauge", "counter_unit": "%",
               "counter_volume": 1, "user_id": None, "user_name": None, "project_id": None, "project_name": None,
               "resource_id": resource, "timestamp": "2025-06-01T00:00:00", "resource_metadata": {"big": big},
               "message_id": mid, "monotonic_time": None}
        msg["message_signature"] = compute_signature(msg, SECRET)
        return msg

    def record(*payload) -> bytes:
        return json.dumps({"oslo.message": json.dumps({"payload": list(payload)})}).encode()

    limits = RecordLimits(record_bytes=4000, samples=3)
    t = BatchTranslator(CeilometerReader(Verifier(SECRET), Normalizer(limits=limits)), load_meters(), codec, limits)
    out = t.translate([Msg(record(*[sample(f"m{i}") for i in range(7)]), _offset=1),
                       Msg(record(*[sample(f"b{i}", "r2", "x" * 1500) for i in range(4)]), _offset=2),
                       Msg(record(sample("huge", "r3", "y" * 5000)), _offset=3)], NOW_US)
    sizes = {key: [len(codec.decode(v)) for k, v in out.records if k == key] for key, _ in out.records}
    assert sizes[b"r1"] == [3, 3, 1] and sum(sizes[b"r2"]) == 4 and max(sizes[b"r2"]) < 4
    assert all(len(v) <= 4000 for _, v in out.records) and out.samples == 11
    [dead] = out.dead_letters
    assert dead.record.offset() == 3 and dead.error.reason == "too_large"
