"""Ceilometer's signature on the 14 captured messages: each verifies, and any one-byte change does not."""

from __future__ import annotations

import json

import pytest

from streams.bridge.signing import Verifier, compute_signature, signed_text, signing_pairs, verify_signature
from tests.unit.bridge.conftest import SECRET, load, payload_messages


def _messages_by_id() -> dict[str, dict]:
    return {m["message_id"]: m for m in payload_messages()}


def test_every_captured_message_has_a_vector():
    vectors = load("signature_vectors.json")["vectors"]
    assert len(vectors) == 14
    assert {v["message_id"] for v in vectors} == set(_messages_by_id())


def test_the_signed_pairs_are_ceilometers_exactly(vectors):
    msgs = _messages_by_id()
    for v in vectors:
        msg = msgs[v["message_id"]]
        assert [list(p) for p in signing_pairs(msg)] == v["hmac_chunks"], v["scenario"]
        assert signed_text(msg) == v["hmac_input"].encode("utf-8")
        assert compute_signature(msg, SECRET) == v["message_signature"] == msg["message_signature"]
        assert verify_signature(msg, SECRET)
        assert Verifier(SECRET)(msg)


def test_the_edge_case_walks_nested_keys_depth_first():
    [msg] = [m for m in payload_messages() if m.get("counter_name") == "bridge.edge"]
    names = [n for n, _ in signing_pairs(msg)]
    # '-' sorts before ':', yet the nested a:* come first: the walk is depth first, not a global sort.
    assert names.index("resource_metadata:a:z") < names.index("resource_metadata:a-b")
    values = dict(signing_pairs(msg))
    assert values["resource_metadata:whole_float"] == "2.0" and values["resource_metadata:tiny"] == "1e-07"
    assert values["resource_metadata:big"] == "100000000000000000000"
    assert values["resource_metadata:mixed"] == (
        "[b'x', 1, 2.5, None, True, [b'n\\xc3\\xa9sted', b\"it's\"], {b'k1': [b'w'], b'k2': b'v'}]")
    assert "resource_metadata:empty" not in values  # an empty object emits nothing


def _raw_message_texts() -> list[tuple[str, str]]:
    """(message_id, the JSON text of that message as it sits inside the oslo.message string)."""
    out = []
    for m in payload_messages():
        text = json.dumps(m)  # oslo.messaging writes json.dumps output; byte-equal for these captures
        assert json.loads(text) == m
        out.append((m["message_id"], text))
    return out


def _without_empty_objects(value):
    if isinstance(value, dict):
        return {k: _without_empty_objects(v) for k, v in value.items() if v != {}}
    return value


def test_any_one_byte_change_does_not_verify():
    """Change every byte of every message's JSON text, one at a time (+1 and -1). Every change that
    still parses and alters what Ceilometer signs fails verification. The changes that still verify
    alter nothing signed: they are Ceilometer's blind spots, the names of empty objects (an empty
    object emits nothing) and nothing else."""
    verify = Verifier(SECRET)
    refused = 0
    blind = set()
    for mid, text in _raw_message_texts():
        raw = text.encode()
        original = json.loads(raw)
        for i in range(len(raw)):
            for delta in (1, -1):
                b = (raw[i] + delta) % 256
                mutated = raw[:i] + bytes([b]) + raw[i + 1:]
                try:
                    msg = json.loads(mutated)
                except ValueError:
                    continue
                if not isinstance(msg, dict) or msg == original:
                    continue
                if verify(msg):
                    assert signed_text(msg) == signed_text(original), f"{mid}: byte {i} {raw[i]:#x}->{b:#x}"
                    assert _without_empty_objects(msg) == _without_empty_objects(original)
                    blind.add(mid)
                else:
                    refused += 1
    assert refused > 10_000
    # the edge case's "empty": {} and the first event's "raw": {}
    assert blind == {"a9e1b8f4-3eaf-11f0-9b8e-0242ac120002", "6d1b2c3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d"}


def test_each_signed_value_matters():
    for msg in payload_messages():
        for name in msg:
            if name == "message_signature":
                continue
            tampered = {**msg, name: "tampered" if msg[name] != "tampered" else "x"}
            assert not verify_signature(tampered, SECRET), name
        assert not verify_signature({**msg, "extra": 1}, SECRET)


def test_int_and_float_are_different_texts():
    msg = payload_messages()[1]  # memory.usage 512.5
    as_int = {**msg, "counter_volume": 512}
    as_float = {**msg, "counter_volume": 512.0}
    assert compute_signature(as_int, SECRET) != compute_signature(as_float, SECRET)


def test_wrong_secret_and_missing_signature_do_not_verify():
    msg = payload_messages()[0]
    assert not verify_signature(msg, "another-secret")
    assert not Verifier("another-secret")(msg)
    unsigned = {k: v for k, v in msg.items() if k != "message_signature"}
    assert not verify_signature(unsigned, SECRET) and not Verifier(SECRET)(unsigned)
    assert not verify_signature({**msg, "message_signature": 42}, SECRET)
    assert not verify_signature({**msg, "message_signature": "é" * 64}, SECRET)


def test_an_empty_secret_accepts_only_empty_signatures():
    msg = payload_messages()[0]
    assert compute_signature(msg, "") == ""
    assert verify_signature({**msg, "message_signature": ""}, "")
    assert Verifier("")({**msg, "message_signature": ""})
    assert not verify_signature(msg, "") and not Verifier("")(msg)  # signed by someone with a secret


def test_nan_infinity_and_lone_surrogates():
    msg = payload_messages()[1]
    for token in ("NaN", "Infinity", "-Infinity"):
        m = json.loads(json.dumps(msg).replace('"counter_volume": 512.5', f'"counter_volume": {token}'))
        m["message_signature"] = compute_signature(m, SECRET)
        assert verify_signature(m, SECRET)
        assert dict(signing_pairs(m))["counter_volume"] in ("nan", "inf", "-inf")
    m = json.loads(json.dumps(msg).replace('"user_name": null', '"user_name": "\\ud800"'))
    with pytest.raises(UnicodeEncodeError):
        signed_text(m)
    assert not verify_signature(m, SECRET) and not Verifier(SECRET)(m)


def test_the_verifiers_memory_of_nested_objects_never_confuses_types():
    verify = Verifier(SECRET)
    msg = payload_messages()[0]
    variants = []
    for v in (1, 1.0, True, "1", [1], {"x": 1}):
        m = {**msg, "resource_metadata": {**msg["resource_metadata"], "cpu_number": v}}
        m["message_signature"] = compute_signature(m, SECRET)
        variants.append(m)
    for _ in range(2):  # the second round answers from memory
        for m in variants:
            assert verify(m)
            assert verify.signed_text(m) == signed_text(m)
            for other in variants:  # another's signature fits exactly when it does for Ceilometer
                swapped = {**m, "message_signature": other["message_signature"]}
                assert verify(swapped) == verify_signature(swapped, SECRET)
    # str() is all Ceilometer signs: 1 and "1" have one text, 1, 1.0 and True do not.
    sigs = [m["message_signature"] for m in variants]
    assert sigs[0] == sigs[3] and len({sigs[0], sigs[1], sigs[2], sigs[4], sigs[5]}) == 5
    small = Verifier(SECRET, cache_size=2)
    assert all(small(m) for m in variants * 3)
