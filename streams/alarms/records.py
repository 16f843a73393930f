"""Avro single-object encoding of plain (unsigned) records, e.g. ``streams.AlarmEvent``.

Same framing as the sample batches (:mod:`streams.codec`)::

    C3 01 | 8-byte CRC-64-AVRO fingerprint (little-endian) | Avro binary body

and the same schema lookup (:class:`~streams.codec.SchemaStore`, by full name
to write and by fingerprint to read), so a reader resolves any version of
the schema shipped in ``schemas/``. Unlike sample batches these records are
not signed: the ``alarms`` topic is written by processors only.
"""

from __future__ import annotations

import io
from typing import Any

import fastavro

from streams.codec import HEADER_SIZE, MAGIC, SchemaStore

ALARM_SCHEMA = "streams.AlarmEvent"


class RecordCodec:
    """Encode/decode records of schema ``name`` with single-object framing.

    Args:
        name: full schema name, e.g. ``streams.AlarmEvent``.
        store: schemas (default: the project's ``schemas/``).

    Raises:
        KeyError: no schema of that name.
    """

    def __init__(self, name: str = ALARM_SCHEMA, store: SchemaStore | None = None) -> None:
        self.store = store or SchemaStore()
        self.schema = self.store[name]
        self._header = MAGIC + self.schema.fingerprint

    def encode(self, record: dict[str, Any]) -> bytes:
        """Encode ``record``. Raises ValueError/TypeError (fastavro) if it does not fit the schema."""
        buf = io.BytesIO()
        buf.write(self._header)
        fastavro.schemaless_writer(buf, self.schema.parsed, record)
        return buf.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        """Decode ``data`` written with any known version of the schema.

        Raises:
            ValueError: not single-object encoded, unknown fingerprint, or a body
                that does not match its writer schema.
        """
        if len(data) < HEADER_SIZE or data[:2] != MAGIC:
            raise ValueError("not Avro single-object encoded (no C3 01 marker)")
        writer = self.store.by_fingerprint.get(data[2:HEADER_SIZE])
        if writer is None:
            raise ValueError(f"unknown schema fingerprint {data[2:HEADER_SIZE].hex()}")
        body = io.BytesIO(data)
        body.seek(HEADER_SIZE)
        try:
            return fastavro.schemaless_reader(body, writer.parsed,
                                              None if writer is self.schema else self.schema.parsed)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"undecodable {writer.name} record: {exc}") from exc
