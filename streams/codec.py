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

:meth:`BatchCodec.encode`, the pollers' hot path, writes the samples of the
batch schema it knows (by fingerprint, :data:`WRITER_FINGERPRINT`) with the
project's C writer (``streams._bridge.encode_samples``), about 10 times
faster than fastavro (``make bench``, codec figures); a sample the C writer refuses, or any other schema,
is written by fastavro, which gives its own bytes or error. Unit tests
check byte equality with fastavro on fuzzed batches.

Limits (:class:`RecordLimits`) are checked on the raw bytes before the HMAC
and the decode: a record's size, and the sample count of its array block.
Decoding costs up to about 18 times a record's size in Python objects, so
the size limit is what bounds a worker's memory per record.

:class:`SignedCodec` is the rule for any signed record (key id first, HMAC
trailer last); :class:`BatchCodec` applies it to ``streams.SampleBatch`` and
:mod:`streams.alarms.records` to ``streams.AlarmRecord``.
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

try:
    from streams import _bridge as _native
except ImportError:  # not built: BatchCodec.encode uses fastavro for every record
    _native = None

MAGIC = b"\xc3\x01"
"""Single-object encoding marker (Avro spec)."""
HEADER_SIZE = len(MAGIC) + 8
SCHEMA_DIR_ENV = "STREAMS_SCHEMA_DIR"
BATCH_SCHEMA = "streams.SampleBatch"
SAMPLE_SCHEMA = "streams.Sample"
WRITER_FINGERPRINT = "aaf3dbb6f90fb09b"
"""Fingerprint (hex) of the ``streams.SampleBatch`` schema the C sample writer encodes."""


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


MAX_DETAIL = 512
"""Characters of input-derived text kept in a rejection's detail (logs, DLQ headers, tables)."""


def clip(text: str, limit: int = MAX_DETAIL) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut.

    Text that comes from input (a key id, a resource id, an exception message
    quoting a value) goes into logs, Kafka headers and tables only through
    this, so one oversized record cannot write a 500,000-character log line.
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...(+{len(text) - limit} chars)"


class RejectedMessage(Exception):
    """A record that cannot be accepted, and why; it goes to the dead-letter topic.

    Attributes:
        stage: pipeline stage that refused it (``decode``, ``verify``, ``normalize``,
            ``transform``, ``store``).
        reason: a short stable token for metrics and headers, e.g. ``bad_signature``.
        detail: human-readable explanation, clipped to :data:`MAX_DETAIL` characters.
    """

    def __init__(self, stage: str, reason: str, detail: str = "") -> None:
        detail = clip(detail)
        super().__init__(f"{stage}/{reason}: {detail}" if detail else f"{stage}/{reason}")
        self.stage = stage
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RecordLimits:
    """Input limits, checked before work is done (processor settings ``max_*``).

    Attributes:
        record_bytes: largest record value accepted, bytes (checked before the HMAC).
        samples: most samples in one record (checked on the raw Avro array block count).
        metadata_entries: most ``resource_metadata`` entries in one sample.
        string_chars: longest string field, characters (metadata keys and values included).
    """

    record_bytes: int = 1 << 20
    samples: int = 1000
    metadata_entries: int = 256
    string_chars: int = 64 << 10


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
        self.named = named
        """Every named type of every file (records, enums, fixed), parsed, by full name."""

    def __getitem__(self, name: str) -> ParsedSchema:
        return self.by_name[name]


def avro_long(n: int) -> bytes:
    """Avro ``long`` (Avro spec, binary encoding): zig-zag, then base-128 varint."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_LONGS = [avro_long(i) for i in range(4096)]


def avro_string(text: str) -> bytes:
    """Avro ``string``: its UTF-8 length as a long, then the bytes.

    Raises:
        UnicodeEncodeError: text with no UTF-8 form (a lone surrogate).
    """
    data = text.encode("utf-8")
    n = len(data)
    return (_SMALL_LONGS[n] if n < 4096 else avro_long(n)) + data


def _read_long(data: bytes, pos: int, what: str) -> tuple[int, int]:
    """Decode an Avro ``long`` (zig-zag varint) at ``pos``; return it and the position after it."""
    shift = 0
    acc = 0
    while True:
        if pos >= len(data):
            raise RejectedMessage("decode", "truncated", f"record ends inside {what}")
        b = data[pos]
        pos += 1
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 63:
            raise RejectedMessage("decode", "malformed", f"{what} varint too long")
    return (acc >> 1) ^ -(acc & 1), pos


def _read_key_id(data: bytes, pos: int) -> tuple[str, int]:
    """Decode an Avro ``string`` at ``pos``; return it and the position after it."""
    length, pos = _read_long(data, pos, "key_id length")
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
    expanded = fastavro.parse_schema(_strip_logical_types(store[name].raw), dict(store.named), expand=True,
                                     _write_hint=False)
    options = cavro.DEFAULT_OPTIONS.replace(record_decodes_to_dict=True, logical_types=())
    return cavro.Schema(expanded, options=options).binary_decode


class SignedCodec:
    """Encode, sign, verify and decode signed records of one schema.

    The schema's first field is ``key_id`` (string), its last ``signature``
    (fixed 32), and one field in between carries the payload (``payload``).
    The signature is HMAC-SHA256 of every byte before it (marker,
    fingerprint, key id, payload), so :meth:`verify` needs no decoding.

    Args:
        keyring: signing keys; the active one signs, any one verifies.
        schema: full name of the record schema, e.g. ``streams.SampleBatch``.
        payload: name of the payload field, e.g. ``samples``.
        store: schemas; defaults to the project's ``schemas/``.
        limits: input limits (:class:`RecordLimits`); default limits if None.
    """

    def __init__(self, keyring: Keyring, schema: str, payload: str, store: SchemaStore | None = None,
                 limits: RecordLimits | None = None) -> None:
        self.keyring = keyring
        self.store = store or SchemaStore()
        self.limits = limits or RecordLimits()
        self._schema = self.store[schema]
        self._payload = payload
        self._header = MAGIC + self._schema.fingerprint
        self._placeholder = bytes(SIGNATURE_SIZE)
        self._fast_reader = current_schema_reader(self.store, schema)

    def encode(self, payload: Any, key_id: str | None = None) -> bytes:
        """Encode ``payload`` as one signed single-object record.

        Args:
            payload: the value of the payload field (e.g. a list of sample dicts).
            key_id: signing key (default: the keyring's active key).

        Returns:
            the record bytes: header, body, and a 32-byte HMAC-SHA256 trailer.

        Raises:
            ValueError / TypeError / fastavro errors: the payload does not fit the schema.
        """
        key_id = key_id or self.keyring.active
        buf = io.BytesIO()
        buf.write(self._header)
        fastavro.schemaless_writer(
            buf, self._schema.parsed,
            {"key_id": key_id, self._payload: payload, "signature": self._placeholder},
        )
        data = buf.getbuffer()
        unsigned = bytes(data[:-SIGNATURE_SIZE])
        del data
        return unsigned + self.keyring.sign(unsigned, key_id)

    def verify(self, record: bytes) -> tuple[ParsedSchema, str, int]:
        """Check size, framing and signature of ``record`` without decoding its payload.

        Returns:
            the writer schema, the key id that signed it, and the offset of the
            payload (the first byte after the key id).

        Raises:
            RejectedMessage: stage ``decode`` (``too_large``: over
                ``limits.record_bytes``, checked first; not single-object encoded,
                unknown schema fingerprint, truncated) or stage ``verify``
                (``unknown_key``, ``bad_signature``).
        """
        if len(record) > self.limits.record_bytes:
            raise RejectedMessage("decode", "too_large",
                                  f"record of {len(record)} bytes; the limit is {self.limits.record_bytes}")
        if len(record) < HEADER_SIZE + SIGNATURE_SIZE + 1 or record[:2] != MAGIC:
            raise RejectedMessage(
                "decode", "not_single_object", "missing Avro single-object marker C3 01"
            )
        writer = self.store.by_fingerprint.get(record[2:HEADER_SIZE])
        if writer is None:
            raise RejectedMessage(
                "decode", "unknown_schema", f"fingerprint {record[2:HEADER_SIZE].hex()}"
            )
        key_id, pos = _read_key_id(record, HEADER_SIZE)
        if key_id not in self.keyring:
            raise RejectedMessage("verify", "unknown_key", f"key id {key_id!r} not in keyring")
        if not self.keyring.verify(key_id, record[:-SIGNATURE_SIZE], record[-SIGNATURE_SIZE:]):
            raise RejectedMessage("verify", "bad_signature", f"HMAC mismatch for key {key_id!r}")
        return writer, key_id, pos

    def _check_payload(self, record: bytes, pos: int) -> None:
        """Hook: limits on the raw payload bytes at ``pos``, before decoding (raises RejectedMessage)."""

    def decode_record(self, record: bytes) -> dict[str, Any]:
        """Verify, check limits, then decode ``record`` into its body (a dict with the payload field).

        Raises:
            RejectedMessage: as :meth:`verify`, a limit of :meth:`_check_payload`,
                or stage ``decode`` reason ``undecodable`` when the body does not
                match its writer schema.
        """
        writer, _, pos = self.verify(record)
        self._check_payload(record, pos)
        try:
            if writer is self._schema:
                return self._fast_reader(record[HEADER_SIZE:])
            # an older writer schema: fastavro resolves it to the current one
            body = io.BytesIO(record)
            body.seek(HEADER_SIZE)
            return fastavro.schemaless_reader(body, writer.parsed, self._schema.parsed)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a reject
            raise RejectedMessage("decode", "undecodable", f"{type(exc).__name__}: {exc}") from exc


class BatchCodec(SignedCodec):
    """:class:`SignedCodec` of :data:`BATCH_SCHEMA`: the signed sample batches of the samples topic.

    Args:
        keyring: signing keys; the active one signs, any one verifies.
        store: schemas; defaults to the project's ``schemas/``.
        limits: input limits; the sample count of a record is checked on the raw
            Avro array block count, before decoding.
    """

    def __init__(self, keyring: Keyring, store: SchemaStore | None = None,
                 limits: RecordLimits | None = None) -> None:
        super().__init__(keyring, BATCH_SCHEMA, "samples", store, limits)
        self._native = _native if self._schema.fingerprint.hex() == WRITER_FINGERPRINT else None

    def encode(self, samples: Sequence[Sample], key_id: str | None = None) -> bytes:  # type: ignore[override]
        """Encode ``samples`` (dicts of the ``streams.Sample`` shape, usually of one resource)
        as one signed record; see :meth:`SignedCodec.encode`.

        The same bytes as fastavro's (:meth:`SignedCodec.encode`), written by the C
        sample writer when the schema is the one it knows and every sample is plain
        (exact dicts, str, int and float); otherwise by fastavro.

        Raises:
            ValueError / TypeError / fastavro errors: a sample does not fit the schema.
        """
        if self._native is not None and samples and isinstance(samples, list | tuple):
            try:
                items = self._native.encode_samples(samples, None)
            except Exception:  # noqa: BLE001 - fastavro decides, with its own bytes or error
                items = None
            if items is not None:
                return self.record_of_items(items, len(samples), key_id)
        return super().encode(samples, key_id)

    def record_of_items(self, items: bytes, count: int, key_id: str | None = None) -> bytes:
        """The signed record whose ``samples`` array is ``count`` samples already in Avro binary,
        concatenated in ``items`` (Avro spec: one array block of ``count`` items, then the empty
        block; an empty array is the empty block alone).

        Args:
            items: the samples' Avro binary encoding, concatenated (``b""`` when ``count`` is 0).
            count: how many samples ``items`` holds.
            key_id: signing key (default: the keyring's active key).

        Returns:
            the record bytes: header, body, and a 32-byte HMAC-SHA256 trailer.

        Raises:
            KeyError: ``key_id`` is not in the keyring.
        """
        key_id = key_id or self.keyring.active
        body = (avro_string(key_id), avro_long(count), items, b"\x00") if count else (avro_string(key_id), b"\x00")
        unsigned = self._header + b"".join(body)
        return unsigned + self.keyring.sign(unsigned, key_id)

    def _check_payload(self, record: bytes, pos: int) -> None:
        # The samples array's first block count, read without decoding anything (fastavro
        # writes one block; a writer with more blocks is caught after decoding, in decode()).
        count, _ = _read_long(record, pos, "samples block count")
        if abs(count) > self.limits.samples:
            raise RejectedMessage("decode", "too_many_samples",
                                  f"record declares {abs(count)} samples; the limit is {self.limits.samples}")

    def decode_columns(self, record: bytes, columns: Any) -> int:
        """Verify, check limits, then append ``record``'s samples to ``columns``
        (:class:`~streams.columns.SampleColumns`): the processor's path, no dict per sample.

        Returns:
            how many samples were appended (nothing is appended if it raises).

        Raises:
            RejectedMessage: as :meth:`decode`.
        """
        from streams.columns import decode_samples

        writer, _, pos = self.verify(record)
        self._check_payload(record, pos)
        try:
            if writer is self._schema:
                count = decode_samples(record, pos, columns, lambda _: self._fast_reader(record[HEADER_SIZE:]))
            else:  # an older writer schema: fastavro resolves it, then to columns
                samples = self.decode_record(record)["samples"]
                columns.extend_dicts(samples)
                count = len(samples)
        except RejectedMessage:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a reject
            raise RejectedMessage("decode", "undecodable", f"{type(exc).__name__}: {exc}") from exc
        if count > self.limits.samples:
            columns.truncate(len(columns) - count)
            raise RejectedMessage("decode", "too_many_samples",
                                  f"record holds {count} samples; the limit is {self.limits.samples}")
        return count

    def decode(self, record: bytes) -> list[Sample]:
        """Verify, check limits, then decode ``record`` into its samples.

        Raises:
            RejectedMessage: as :meth:`SignedCodec.decode_record`; ``too_many_samples``.
        """
        samples = self.decode_record(record)["samples"]
        if len(samples) > self.limits.samples:
            raise RejectedMessage("decode", "too_many_samples",
                                  f"record holds {len(samples)} samples; the limit is {self.limits.samples}")
        return samples


_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode
_JSON_SCALARS = {int: int.__repr__, bool: lambda v: "true" if v else "false", type(None): lambda v: "null"}


def metadata_to_strings(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Flatten resource metadata values to strings for the Avro ``map<string>``.

    Strings pass through; everything else (numbers, bools, lists, dicts, None)
    becomes compact JSON text, so nested Ceilometer metadata is carried losslessly.
    (Integers, booleans and null are written directly, the same text ``json.dumps``
    gives, and one encoder is reused: the Ceilometer bridge calls this per sample.)
    """
    out = {}
    for k, v in metadata.items():
        if type(v) is str:
            out[str(k)] = v
        else:
            scalar = _JSON_SCALARS.get(type(v))
            out[str(k)] = scalar(v) if scalar is not None else _COMPACT_JSON(v)
    return out


def group_by_resource(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    """Group samples by ``resource_id``, keeping order: one Kafka record per group."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s["resource_id"], []).append(s)
    return groups

