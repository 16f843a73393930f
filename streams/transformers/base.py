"""Transformer interface (Ceilometer's pipeline transformers, made stateful-safe).

A transformer is one step of a sink's chain: :meth:`Transformer.handle` takes
one sample and the transformer's *state for that sample's resource* and
returns the samples to pass on (none, the same one, or new ones).

State is a JSON-able ``dict`` the transformer owns; the processor keeps it in
a Faust table keyed by resource_id (changelog-backed), so it survives restarts
and follows the resource's partition on rebalance. Because samples arrive
keyed by resource_id, one resource's samples always reach the same worker, in
order — which Ceilometer could not promise, and why it dropped these
transformers.

Rules every stateful transformer follows, so replays cannot corrupt state:

* a sample not newer than the last one seen for its series (same or older
  timestamp, e.g. a duplicate delivery) changes nothing and yields nothing;
* a derived sample's ``message_id`` is derived deterministically from the
  input's (:func:`derived_id`), so reprocessing yields the same row, which
  storage de-duplicates.
"""

from __future__ import annotations

import abc
import hashlib
import re
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

from streams.codec import Sample

_NAMESPACE = uuid.UUID("5c1e3a3e-9d0f-4c39-a7a6-0f1f6a1d2b10")
_NAMESPACE_BYTES = _NAMESPACE.bytes


class TransformError(ValueError):
    """A transformer could not handle one sample (e.g. a metadata value is missing)."""


class TransformerConfigError(ValueError):
    """Bad transformer parameters; the message names the parameter."""


def derived_id(transformer_id: str, source_message_id: str) -> str:
    """Deterministic uuid5 of (transformer, input sample): replays give the same id.

    Exactly ``str(uuid.uuid5(namespace, f"{transformer_id}\\x00{source_message_id}"))`` (RFC 4122:
    SHA-1 of namespace and name, version and variant bits set), formatted without a UUID object
    (by ``streams._columns.uuid5_text``, in C), which was most of its cost on the processor's hot path.
    """
    return _uuid5_text(hashlib.sha1(_NAMESPACE_BYTES + f"{transformer_id}\x00{source_message_id}".encode()).digest())


def uuid5_text_py(digest: bytes) -> str:
    """The text of the version-5 UUID of a SHA-1 ``digest`` of namespace and name (RFC 4122: the first
    16 bytes, version and variant bits set), as ``str(uuid.UUID)`` spells it (36 characters).

    ``streams._columns.uuid5_text`` is the C version of this, used when the extension is built.

    Raises:
        ValueError: ``digest`` has fewer than 16 bytes.
    """
    if len(digest) < 16:
        raise ValueError("uuid5_text: the digest has fewer than 16 bytes")
    b = bytearray(digest[:16])
    b[6] = (b[6] & 0x0F) | 0x50
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


try:
    from streams._columns import uuid5_text as _uuid5_text
except ImportError:  # the extension is not built (streams.columns warns): the same text, slower
    _uuid5_text = uuid5_text_py


def metadata_number(sample: Sample, key: str) -> float:
    """``resource_metadata[key]`` as a float.

    Raises:
        TransformError: missing or not a number.
    """
    raw = (sample.get("resource_metadata") or {}).get(key)
    if raw is None:
        raise TransformError(f"resource_metadata.{key} is missing on {sample['resource_id']}")
    try:
        return float(raw)
    except ValueError:
        raise TransformError(f"resource_metadata.{key}={raw!r} is not a number") from None


class Transformer(abc.ABC):
    """One step of a sink's chain.

    Args:
        transformer_id: unique within the pipeline (``<sink>/<index>``); names
            the state and seeds derived message ids.
        parameters: the ``parameters`` mapping from pipeline.yaml.

    Raises:
        TransformerConfigError: bad parameters.
    """

    name: ClassVar[str]
    stateful: ClassVar[bool] = False

    def __init__(self, transformer_id: str, parameters: Mapping[str, Any]) -> None:
        self.id = transformer_id

    @abc.abstractmethod
    def handle(self, sample: Sample, state: dict[str, Any]) -> list[Sample]:
        """Transform one sample.

        Args:
            sample: the input (do not modify it; copy to derive).
            state: this transformer's state for ``sample["resource_id"]``;
                mutate it in place (ignored by stateless transformers).

        Returns:
            samples to pass to the next step (may be empty).

        Raises:
            TransformError: this sample cannot be transformed; the processor
                counts and logs it and passes nothing on for it.
        """


def derive(sample: Sample, transformer_id: str, **changes: Any) -> Sample:
    """A copy of ``sample`` with ``changes`` and a deterministic new message_id."""
    out: Sample = dict(sample)  # type: ignore[assignment]
    out.update(changes)  # type: ignore[typeddict-item]
    out["message_id"] = derived_id(transformer_id, sample["message_id"])
    out["message_signature"] = None
    return out


def compile_regex(pattern: str, where: str) -> re.Pattern[str]:
    """Compile ``pattern`` or raise :class:`TransformerConfigError` naming ``where``."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise TransformerConfigError(f"{where}: bad regular expression {pattern!r}: {exc}") from None
