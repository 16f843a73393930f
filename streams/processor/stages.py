"""The processor's stages as pure logic: records in, samples and rejections out.

No I/O here; the Faust agent (:mod:`streams.processor.app`) is a thin shell
that feeds Kafka records in, sends rejections to the dead-letter topic and
samples to the sink.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streams.codec import BatchCodec, RejectedMessage, Sample
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


def dlq_headers(error: RejectedMessage, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """Headers naming the stage, reason and origin of a dead-lettered record."""
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

    def decode_record(self, value: bytes | None) -> list[Sample]:
        """Decode, verify and normalize one record value.

        Raises:
            RejectedMessage: the record goes to the dead-letter topic.
        """
        if not value:
            raise RejectedMessage("decode", "empty", "record has no value")
        return self.normalizer.normalize(self.codec.decode(value))

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
                samples.extend(self.decode_record(value))
            except RejectedMessage as exc:
                rejected.append(Rejection(i, exc))
        return samples, rejected
