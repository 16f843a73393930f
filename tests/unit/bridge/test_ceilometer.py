"""Reading captured Ceilometer records: envelope, limits, verification, normalization."""

from __future__ import annotations

import json

import pytest

from streams.bridge.ceilometer import CeilometerReader, Limits, nesting_depth, parse_timestamp, unwrap
from streams.bridge.signing import Verifier, compute_signature
from streams.codec import RejectedMessage
from streams.processor.normalize import Normalizer
from tests.unit.bridge.conftest import SECRET, records

NOW_US = parse_timestamp("2025-06-02T00:00:00")  # the captures' samples are from 2025-06-01


def reader(**limits) -> CeilometerReader:
    return CeilometerReader(Verifier(SECRET), Normalizer(), Limits(**limits))


def envelope(payload: list, **inner) -> bytes:
    doc = {"message_id": "env-1", "publisher_id": "telemetry.publisher.h", "event_type": "metering",
           "priority": "SAMPLE", "payload": payload, "timestamp": "2026-01-01 00:00:00", "_context": {}, **inner}
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(doc)}).encode()


def captured_payload(scenario: str = "default") -> list[dict]:
    [rec] = [r for r in records() if r["scenario"] == scenario][:1]
    return json.loads(json.loads(rec["value"])["oslo.message"])["payload"]


def test_every_captured_sample_record_reads_without_refusals():
    r = reader()
    by_scenario: dict[str, int] = {}
    for rec in records():
        result = r.read(rec["value"].encode(), NOW_US)
        assert not result.rejected, (rec["scenario"], result.rejected)
        by_scenario[rec["scenario"]] = by_scenario.get(rec["scenario"], 0) + len(result.samples)
    assert by_scenario == {"default": 4, "edge_case_signature": 1, "per_meter_topic": 6, "virtual_host_path": 1}


def test_samples_are_mapped_field_by_field():
    result = reader().read(envelope(captured_payload()), NOW_US)
    cpu, mem, net, cpu_full = result.samples
    assert cpu["name"] == "cpu" and cpu["type"] == "cumulative" and cpu["unit"] == "ns"
    assert cpu["volume"] == 182640000000.0 and cpu["message_id"] == "a9e1b8f0-3eaf-11f0-9b8e-0242ac120002"
    assert cpu["timestamp"] == parse_timestamp("2025-06-01T12:00:00.123456+00:00") == 1748779200123456
    assert cpu["user_name"] == "alice" and cpu["project_name"] == "demo" and cpu["source"] == "openstack"
    assert cpu["resource_metadata"] == {"display_name": "web-01", "instance_type": "m1.small", "cpu_number": "1"}
    assert cpu["message_signature"] == captured_payload()[0]["message_signature"]
    # The processor's normalization, per sample: MB are binary megabytes, stored in B.
    assert mem["unit"] == "B" and mem["volume"] == 512.5 * 2**20 and mem["user_name"] is None
    assert net["monotonic_time"] == 1234567.891 and net["resource_metadata"]["fref"] == "null"
    assert json.loads(net["resource_metadata"]["parameters"]) == {"bridge": None, "interfaceid": None}
    assert json.loads(cpu_full["resource_metadata"]["flavor"])["ram"] == 2048


def test_timestamps_naive_means_utc():
    assert parse_timestamp("2025-06-01T12:00:05.678901") == parse_timestamp("2025-06-01T12:00:05.678901+00:00")
    assert parse_timestamp("2025-06-01T14:00:05+02:00") == parse_timestamp("2025-06-01T12:00:05Z")
    assert parse_timestamp("1970-01-01T00:00:00.000001") == 1
    with pytest.raises(ValueError):
        parse_timestamp("yesterday")


def test_captured_events_read_with_their_traits():
    [rec] = records("kafka_events.json")
    result = reader().read(rec["value"].encode(), NOW_US)
    assert not result.rejected and not result.samples
    create, image = result.events
    assert create.event_type == "compute.instance.create.end"
    assert create.generated_us == parse_timestamp("2025-06-01T12:00:05.678901")
    assert ("memory_mb", 2, 2048) in create.traits and ("launched_at", 4, "2025-06-01T11:59:58.123000") in create.traits
    assert create.raw == {} and image.raw["payload"]["tags"] == ["base", "cirros"]
    assert create.document()["traits"]["progress"] == 100.0


@pytest.mark.parametrize("value, stage, reason", [
    (b"", "limits", "empty"),
    (None, "limits", "empty"),
    (b"not json", "unwrap", "not_json"),
    (b"\xff\xfe", "unwrap", "not_json"),
    (b'{"oslo.version": "2.0"}', "unwrap", "not_oslo_envelope"),
    (b'[1, 2]', "unwrap", "not_oslo_envelope"),
    (json.dumps({"oslo.message": "[1]"}).encode(), "unwrap", "not_oslo_envelope"),
    (json.dumps({"oslo.message": "{bad"}).encode(), "unwrap", "not_json"),
    (json.dumps({"oslo.message": json.dumps({"payload": []})}).encode(), "unwrap", "no_payload"),
    (json.dumps({"oslo.message": json.dumps({"payload": {"a": 1}})}).encode(), "unwrap", "no_payload"),
])
def test_bad_records_are_refused_whole(value, stage, reason):
    result = reader().read(value, NOW_US)
    [(index, err)] = result.rejected
    assert (index, err.stage, err.reason) == (-1, stage, reason)


def test_limits_are_checked_on_the_raw_bytes():
    value = envelope(captured_payload())
    assert reader(max_record_bytes=len(value)).read(value, NOW_US).samples
    [(_, err)] = reader(max_record_bytes=len(value) - 1).read(value, NOW_US).rejected
    assert err.reason == "too_large" and str(len(value)) in err.detail
    depth = nesting_depth(value)
    assert depth == 7  # outer, inner object, payload, sample, metadata, properties, its tags list
    [(_, err)] = reader(max_depth=depth - 1).read(value, NOW_US).rejected
    assert (err.stage, err.reason) == ("limits", "too_deep")
    [(_, err)] = reader(max_payload_entries=3).read(value, NOW_US).rejected
    assert err.reason == "too_many_entries"
    bomb = b'{"oslo.message": "' + b"[" * 100_000 + b'"}'
    [(_, err)] = reader(max_depth=10**6).read(bomb, NOW_US).rejected  # the parser's own limit
    assert err.reason in ("too_deep", "not_json")
    inner_bomb = json.dumps({"oslo.message": "[" * 100_000 + "]" * 100_000}).encode()
    [(_, err)] = reader(max_depth=10**6, max_record_bytes=10**7).read(inner_bomb, NOW_US).rejected
    assert err.reason == "too_deep"


def test_one_tampered_sample_is_refused_and_the_others_pass():
    payload = captured_payload()
    payload[1] = {**payload[1], "counter_volume": 9999.0}
    result = reader().read(envelope(payload), NOW_US)
    assert [s["name"] for s in result.samples] == ["cpu", "network.incoming.bytes", "cpu"]
    [(index, err)] = result.rejected
    assert (index, err.stage, err.reason) == (1, "verify", "bad_signature")


def test_unsigned_and_unknown_messages():
    payload = captured_payload()
    unsigned = {**payload[0], "message_signature": ""}
    result = reader().read(envelope([unsigned, {"hello": 1}, 7]), NOW_US)
    assert [(i, e.stage, e.reason) for i, e in result.rejected] == [
        (0, "verify", "unsigned"), (1, "normalize", "unknown_message"), (2, "normalize", "unknown_message")]


def signed(msg: dict) -> dict:
    msg = {k: v for k, v in msg.items() if k != "message_signature"}
    return {**msg, "message_signature": compute_signature(msg, SECRET)}


@pytest.mark.parametrize("change, reason", [
    ({"counter_type": "rate"}, "bad_type"),
    ({"counter_volume": "12"}, "bad_volume"),
    ({"counter_volume": True}, "bad_volume"),
    ({"counter_volume": float("nan")}, "non_finite_volume"),
    ({"counter_volume": 10**400}, "non_finite_volume"),
    ({"timestamp": "last tuesday"}, "bad_timestamp"),
    ({"timestamp": None}, "bad_timestamp"),
    ({"timestamp": "2999-01-01T00:00:00"}, "bad_timestamp"),  # the processor's max_future_skew
    ({"resource_id": ""}, "empty_field"),
    ({"resource_id": 12}, "bad_field"),
    ({"message_id": None}, "bad_field"),
    ({"user_id": ["x"]}, "bad_field"),
    ({"resource_metadata": "flat"}, "bad_field"),
    ({"monotonic_time": "soon"}, "bad_field"),
    ({"counter_unit": None}, "bad_field"),
])
def test_bad_fields_are_refused_by_normalize(change, reason):
    msg = signed({**captured_payload()[0], **change})
    [(index, err)] = reader().read(envelope([msg]), NOW_US).rejected
    assert (index, err.stage, err.reason) == (0, "normalize", reason)


@pytest.mark.parametrize("change, reason", [
    ({"generated": "noon"}, "bad_timestamp"),
    ({"traits": "many"}, "bad_traits"),
    ({"traits": [["a", 9, "x"]]}, "bad_traits"),
    ({"traits": [["a", True, "x"]]}, "bad_traits"),
    ({"traits": [["a", 1]]}, "bad_traits"),
    ({"raw": []}, "bad_field"),
    ({"event_type": ""}, "empty_field"),
])
def test_bad_events_are_refused(change, reason):
    [rec] = records("kafka_events.json")
    event = json.loads(json.loads(rec["value"])["oslo.message"])["payload"][0]
    msg = signed({**event, **change})
    [(index, err)] = reader().read(envelope([msg], event_type="event"), NOW_US).rejected
    assert (index, err.stage, err.reason) == (0, "normalize", reason)


def test_unwrap_reads_the_envelope_fields():
    env = unwrap(envelope(captured_payload()), Limits())
    assert (env.message_id, env.event_type, env.priority) == ("env-1", "metering", "SAMPLE")
    with pytest.raises(RejectedMessage):
        unwrap(b"{}", Limits())


def test_an_empty_secret_reads_only_unsigned_data():
    msg = {k: v for k, v in captured_payload()[0].items()}
    unsigned = {**msg, "message_signature": ""}
    r = CeilometerReader(Verifier(""), Normalizer())
    result = r.read(envelope([unsigned, msg]), NOW_US)
    assert len(result.samples) == 1
    [(index, err)] = result.rejected
    assert (index, err.reason) == (1, "bad_signature")


def test_orjson_reads_fast_and_python_json_decides_what_it_cannot():
    """orjson reads integers beyond 64 bits as floats: such a message fails its first check and is read
    again exactly, so the edge case's 10**20 verifies and is stored as Ceilometer signed it."""
    [rec] = [r for r in records() if r["scenario"] == "edge_case_signature"]
    r = reader()
    assert r.fast
    [edge] = r.read(rec["value"].encode(), NOW_US).samples
    assert edge["resource_metadata"]["big"] == "100000000000000000000"
    assert edge["resource_metadata"]["tiny"] == "1e-07" and edge["resource_metadata"]["whole_float"] == "2.0"
    msg = signed({**captured_payload()[0], "counter_volume": 10**30})
    [sample] = r.read(envelope([msg]), NOW_US).samples
    assert sample["volume"] == 1e30
    nan = envelope([signed({**captured_payload()[1], "monotonic_time": float("nan")})])
    assert b"NaN" in nan
    [sample] = r.read(nan, NOW_US).samples  # orjson refuses NaN; json reads it
    assert sample["monotonic_time"] != sample["monotonic_time"]
    tampered = signed(captured_payload()[0])
    tampered["resource_metadata"] = {**tampered["resource_metadata"], "cpu_number": 2}
    [(_, err)] = r.read(envelope([tampered]), NOW_US).rejected
    assert err.reason == "bad_signature"


def test_values_that_raised_inside_the_reader_are_refused_and_the_other_entries_pass():
    """Inputs that used to raise out of read() (and stop the bridge): each costs its own entry only."""
    good = signed(captured_payload()[0])
    surrogate = {**captured_payload()[0], "resource_metadata": {"sg": ["\ud800"]}, "message_signature": "00"}
    list_type = signed({**captured_payload()[0], "counter_type": ["gauge"]})
    huge_int = signed({**captured_payload()[0], "monotonic_time": 10**400})
    result = reader().read(envelope([surrogate, list_type, huge_int, good]), NOW_US)
    assert [(i, e.stage, e.reason) for i, e in result.rejected] == [
        (0, "normalize", "bad_field"), (1, "normalize", "bad_field"), (2, "normalize", "bad_field")]
    assert "UnicodeEncodeError" in result.rejected[0][1].detail and "OverflowError" in result.rejected[2][1].detail
    assert len(result.samples) == 1


def test_a_bug_in_reading_costs_the_record_not_the_batch(monkeypatch):
    from streams.bridge.batch import BatchTranslator
    from streams.bridge.meters import load_meters
    from streams.codec import BatchCodec
    from streams.signing import Keyring

    class Rec:
        def __init__(self, value: bytes) -> None:
            self._v = value

        def value(self) -> bytes:
            return self._v

        def topic(self) -> str:
            return "metering.sample"

        def partition(self) -> int:
            return 0

        def offset(self) -> int:
            return 7

    r = reader()
    translator = BatchTranslator(r, load_meters(), BatchCodec(Keyring({"k": b"k" * 16}, "k")))
    real = r.read
    monkeypatch.setattr(r, "read", lambda v, now=None: (_ for _ in ()).throw(RuntimeError("boom")) if v == b"x"
                        else real(v, now))
    out = translator.translate([Rec(b"x"), Rec(envelope([signed(captured_payload()[0])]))], NOW_US)
    [letter] = out.dead_letters
    assert (letter.error.stage, letter.error.reason) == ("unwrap", "internal_error")
    assert out.samples == 1
