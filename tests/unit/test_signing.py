import hashlib
import hmac
import struct

import pytest

from streams.codec import BatchCodec, RejectedMessage
from streams.signing import SIGNATURE_SIZE, Keyring, SigningError, compute_signature, verify_signature


def test_compute_signature_is_hmac_sha256():
    assert compute_signature(b"k", b"data") == hmac.new(b"k", b"data", hashlib.sha256).digest()
    assert len(compute_signature(b"k", b"data")) == SIGNATURE_SIZE


def test_verify_signature_accepts_only_the_right_key_and_data():
    sig = compute_signature(b"k", b"data")
    assert verify_signature(b"k", b"data", sig)
    assert not verify_signature(b"other", b"data", sig)
    assert not verify_signature(b"k", b"datA", sig)
    assert not verify_signature(b"k", b"data", sig[:-1] + bytes([sig[-1] ^ 1]))


def test_keyring_signs_with_active_key_and_verifies_with_any():
    ring = Keyring({"old": b"s-old", "new": b"s-new"}, "new")
    assert ring.sign(b"x") == compute_signature(b"s-new", b"x")
    assert ring.verify("old", b"x", compute_signature(b"s-old", b"x"))
    assert not ring.verify("missing", b"x", ring.sign(b"x"))


@pytest.mark.parametrize(
    "keys, active, problem",
    [({}, "a", "no signing key"), ({"a": b""}, "a", "empty secret"), ({"a": b"s"}, "b", "not one of")],
)
def test_keyring_rejects_bad_configuration(keys, active, problem):
    with pytest.raises(SigningError, match=problem):
        Keyring(keys, active)


def test_every_tampered_byte_is_detected(codec, sample_factory):
    record = codec.encode([sample_factory(), sample_factory(name="cpu_util", unit="%", type="gauge")])
    assert codec.decode(record)
    for i in range(len(record)):
        tampered = bytearray(record)
        tampered[i] ^= 0x01
        with pytest.raises(RejectedMessage) as err:
            codec.decode(bytes(tampered))
        assert err.value.stage in ("decode", "verify"), i


def test_tampered_volume_fails_verification(codec, sample_factory):
    record = codec.encode([sample_factory(volume=1.0)])
    pos = record.find(struct.pack("<d", 1.0))
    assert pos > 0
    forged = record[:pos] + struct.pack("<d", 1000.0) + record[pos + 8:]
    with pytest.raises(RejectedMessage) as err:
        codec.decode(forged)
    assert (err.value.stage, err.value.reason) == ("verify", "bad_signature")


def test_unknown_key_id_is_rejected(sample_factory):
    foreign = BatchCodec(Keyring({"rogue": b"guess"}, "rogue"))
    ours = BatchCodec(Keyring({"k": b"secret"}, "k"))
    with pytest.raises(RejectedMessage) as err:
        ours.decode(foreign.encode([sample_factory()]))
    assert (err.value.stage, err.value.reason) == ("verify", "unknown_key")


def test_same_key_id_wrong_secret_is_bad_signature(sample_factory):
    forger = BatchCodec(Keyring({"k": b"guess"}, "k"))
    ours = BatchCodec(Keyring({"k": b"secret"}, "k"))
    with pytest.raises(RejectedMessage) as err:
        ours.decode(forger.encode([sample_factory()]))
    assert err.value.reason == "bad_signature"


def test_key_rotation(sample_factory):
    before = BatchCodec(Keyring({"2026-10": b"a"}, "2026-10"))
    during = BatchCodec(Keyring({"2026-10": b"a", "2026-11": b"b"}, "2026-11"))
    after = BatchCodec(Keyring({"2026-11": b"b"}, "2026-11"))
    s = sample_factory()
    assert during.decode(before.encode([s])) == [s]  # old records still verify during rotation
    assert after.decode(during.encode([s])) == [s]
    with pytest.raises(RejectedMessage):
        after.decode(before.encode([s]))  # retired key
