"""Records of the ``alarms`` topic: signed ``streams.AlarmRecord`` (one ``streams.AlarmEvent`` each).

Same framing and signature as the sample batches (:mod:`streams.codec`)::

    C3 01 | 8-byte CRC-64-AVRO fingerprint (little-endian) | key_id | event | HMAC-SHA256 (32 bytes)

so a subscriber checks that an alarm came from a processor with one key
(``signing.alarm_active``; see SECURITY.md for verify-only access).
:class:`RecordCodec` keeps the unsigned single-object encoding of any schema
(a plain ``streams.AlarmEvent`` was the alarms topic's format before records
were signed).
"""

from __future__ import annotations

import io
from typing import Any

import fastavro

from streams.codec import HEADER_SIZE, MAGIC, RejectedMessage, SchemaStore, SignedCodec
from streams.signing import Keyring

ALARM_SCHEMA = "streams.AlarmEvent"
ALARM_RECORD_SCHEMA = "streams.AlarmRecord"


class AlarmRecordCodec(SignedCodec):
    """Signs and verifies the alarms topic's records (``streams.AlarmRecord``).

    Args:
        keyring: signing keys; its active key signs (``signing.alarm_active``), any verifies.
        store: schemas (default: the project's ``schemas/``).
    """

    def __init__(self, keyring: Keyring, store: SchemaStore | None = None) -> None:
        super().__init__(keyring, ALARM_RECORD_SCHEMA, "event", store)
        self._unsigned = self.store[ALARM_SCHEMA].fingerprint

    def encode(self, event: dict[str, Any], key_id: str | None = None) -> bytes:  # type: ignore[override]
        """One signed record of ``event`` (a ``streams.AlarmEvent`` dict, e.g. ``AlarmEvent.to_record()``)."""
        return super().encode(event, key_id)

    def decode(self, data: bytes, accept_unsigned: bool = False) -> dict[str, Any]:
        """Verify and decode a record into its ``streams.AlarmEvent`` dict.

        Args:
            accept_unsigned: also accept a plain (unsigned) ``streams.AlarmEvent``
                record, as processors before signed alarm records wrote them.

        Raises:
            RejectedMessage: not single-object encoded, unknown schema, unknown key,
                bad signature (stage ``verify``), undecodable; ``unsigned`` for a
                plain AlarmEvent unless ``accept_unsigned``.
        """
        if len(data) >= HEADER_SIZE and data[:2] == MAGIC and data[2:HEADER_SIZE] == self._unsigned:
            if not accept_unsigned:
                raise RejectedMessage("verify", "unsigned", "an unsigned AlarmEvent record")
            try:
                return RecordCodec(ALARM_SCHEMA, self.store).decode(data)
            except ValueError as exc:
                raise RejectedMessage("decode", "undecodable", str(exc)) from exc
        return self.decode_record(data)["event"]


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
