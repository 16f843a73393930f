"""streams._bridge (C) gives exactly what its Python twins in streams.bridge give: captured vectors, fuzzed input."""

from __future__ import annotations

import hashlib
import hmac
import importlib
import json
import marshal
import math
import random
from pathlib import Path

import pytest

from streams.bridge import avro, ceilometer, signing
from streams.bridge.avro import SampleBatchWriter
from streams.bridge.ceilometer import MetadataMemo, nesting_depth
from streams.bridge.signing import SIGNATURE_KEY, Verifier, nested_text, signed_text
from streams.codec import BatchCodec, SignedCodec
from streams.signing import Keyring
from tests.conftest import fuzzed_sample as fuzzed
from tests.conftest import make_test_sample
from tests.unit.bridge.conftest import DATA, SECRET, payload_messages

native = importlib.import_module("streams._bridge")  # built by pip install -e . (scripts/bootstrap.sh); never skipped

SHARED_VECTORS = Path(__file__).resolve().parents[4] / "shared" / "data" / "ceilometer" / "signature_vectors.json"
"""../shared/data/ceilometer/signature_vectors.json next to the checkout (the originals of tests/data/ceilometer)."""


def python_signed_text(message: dict) -> bytes:
    out: list[str] = []
    signing._walk({k: v for k, v in message.items() if k != SIGNATURE_KEY}, "", out)
    return "".join(out).encode("utf-8")


def c_signed_text(message: dict, texts: dict | None = None) -> bytes | None:
    return native.signed_text(message, SIGNATURE_KEY, texts, signing._list_text)


def _vector_files() -> list[Path]:
    files = [DATA / "signature_vectors.json"]
    if SHARED_VECTORS.is_file():
        files.append(SHARED_VECTORS)
    return files


@pytest.mark.parametrize("path", _vector_files(), ids=lambda p: str(p.parent.parent.parent.name))
def test_c_and_python_give_every_vectors_signed_text(path):
    vectors = json.loads(path.read_text(encoding="utf-8"))["vectors"]
    msgs = {m["message_id"]: m for m in payload_messages()}
    assert len(vectors) == 14
    for v in vectors:
        msg = msgs[v["message_id"]]
        expected = v["hmac_input"].encode("utf-8")
        assert c_signed_text(msg) == expected == python_signed_text(msg), v["scenario"]
        md = msg.get("resource_metadata")
        if isinstance(md, dict) and md:
            text = nested_text("resource_metadata", md)
            assert c_signed_text(msg, {"resource_metadata": text}) == expected
            assert c_signed_text(msg, {"resource_metadata": text.encode()}) == expected
        assert Verifier(SECRET)(msg) and signing.verify_signature(msg, SECRET)


def _scalar(rng: random.Random):
    return rng.choice((
        None, True, False, 0, 1, -7, 2**64 + 1, -(10**30), 0.0, -0.0, 2.0, 1e-07, 512.5, 1e300, 1e16,
        float("nan"), float("inf"), -float("inf"), "", "x", "é☕", "\U0001F600", "a:b", "it's", "\x00",
    ))


def _value(rng: random.Random, depth: int = 0):
    roll = rng.random()
    if depth < 4 and roll < 0.15:
        return {_key(rng): _value(rng, depth + 1) for _ in range(rng.randrange(0, 5))}
    if depth < 4 and roll < 0.3:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    if depth < 4 and roll < 0.33:
        return tuple(_value(rng, depth + 1) for _ in range(rng.randrange(0, 3)))
    return _scalar(rng)


def _key(rng: random.Random) -> str:
    return rng.choice(("a", "b", "a-b", "a:z", "A", "é", "", "message_signature", "resource_metadata", "z" * 40))


def fuzzed_message(rng: random.Random) -> dict:
    msg = {_key(rng): _value(rng) for _ in range(rng.randrange(0, 12))}
    msg["message_signature"] = rng.choice(("", "ab", None))
    return msg


def test_c_and_python_give_the_same_text_on_fuzzed_messages():
    rng = random.Random(13)
    for _ in range(3000):
        msg = fuzzed_message(rng)
        assert c_signed_text(msg) == python_signed_text(msg), msg
        assert signed_text(msg) == python_signed_text(msg)
        for name, value in msg.items():
            if type(value) is dict and name != SIGNATURE_KEY:
                texts = {name: nested_text(name, value)}
                assert c_signed_text(msg, texts) == python_signed_text(msg)
                assert Verifier(SECRET).signed_text(msg, texts) == python_signed_text(msg)


def test_what_c_does_not_decide_goes_back_to_python(monkeypatch):
    class Text(str):
        def __str__(self) -> str:
            return "other"

    class Map(dict):
        pass

    for msg in ({"a": Text("x")}, {"a": Map(b="c")}, {1: "x"}, {"a": {2: "x"}}):
        assert c_signed_text(msg) is None
    assert c_signed_text(Map(a="x")) is None
    assert signed_text({"a": Text("x")}) == b"ax"  # what the Python walk gives
    assert Verifier(SECRET).signed_text({"a": Map(b="c")}) == b"a:bc"
    with pytest.raises(TypeError):
        signed_text({1: "x", "a": "y"})  # mixed key types cannot be sorted: unchanged


def test_a_lone_surrogate_raises_as_utf8_encoding_does():
    with pytest.raises(UnicodeEncodeError):
        c_signed_text({"a": "\ud800"})
    assert nested_text("m", {"a": "\ud800"}) == "m:a\ud800"  # the text keeps it; signing refuses it
    assert not Verifier(SECRET)({"a": "\ud800", "message_signature": "00"})


def test_the_python_fallback_gives_the_same_signatures(monkeypatch):
    msgs = payload_messages()
    with_c = [signed_text(m) for m in msgs]
    monkeypatch.setattr(signing, "_native", None)
    assert [signed_text(m) for m in msgs] == with_c
    assert all(Verifier(SECRET)(m) for m in msgs)


def test_same_json_is_marshal_equality_on_fuzzed_values():
    rng = random.Random(5)
    values = [_value(rng) for _ in range(400)]
    for a in values:
        b = json.loads(json.dumps(a)) if not isinstance(a, tuple) else a
        for other in (b, rng.choice(values)):
            try:
                same_marshal = marshal.dumps(a, 2) == marshal.dumps(other, 2)
            except ValueError:
                continue
            assert native.same_json(a, other) == same_marshal, (a, other)


def test_same_json_tells_apart_what_str_or_order_tells_apart():
    assert native.same_json({"a": 1, "b": [1.5, None]}, {"a": 1, "b": [1.5, None]})
    for a, b in ((1, 1.0), (1, True), (0.0, -0.0), ({"a": 1, "b": 2}, {"b": 2, "a": 1}), ([1], (1,)),
                 ({"a": {"x": "1"}}, {"a": {"x": 1}}), ("a", "b"), ([1, 2], [1, 2, 3])):
        assert not native.same_json(a, b) and not native.same_json(b, a)
    nan = float("nan")
    assert native.same_json(nan, float("nan"))  # same bits: the same text "nan" either way


def test_metadata_memo_with_a_resource_hint_gives_what_it_gives_without():
    rng = random.Random(3)
    memo, plain = MetadataMemo(size=8), MetadataMemo(size=8)
    for _ in range(500):
        md = {_key(rng): _value(rng) for _ in range(rng.randrange(1, 6))}
        for variant in (md, json.loads(json.dumps(md)), dict(reversed(md.items()))):
            rid = rng.choice(("r1", "r2", None, 5))
            assert memo(variant, rid) == plain(variant) == (
                nested_text("resource_metadata", variant), ceilometer.metadata_to_strings(variant))


def test_nesting_depth_matches_the_python_count(monkeypatch):
    rng = random.Random(1)
    cases = [b"", b"]", b"[]", b"{[]}", b"][", b"abc", b'{"a": "[[["}'] + [
        bytes(rng.choice(b"[]{}ab\"") for _ in range(rng.randrange(0, 60))) for _ in range(500)]
    with_c = [nesting_depth(c) for c in cases]
    monkeypatch.setattr(ceilometer, "_native", None)
    assert [nesting_depth(c) for c in cases] == with_c


def test_c_samples_are_the_python_writers_bytes():
    codec = BatchCodec(Keyring({"k1": b"secret"}, "k1"))
    writer = SampleBatchWriter(codec)
    rng = random.Random(11)
    shared = {f"k{i}": "v" * i for i in range(30)}
    for _ in range(200):
        batch = [fuzzed(rng, shared) for _ in range(rng.choice((1, 2, 8)))]
        for s in batch:
            if rng.random() < 0.2:
                s["volume"] = rng.choice((3, -(2**60)))
                s["monotonic_time"] = rng.choice((None, 7))
            if rng.random() < 0.1:
                del s["source"]
        assert native.encode_samples(batch, writer._map) == b"".join(map(writer.sample, batch))
        assert writer.encode(batch) == SignedCodec.encode(codec, batch)


@pytest.mark.parametrize("change", [
    {"type": "bogus"}, {"name": None}, {"volume": "1"}, {"timestamp": 1.5}, {"timestamp": 2**70},
    {"user_id": 5}, {"resource_id": "\ud800"}, {"source": None}, {"resource_metadata": ["x"]},
])
def test_a_sample_c_refuses_is_written_or_refused_by_the_python_writer(change):
    codec = BatchCodec(Keyring({"k1": b"secret"}, "k1"))
    writer = SampleBatchWriter(codec)
    s = {**make_test_sample(), **change}
    with pytest.raises(Exception):  # noqa: B017 - any error: the writer then asks Python
        native.encode_samples([s], writer._map)
    try:
        alone = writer.sample(s)
    except Exception as exc:  # noqa: BLE001 - the Python writer's own error is what encode must raise
        with pytest.raises(type(exc)) as through:
            writer.encode([s])
        assert str(through.value) == str(exc)
    else:  # e.g. a timestamp beyond 64 bits: Python writes a longer varint, as it always did
        assert alone in writer.encode([s])


def test_a_missing_field_is_a_key_error_either_way():
    codec = BatchCodec(Keyring({"k1": b"secret"}, "k1"))
    s = make_test_sample()
    del s["message_id"]
    with pytest.raises(KeyError):
        native.encode_samples([s], SampleBatchWriter(codec)._map)
    with pytest.raises(KeyError):
        SampleBatchWriter(codec).encode([s])


def test_the_python_writer_alone_gives_the_same_record(monkeypatch):
    codec = BatchCodec(Keyring({"k1": b"secret"}, "k1"))
    batch = [make_test_sample(volume=2.5, resource_metadata={"a": "b"}) for _ in range(3)]
    with_c = SampleBatchWriter(codec).encode(batch)
    monkeypatch.setattr(avro, "_native", None)
    assert SampleBatchWriter(codec).encode(batch) == with_c == SignedCodec.encode(codec, batch)
    assert not math.isnan(codec.decode(with_c)[0]["volume"])


def test_the_verifiers_key_pads_give_hmacs_digest():
    rng = random.Random(2)
    for n in (1, 5, 63, 64, 65, 200):
        key = bytes(rng.randrange(256) for _ in range(n))
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 3000)))
        inner, outer = signing._hmac_pads(key)
        inner = inner.copy()
        inner.update(data)
        outer = outer.copy()
        outer.update(inner.digest())
        assert outer.hexdigest() == hmac.new(key, data, hashlib.sha256).hexdigest()


def _sample_message(rng: random.Random) -> dict:
    msg = {"message_id": "m1", "counter_name": "cpu", "counter_type": "gauge", "counter_unit": "ns",
           "counter_volume": 1.5, "user_id": "u", "user_name": None, "project_id": None, "project_name": "p",
           "resource_id": "r1", "timestamp": "2025-05-01T10:00:00.123456+02:00", "monotonic_time": None,
           "resource_metadata": {"a": 1, "b": {"c": [1, "x"]}}, "source": "openstack", "message_signature": "ab"}
    odd = (None, "", "x", 0, 1, True, 2.5, -0.0, 2**60, 10**400, float("nan"), [], ["gauge"], {}, {"k": "v"},
           "not a time", "2025-05-01", "delta")
    for _ in range(rng.randrange(0, 4)):
        key = rng.choice(list(msg))
        if rng.random() < 0.1:
            del msg[key]
        else:
            msg[key] = rng.choice(odd)
    return msg


def test_the_fast_path_of_normalize_sample_gives_what_the_checks_give():
    rng = random.Random(17)
    for _ in range(5000):
        msg = _sample_message(rng)
        try:
            expected = ceilometer.checked_sample(msg)
        except Exception as exc:  # noqa: BLE001 - whatever the checks raise, the fast path must raise too
            with pytest.raises(type(exc)) as got:
                ceilometer.normalize_sample(msg)
            assert str(got.value) == str(exc)
            continue
        got = ceilometer.normalize_sample(msg)
        assert list(got) == list(expected)
        assert repr(got) == repr(expected), msg  # repr: nan == nan, and -0.0 apart from 0.0
