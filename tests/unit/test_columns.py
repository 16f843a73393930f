"""The columnar decoder (C, streams/_columns.c) against fastavro, the reference, on fuzzed batches."""

from __future__ import annotations

import io
import random
import string

import fastavro
import pytest

from streams import columns as columns_module
from streams.codec import HEADER_SIZE, _read_key_id
from streams.columns import FIELDS, SampleColumns, decode_samples


def fuzzed(rnd: random.Random) -> list[dict]:
    alphabet = string.printable + "éü漢🙂\x00"

    def text(max_len=20):
        return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, max_len)))

    def maybe(value):
        return rnd.choice([None, value])

    return [{
        "message_id": text(), "name": text(), "type": rnd.choice(["gauge", "delta", "cumulative"]),
        "unit": text(), "volume": rnd.choice([rnd.uniform(-1e300, 1e300), 0.0, -0.0, float("inf"), 5e-324]),
        "user_id": maybe(text()), "user_name": maybe(text()), "project_id": maybe(text()),
        "project_name": maybe(text()), "resource_id": text() or "r",
        "timestamp": rnd.randint(-2**63, 2**63 - 1), "monotonic_time": maybe(rnd.random() * 1e9),
        "resource_metadata": {text(): text(200) for _ in range(rnd.randint(0, 6))},
        "source": text(), "message_signature": maybe(text()),
    } for _ in range(rnd.randint(1, 8))]


def test_the_c_decoder_is_built():
    assert columns_module._decode_samples is not None, "streams._columns was not built (pip install -e .)"


def assert_decodes_as_fastavro(codec, make, rnd: random.Random, records: int) -> None:
    """``records`` records of ``make(rnd)`` samples decoded into one set of columns equal fastavro's."""
    cols = SampleColumns()
    expected = []
    for _ in range(records):
        samples = make(rnd)
        record = codec.encode(samples)
        _, pos = _read_key_id(record, HEADER_SIZE)
        assert decode_samples(record, pos, cols) == len(samples)
        expected += fastavro.schemaless_reader(io.BytesIO(record[HEADER_SIZE:]), codec._schema.parsed, None)["samples"]
    assert len(cols) == len(expected)
    for i, reference in enumerate(expected):
        assert cols.row(i) == reference


def test_columns_match_fastavro_on_fuzzed_batches(codec):
    assert_decodes_as_fastavro(codec, fuzzed, random.Random(11), 400)


def repetitive(rnd: random.Random) -> list[dict]:
    """Samples drawn from small pools (equal, equal-length and non-ASCII values), as real records
    repeat their resource, project, metadata, names and units: exercises the decoder's reuse paths."""
    pool = {
        "name": ["cpu", "cpv", "cpu_util", "ünits", "memory.usage"], "unit": ["ns", "B", "%", "µs", "Bs"],
        "resource_id": ["host-1", "host-2", "hōst-1", "host-10"], "source": ["bench", "bencH", "openstack"],
        "project_id": [None, "p1", "p2", "p漢"], "user_id": [None, "u1", "u2"],
        "message_signature": [None, "s" * 64, "t" * 64],
    }
    mds = [{}, {"host": "h1", "kind": "host"}, {"host": "h2", "kind": "host"}, {"kind": "host", "host": "h1"},
           {"host": "h1"}, {"hōst": "h1", "kind": "hōst"}]
    base = {f: rnd.choice(values) for f, values in pool.items()}
    md = rnd.choice(mds)
    out = []
    for i in range(rnd.randint(1, 9)):
        sample = {"message_id": f"m{rnd.random()}", "type": "gauge", "volume": float(i), "user_name": None,
                  "project_name": None, "timestamp": i, "monotonic_time": None,
                  "resource_metadata": md if rnd.random() < 0.8 else rnd.choice(mds), **base}
        for f, values in pool.items():
            if rnd.random() < 0.2:
                sample[f] = rnd.choice(values)
        out.append(sample)
    return out


def test_reused_values_match_fastavro(codec):
    assert_decodes_as_fastavro(codec, repetitive, random.Random(7), 600)


def test_a_records_samples_share_their_repeated_values(codec, sample_factory):
    md = {"host": "h1", "kind": "host"}
    record = codec.encode([sample_factory(name=n, resource_id="r-1", resource_metadata=md) for n in ("a", "b", "a")])
    _, pos = _read_key_id(record, HEADER_SIZE)
    cols = SampleColumns()
    decode_samples(record, pos, cols)
    assert cols.resource_id[0] is cols.resource_id[1] is cols.resource_id[2]
    assert cols.metadata_keys[0] is cols.metadata_keys[2] and cols.metadata_values[0] is cols.metadata_values[1]
    assert cols.name[0] is cols.name[2]
    assert cols.message_id[0] != cols.message_id[1]


@pytest.mark.parametrize("cut", [1, 5, 17, 40])
def test_truncated_or_corrupt_input_raises_and_leaves_the_columns_as_they_were(codec, sample_factory, cut):
    cols = SampleColumns()
    good = codec.encode([sample_factory()])
    _, pos = _read_key_id(good, HEADER_SIZE)
    decode_samples(good, pos, cols)
    bad = codec.encode([sample_factory(), sample_factory()])
    _, pos = _read_key_id(bad, HEADER_SIZE)
    with pytest.raises(ValueError):
        decode_samples(bad[: pos + cut], pos, cols)
    assert len(cols) == 1 and all(len(c) == 1 for c in cols.cols)
    corrupt = bytearray(bad)
    corrupt[pos + 1] = 0x7F  # a string length far beyond the record
    with pytest.raises(ValueError):
        decode_samples(bytes(corrupt), pos, cols)
    assert len(cols) == 1


def test_rows_and_dicts_round_trip(sample_factory):
    samples = [sample_factory(resource_metadata={"a": "1", "b": "2"}), sample_factory(user_id="u")]
    cols = SampleColumns()
    cols.extend_dicts(samples)
    assert cols.rows(range(2)) == samples
    assert len(FIELDS) == len(cols.cols) == 16
    sub = cols.take([1])
    assert sub.rows([0]) == samples[1:]


def _both(monkeypatch, fn):
    """``fn()``'s outcome with the C helpers and with the Python loops: (value or error type, ...)."""
    out = []
    for c in (True, False):
        with monkeypatch.context() as m:
            if not c:
                m.setattr(columns_module, "_extend_from_dicts", None)
                m.setattr(columns_module, "_sample_row", None)
            try:
                out.append(fn())
            except Exception as exc:  # noqa: BLE001 - the error type is what is compared
                out.append(type(exc))
    return out


def _odd(rnd: random.Random) -> dict:
    """A sample dict the C loop may refuse, and the Python loop handles or raises on."""
    s = fuzzed(rnd)[0]
    kind = rnd.randrange(10)
    if kind == 0:
        del s[rnd.choice(["message_id", "name", "type", "unit", "volume", "resource_id", "timestamp"])]
    elif kind == 1:
        for optional in ("user_id", "user_name", "project_id", "project_name", "monotonic_time",
                         "resource_metadata", "source", "message_signature"):
            s.pop(optional, None) if rnd.random() < 0.5 else None
    elif kind == 2:
        s["resource_metadata"] = rnd.choice([None, {}, [], "", ["k"], "ab"])
    elif kind == 3:
        s["source"] = rnd.choice([None, "", 0, 7, b"x"])
    elif kind == 4:
        s = type("Sub", (dict,), {})(s)
    return s


@pytest.mark.parametrize("width", [15, 16])
def test_dicts_become_the_columns_the_python_loop_makes(monkeypatch, width):
    from tests.conftest import fuzzed_sample

    rnd = random.Random(width)
    for _ in range(300):
        batch = fuzzed(rnd) + [fuzzed_sample(rnd, {"shared": "x"}) for _ in range(2)]
        assert columns_module._extend_from_dicts([[] for _ in range(width)], batch) is True  # C takes these
        batch += [_odd(rnd) for _ in range(rnd.randrange(3))]

        def run(batch=batch):
            cols = [[] for _ in range(width)]
            columns_module.extend_from_dicts(cols, batch)
            return cols

        c, py = _both(monkeypatch, run)
        assert c == py
        if isinstance(c, list):  # metadata lists are new lists, never the sample's own objects
            assert all(type(v) is list for v in c[12] + c[13])


def test_a_sample_the_c_loop_refuses_leaves_the_columns_as_they_were():
    cols = [[1] for _ in range(16)]
    good = {"message_id": "m", "name": "n", "type": "gauge", "unit": "u", "volume": 1.0, "resource_id": "r",
            "timestamp": 1}
    assert columns_module._extend_from_dicts(cols, [good, {**good, "resource_metadata": ["k"]}]) is False
    assert columns_module._extend_from_dicts(cols, [good, {k: v for k, v in good.items() if k != "unit"}]) is False
    assert cols == [[1] for _ in range(16)]
    assert columns_module._extend_from_dicts(cols, [good]) is True
    assert [c[1] for c in cols] == ["m", "n", "gauge", "u", 1.0, None, None, None, None, "r", 1, None, [], [], "",
                                    None]


def test_rows_are_the_dicts_the_python_code_builds(monkeypatch):
    from tests.conftest import fuzzed_sample

    rnd = random.Random(119)
    batch = [s for _ in range(100) for s in fuzzed(rnd)] + [fuzzed_sample(rnd, {}) for _ in range(100)]
    cols = SampleColumns()
    cols.extend_dicts(batch)
    for i in [*range(len(cols)), -1, len(cols), -len(cols) - 1]:
        c, py = _both(monkeypatch, lambda i=i: cols.row(i))
        assert c == py and (c is IndexError or list(c) == list(py))  # the same keys in the same order
    cols.metadata_keys[3] = [*cols.metadata_keys[3], "one more"]  # keys and values differ in length
    assert _both(monkeypatch, lambda: cols.row(3)) == [ValueError, ValueError]


def test_a_metadata_key_that_changes_its_row_while_hashed_does_not_crash_the_c_row():
    cols = SampleColumns()
    cols.extend_dicts([{"message_id": "m", "name": "n", "type": "gauge", "unit": "u", "volume": 1.0,
                        "resource_id": "r", "timestamp": 1}])
    values = ["1", "2"]

    class Key(str):
        def __hash__(self):
            values.clear()  # shrinks the row's metadata values under the C loop
            cols.cols[0][0] = None  # and drops the message id it read
            return str.__hash__(self)

    cols.metadata_keys[0], cols.metadata_values[0] = [Key("a"), "b"], values
    row = columns_module._sample_row(cols.cols, 0)
    assert row["message_id"] == "m" and row["resource_metadata"] == {"a": "1"}
