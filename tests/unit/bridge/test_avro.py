"""The bridge's SampleBatch writer gives fastavro's bytes exactly (SignedCodec.encode), on fuzzed samples."""

from __future__ import annotations

import random

from streams.bridge.avro import SampleBatchWriter, encode_map
from streams.codec import BatchCodec, SignedCodec
from streams.signing import Keyring
from tests.conftest import fuzzed_sample as fuzzed
from tests.conftest import make_test_sample


def test_bytes_equal_fastavros_on_fuzzed_batches():
    codec = BatchCodec(Keyring({"k1": b"secret"}, "k1"))
    writer = SampleBatchWriter(codec)
    assert writer.fast
    rng = random.Random(7)
    shared = {f"k{i}": "v" * i for i in range(30)}
    for _ in range(60):
        batch = [fuzzed(rng, shared) for _ in range(rng.choice((0, 1, 2, 8, 30)))]
        data = writer.encode(batch)
        assert data == SignedCodec.encode(codec, batch)
        if batch and len(data) <= codec.limits.record_bytes:
            codec.decode(data)  # verifies and decodes


def test_remembered_maps_follow_the_dict_not_its_address():
    codec = BatchCodec(Keyring({"k1": b"secret"}, "k1"))
    writer = SampleBatchWriter(codec, memory=2)
    for i in range(50):  # fresh dicts, some at reused addresses once the old ones are freed
        md = {"i": str(i)}
        s = make_test_sample(resource_metadata=md)
        assert writer.encode([s]) == SignedCodec.encode(codec, [s])
    assert encode_map({}) == b"\x00"


def test_an_unknown_schema_falls_back_to_the_codec():
    codec = BatchCodec(Keyring({"k1": b"secret"}, "k1"))
    writer = SampleBatchWriter(codec)
    writer.fast = False
    s = make_test_sample()
    assert writer.encode([s]) == SignedCodec.encode(codec, [s])
