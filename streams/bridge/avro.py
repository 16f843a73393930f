"""SampleBatch records for the bridge's hot path: the same bytes as :meth:`BatchCodec.encode`, written faster still.

Profiling the bridge (``make bench``, py-spy) put a fifth of its time in
fastavro writing ``resource_metadata`` maps: Ceilometer's instance metadata
has 20-30 entries, and every meter of an instance repeats them. This writer
encodes a ``streams.Sample`` field by field (the Avro spec's binary encoding
of ``schemas/sample.avsc``, in its field order) and remembers the encoded
bytes of each metadata dict it has seen, by identity: the reader hands the
same dict to every sample with equal metadata
(:class:`~streams.bridge.ceilometer.MetadataStrings`), and a remembered
dict is kept alive by the memory, so an identity is never reused while
remembered.

The samples are written by ``streams._bridge.encode_samples`` (C, the same
bytes field by field) when the module is built; a sample the C writer refuses
is written again by :meth:`SampleBatchWriter.sample`, which gives the exact
error it always gave (or the bytes, for input only Python's duck typing
accepts).

It writes only the schema it was built for: :class:`SampleBatchWriter`
checks at start that the codec's current ``SampleBatch`` schema is the one
this encoder knows (by fingerprint) and otherwise falls back to
``BatchCodec.encode``. A unit test checks byte equality with fastavro on
fuzzed samples.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from streams.codec import BATCH_SCHEMA, WRITER_FINGERPRINT, BatchCodec, Sample, avro_long, avro_string

try:
    from streams import _bridge as _native
except ImportError:  # not built: SampleBatchWriter.sample writes every sample
    _native = None

_TYPES = {"gauge": b"\x00", "delta": b"\x02", "cumulative": b"\x04"}  # enum index as zig-zag varint
_DOUBLE = struct.Struct("<d").pack
_NULL = b"\x00"
_SOME = b"\x02"  # union branch 1 as zig-zag varint


def _optional_string(text: str | None) -> bytes:
    return _NULL if text is None else _SOME + avro_string(text)


def encode_map(metadata: dict[str, str]) -> bytes:
    """An Avro ``map<string>``: one block of all entries, then the empty block."""
    if not metadata:
        return _NULL
    parts = [avro_long(len(metadata))]
    for k, v in metadata.items():
        parts.append(avro_string(k))
        parts.append(avro_string(v))
    parts.append(_NULL)
    return b"".join(parts)


class SampleBatchWriter:
    """Encodes and signs ``SampleBatch`` records exactly as ``codec.encode`` does.

    Args:
        codec: supplies the schema fingerprint and the keyring (active key signs).
        memory: metadata maps remembered; forgotten when full.
    """

    def __init__(self, codec: BatchCodec, memory: int = 4096) -> None:
        self.codec = codec
        batch = codec.store[BATCH_SCHEMA]
        self.fast = batch.fingerprint.hex() == WRITER_FINGERPRINT
        self._key_id = codec.keyring.active
        self._maps: dict[int, tuple[dict, bytes]] = {}
        self._memory = memory

    def _map(self, metadata: dict[str, str]) -> bytes:
        hit = self._maps.get(id(metadata))
        if hit is not None and hit[0] is metadata:
            return hit[1]
        data = encode_map(metadata)
        if len(self._maps) >= self._memory:
            self._maps.clear()
        self._maps[id(metadata)] = (metadata, data)
        return data

    def sample(self, s: Sample) -> bytes:
        """One ``streams.Sample`` in Avro binary.

        Raises:
            KeyError: ``type`` is not gauge, delta or cumulative.
            UnicodeEncodeError: text with no UTF-8 form.
        """
        mono = s.get("monotonic_time")
        return b"".join((
            avro_string(s["message_id"]), avro_string(s["name"]), _TYPES[s["type"]], avro_string(s["unit"]),
            _DOUBLE(s["volume"]), _optional_string(s.get("user_id")), _optional_string(s.get("user_name")),
            _optional_string(s.get("project_id")), _optional_string(s.get("project_name")),
            avro_string(s["resource_id"]), avro_long(s["timestamp"]),
            _NULL if mono is None else _SOME + _DOUBLE(mono),
            self._map(s.get("resource_metadata") or {}), avro_string(s.get("source", "streams")),
            _optional_string(s.get("message_signature")),
        ))

    def encode(self, samples: Sequence[Sample]) -> bytes:
        """The signed single-object record of ``samples`` (byte-equal to ``codec.encode(samples)``).

        Raises:
            ValueError / TypeError / KeyError: a sample does not fit the schema.
        """
        if not self.fast:
            return self.codec.encode(samples)
        items = None
        if samples and _native is not None:
            try:
                items = _native.encode_samples(samples, self._map)
            except Exception:  # noqa: BLE001 - the Python writer below decides, with its own error
                items = None
        if items is None:
            items = b"".join(map(self.sample, samples))
        return self.codec.record_of_items(items, len(samples), self._key_id)
