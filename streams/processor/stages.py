"""The processor's stages as pure logic: records in, samples and rejections out.

No I/O here; the Faust agent (:mod:`streams.processor.app`) is a thin shell
that feeds Kafka records in, sends rejections to the dead-letter topic and
samples to the sink.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streams.codec import BatchCodec, RejectedMessage, Sample
from streams.columns import SampleColumns
from streams.processor.normalize import Normalizer

DLQ_HEADER_STAGE = "streams.dlq.stage"
DLQ_HEADER_REASON = "streams.dlq.reason"
DLQ_HEADER_DETAIL = "streams.dlq.detail"
DLQ_HEADER_TOPIC = "streams.dlq.topic"
DLQ_HEADER_PARTITION = "streams.dlq.partition"
DLQ_HEADER_OFFSET = "streams.dlq.offset"


@dataclass(frozen=True)
class Rejection:
    """Record ``index`` of a batch was refused by ``error.stage`` for ``error.reason``."""

    index: int
    error: RejectedMessage


MAYBE_STORED_HEADER = "streams.maybe-stored"
"""Header a producer sets (value ``1``) on records whose samples may already be stored, e.g. the
Ceilometer bridge, which republishes what it consumes at least once: the processor then looks
those samples up before inserting them (the sink's duplicate check)."""


DLQ_HEADER_TRUNCATED = "streams.dlq.truncated"
DLQ_TRUNCATED_BYTES = 64 << 10
"""Bytes of a record's value kept in its dead letter when the whole value would not fit the dead-letter topic."""


def fit_dead_letter(value: bytes | None, limit: int) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """The value to dead-letter, and extra headers: ``value`` itself if it fits in ``limit`` bytes, else its
    first :data:`DLQ_TRUNCATED_BYTES` bytes and header ``streams.dlq.truncated`` = the original length.

    A record larger than the dead-letter topic takes must still leave a dead letter (else
    the producer fails and the worker crash-loops on it); the whole record stays in its
    source topic, at the partition and offset the headers name, until retention.
    """
    if value is None or len(value) <= limit:
        return value, []
    return value[:min(limit, DLQ_TRUNCATED_BYTES)], [(DLQ_HEADER_TRUNCATED, str(len(value)).encode())]


def dlq_headers(error: RejectedMessage, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """Headers naming the stage, reason and origin of a dead-lettered record (detail: at most 1 KiB)."""
    return [
        (DLQ_HEADER_STAGE, error.stage.encode()),
        (DLQ_HEADER_REASON, error.reason.encode()),
        (DLQ_HEADER_DETAIL, error.detail.encode()[:1024]),
        (DLQ_HEADER_TOPIC, topic.encode()),
        (DLQ_HEADER_PARTITION, str(partition).encode()),
        (DLQ_HEADER_OFFSET, str(offset).encode()),
    ]


class RecordProcessor:
    """decode -> verify -> normalize, for a batch of Kafka record values.

    Args:
        codec: verifies signatures and decodes records.
        normalizer: unit and sanity rules.
    """

    def __init__(self, codec: BatchCodec, normalizer: Normalizer) -> None:
        self.codec = codec
        self.normalizer = normalizer

    def decode_record(self, value: bytes | None, key: bytes | None = None, check_key: bool = True) -> list[Sample]:
        """Decode, verify and normalize one record; check that its key is its samples' resource_id.

        Args:
            value: the record value (a signed SampleBatch).
            key: the record key; the design's contract is key = resource_id (UTF-8),
                which puts a resource's samples, and so its state, on one partition.
            check_key: False skips the key check (tools that read values alone).

        Raises:
            RejectedMessage: the record goes to the dead-letter topic (``key_mismatch``
                besides the codec's and the normalizer's reasons).
        """
        if not value:
            raise RejectedMessage("decode", "empty", "record has no value")
        samples = self.normalizer.normalize(self.codec.decode(value), record_bytes=len(value))
        if check_key:
            rid = samples[0]["resource_id"]
            if key is None or key != rid.encode():
                raise RejectedMessage("normalize", "key_mismatch",
                                      f"record key {key!r} is not its samples' resource_id {rid!r}")
        return samples

    def decode_into(self, value: bytes | None, key: bytes | None, columns: SampleColumns) -> int:
        """Decode and verify one record into ``columns`` (no normalization: the caller normalizes the
        batch column-wise, :meth:`Normalizer.normalize_columns`); check its key and that its samples
        are of one resource.

        Returns:
            how many samples were appended (nothing stays appended if it raises).

        Raises:
            RejectedMessage: ``empty``, the codec's reasons, ``mixed_resources``, ``key_mismatch``.
        """
        if not value:
            raise RejectedMessage("decode", "empty", "record has no value")
        start = len(columns)
        n = self.codec.decode_columns(value, columns)
        if n:
            rids = columns.resource_id
            rid = rids[start]
            mine = rids[start:start + n] if n > 1 else None
            if mine is not None and mine.count(rid) != n:
                other = next(r for r in mine if r != rid)
                columns.truncate(start)
                raise RejectedMessage("normalize", "mixed_resources",
                                      f"samples of {rid!r} and {other!r} in one record")
            if key is None or key != rid.encode():
                columns.truncate(start)
                raise RejectedMessage("normalize", "key_mismatch",
                                      f"record key {key!r} is not its samples' resource_id {rid!r}")
        return n

    def process(self, values: Sequence[bytes | None]) -> tuple[list[Sample], list[Rejection]]:
        """Process record values in order.

        Returns:
            (accepted samples of all good records, one :class:`Rejection` per bad record).
            Never raises for bad input: every record ends up in exactly one of the two.
        """
        samples: list[Sample] = []
        rejected: list[Rejection] = []
        for i, value in enumerate(values):
            try:
                samples.extend(self.decode_record(value, check_key=False))
            except RejectedMessage as exc:
                rejected.append(Rejection(i, exc))
        return samples, rejected
