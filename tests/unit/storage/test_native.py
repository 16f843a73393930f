"""The C Native-format column encoder against clickhouse-driver's own column writers, byte for byte."""

from __future__ import annotations

import random
import socket
import threading

import pytest
from clickhouse_driver.bufferedwriter import BufferedSocketWriter
from clickhouse_driver.columns.service import write_column
from clickhouse_driver.context import Context
from streams._columns import native_column

from streams.storage import native

TYPES = ("String", "Float64", "Int64", "Nullable(String)", "Nullable(Float64)", "Array(String)")


def driver_bytes(spec: str, values: list) -> bytes:
    """What clickhouse-driver writes for one column (through its own socket writer)."""
    ctx = Context()
    ctx.client_settings = {"strings_as_bytes": False, "strings_encoding": "utf-8", "use_numpy": False,
                           "input_format_null_as_default": False}
    ours, theirs = socket.socketpair()
    received = bytearray()

    def drain():
        while chunk := theirs.recv(1 << 16):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        out = BufferedSocketWriter(ours, 1 << 16)
        write_column(ctx, "c", spec, values, out)
        out.flush()
    finally:
        ours.shutdown(socket.SHUT_WR)
        reader.join(10)
        ours.close()
        theirs.close()
    return bytes(received)


def _text(rng: random.Random) -> str | bytes:
    kind = rng.random()
    if kind < 0.1:
        return ""
    if kind < 0.2:
        return "é€𝄞" * rng.randint(1, 3)  # 2-, 3- and 4-byte UTF-8
    if kind < 0.3:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 20)))
    if kind < 0.35:
        return "x" * rng.choice((127, 128, 300, 16383, 16384, 70000))  # one-, two- and three-byte lengths
    return "".join(rng.choice("abcdef0123456789-.") for _ in range(rng.randint(1, 40)))


def _value(spec: str, rng: random.Random):
    if spec.startswith("Nullable(") and rng.random() < 0.3:
        return None
    if spec in ("String", "Nullable(String)"):
        return _text(rng)
    if spec in ("Float64", "Nullable(Float64)"):
        return rng.choice((rng.uniform(-1e12, 1e12), 0.0, -0.0, float("inf"), float("nan"), 5, True, 2**60))
    if spec == "Int64":
        return rng.choice((rng.randint(-2**63, 2**63 - 1), 0, -1, 2**63 - 1, -2**63, True))
    return rng.choice(([], [_text(rng) for _ in range(rng.randint(1, 5))], tuple(_text(rng) for _ in range(2))))


@pytest.mark.parametrize("spec", TYPES)
def test_every_type_is_written_as_clickhouse_driver_writes_it(spec):
    rng = random.Random(spec)
    for n in (0, 1, 7, 500):
        values = [_value(spec, rng) for _ in range(n)]
        assert native_column(spec, values) == driver_bytes(spec, values), (spec, n)


@pytest.mark.parametrize("spec", ["LowCardinality(String)", "UInt8", "Array(Int64)", "Nullable(Int64)", "string"])
def test_other_types_are_left_to_clickhouse_driver(spec):
    assert native_column(spec, ["a"]) is None


@pytest.mark.parametrize("spec, values, error", [
    ("String", ["a", None], TypeError),  # None only in a Nullable column
    ("String", [5], TypeError),
    ("String", ["\ud800"], UnicodeEncodeError),  # a lone surrogate is not UTF-8
    ("Array(String)", ["ab"], TypeError),  # a str is not an array of strings
    ("Array(String)", [[1]], TypeError),
    ("Int64", [2**63], OverflowError),
    ("Int64", [1.5], TypeError),
    ("Float64", ["1.5"], TypeError),
    ("Nullable(Float64)", [object()], TypeError),
])
def test_values_of_the_wrong_type_raise(spec, values, error):
    with pytest.raises(error):
        native_column(spec, values)


def test_values_must_be_a_list():
    with pytest.raises(TypeError):
        native_column("String", ("a", "b"))


def test_a_compressing_client_is_left_to_clickhouse_driver():
    class Client:
        class connection:  # noqa: N801 (clickhouse_driver.Client's attribute)
            compression = False

    assert native.available(Client())
    Client.connection.compression = True
    assert not native.available(Client())
