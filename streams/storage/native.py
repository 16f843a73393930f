"""INSERTs whose column bytes are written in C (``streams._columns.native_column``).

clickhouse-driver turns each column of an INSERT into ClickHouse's Native block
format in Python: 3.7 µs of the client's CPU per sample row (15 columns) in the
sink bench, most of the client's share of an INSERT. For the column types of the
``samples`` table (String, Float64, Int64, their Nullable forms, Array(String), and
LowCardinality(String) on current servers) the C encoder writes the same bytes
(7-13x faster per value; 0.8 µs per row for the whole INSERT's client side); any
other column type is left to clickhouse-driver's own writer, inside the same block.

The conversation with the server is clickhouse-driver's (``Client.process_insert_query``
and ``Connection.send_data``, clickhouse-driver 0.2.x): send the query, read the
sample block (the server's column types), send the data blocks, an empty block,
and read the end of the query, each under ``Client.disconnect_on_error``, so a
failure leaves no half-used connection behind. Only the bytes of each column
are ours; the tests compare them with clickhouse-driver's for every type, and have a
current ClickHouse (chdb) read them back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from streams._columns import native_column
except ImportError:  # not built: clickhouse-driver writes every column
    native_column = None

__all__ = ["available", "insert_columns", "select_with_tables"]


def available(client: Any) -> bool:
    """Whether :func:`insert_columns` can serve ``client`` (a ``clickhouse_driver.Client``): the C
    encoder is built, the client does not compress blocks (a compressed stream is clickhouse-driver's
    own), and its strings are text in UTF-8 without numpy (what the encoder writes)."""
    if native_column is None or client.connection.compression:
        return False
    settings = client.connection.context.client_settings
    return (str(settings.get("strings_encoding", "utf-8")).lower().replace("_", "-") in ("utf-8", "utf8")
            and not settings.get("strings_as_bytes") and not settings.get("use_numpy"))


def insert_columns(client: Any, query: str, data: Sequence[list], block_rows: int) -> int:
    """Run ``query`` (``INSERT INTO t (c1, ...) VALUES``) with ``data``, one list per column of equal
    length, in blocks of at most ``block_rows`` rows, as ``client.execute(query, data, columnar=True)``
    does. Returns the rows sent.

    Raises what ``client.execute`` raises: the server's error (``clickhouse_driver.errors.ServerException``),
    a network error, or clickhouse-driver's error for a value its writer refuses.
    """
    from clickhouse_driver.block import ColumnOrientedBlock

    rows = len(data[0]) if data else 0
    if any(len(col) != rows for col in data):
        raise ValueError("Different rows length")  # clickhouse-driver's words, before anything is sent
    with client.disconnect_on_error(query, None):
        conn = client.connection
        conn.send_query(query)
        conn.send_external_tables(None)
        sample = client.receive_sample_block()
        if sample is None:
            return 0
        columns = sample.columns_with_types
        if data and len(columns) != len(data):
            raise ValueError(f"the server expects {len(columns)} columns, got {len(data)}")
        for start in range(0, rows, max(1, block_rows)):
            end = min(rows, start + block_rows)
            part = data if (start, end) == (0, rows) else [col[start:end] for col in data]
            _send_block(conn, "", columns, part, end - start)
            client.receive_profile_events()
        conn.send_data(ColumnOrientedBlock())  # an empty block ends the data
        client.receive_profile_events()
        client.receive_end_of_insert_query()
    return rows


def select_with_tables(client: Any, query: str, params: dict[str, Any] | None,
                       tables: Sequence[tuple[str, Sequence[tuple[str, str]], Sequence[list]]]) -> list[tuple]:
    """Run ``query`` (a SELECT; ``params`` substituted as ``client.execute`` does) with external tables,
    each ``(name, [(column, type), ...], [column list, ...])``, as ``client.execute(query, params,
    external_tables=..., columnar=True)`` does but without a tuple per row. Returns the result's columns.

    Raises what ``client.execute`` raises (see :func:`insert_columns`).
    """
    from clickhouse_driver.block import RowOrientedBlock

    with client.disconnect_on_error(query, None):
        conn = client.connection
        if params is not None:
            query = client.substitute_params(query, params, conn.context)
        conn.send_query(query, params=params)
        for name, structure, columns in tables:
            if not structure:
                raise ValueError(f'Empty table "{name}" structure')
            _send_block(conn, name, structure, columns, len(columns[0]) if columns else 0)
        conn.send_data(RowOrientedBlock())  # an empty block ends the external tables
        return client.receive_result(columnar=True)


def _send_block(conn: Any, table_name: str, columns: Sequence[tuple[str, str]], data: Sequence[list],
                rows: int) -> None:
    """One Data packet (``Connection.send_data`` + ``BlockOutputStream.write`` of clickhouse-driver)
    for ``table_name`` ('' for an INSERT's data), each column's bytes from :func:`native_column`
    where it handles the type, else from clickhouse-driver's ``write_column``."""
    from clickhouse_driver import defines
    from clickhouse_driver.block import BlockInfo
    from clickhouse_driver.columns.service import write_column
    from clickhouse_driver.protocol import ClientPacketTypes
    from clickhouse_driver.varint import write_varint
    from clickhouse_driver.writer import write_binary_str, write_binary_uint8

    encoded = []
    for (_, spec), values in zip(columns, data, strict=True):
        if len(values) != rows:
            raise ValueError("Different rows length")
        try:
            encoded.append(native_column(spec, values if isinstance(values, list) else list(values)))
        except (TypeError, ValueError, OverflowError):  # left to clickhouse-driver, which reports it its way
            encoded.append(None)
    fout, revision = conn.fout, conn.server_info.used_revision
    write_varint(ClientPacketTypes.DATA, fout)
    if revision >= defines.DBMS_MIN_REVISION_WITH_TEMPORARY_TABLES:
        write_binary_str(table_name, fout)
    if revision >= defines.DBMS_MIN_REVISION_WITH_BLOCK_INFO:
        BlockInfo().write(fout)
    write_varint(len(columns), fout)
    write_varint(rows, fout)
    for (name, spec), values, raw in zip(columns, data, encoded, strict=True):
        write_binary_str(name, fout)
        write_binary_str(spec, fout)
        if revision >= defines.DBMS_MIN_REVISION_WITH_CUSTOM_SERIALIZATION:
            write_binary_uint8(0, fout)  # plain serialization, as clickhouse-driver writes it
        if raw is None:
            write_column(conn.context, name, spec, values, fout, types_check=False)
        else:
            fout.write(raw)
    fout.flush()
