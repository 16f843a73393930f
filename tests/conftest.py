"""Shared fixtures: sample factories usable by unit and integration tests."""

from __future__ import annotations

import random
import time
import uuid

import pytest

from streams.codec import MAGIC, BatchCodec, Sample
from streams.signing import SIGNATURE_SIZE, Keyring

TEST_KEYS = {"k-old": b"old-secret-for-tests", "k-new": b"new-secret-for-tests"}


def recent_hour_us(hours_ago: int = 24) -> int:
    """An hour boundary ``hours_ago`` hours before now, in µs since the epoch (UTC).

    Tests that store rows use times relative to now: a fixed date falls out of a
    table's TTL one day and makes the suite fail on the calendar, not on the code.
    """
    return (int(time.time()) // 3600 - hours_ago) * 3600 * 1_000_000


@pytest.fixture
def keyring() -> Keyring:
    return Keyring(TEST_KEYS, "k-new")


@pytest.fixture
def codec(keyring: Keyring) -> BatchCodec:
    return BatchCodec(keyring)


def make_test_sample(**overrides) -> Sample:
    """A valid sample dict; override any field."""
    s: Sample = {
        "message_id": str(uuid.uuid4()),
        "name": "cpu",
        "type": "cumulative",
        "unit": "ns",
        "volume": 123456789.0,
        "user_id": None,
        "user_name": None,
        "project_id": "p-1",
        "project_name": None,
        "resource_id": "host-a",
        "timestamp": time.time_ns() // 1000,
        "monotonic_time": 12.5,
        "resource_metadata": {"kind": "host"},
        "source": "tests",
        "message_signature": None,
    }
    s.update(overrides)  # type: ignore[typeddict-item]
    return s


def _fuzzed_text(rng: random.Random) -> str:
    alphabet = "aZ09 _-:/.é☕\u0000\U0001F600"
    return "".join(rng.choices(alphabet, k=rng.choice((0, 1, 5, 63, 64, 200, 5000))))


def fuzzed_sample(rng: random.Random, shared: dict) -> Sample:
    """A valid sample with awkward values in every field (empty, long and non-ASCII text, NaN,
    infinities, -0.0, varint boundaries); ``resource_metadata`` is sometimes ``shared`` itself."""
    text = _fuzzed_text
    return make_test_sample(
        message_id=text(rng) or "m", name=text(rng), type=rng.choice(("gauge", "delta", "cumulative")),
        unit=text(rng), volume=rng.choice((0.0, -0.0, 1e300, -2.5, float("inf"), float("nan"), 3.0)),
        user_id=rng.choice((None, text(rng))), user_name=rng.choice((None, "")),
        project_id=rng.choice((None, text(rng))), project_name=rng.choice((None, text(rng))),
        resource_id=text(rng), timestamp=rng.choice((0, 1, 63, 64, -1, 2**62, 1_748_779_200_123_456)),
        monotonic_time=rng.choice((None, 0.5, 12345.678)),
        resource_metadata=rng.choice((shared, {}, {text(rng): text(rng) for _ in range(rng.randrange(0, 70))})),
        source=text(rng), message_signature=rng.choice((None, "", "ab" * 32)))


@pytest.fixture
def sample_factory():
    return make_test_sample


def unsigned_record(codec: BatchCodec, key_id: str) -> bytes:
    """A ``streams.SampleBatch`` record naming ``key_id``, which no key signed: the marker, the
    fingerprint, the key id (Avro zig-zag length first), then junk and a fake signature."""
    record = bytearray(MAGIC + codec.store["streams.SampleBatch"].fingerprint)
    n = len(key_id) * 2
    while True:
        record.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            break
    return bytes(record + key_id.encode() + b"\x02" + bytes(40) + bytes(SIGNATURE_SIZE))
