import io
import json
import random
import string

import fastavro
import pytest
from fastavro.schema import fingerprint

from streams.codec import (
    HEADER_SIZE,
    MAGIC,
    BatchCodec,
    RejectedMessage,
    SchemaStore,
    group_by_resource,
    metadata_to_strings,
)
from streams.signing import SIGNATURE_SIZE, Keyring


def test_round_trip_keeps_every_field(codec, sample_factory):
    samples = [
        sample_factory(name="cpu", volume=1.5e9),
        sample_factory(name="memory.usage", type="gauge", unit="B", volume=512.5,
                       user_id="u", user_name="alice", project_name="demo",
                       monotonic_time=None, resource_metadata={"a": "1", "é": "ü"},
                       message_signature="ab" * 32),
    ]
    assert codec.decode(codec.encode(samples)) == samples


def test_record_is_single_object_encoded_with_crc64_fingerprint(codec, sample_factory):
    rec = codec.encode([sample_factory()])
    assert rec[:2] == MAGIC == b"\xc3\x01"
    batch = codec.store["streams.SampleBatch"]
    assert rec[2:HEADER_SIZE] == batch.fingerprint
    # The body after the header is plain Avro binary of the writer schema.
    body = fastavro.schemaless_reader(io.BytesIO(rec[HEADER_SIZE:]), batch.parsed, None)
    assert body["key_id"] == "k-new"
    assert body["signature"] == rec[-SIGNATURE_SIZE:]


def test_fingerprint_matches_avro_spec_vector():
    # Avro spec: CRC-64-AVRO of "int" is 0x7275d51a3f395c8f, written little-endian.
    assert bytes.fromhex(fingerprint('"int"', "CRC-64-AVRO")) == (0x7275D51A3F395C8F).to_bytes(8, "little")


def test_timestamps_stay_integer_microseconds(codec, sample_factory):
    ts = 1_795_317_321_738_703
    out = codec.decode(codec.encode([sample_factory(timestamp=ts)]))
    assert out[0]["timestamp"] == ts and isinstance(out[0]["timestamp"], int)


def test_public_schema_declares_timestamp_micros():
    raw = json.loads((SchemaStore().directory / "sample.avsc").read_text())
    ts = next(f for f in raw["fields"] if f["name"] == "timestamp")
    assert ts["type"] == {"type": "long", "logicalType": "timestamp-micros"}


@pytest.mark.parametrize(
    "record, reason",
    [
        (b"", "not_single_object"),
        (b"hello world, this is not avro at all, not even close", "not_single_object"),
        (MAGIC + b"\x00" * 8 + b"\x02k" + bytes(40), "unknown_schema"),
    ],
)
def test_undecodable_records_are_rejected_at_decode(codec, record, reason):
    with pytest.raises(RejectedMessage) as err:
        codec.decode(record)
    assert (err.value.stage, err.value.reason) == ("decode", reason)


def test_truncated_key_id_is_rejected(codec):
    fp = codec.store["streams.SampleBatch"].fingerprint
    record = MAGIC + fp + b"\x7f" + bytes(SIGNATURE_SIZE)  # key_id claims 63 bytes, record ends first
    with pytest.raises(RejectedMessage) as err:
        codec.decode(record)
    assert err.value.stage == "decode"


def test_well_signed_garbage_body_is_undecodable(keyring, codec):
    fp = codec.store["streams.SampleBatch"].fingerprint
    unsigned = MAGIC + fp + b"\x0ak-new" + b"\x02" + b"\xff\xff\xff\xff\xff\xff\xff\xff\x01"  # 1 sample, garbage
    with pytest.raises(RejectedMessage) as err:
        codec.decode(unsigned + keyring.sign(unsigned))
    assert (err.value.stage, err.value.reason) == ("decode", "undecodable")


def test_limits_are_checked_on_the_raw_bytes_before_decoding(keyring, sample_factory):
    from streams.codec import RecordLimits

    codec = BatchCodec(keyring, limits=RecordLimits(record_bytes=4096, samples=3))
    with pytest.raises(RejectedMessage, match="too_large"):
        codec.decode(b"\xc3\x01" + bytes(5000))  # refused before the HMAC or any parsing
    with pytest.raises(RejectedMessage, match="too_many_samples") as err:
        codec.decode(codec.encode([sample_factory() for _ in range(4)]))
    assert "declares 4 samples" in err.value.detail  # read off the Avro block count, not decoded
    assert len(codec.decode(codec.encode([sample_factory() for _ in range(3)]))) == 3
    # A hostile varint (2**62 samples) is refused the same way, without allocating anything.
    fp = codec.store["streams.SampleBatch"].fingerprint
    unsigned = MAGIC + fp + b"\x0ak-new" + b"\xff\xff\xff\xff\xff\xff\xff\xff\x01"
    with pytest.raises(RejectedMessage, match="too_many_samples"):
        codec.decode(unsigned + keyring.sign(unsigned))


def test_rejection_details_from_input_are_clipped(keyring):
    from streams.codec import MAX_DETAIL

    huge_key = "k" * 500_000
    fp = BatchCodec(keyring).store["streams.SampleBatch"].fingerprint
    name = huge_key.encode()
    record = MAGIC + fp + bytes([0x80 | ((len(name) * 2) & 0x7F)]) + _varint_tail(len(name) * 2) + name + bytes(40)
    with pytest.raises(RejectedMessage) as err:
        BatchCodec(keyring).decode(record)
    assert err.value.reason == "unknown_key"
    assert len(err.value.detail) < MAX_DETAIL + 40 and "chars)" in err.value.detail
    assert len(str(err.value)) < MAX_DETAIL + 80


def _varint_tail(n: int) -> bytes:
    """The bytes after the first of n's varint (the test writes the first byte itself)."""
    out = bytearray()
    n >>= 7
    while n:
        out.append((n & 0x7F) | (0x80 if n >> 7 else 0))
        n >>= 7
    return bytes(out)


def test_schema_store_resolves_cross_file_references():
    store = SchemaStore()
    assert {"streams.Sample", "streams.SampleBatch"} <= set(store.by_name)
    assert len(store.by_fingerprint) == len(store.by_name)


def test_schema_store_names_bad_file(tmp_path):
    (tmp_path / "bad.avsc").write_text('{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}')
    with pytest.raises(ValueError, match="unresolvable|bad.avsc"):
        SchemaStore(tmp_path)


def test_metadata_flattening_is_lossless_json():
    md = metadata_to_strings({"s": "x", "n": 2, "f": 2.0, "b": True, "none": None, "nested": {"b": [1, "é"], "a": {}}})
    assert md == {"s": "x", "n": "2", "f": "2.0", "b": "true", "none": "null",
                  "nested": '{"a":{},"b":[1,"\\u00e9"]}'}


def test_group_by_resource_keeps_order(sample_factory):
    a1, b1, a2 = sample_factory(resource_id="a"), sample_factory(resource_id="b"), sample_factory(resource_id="a")
    assert group_by_resource([a1, b1, a2]) == {"a": [a1, a2], "b": [b1]}


def test_encode_rejects_sample_that_does_not_fit_schema(codec, sample_factory):
    with pytest.raises((ValueError, TypeError)):
        codec.encode([sample_factory(type="sideways")])


def test_decoding_needs_only_a_verifying_key(sample_factory):
    producer = BatchCodec(Keyring({"a": b"s1"}, "a"))
    consumer = BatchCodec(Keyring({"a": b"s1", "b": b"s2"}, "b"))
    s = sample_factory()
    assert consumer.decode(producer.encode([s])) == [s]


def test_fast_decoder_matches_fastavro_on_fuzzed_batches(codec):
    """cavro decodes the current schema on the hot path; fastavro is the reference."""
    rnd = random.Random(7)
    alphabet = string.printable + "éü漢🙂\x00"

    def text(max_len=20):
        return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, max_len)))

    def maybe(value):
        return rnd.choice([None, value])

    for _ in range(500):
        samples = [{
            "message_id": text(), "name": text(), "type": rnd.choice(["gauge", "delta", "cumulative"]),
            "unit": text(), "volume": rnd.choice([rnd.uniform(-1e300, 1e300), 0.0, -0.0, float("inf")]),
            "user_id": maybe(text()), "user_name": maybe(text()), "project_id": maybe(text()),
            "project_name": maybe(text()), "resource_id": text() or "r",
            "timestamp": rnd.randint(-2**63, 2**63 - 1), "monotonic_time": maybe(rnd.random() * 1e9),
            "resource_metadata": {text(): text(200) for _ in range(rnd.randint(0, 6))},
            "source": text(), "message_signature": maybe(text()),
        } for _ in range(rnd.randint(1, 8))]
        record = codec.encode(samples)
        reference = fastavro.schemaless_reader(io.BytesIO(record[HEADER_SIZE:]), codec._schema.parsed, None)
        assert codec.decode(record) == reference["samples"]
