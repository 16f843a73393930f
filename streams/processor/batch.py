"""The processor's batch logic, with one error policy per stage; no Kafka consumer in here.

:class:`BatchProcessor` takes a batch of Kafka records (anything with
``topic``, ``partition``, ``offset``, ``key``, ``value`` and ``headers``, e.g.
a Faust ``Message``) and does everything but consuming and acknowledging,
which stay in the Faust agent (:mod:`streams.processor.app`):

1. :meth:`~BatchProcessor.prepare` (CPU, on the event loop): decode, verify
   and normalize each record, check event-time lateness, run the pipeline's
   transformer chains and feed alarm windows, against a batch-local copy of
   each resource's state (:class:`~streams.processor.state.BatchState`);
2. :meth:`~BatchProcessor.store` (I/O): add the outputs to their publishers
   and flush them all (ClickHouse insert, Kafka re-publish) in a worker
   thread; queue dead letters, alarm events and the changed states on one
   librdkafka producer and wait until the broker has acknowledged all of
   them. When it returns, the caller may acknowledge the records.

Batches are stored strictly in the order they were prepared
(:meth:`~BatchProcessor.submit`), and batch N+1 is prepared while batch N is
stored, so state never runs ahead of storage: a crash anywhere replays the
batch, and replayed samples derive the same rows or are recognised as seen.

Failure policy (DESIGN.md's table, for this stage):

=====================================  ==========================================================
what fails                             policy
=====================================  ==========================================================
one record: bytes, limits, signature,  dead-letter it (``samples.dlq``) with stage, reason and
schema, values, key, lateness          detail headers, count it; the batch goes on
one record: a bug in decoding or       dead-letter it, stage ``transform``, reason
transforming it                        ``internal_error`` (exception named, logged with traceback)
one sample in one transformer          counted (``streams_transform_errors_total``) and logged;
(:class:`TransformError`)              that sample's output is skipped
one alarm (its evaluation raises)      the alarm is disabled with a visible reason
                                       (:mod:`streams.alarms.stage`); others go on
rows the store refuses for their data  dead-letter their records, stage ``store``, reason
                                       ``storage_rejected`` with ClickHouse's code and message;
                                       every other record is stored
the store unreachable or refusing      :class:`StoreUnavailable`: the caller exits without
everything; the broker not             acknowledging (after the sink's own retries), and the
acknowledging dead letters, alarm      restarted worker re-reads the batch
events or state
the ``dead_letters`` table insert      logged; the dead-letter topic is the durable record
=====================================  ==========================================================
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from streams.alarms.evaluator import STATE_KEY
from streams.codec import RejectedMessage, Sample, clip
from streams.observability import (
    RECORDS_REJECTED,
    SAMPLES_DERIVED,
    SAMPLES_PROCESSED,
    STATE_EVICTED,
    STATE_RESOURCES,
)
from streams.pipeline import Pipeline
from streams.processor.stages import MAYBE_STORED_HEADER, RecordProcessor, dlq_headers, fit_dead_letter
from streams.processor.state import BatchState, ChangelogWriter, StateWriteError, idle_resources
from streams.storage.clickhouse import RecordsRejected
from streams.storage.health import DeadLetter, record_dead_letters

log = logging.getLogger(__name__)


class Record(Protocol):
    """What the processor reads of a Kafka record (a Faust ``Message`` has these)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any


class StoreUnavailable(RuntimeError):
    """The batch could not be made durable (store or broker): exit without acknowledging it."""


def _has_header(headers: Any, name: str) -> bool:
    if not headers:
        return False
    items = headers.items() if isinstance(headers, dict) else headers
    return any(k == name and v == b"1" for k, v in items)


class _Outputs:
    """Samples per publisher URL, each with the index of the record it came from."""

    __slots__ = ("samples", "origins")

    def __init__(self) -> None:
        self.samples: dict[str, list[Sample]] = {}
        self.origins: dict[str, list[int]] = {}

    def add(self, out: dict[str, list[Sample]], origin: int) -> None:
        for url, samples in out.items():
            if samples:
                self.samples.setdefault(url, []).extend(samples)
                self.origins.setdefault(url, []).extend([origin] * len(samples))


@dataclass
class Batch:
    """One batch of records between :meth:`BatchProcessor.prepare` and :meth:`BatchProcessor.store`."""

    records: Sequence[Record]
    state: BatchState
    generation: int = 0  # consumer-group rebalances seen when the batch was prepared
    new: _Outputs = field(default_factory=_Outputs)  # samples of partitions known to be past any replay
    replayed: _Outputs = field(default_factory=_Outputs)  # samples a previous owner may have stored already
    replay_partitions: set[int] = field(default_factory=set)
    rejected: list[tuple[Record, RejectedMessage]] = field(default_factory=list)
    alarm_events: list = field(default_factory=list)  # streams.alarms.evaluator.AlarmEvent
    received: int = 0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, logged at DEBUG


class BatchProcessor:
    """Prepares and stores batches of sample records (module docstring).

    Args:
        stages: decode, verify and normalize.
        pipeline: the compiled pipeline.yaml.
        publishers: publisher URL -> :class:`~streams.processor.publishers.Publisher`.
        table: the state table (:class:`~streams.processor.state.ResourceStateTable`, or a double).
        writer: the librdkafka producer for the changelog, dead letters and alarm events.
        dlq_topic: the dead-letter topic.
        alarm_stage: :class:`~streams.alarms.stage.AlarmStage`, or None when alarms are off.
        dead_letter_table: connection to record dead letters for Grafana (best effort), or None.
        partitions: partition count of the samples topic.
        dlq_max_bytes: largest dead letter the topic takes (key, value and headers); a larger
            record's value is truncated (:func:`~streams.processor.stages.fit_dead_letter`).
    """

    def __init__(self, stages: RecordProcessor, pipeline: Pipeline, publishers: dict[str, Any], table: Any,
                 writer: ChangelogWriter, dlq_topic: str, alarm_stage: Any = None,
                 dead_letter_table: Any = None, partitions: int = 1, dlq_max_bytes: int = 1_000_000) -> None:
        self.stages = stages
        self.pipeline = pipeline
        self.publishers = publishers
        self.table = table
        self.writer = writer
        self.dlq_topic = dlq_topic
        self.alarm_stage = alarm_stage
        self.dead_letter_table = dead_letter_table
        self.partitions = partitions
        self.dlq_max_bytes = dlq_max_bytes
        self.pending: dict = {}  # uncommitted states of batches being stored (BatchState overlay)
        self.generation = 0
        # Partitions whose records are known to be new to storage. What a previous owner
        # stored of a partition is a prefix from the committed offset (batches are stored
        # whole and in order), so once a checked flush finds none of a partition's records
        # stored, the rest of that partition needs no duplicate lookup (docs/storage.md).
        self.past_replay: set[int] = set()
        self.started_s = time.time()
        self.prepared_offsets: dict[int, int] = {}  # partition -> highest offset prepared
        self.event_clocks: dict[int, int] = {}  # partition -> newest sample time prepared, µs
        self.tail: asyncio.Future | None = None
        """The future of the last batch submitted (done when it and every batch before it are stored)."""
        self._logged: dict[str, float] = {}

    def on_rebalance(self) -> None:
        """Partitions moved: every partition may hold a replay again, and its progress is unknown."""
        self.generation += 1
        self.past_replay.clear()
        self.prepared_offsets.clear()
        self.event_clocks.clear()

    # -- prepare ---------------------------------------------------------------------------------

    def prepare(self, records: Sequence[Record]) -> Batch:
        """Run decode ... alarms over ``records``; every record is either routed or rejected.

        Never raises for a record's content (module docstring's policy).
        """
        started = time.perf_counter()
        batch = Batch(records, BatchState(self.table, self.pending), self.generation)
        pipeline, alarms, past_replay = self.pipeline, self.alarm_stage, self.past_replay
        offsets, clocks = self.prepared_offsets, self.event_clocks
        for i, msg in enumerate(records):
            if msg.offset > offsets.get(msg.partition, -1):
                offsets[msg.partition] = msg.offset
            try:
                samples = self.stages.decode_record(msg.value, msg.key)
                state_for = partial(batch.state.get, partition=msg.partition)
                if pipeline.stateful:
                    pipeline.check_lateness(samples, state_for(samples[0]["resource_id"]))
                out: dict[str, list[Sample]] = {}
                pipeline.route(samples, state_for, out)
            except RejectedMessage as exc:
                batch.rejected.append((msg, exc))
                continue
            except Exception as exc:  # noqa: BLE001 - a bug must cost one record, not the worker
                self._log_once(f"internal:{type(exc).__name__}", "record %s[%d]@%d raised %s; dead-lettered",
                               msg.topic, msg.partition, msg.offset, type(exc).__name__, exc=exc)
                batch.rejected.append((msg, RejectedMessage("transform", "internal_error",
                                                            f"{type(exc).__name__}: {exc}")))
                continue
            if msg.partition in past_replay and not _has_header(msg.headers, MAYBE_STORED_HEADER):
                batch.new.add(out, i)
            else:
                batch.replayed.add(out, i)
                batch.replay_partitions.add(msg.partition)
            newest = samples[-1]["timestamp"]
            if newest > clocks.get(msg.partition, 0):
                clocks[msg.partition] = newest
            if alarms is not None:
                try:
                    batch.alarm_events += alarms.on_record(samples, state_for, msg.partition)
                except Exception as exc:  # noqa: BLE001 - per-alarm errors are handled inside; this is a bug
                    self._log_once(f"alarms:{type(exc).__name__}", "alarm stage raised %s on %s[%d]@%d",
                                   type(exc).__name__, msg.topic, msg.partition, msg.offset, exc=exc)
            batch.received += len(samples)
        batch.timings["prepare"] = time.perf_counter() - started
        return batch

    def timer_clocks(self, highwaters: dict[int, int | None], now_us: int,
                     positions: dict[int, int | None] | None = None) -> dict[int, int]:
        """The clock to close alarm windows with, per owned partition (``highwaters``: partition -> the
        offset the next record will get; ``positions``: the consumer's next offset to read, for partitions
        with nothing prepared since the last rebalance).

        A partition whose every record is prepared is idle: wall-clock ``now_us``, so a resource that
        stopped reporting reaches insufficient data. A partition with records still to read (a
        backlog after a restart or an outage) keeps event time, the newest sample prepared on it:
        closing its windows by wall clock would declare insufficient data for resources whose samples
        are only waiting to be read. A lagging partition with nothing prepared yet is left alone.
        """
        clocks = {}
        positions = positions or {}
        for partition, highwater in highwaters.items():
            if highwater is None:  # not fetched yet: its backlog is unknown
                continue
            done = self.prepared_offsets.get(partition)
            if done is None and positions.get(partition) is not None:
                done = positions[partition] - 1  # nothing prepared yet: where the consumer stands
            if done is not None and done >= highwater - 1:
                clocks[partition] = now_us
            elif partition in self.event_clocks:
                clocks[partition] = self.event_clocks[partition]
        return clocks

    def alarm_timer_batch(self, clocks: dict[int, int]) -> Batch | None:
        """A batch without records that closes alarm windows of silent resources, at the clock of
        each partition (:meth:`timer_clocks`). None: nothing due."""
        if self.alarm_stage is None or not clocks:
            return None
        batch = Batch((), BatchState(self.table, self.pending), self.generation)
        touched, batch.alarm_events = self.alarm_stage.close_windows(self.table, batch.state, clocks)
        return batch if touched else None

    def eviction_batch(self, active_partitions: set[int], ttl_s: float, now_s: float | None = None) -> Batch | None:
        """A batch without records that deletes the state of resources idle for ``ttl_s`` seconds
        (tombstones on the changelog), except those holding alarm windows. None: nothing to evict."""
        if not active_partitions:
            return None
        now_s = time.time() if now_s is None else now_s
        STATE_RESOURCES.set(len(self.table.data))
        idle = idle_resources(list(self.table.data.items()), self.pending, active_partitions, now_s - ttl_s,
                              self.started_s, self.partitions, keep=lambda state: STATE_KEY in state)
        if not idle:
            return None
        batch = Batch((), BatchState(self.table, self.pending), self.generation)
        for rid, partition in idle:
            batch.state.delete(rid, partition)
        STATE_EVICTED.inc(len(idle))
        log.info("evicting the state of %d resources idle for over %.0f s", len(idle), ttl_s)
        return batch

    # -- store -----------------------------------------------------------------------------------

    def submit(self, batch: Batch, after: Callable[[], Awaitable[None]] | None = None) -> asyncio.Future | None:
        """Store ``batch`` after every batch submitted before it, then run ``after()`` (e.g. the acks).

        Returns:
            the previous batch's future (None if there was none), for the caller to await so that
            at most one batch is stored while the next is prepared.
        """
        prev = self.tail

        async def run() -> None:
            if prev is not None:
                await prev
            await self.store(batch)
            if after is not None:
                await after()

        self.tail = asyncio.ensure_future(run())
        return prev

    async def drain(self) -> None:
        """Wait until every submitted batch is stored."""
        if self.tail is not None:
            await self.tail

    async def store(self, batch: Batch) -> None:
        """Make ``batch`` durable (module docstring); return when the records may be acknowledged.

        Raises:
            StoreUnavailable: the store or the broker failed; acknowledge nothing.
        """
        for msg, error in batch.rejected:
            self._dead_letter(msg, error)
        started = time.perf_counter()
        try:
            skipped, refused = await asyncio.to_thread(self._write, batch)
        except Exception as exc:
            raise StoreUnavailable(f"a publisher could not store the batch: {clip(str(exc), 300)}") from exc
        batch.timings["write"] = time.perf_counter() - started
        for index, detail in sorted(refused.items()):
            msg = batch.records[index]
            error = RejectedMessage("store", "storage_rejected", detail)
            batch.rejected.append((msg, error))
            self._dead_letter(msg, error)
        if batch.replay_partitions and not skipped and not refused and batch.generation == self.generation:
            self.past_replay.update(batch.replay_partitions)  # checked, nothing was stored: past the replay
        queued = []
        if batch.alarm_events:
            queued = self.alarm_stage.produce(self.writer, batch.alarm_events)
            try:
                await asyncio.to_thread(self.alarm_stage.write_history, queued)
            except Exception as exc:
                raise StoreUnavailable("alarm history could not be stored") from exc
        # State reaches the changelog only after the outputs are stored, and everything the
        # broker holds for this batch is acknowledged before the records are.
        batch.state.commit(self.writer)
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self.writer.flush)
        except StateWriteError as exc:
            raise StoreUnavailable(str(exc)) from exc
        batch.timings["flush"] = time.perf_counter() - started
        if queued:
            self.alarm_stage.delivered(queued)
        if batch.rejected:
            await self._note_dead_letters(batch.rejected)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("batch of %d records, %d samples: %s", len(batch.records), batch.received,
                      ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in batch.timings.items()))
        SAMPLES_PROCESSED.inc(batch.received)

    def _write(self, batch: Batch) -> tuple[int, dict[int, str]]:
        """Runs in a worker thread: add every output to its publisher and flush it.

        Returns:
            (samples the publishers skipped as already stored, record index -> why the store refused it).
        """
        skipped = 0
        refused: dict[int, str] = {}
        for url in batch.new.samples.keys() | batch.replayed.samples.keys():
            publisher = self.publishers[url]
            new, replayed = batch.new.samples.get(url, []), batch.replayed.samples.get(url, [])
            publisher.add(new, maybe_stored=False, origins=batch.new.origins.get(url, []))
            publisher.add(replayed, maybe_stored=True, origins=batch.replayed.origins.get(url, []))
            try:
                skipped += publisher.flush()
            except RecordsRejected as exc:
                skipped += exc.skipped
                refused.update(exc.rejected)
            SAMPLES_DERIVED.labels(scheme=url.split(":", 1)[0]).inc(len(new) + len(replayed))
        return skipped, refused

    def _dead_letter(self, msg: Record, error: RejectedMessage) -> None:
        headers = list(msg.headers.items() if isinstance(msg.headers, dict) else msg.headers or [])
        headers += dlq_headers(error, msg.topic, msg.partition, msg.offset)
        key = msg.key if msg.key is None or len(msg.key) <= 4096 else msg.key[:4096]
        room = self.dlq_max_bytes - len(key or b"") - sum(len(k) + len(v or b"") for k, v in headers) - 512
        value, extra = fit_dead_letter(msg.value, room)
        self.writer.produce(self.dlq_topic, value, key, headers + extra)

    async def _note_dead_letters(self, rejected: list[tuple[Record, RejectedMessage]]) -> None:
        """Count and log dead letters once they are durable; record them for Grafana (best effort)."""
        for msg, error in rejected:
            RECORDS_REJECTED.labels(stage=error.stage, reason=error.reason).inc()
            log.warning("record %s[%d]@%d rejected: %s", msg.topic, msg.partition, msg.offset, error)
        if self.dead_letter_table is None:
            return
        letters = [DeadLetter(e.stage, e.reason, e.detail, m.topic, m.partition, m.offset, m.key) for m, e in rejected]
        try:  # the dead-letter topic is the durable record; this table only feeds dashboards
            await asyncio.to_thread(record_dead_letters, self.dead_letter_table, letters)
        except Exception:  # noqa: BLE001
            log.warning("could not record %d dead letters in ClickHouse", len(letters), exc_info=True)

    def _log_once(self, key: str, fmt: str, *args: Any, exc: BaseException) -> None:
        """Log ``fmt`` with the traceback at most once a minute per ``key``; always at WARNING otherwise."""
        now = time.monotonic()
        if now - self._logged.get(key, -1e9) >= 60:
            self._logged[key] = now
            log.error(fmt, *args, exc_info=(type(exc), exc, exc.__traceback__))
        else:
            log.warning(fmt, *args)
