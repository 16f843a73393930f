"""The bridge's SampleBatch writer gives fastavro's bytes exactly (BatchCodec.encode), on fuzzed samples."""

from __future__ import annotations

import random

from streams.bridge.avro import SampleBatchWriter, encode_map
from streams.codec import BatchCodec
from streams.signing import Keyring
from tests.conftest import make_test_sample


def _text(rng: random.Random) -> str:
    alphabet = "aZ09 _-:/.é☕\u0000\U0001F600"
    return "".join(rng.choices(alphabet, k=rng.choice((0, 1, 5, 63, 64, 200, 5000))))


def fuzzed(rng: random.Random, shared: dict) -> dict:
    return make_test_sample(
        message_id=_text(rng) or "m", name=_text(rng), type=rng.choice(("gauge", "delta", "cumulative")),
        unit=_text(rng), volume=rng.choice((0.0, -0.0, 1e300, -2.5, float("inf"), float("nan"), 3.0)),
        user_id=rng.choice((None, _text(rng))), user_name=rng.choice((None, "")),
        project_id=rng.choice((None, _text(rng))), project_name=rng.choice((None, _text(rng))),
        resource_id=_text(rng), timestamp=rng.choice((0, 1, 63, 64, -1, 2**62, 1_748_779_200_123_456)),
        monotonic_time=rng.choice((None, 0.5, 12345.678)),
        resource_metadata=rng.choice((shared, {}, {_text(rng): _text(rng) for _ in range(rng.randrange(0, 70))})),
        source=_text(rng), message_signature=rng.choice((None, "", "ab" * 32)))


def test_bytes_equal_fastavros_on_fuzzed_batches():
    codec = BatchCodec(Keyring({"k1": b"secret"}, "k1"))
    writer = SampleBatchWriter(codec)
    assert writer.fast
    rng = random.Random(7)
    shared = {f"k{i}": "v" * i for i in range(30)}
    for _ in range(60):
        batch = [fuzzed(rng, shared) for _ in range(rng.choice((0, 1, 2, 8, 30)))]
        data = writer.encode(batch)
        assert data == codec.encode(batch)
        if batch and len(data) <= codec.limits.record_bytes:
            codec.decode(data)  # verifies and decodes


def test_remembered_maps_follow_the_dict_not_its_address():
    codec = BatchCodec(Keyring({"k1": b"secret"}, "k1"))
    writer = SampleBatchWriter(codec, memory=2)
    for i in range(50):  # fresh dicts, some at reused addresses once the old ones are freed
        md = {"i": str(i)}
        s = make_test_sample(resource_metadata=md)
        assert writer.encode([s]) == codec.encode([s])
    assert encode_map({}) == b"\x00"


def test_an_unknown_schema_falls_back_to_the_codec():
    codec = BatchCodec(Keyring({"k1": b"secret"}, "k1"))
    writer = SampleBatchWriter(codec)
    writer.fast = False
    s = make_test_sample()
    assert writer.encode([s]) == codec.encode([s])
