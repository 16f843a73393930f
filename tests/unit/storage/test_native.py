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
from streams.storage.backend import EmbeddedConnection, close_chdb

TYPES = ("String", "Float64", "Int64", "Nullable(String)", "Nullable(Float64)", "Array(String)",
         "LowCardinality(String)")


SETTINGS = {"strings_as_bytes": False, "strings_encoding": "utf-8", "use_numpy": False,
            "input_format_null_as_default": False}
"""clickhouse-driver's client settings its column writers read (its defaults)."""


def _packet(send) -> bytes:
    """The bytes ``send(fout)`` writes to a clickhouse-driver socket writer."""
    ours, theirs = socket.socketpair()
    received = bytearray()

    def drain():
        while chunk := theirs.recv(1 << 16):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        fout = BufferedSocketWriter(ours, 1 << 16)
        send(fout)
        fout.flush()
    finally:
        ours.shutdown(socket.SHUT_WR)
        reader.join(10)
        ours.close()
        theirs.close()
    return bytes(received)


def driver_bytes(spec: str, values: list) -> bytes:
    """What clickhouse-driver writes for one column."""
    ctx = Context()
    ctx.client_settings = dict(SETTINGS)
    return _packet(lambda fout: write_column(ctx, "c", spec, values, fout))


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
    if spec == "LowCardinality(String)":  # repeats, as meter names and units do
        return rng.choice(("cpu", "memory.usage", "é", "", b"cpu")) if rng.random() < 0.8 else _text(rng)
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


@pytest.mark.parametrize("distinct", [1, 255, 256, 65535, 65536])
def test_low_cardinality_indexes_widen_as_clickhouse_driver_widens_them(distinct):
    values = [f"v{i}" for i in range(distinct)] + ["v0"] * 3
    assert native_column("LowCardinality(String)", values) == driver_bytes("LowCardinality(String)", values)


@pytest.mark.parametrize("spec", ["LowCardinality(Nullable(String))", "UInt8", "Array(Int64)", "Nullable(Int64)", "string"])
def test_other_types_are_left_to_clickhouse_driver(spec):
    assert native_column(spec, ["a"]) is None


@pytest.mark.parametrize("spec, values, error", [
    ("String", ["a", None], TypeError),  # None only in a Nullable column
    ("LowCardinality(String)", ["a", None], TypeError),
    ("LowCardinality(String)", [["a"]], TypeError),  # unhashable
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
            context = type("Context", (), {"client_settings": {"strings_encoding": "utf-8"}})

    assert native.available(Client())
    Client.connection.compression = True
    assert not native.available(Client())


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def test_a_current_clickhouse_reads_the_columns_back(tmp_path):
    """chdb (current ClickHouse, in-process) decodes a Native block of these columns into the values
    written: the LowCardinality(String) layout included, which the local 18.16 server does not have."""
    rng = random.Random(2026)
    rows = 600
    columns = [(f"c{k}", spec, [_value(spec, rng) for _ in range(rows)]) for k, spec in enumerate(TYPES)]
    for *_, values in columns:  # text only: chdb returns String columns as str
        for i, v in enumerate(values):
            if isinstance(v, bytes):
                values[i] = v.hex()
            elif isinstance(v, list | tuple):
                values[i] = [x.hex() if isinstance(x, bytes) else x for x in v]

    def text(s: str) -> bytes:
        return _varint(len(s.encode())) + s.encode()

    block = _varint(len(columns)) + _varint(rows) + b"".join(
        text(name) + text(spec) + native_column(spec, values) for name, spec, values in columns)
    path = tmp_path / "block.native"
    path.write_bytes(block)  # the Native format of a file: no block info, as a client of revision 0 sends it
    conn = EmbeddedConnection(f"chdb://{tmp_path}/store")
    try:
        got = conn.execute(f"SELECT * FROM file('{path}', 'Native')")
        types = conn.execute(f"SELECT {', '.join(f'toTypeName({n})' for n, _, _ in columns)} "
                             f"FROM file('{path}', 'Native') LIMIT 1")
    finally:
        close_chdb()
    assert list(types[0]) == list(TYPES)
    def norm(spec: str, v):  # floats by repr (NaN, -0.0), bools and ints as the numbers stored
        if v is None:
            return None
        return repr(float(v)) if "Float64" in spec else int(v) if spec == "Int64" else v

    want = [tuple(norm(spec, v) for (_, spec, _), v in zip(columns, row, strict=True))
            for row in zip(*(values for _, _, values in columns), strict=True)]
    assert [tuple(norm(spec, v) for spec, v in zip(TYPES, row, strict=True)) for row in got] == want


class _Connection:
    """What ``Connection.send_data`` and :func:`native._send_block` use of a clickhouse-driver
    connection: its writer, the server's revision and the context."""

    def __init__(self, revision: int, fout) -> None:
        from clickhouse_driver.streams.native import BlockOutputStream

        self.fout = fout
        self.server_info = type("ServerInfo", (), {"used_revision": revision})()
        self.context = Context()
        self.context.server_info = self.server_info
        self.context.client_settings = dict(SETTINGS)
        self.block_out = BlockOutputStream(fout, self.context)


@pytest.mark.parametrize("table", ["", "_ids"])  # an INSERT's data, an external table
@pytest.mark.parametrize("revision", [54_412, "client"])  # 18.16's protocol; clickhouse-driver's own, the newest
def test_data_packets_are_the_ones_clickhouse_driver_sends(revision, table):
    from clickhouse_driver import defines
    from clickhouse_driver.block import ColumnOrientedBlock
    from clickhouse_driver.connection import Connection

    revision = defines.CLIENT_REVISION if revision == "client" else revision
    rng = random.Random(revision)
    columns = [(f"c{k}", spec) for k, spec in enumerate((*TYPES, "UInt8"))]  # UInt8: clickhouse-driver's
    data = [[_value(spec, rng) for _ in range(50)] if spec != "UInt8" else list(range(50)) for _, spec in columns]
    ours = _packet(lambda fout: native._send_block(_Connection(revision, fout), table, columns, data, 50))
    theirs = _packet(lambda fout: Connection.send_data(_Connection(revision, fout),
                                                       ColumnOrientedBlock(columns, data), table_name=table))
    assert ours == theirs


@pytest.mark.parametrize("spec, value", [
    ("Float64", type("Float", (float,), {})(1.5)),  # subclasses: their methods could run Python code
    ("Int64", type("Int", (int,), {})(3)),
    ("LowCardinality(String)", type("Str", (str,), {})("cpu")),
])
def test_subclasses_of_numbers_and_low_cardinality_strings_are_left_to_clickhouse_driver(spec, value):
    with pytest.raises(TypeError):
        native_column(spec, [value])


@pytest.mark.parametrize("settings, expected", [
    ({}, True), ({"strings_encoding": "UTF_8"}, True), ({"strings_encoding": "latin-1"}, False),
    ({"strings_as_bytes": True}, False), ({"use_numpy": True}, False)])
def test_clients_whose_strings_are_not_utf8_text_are_left_to_clickhouse_driver(settings, expected):
    client = type("Client", (), {})()
    client.connection = type("Conn", (), {"compression": False})()
    client.connection.context = Context()
    client.connection.context.client_settings = {**SETTINGS, **settings}
    assert native.available(client) is expected


def test_columns_of_different_lengths_are_refused_before_anything_is_sent():
    class Client:  # any use of the connection fails the test
        def disconnect_on_error(self, *args):
            raise AssertionError("a query was started")

    with pytest.raises(ValueError, match="Different rows length"):
        native.insert_columns(Client(), "INSERT INTO t (a, b) VALUES", [[1, 2, 3], [1, 2]], 2)
