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


def test_columns_match_fastavro_on_fuzzed_batches(codec):
    rnd = random.Random(11)
    cols = SampleColumns()
    expected = []
    for _ in range(400):
        samples = fuzzed(rnd)
        record = codec.encode(samples)
        _, pos = _read_key_id(record, HEADER_SIZE)
        assert decode_samples(record, pos, cols) == len(samples)
        expected += fastavro.schemaless_reader(io.BytesIO(record[HEADER_SIZE:]), codec._schema.parsed, None)["samples"]
    assert len(cols) == len(expected)
    for i, reference in enumerate(expected):
        assert cols.row(i) == reference


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
