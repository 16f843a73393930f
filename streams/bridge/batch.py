"""One batch of Ceilometer records -> signed SampleBatch records, events and dead letters (pure logic).

:class:`BatchTranslator` is what the bridge service (:mod:`streams.bridge.service`)
does between consuming and producing, with no I/O, so it is tested and
benchmarked on its own:

1. read each record (:class:`~streams.bridge.ceilometer.CeilometerReader`:
   limits, unwrap, verify, normalize);
2. derive samples from events (:class:`~streams.bridge.meters.MeterDefinitions`);
3. drop samples whose ``message_id`` repeats within the batch (Ceilometer's
   ``per_meter_topic`` sends every sample twice; repeats across batches are
   left to the processor, which checks storage for every record the bridge
   writes, see :data:`~streams.processor.stages.MAYBE_STORED_HEADER`);
4. group samples by ``resource_id`` and encode each group as signed
   ``SampleBatch`` records within the processor's input limits (:class:`~streams.bridge.avro.SampleBatchWriter`, the
   bytes of :class:`~streams.codec.BatchCodec`), keyed by resource id.

A record with any refused entry becomes one dead letter: its original key,
value and headers plus ``streams.dlq.*`` headers (stage, reason and detail of
the first refusal, source topic, partition, offset) and
``streams.dlq.entries``, the payload indexes refused (``*`` for the whole
record). Its other entries go on: each is signed on its own.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from streams.bridge.avro import SampleBatchWriter
from streams.bridge.ceilometer import CeilometerReader, ReadResult
from streams.bridge.events import SourcedEvent
from streams.bridge.meters import MeterDefinitions, SkippedMeter
from streams.codec import BatchCodec, RecordLimits, RejectedMessage, Sample, clip
from streams.processor.stages import dlq_headers

log = logging.getLogger(__name__)

ENCODE_ERRORS = (ValueError, TypeError, KeyError, AttributeError)
"""What encoding a sample that does not fit the schema raises (fastavro or the bridge's writer)."""

DLQ_HEADER_ENTRIES = "streams.dlq.entries"
"""Dead-letter header: comma-separated payload indexes refused, or ``*`` for the whole record."""


class Record(Protocol):
    """The part of a confluent-kafka ``Message`` the bridge reads."""

    def value(self) -> bytes | None: ...
    def key(self) -> bytes | None: ...
    def headers(self) -> list[tuple[str, bytes]] | None: ...
    def topic(self) -> str: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...


@dataclass
class DeadLetter:
    """A record to copy to the dead-letter topic, and why."""

    record: Any
    error: RejectedMessage
    entries: list[int]

    def headers(self) -> list[tuple[str, bytes]]:
        """The record's own headers plus ``streams.dlq.*``."""
        r = self.record
        entries = "*" if -1 in self.entries else ",".join(map(str, self.entries))
        return list(r.headers() or []) + dlq_headers(self.error, r.topic(), r.partition(), r.offset()) + [
            (DLQ_HEADER_ENTRIES, entries.encode())]


@dataclass
class TranslatedBatch:
    """What one batch gave.

    Attributes:
        records: ``(key, value)`` of signed SampleBatch records, one per resource.
        events: events to store, with their source positions.
        dead_letters: one per record with a refusal.
        rejected: every refusal ``(stage, reason)``, entries and whole records, for metrics.
        skipped_meters: ``(meter, reason)`` of definitions that matched an event but made no sample.
        samples: samples in ``records``; ``duplicates``: samples dropped as repeated in the batch.
    """

    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    events: list[SourcedEvent] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    skipped_meters: list[tuple[str, str]] = field(default_factory=list)
    samples: int = 0
    derived: int = 0
    duplicates: int = 0


class BatchTranslator:
    """Ceilometer records in, signed SampleBatch records, events and dead letters out.

    Args:
        reader: reads one record value.
        meters: definitions deriving samples from events.
        codec: signs and encodes SampleBatch records with this project's key.
        limits: the processor's input limits (``processor.max_*``): a record
            holds at most ``samples`` samples and ``record_bytes`` bytes.
    """

    def __init__(self, reader: CeilometerReader, meters: MeterDefinitions, codec: BatchCodec,
                 limits: RecordLimits | None = None) -> None:
        self.reader = reader
        self.meters = meters
        self.codec = codec
        self.limits = limits or RecordLimits()
        self.writer = SampleBatchWriter(codec)

    def translate(self, batch: Sequence[Record], now_us: int | None = None) -> TranslatedBatch:
        """Translate ``batch``; never raises for bad input (only if a sample does not fit the Avro schema,
        which normalization rules out)."""
        out = TranslatedBatch()
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        samples: list[Sample] = []
        skipped = out.skipped_meters

        def on_skip(s: SkippedMeter) -> None:
            skipped.append((s.meter, s.reason))

        origin: list[tuple[int, Any]] = []  # (index of the record's first sample, record)
        for rec in batch:
            try:
                result = self.reader.read(rec.value(), now_us)
            except Exception as exc:  # noqa: BLE001 - read() handles bad input; a bug costs the record, not the bridge
                log.exception("record %s[%d]@%d raised %s; dead-lettered", rec.topic(), rec.partition(), rec.offset(),
                              type(exc).__name__)
                result = ReadResult(rejected=[(-1, RejectedMessage("unwrap", "internal_error",
                                                                   f"{type(exc).__name__}: {clip(str(exc))}"))])
            origin.append((len(samples), rec))
            samples += result.samples
            if result.events:
                topic, partition, offset = rec.topic(), rec.partition(), rec.offset()
                for e in result.events:
                    out.events.append(SourcedEvent(e, topic, partition, offset))
                    derived = self.meters.samples(e, on_skip)
                    out.derived += len(derived)
                    samples += derived
            if result.rejected:
                out.rejected += [(err.stage, err.reason) for _, err in result.rejected]
                first = result.rejected[0][1]
                detail = "; ".join(err.detail for _, err in result.rejected)
                out.dead_letters.append(DeadLetter(
                    rec, RejectedMessage(first.stage, first.reason, detail), [i for i, _ in result.rejected]))
        groups: dict[str, list[int]] = {}
        seen: set[str] = set()
        for i, s in enumerate(samples):
            mid = s["message_id"]
            if mid in seen:
                out.duplicates += 1
                continue
            seen.add(mid)
            group = groups.get(s["resource_id"])
            if group is None:
                groups[s["resource_id"]] = [i]
            else:
                group.append(i)
        step = self.limits.samples
        for rid, idx in groups.items():
            for start in range(0, len(idx), step):
                self._emit(out, rid.encode(), samples, idx[start:start + step], origin)
        return out

    def _emit(self, out: TranslatedBatch, key: bytes, samples: list[Sample], idx: list[int],
              origin: list[tuple[int, Any]]) -> None:
        """Encode the samples ``idx`` of one resource as records the processor accepts (its
        ``max_record_bytes``: halves until each fits)."""
        group = [samples[i] for i in idx]
        try:
            data = self.writer.encode(group)
        except ENCODE_ERRORS as exc:  # e.g. text with a lone surrogate (no UTF-8 form)
            self._unencodable(out, samples, idx, origin, exc)
            return
        if len(data) <= self.limits.record_bytes:
            out.records.append((key, data))
            out.samples += len(group)
        elif len(idx) > 1:
            half = len(idx) // 2
            self._emit(out, key, samples, idx[:half], origin)
            self._emit(out, key, samples, idx[half:], origin)
        else:
            self._refuse(out, samples, idx[0], origin, RejectedMessage(
                "normalize", "too_large", f"sample {samples[idx[0]]['message_id']!r} encodes to {len(data)} bytes; "
                f"the processor's max_record_bytes is {self.limits.record_bytes}"))

    def _unencodable(self, out: TranslatedBatch, samples: list[Sample], idx: list[int],
                     origin: list[tuple[int, Any]], exc: Exception) -> None:
        """Encode a failed group one sample at a time; dead-letter the records of the samples that fail."""
        good = []
        for i in idx:
            try:
                self.writer.encode([samples[i]])
                good.append(i)
            except ENCODE_ERRORS as err:
                self._refuse(out, samples, i, origin, RejectedMessage(
                    "normalize", "unencodable", f"sample {samples[i]['message_id']!r}: {err}"))
        if good:
            self._emit(out, samples[good[0]]["resource_id"].encode(), samples, good, origin)

    @staticmethod
    def _refuse(out: TranslatedBatch, samples: list[Sample], i: int, origin: list[tuple[int, Any]],
                error: RejectedMessage) -> None:
        """Dead-letter the record sample ``i`` came from (the record's other samples went on)."""
        starts = [start for start, _ in origin]
        rec = origin[bisect.bisect_right(starts, i) - 1][1]
        out.rejected.append((error.stage, error.reason))
        out.dead_letters.append(DeadLetter(rec, error, [-1]))
