import io
import json
import random
import string
from collections import OrderedDict

import fastavro
import pytest
from fastavro.schema import fingerprint

from streams import codec as codec_module
from streams.codec import (
    HEADER_SIZE,
    MAGIC,
    BatchCodec,
    RejectedMessage,
    SchemaStore,
    SignedCodec,
    group_by_resource,
    metadata_to_strings,
)
from streams.signing import SIGNATURE_SIZE, Keyring
from tests.conftest import fuzzed_sample, make_test_sample


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


def _outcome(encode, samples):
    """The bytes ``encode`` gives, or the type of the error it raises."""
    try:
        return encode(samples)
    except Exception as exc:  # noqa: BLE001 - the error type is the outcome compared
        return type(exc)


def test_encode_gives_fastavros_bytes_on_fuzzed_batches(codec):
    """BatchCodec.encode writes with C; fastavro (SignedCodec.encode) is the reference, byte for byte."""
    assert codec._native is not None  # the C writer is built and used for the current schema
    rng = random.Random(5)
    shared = {f"k{i}": "v" * i for i in range(30)}
    for _ in range(80):
        batch = [fuzzed_sample(rng, shared) for _ in range(rng.choice((1, 2, 7)))]
        for s in batch:
            if rng.random() < 0.2:  # ints where the schema has doubles; optional fields left out
                s["volume"] = rng.choice((3, -(2**60)))
                s["monotonic_time"] = rng.choice((None, 7))
            for key in ("user_id", "monotonic_time", "resource_metadata", "source", "message_signature"):
                if rng.random() < 0.1:
                    del s[key]
        record = codec.encode(batch)
        assert record == SignedCodec.encode(codec, batch)
        if len(record) <= codec.limits.record_bytes:
            assert len(codec.decode(record)) == len(batch)
        assert codec.encode(batch, "k-old") == SignedCodec.encode(codec, batch, "k-old")


@pytest.mark.parametrize("change", [
    {"type": "bogus"}, {"type": None}, {"name": None}, {"name": 5}, {"volume": "1"}, {"volume": True},
    {"volume": 2**1100}, {"timestamp": 1.5}, {"timestamp": 2**70}, {"timestamp": True}, {"user_id": 5},
    {"resource_id": "\ud800"}, {"source": None}, {"resource_metadata": None}, {"resource_metadata": ["x"]},
    {"resource_metadata": {"a": 1}}, {"resource_metadata": {1: "a"}}, {"resource_metadata": {"a": "\ud800"}},
    {"resource_metadata": OrderedDict(a="b")}, {"monotonic_time": "1"}, {"monotonic_time": False},
    {"message_signature": b"ab"},
])
def test_a_sample_the_c_writer_refuses_gets_fastavros_bytes_or_error(codec, change):
    s = {**make_test_sample(), **change}
    outcome = _outcome(codec.encode, [s])
    assert outcome == _outcome(lambda b: SignedCodec.encode(codec, b), [s])


def test_samples_of_any_sequence_or_iterable_encode_as_before(codec):
    batch = [make_test_sample(), make_test_sample(resource_metadata={})]
    reference = SignedCodec.encode(codec, batch)
    assert codec.encode(tuple(batch)) == reference
    assert codec.encode(iter(batch)) == reference  # fastavro takes any iterable
    assert codec.encode([]) == SignedCodec.encode(codec, [])
    assert codec.encode([OrderedDict(batch[0])]) == SignedCodec.encode(codec, [batch[0]])


def test_plain_samples_never_reach_fastavro(codec, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("fastavro was asked to write")

    monkeypatch.setattr(fastavro, "schemaless_writer", refuse)
    record = codec.encode([make_test_sample(), make_test_sample(resource_metadata={}, volume=2)])
    assert len(codec.decode(record)) == 2


def test_without_the_c_module_encode_is_fastavros(codec, monkeypatch):
    batch = [make_test_sample(), make_test_sample(volume=1)]
    with_c = codec.encode(batch)
    monkeypatch.setattr(codec_module, "_native", None)
    assert BatchCodec(codec.keyring).encode(batch) == with_c


def test_another_batch_schema_is_written_by_fastavro(codec, monkeypatch):
    monkeypatch.setattr(codec_module, "WRITER_FINGERPRINT", "0" * 16)
    other = BatchCodec(codec.keyring)
    assert other._native is None
    batch = [make_test_sample()]
    assert other.encode(batch) == codec.encode(batch)
