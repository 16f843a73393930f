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
from streams.columns import SampleColumns
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

EVICT_PER_PASS = 50_000
"""Most resources whose state one eviction pass deletes (the state-eviction timer comes back within 60 s)."""


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


def add_columns(publisher: Any, columns: SampleColumns, rows: list[int], maybe_stored: bool,
                origins: list[int]) -> None:
    """Give ``rows`` of ``columns`` to ``publisher``: as columns if it takes them
    (``add_columns``, e.g. ClickHouse), else as dicts (``add``)."""
    take = getattr(publisher, "add_columns", None)
    if take is not None:
        take(columns, rows, maybe_stored, origins)
    else:
        publisher.add(columns.rows(rows), maybe_stored=maybe_stored, origins=origins)


def _has_header(headers: Any, name: str) -> bool:
    if not headers:
        return False
    items = headers.items() if isinstance(headers, dict) else headers
    return any(k == name and v == b"1" for k, v in items)


class _Outputs:
    """What goes to each publisher URL: rows of the batch's columns (samples stored unchanged) and
    dict samples (transformers' outputs), each with the index of the record it came from."""

    __slots__ = ("rows", "row_origins", "samples", "origins")

    def __init__(self) -> None:
        self.rows: dict[str, list[int]] = {}
        self.row_origins: dict[str, list[int]] = {}
        self.samples: dict[str, list[Sample]] = {}
        self.origins: dict[str, list[int]] = {}

    def urls(self) -> set[str]:
        return self.rows.keys() | self.samples.keys()

    def add_samples(self, url: str, samples: list[Sample], origin: int) -> None:
        if samples:
            self.samples.setdefault(url, []).extend(samples)
            self.origins.setdefault(url, []).extend([origin] * len(samples))


@dataclass
class Batch:
    """One batch of records between :meth:`BatchProcessor.prepare` and :meth:`BatchProcessor.store`."""

    records: Sequence[Record]
    state: BatchState
    generation: int = 0  # consumer-group rebalances seen when the batch was prepared
    columns: SampleColumns = field(default_factory=SampleColumns)  # the records' samples, normalized
    new: _Outputs = field(default_factory=_Outputs)  # samples of partitions known to be past any replay
    replayed: _Outputs = field(default_factory=_Outputs)  # samples a previous owner may have stored already
    replay_partitions: set[int] = field(default_factory=set)
    rejected: list[tuple[Record, RejectedMessage]] = field(default_factory=list)
    alarm_events: list = field(default_factory=list)  # streams.alarms.evaluator.AlarmEvent
    received: int = 0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, logged at DEBUG


def quiet_partitions(last_records: dict[int, float | None], last_round: float, assigned_at: float,
                     now: float, idle_after: float) -> set[int]:
    """Partitions the consumer fetches and gets nothing from: the fetch rounds of the last ``idle_after``
    seconds brought no record of them (Flink's source idleness). Times are ``time.monotonic()`` seconds.

    Args:
        last_records: partition -> when a fetch last brought records of it (None: never since start).
        last_round: when the last fetch round completed. If it is not recent (the fetcher waits for room
            in the intake, or the event loop is starved), nothing proves a partition idle: none is quiet.
        assigned_at: when the partitions were assigned (a partition is not quiet sooner after it).
    """
    if now - last_round > max(idle_after, 1.5):
        return set()
    return {p for p, t in last_records.items() if last_round - max(t or 0.0, assigned_at) >= idle_after}


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
        self.event_clocks: dict[int, int] = {}  # partition -> newest sample time prepared (not ahead of now), µs
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

        The samples are decoded into one :class:`~streams.columns.SampleColumns` for the batch and
        checked a column at a time; only samples a transformer or an alarm looks at become dicts.
        Never raises for a record's content (module docstring's policy).
        """
        started = time.perf_counter()
        batch = Batch(records, BatchState(self.table, self.pending), self.generation)
        cols = batch.columns
        spans: list[tuple[int, int]] = []  # rows of each decoded record
        kept: list[int] = []  # its index in records
        sizes: list[int] = []
        offsets = self.prepared_offsets
        for i, msg in enumerate(records):
            if msg.offset > offsets.get(msg.partition, -1):
                offsets[msg.partition] = msg.offset
            start = len(cols)
            try:
                n = self.stages.decode_into(msg.value, msg.key, cols)
            except RejectedMessage as exc:
                batch.rejected.append((msg, exc))
                continue
            except Exception as exc:  # noqa: BLE001 - a bug must cost one record, not the worker
                cols.truncate(start)
                self._internal_error(batch, msg, exc, "decode")
                continue
            spans.append((start, start + n))
            kept.append(i)
            sizes.append(len(msg.value))
        bad = self.stages.normalizer.normalize_columns(cols, spans, sizes)
        if self.pipeline.stateful:
            self._check_lateness(batch, spans, kept, bad)
        if bad:
            cols, spans, kept = self._drop(batch, spans, kept, bad)
        try:
            self._route(batch, spans, kept)
        except Exception as exc:  # noqa: BLE001 - a bug in routing: dead-letter the batch's records, one by one
            self._route_each(batch, spans, kept, exc)
        batch.timings["prepare"] = time.perf_counter() - started
        return batch

    def _internal_error(self, batch: Batch, msg: Record, exc: Exception, stage: str) -> None:
        self._log_once(f"internal:{stage}:{type(exc).__name__}", "record %s[%d]@%d raised %s in %s; dead-lettered",
                       msg.topic, msg.partition, msg.offset, type(exc).__name__, stage, exc=exc)
        batch.rejected.append((msg, RejectedMessage("transform", "internal_error", f"{type(exc).__name__}: {exc}")))

    def _check_lateness(self, batch: Batch, spans: list[tuple[int, int]], kept: list[int],
                        bad: dict[int, RejectedMessage]) -> None:
        """Each record's newest sample against its resource's watermark, in record order."""
        stamps, rids = batch.columns.timestamp, batch.columns.resource_id
        for k, (start, end) in enumerate(spans):
            if k in bad or start == end:
                continue
            state = batch.state.get(rids[start], batch.records[kept[k]].partition)
            try:
                self.pipeline.check_watermark(max(stamps[start:end]), state)
            except RejectedMessage as exc:
                bad[k] = exc

    @staticmethod
    def _drop(batch: Batch, spans: list[tuple[int, int]], kept: list[int],
              bad: dict[int, RejectedMessage]) -> tuple[SampleColumns, list[tuple[int, int]], list[int]]:
        """Reject the records in ``bad`` and keep the others' rows (a new, compact SampleColumns)."""
        for k in sorted(bad):
            batch.rejected.append((batch.records[kept[k]], bad[k]))
        rows: list[int] = []
        new_spans, new_kept = [], []
        for k, (start, end) in enumerate(spans):
            if k not in bad:
                new_spans.append((len(rows), len(rows) + end - start))
                new_kept.append(kept[k])
                rows.extend(range(start, end))
        batch.columns = batch.columns.take(rows)
        return batch.columns, new_spans, new_kept

    def _route(self, batch: Batch, spans: list[tuple[int, int]], kept: list[int]) -> None:
        """Send each row to its publishers: unchanged rows by index, transformed ones as dicts; feed alarms."""
        cols, records = batch.columns, batch.records
        names, stamps = cols.name, cols.timestamp
        plan = self.pipeline.plan
        alarms = self.alarm_stage
        alarm_meters = alarms.alarms.by_meter if alarms is not None else {}
        past_replay, clocks = self.past_replay, self.event_clocks
        now_us = time.time_ns() // 1000
        for k, (start, end) in enumerate(spans):
            index = kept[k]
            msg = records[index]
            partition = msg.partition
            if partition in past_replay and not _has_header(msg.headers, MAYBE_STORED_HEADER):
                out = batch.new
            else:
                out = batch.replayed
                batch.replay_partitions.add(partition)
            state_for = partial(batch.state.get, partition=partition)
            watched = None
            for row in range(start, end):
                direct, transforming = plan(names[row])
                for url in direct:
                    rows = out.rows.get(url)
                    if rows is None:
                        rows = out.rows[url] = []
                        out.row_origins[url] = []
                    rows.append(row)
                    out.row_origins[url].append(index)
                if transforming:
                    sample = cols.row(row)
                    for sink in transforming:
                        results = self.pipeline.transform(sink, sample, state_for)
                        for url in sink.publishers:
                            out.add_samples(url, results, index)
                if names[row] in alarm_meters:
                    if watched is None:
                        watched = []
                    watched.append(row)
            if end > start:
                newest = max(stamps[start:end])
                # A sample stamped ahead of the wall clock (a poller's fast clock, within max_future_skew) must
                # not move its partition's clock: the timer would close every other resource's windows up to it.
                if clocks.get(partition, 0) < newest <= now_us:
                    clocks[partition] = newest
                if watched:
                    try:
                        batch.alarm_events += alarms.on_record(cols.rows(watched), state_for, partition, newest)
                    except Exception as exc:  # noqa: BLE001 - per-alarm errors are handled inside; this is a bug
                        self._log_once(f"alarms:{type(exc).__name__}", "alarm stage raised %s on %s[%d]@%d",
                                       type(exc).__name__, msg.topic, partition, msg.offset, exc=exc)
            batch.received += end - start

    def _route_each(self, batch: Batch, spans: list[tuple[int, int]], kept: list[int], exc: Exception) -> None:
        """Routing raised: redo it record by record, dead-lettering the records that raise (a bug costs
        the records it hits, not the batch). Outputs of the failed pass are discarded first."""
        self._log_once(f"route:{type(exc).__name__}", "routing a batch raised %s; routing record by record",
                       type(exc).__name__, exc=exc)
        batch.new, batch.replayed, batch.alarm_events, batch.received = _Outputs(), _Outputs(), [], 0
        for k, span in enumerate(spans):
            msg = batch.records[kept[k]]
            saved = (len(batch.alarm_events), batch.received)
            try:
                self._route(batch, [span], [kept[k]])
            except Exception as exc:  # noqa: BLE001
                del batch.alarm_events[saved[0]:]
                batch.received = saved[1]
                for out in (batch.new, batch.replayed):
                    for url in list(out.rows):
                        keep = [(r, o) for r, o in zip(out.rows[url], out.row_origins[url], strict=True)
                                if o != kept[k]]
                        out.rows[url] = [r for r, _ in keep]
                        out.row_origins[url] = [o for _, o in keep]
                    for url in list(out.samples):
                        keep = [(s, o) for s, o in zip(out.samples[url], out.origins[url], strict=True)
                                if o != kept[k]]
                        out.samples[url] = [s for s, _ in keep]
                        out.origins[url] = [o for _, o in keep]
                self._internal_error(batch, msg, exc, "transform")

    def timer_clocks(self, highwaters: dict[int, int | None], now_us: int,
                     positions: dict[int, int | None] | None = None,
                     quiet: set[int] | None = None) -> dict[int, int]:
        """The clock to close alarm windows with, per owned partition (``highwaters``: partition -> the
        offset the next record will get; ``positions``: the committed offset, where the worker started
        reading, for partitions with nothing prepared since the last rebalance; ``quiet``: partitions
        fetched with nothing new for ``alarms.idle_after`` seconds, :func:`quiet_partitions`; None = all).

        A partition is idle when every record is prepared and it is quiet: wall-clock ``now_us``, so a
        resource that stopped reporting reaches insufficient data. Otherwise the partition keeps event
        time, the newest sample prepared on it (samples stamped ahead of the wall clock excluded): closing
        its windows by wall clock would declare insufficient data for resources whose samples are only
        waiting to be read. A lagging partition with nothing prepared yet is left alone.

        Quiet as well as caught up, because a high watermark is only as fresh as the last fetch response:
        records produced since, or fetched by a consumer thread the machine starves, are not counted in
        it, and a partition looks caught up while its samples are on their way (Flink's source idleness
        works the same way: a partition is idle only after a time without records).
        """
        clocks = {}
        positions = positions or {}
        for partition, highwater in highwaters.items():
            if highwater is None:  # not fetched yet: its backlog is unknown
                continue
            done = self.prepared_offsets.get(partition)
            if done is None and positions.get(partition) is not None:
                done = positions[partition] - 1  # nothing prepared yet: caught up if nothing came since
            if done is not None and done >= highwater - 1 and (quiet is None or partition in quiet):
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
        # At most EVICT_PER_PASS per pass (the timer comes back soon): a batch's tombstones and bookkeeping
        # stay small however many resources went idle at once.
        idle = idle_resources(self.table.data.items(), self.pending, active_partitions, now_s - ttl_s,
                              self.started_s, self.partitions, keep=lambda state: STATE_KEY in state,
                              limit=EVICT_PER_PASS)
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

    async def wait_turn(self, prev: asyncio.Future | None) -> None:
        """Wait until ``prev`` (what :meth:`submit` returned) is stored, and until the store of the batch
        submitted after it has begun, so that the caller's next :meth:`prepare` overlaps that store.

        The store of batch N waits for batch N-1 in a task of its own (:meth:`submit`). When N-1 is done,
        asyncio wakes its waiters in the order they began waiting, and the caller began first: had it
        gone straight on to prepare N+1 (CPU on the event loop), the store of N would have started only
        after it, and prepare and store would take turns instead of overlapping (measured on the bench's
        pipeline: a batch every prepare + write, 250 ms, instead of every max(prepare, write)). Yielding
        once lets the store's task run first, up to its write thread (asyncio runs ready callbacks first
        in, first out).

        Raises:
            whatever storing ``prev`` raised (:class:`StoreUnavailable`).
        """
        if prev is not None:
            await prev
        await asyncio.sleep(0)

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
        cols = batch.columns
        for url in batch.new.urls() | batch.replayed.urls():
            publisher = self.publishers[url]
            count = 0
            for out, maybe_stored in ((batch.new, False), (batch.replayed, True)):
                rows = out.rows.get(url)
                if rows:
                    add_columns(publisher, cols, rows, maybe_stored, out.row_origins[url])
                    count += len(rows)
                samples = out.samples.get(url)
                if samples:
                    publisher.add(samples, maybe_stored=maybe_stored, origins=out.origins[url])
                    count += len(samples)
            try:
                skipped += publisher.flush()
            except RecordsRejected as exc:
                skipped += exc.skipped
                refused.update(exc.rejected)
            SAMPLES_DERIVED.labels(scheme=url.split(":", 1)[0]).inc(count)
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
