"""Wire format: Avro single-object encoding of signed sample batches.

One Kafka record carries one :class:`SampleBatch` — the samples of one
resource from one poll — encoded as the Avro spec's *single-object encoding*:

    C3 01 | 8-byte CRC-64-AVRO fingerprint (little-endian) | Avro binary body

The writer schema is resolved by its fingerprint among the ``.avsc`` files of
``schemas/``, so a record written with an older schema version still decodes.
The body's first field is ``key_id`` and its last is the 32-byte ``signature``
(``schemas/sample_batch.avsc``), so the signed bytes are simply
``record[:-32]`` and verification happens *before* the costlier decode, with
no re-encoding.

Timestamps stay integers (microseconds since the epoch, UTC) in memory:
schemas are used here with their ``logicalType`` annotations removed, which
changes nothing on the wire (the Parsing Canonical Form, and so the
fingerprint, has no logical types) and saves a ``datetime`` per sample.

Two Avro libraries, each where it is best: fastavro parses the schemas,
computes fingerprints, encodes, and decodes records written with an older
schema version (schema resolution); cavro (Cython) decodes records written
with the current batch schema, the processor's hot path, about twice as
fast as fastavro (``make bench``, codec figures; decoding was a third of the
processor's Python time). A unit test checks that both decoders give
identical samples on fuzzed input.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import cavro
import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from streams.signing import SIGNATURE_SIZE, Keyring

MAGIC = b"\xc3\x01"
"""Single-object encoding marker (Avro spec)."""
HEADER_SIZE = len(MAGIC) + 8
SCHEMA_DIR_ENV = "STREAMS_SCHEMA_DIR"
BATCH_SCHEMA = "streams.SampleBatch"
SAMPLE_SCHEMA = "streams.Sample"


class Sample(TypedDict, total=False):
    """A sample as a dict, the shape fastavro reads and writes (``schemas/sample.avsc``).

    ``timestamp`` is microseconds since the Unix epoch, UTC; ``volume`` is in ``unit``.
    """

    message_id: str
    name: str
    type: str
    unit: str
    volume: float
    user_id: str | None
    user_name: str | None
    project_id: str | None
    project_name: str | None
    resource_id: str
    timestamp: int
    monotonic_time: float | None
    resource_metadata: dict[str, str]
    source: str
    message_signature: str | None


class RejectedMessage(Exception):
    """A record that cannot be accepted, and why; it goes to the dead-letter topic.

    Attributes:
        stage: pipeline stage that refused it (``decode``, ``verify``, ``normalize``).
        reason: a short stable token for metrics and headers, e.g. ``bad_signature``.
        detail: human-readable explanation.
    """

    def __init__(self, stage: str, reason: str, detail: str = "") -> None:
        super().__init__(f"{stage}/{reason}: {detail}" if detail else f"{stage}/{reason}")
        self.stage = stage
        self.reason = reason
        self.detail = detail


def _strip_logical_types(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_strip_logical_types(s) for s in schema]
    return schema


def default_schema_dir() -> Path:
    """``$STREAMS_SCHEMA_DIR``, else the ``schemas/`` shipped beside the package."""
    env = os.environ.get(SCHEMA_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parent / "schemas"


@dataclass(frozen=True)
class ParsedSchema:
    """One named schema: its fully expanded JSON, parsed form and fingerprint."""

    name: str
    raw: dict[str, Any]
    parsed: Any
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO


class SchemaStore:
    """All Avro schemas of a directory, parsed once, by full name and by fingerprint.

    Args:
        directory: folder of ``*.avsc`` files; named types may reference each other
            across files (e.g. ``streams.Sample`` from ``sample_batch.avsc``).

    Raises:
        ValueError: a file is not valid JSON/Avro, or a reference cannot be resolved.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory or default_schema_dir())
        pending = {p: json.loads(p.read_text()) for p in sorted(self.directory.glob("*.avsc"))}
        named: dict[str, Any] = {}
        self.by_name: dict[str, ParsedSchema] = {}
        self.by_fingerprint: dict[bytes, ParsedSchema] = {}
        while pending:
            progressed = False
            for path, raw in list(pending.items()):
                try:
                    parsed = fastavro.parse_schema(_strip_logical_types(raw), named)
                except fastavro.schema.UnknownType:
                    continue
                except Exception as exc:  # noqa: BLE001 - name the file in the error
                    raise ValueError(f"{path}: invalid Avro schema: {exc}") from exc
                expanded = fastavro.parse_schema(raw, dict(named), expand=True, _write_hint=False)
                pcf = to_parsing_canonical_form(expanded)
                fp = bytes.fromhex(fingerprint(pcf, "CRC-64-AVRO"))
                name = parsed["name"]
                entry = ParsedSchema(name, raw, parsed, fp)
                self.by_name[name] = entry
                self.by_fingerprint[fp] = entry
                del pending[path]
                progressed = True
            if not progressed:
                raise ValueError(
                    f"unresolvable schema references in {', '.join(map(str, pending))}"
                )

    def __getitem__(self, name: str) -> ParsedSchema:
        return self.by_name[name]


def _read_key_id(data: bytes, pos: int) -> tuple[str, int]:
    """Decode an Avro ``string`` at ``pos``; return it and the position after it."""
    shift = 0
    acc = 0
    while True:
        if pos >= len(data):
            raise RejectedMessage("decode", "truncated", "record ends inside key_id")
        b = data[pos]
        pos += 1
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 63:
            raise RejectedMessage("decode", "malformed", "key_id length varint too long")
    length = (acc >> 1) ^ -(acc & 1)  # zig-zag
    if length < 0 or pos + length > len(data):
        raise RejectedMessage("decode", "malformed", f"key_id length {length} out of range")
    try:
        return data[pos : pos + length].decode("utf-8"), pos + length
    except UnicodeDecodeError as exc:
        raise RejectedMessage("decode", "malformed", f"key_id is not UTF-8: {exc}") from exc


def current_schema_reader(store: SchemaStore, name: str) -> Any:
    """A cavro decoder of Avro binary bodies written with ``store[name]`` (no schema resolution).

    Returns:
        ``decode(body: bytes) -> dict``, records as dicts, logical types off
        (so values are exactly what fastavro returns for the same schema).
    """
    named = {n: e.parsed for n, e in store.by_name.items()}
    expanded = fastavro.parse_schema(_strip_logical_types(store[name].raw), named, expand=True, _write_hint=False)
    options = cavro.DEFAULT_OPTIONS.replace(record_decodes_to_dict=True, logical_types=())
    return cavro.Schema(expanded, options=options).binary_decode


class BatchCodec:
    """Encode, sign, verify and decode :data:`BATCH_SCHEMA` records.

    Args:
        keyring: signing keys; the active one signs, any one verifies.
        store: schemas; defaults to the project's ``schemas/``.
    """

    def __init__(self, keyring: Keyring, store: SchemaStore | None = None) -> None:
        self.keyring = keyring
        self.store = store or SchemaStore()
        self._batch = self.store[BATCH_SCHEMA]
        self._header = MAGIC + self._batch.fingerprint
        self._placeholder = bytes(SIGNATURE_SIZE)
        self._fast_reader = current_schema_reader(self.store, BATCH_SCHEMA)

    def encode(self, samples: Sequence[Sample], key_id: str | None = None) -> bytes:
        """Encode ``samples`` as one signed single-object record.

        Args:
            samples: dicts of the ``streams.Sample`` shape, usually of one resource.
            key_id: signing key (default: the keyring's active key).

        Returns:
            the record bytes: header, body, and a 32-byte HMAC-SHA256 trailer.

        Raises:
            ValueError / TypeError / fastavro errors: a sample does not fit the schema.
        """
        key_id = key_id or self.keyring.active
        buf = io.BytesIO()
        buf.write(self._header)
        fastavro.schemaless_writer(
            buf,
            self._batch.parsed,
            {"key_id": key_id, "samples": samples, "signature": self._placeholder},
        )
        data = buf.getbuffer()
        unsigned = bytes(data[:-SIGNATURE_SIZE])
        del data
        return unsigned + self.keyring.sign(unsigned, key_id)

    def verify(self, record: bytes) -> tuple[ParsedSchema, str]:
        """Check framing and signature of ``record`` without decoding its samples.

        Returns:
            the writer schema and the key id that signed it.

        Raises:
            RejectedMessage: stage ``decode`` (not single-object encoded, unknown
                schema fingerprint, truncated) or stage ``verify`` (``unknown_key``,
                ``bad_signature``).
        """
        if len(record) < HEADER_SIZE + SIGNATURE_SIZE + 1 or record[:2] != MAGIC:
            raise RejectedMessage(
                "decode", "not_single_object", "missing Avro single-object marker C3 01"
            )
        writer = self.store.by_fingerprint.get(record[2:HEADER_SIZE])
        if writer is None:
            raise RejectedMessage(
                "decode", "unknown_schema", f"fingerprint {record[2:HEADER_SIZE].hex()}"
            )
        key_id, _ = _read_key_id(record, HEADER_SIZE)
        if key_id not in self.keyring:
            raise RejectedMessage("verify", "unknown_key", f"key id {key_id!r} not in keyring")
        if not self.keyring.verify(key_id, record[:-SIGNATURE_SIZE], record[-SIGNATURE_SIZE:]):
            raise RejectedMessage("verify", "bad_signature", f"HMAC mismatch for key {key_id!r}")
        return writer, key_id

    def decode(self, record: bytes) -> list[Sample]:
        """Verify, then decode ``record`` into its samples.

        Raises:
            RejectedMessage: as :meth:`verify`, or stage ``decode`` reason
                ``undecodable`` when the body does not match its writer schema.
        """
        writer, _ = self.verify(record)
        try:
            if writer is self._batch:
                batch = self._fast_reader(record[HEADER_SIZE:])
            else:  # an older writer schema: fastavro resolves it to the current one
                body = io.BytesIO(record)
                body.seek(HEADER_SIZE)
                batch = fastavro.schemaless_reader(body, writer.parsed, self._batch.parsed)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a reject
            raise RejectedMessage("decode", "undecodable", f"{type(exc).__name__}: {exc}") from exc
        return batch["samples"]


def metadata_to_strings(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Flatten resource metadata values to strings for the Avro ``map<string>``.

    Strings pass through; everything else (numbers, bools, lists, dicts, None)
    becomes compact JSON text, so nested Ceilometer metadata is carried losslessly.
    """
    return {
        str(k): v if isinstance(v, str) else json.dumps(v, separators=(",", ":"), sort_keys=True)
        for k, v in metadata.items()
    }


def group_by_resource(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    """Group samples by ``resource_id``, keeping order: one Kafka record per group."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s["resource_id"], []).append(s)
    return groups

