"""``streams bridge ceilometer``: Ceilometer's Kafka output -> signed SampleBatch records and the events table.

A ``mode`` Service around a confluent-kafka consumer and producer, like the
notifier (:mod:`streams.notifiers.service`): the bridge keeps no state, and
its delivery rule is a plain loop. Per batch (at most
``ceilometer.batch_size`` records from ``ceilometer.topics``):

1. translate (:class:`~streams.bridge.batch.BatchTranslator`): limits,
   unwrap, verify Ceilometer's signatures, normalize, derive samples from
   events, group by resource and sign with this project's key;
2. insert the batch's events into ``<db>.events`` (skipping those already
   stored), retrying transient errors;
3. produce the SampleBatch records to ``kafka.samples_topic``, keyed by
   resource id, each with header ``streams.maybe-stored: 1`` (a replay or
   a ``per_meter_topic`` copy may repeat samples; the processor checks
   storage for such records), and the dead letters to
   ``ceilometer.dlq_topic``; wait until the broker has acknowledged all;
4. commit the batch's source offsets.

Once translated, only the batch's offsets are kept (and the records of its
dead letters), and once queued in librdkafka, only the producer's copies of
its SampleBatch records: the peak memory is about two batches' records.

Steps 2-4 of batch N run while batch N+1 is translated; at most one batch
is being delivered, and batches are delivered and committed in order.

A crash anywhere before 4 re-reads the batch: nothing is lost, and the
repeats are dropped downstream (events by the lookup in 2, samples by the
processor), so no stored row is duplicated. If the broker refuses a record
or the store stays unreachable past its retries, the process exits with
status 70 without committing, and the restarted bridge re-reads the batch.

Bad input never stops the bridge: every refused record is dead-lettered
with its reason and counted in ``streams_bridge_rejected_total``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from mode import Service
from prometheus_client import Counter

from streams.bridge.batch import BatchTranslator, TranslatedBatch
from streams.bridge.ceilometer import CeilometerReader, Limits
from streams.bridge.events import EventStore
from streams.bridge.meters import load_meters
from streams.bridge.signing import Verifier
from streams.codec import BatchCodec
from streams.config import Settings
from streams.observability import MetricsServer
from streams.processor.normalize import Normalizer
from streams.processor.stages import MAYBE_STORED_HEADER
from streams.publisher import producer_config

log = logging.getLogger(__name__)

EXIT_UNCOMMITTED_FAILURE = 70
"""Exit status when a batch could not be delivered or stored: its offsets were not committed."""

RECORDS = Counter("streams_bridge_records_total", "Ceilometer Kafka records read by the bridge.")
SAMPLES = Counter("streams_bridge_samples_total",
                  "Samples republished (broker-acknowledged), by origin (sample, event).", ["origin"])
EVENTS = Counter("streams_bridge_events_total", "Ceilometer events stored in <db>.events.")
REJECTED = Counter("streams_bridge_rejected_total",
                   "Refused Ceilometer records (whole) and payload entries, by stage and reason.", ["stage", "reason"])
DEAD_LETTERS = Counter("streams_bridge_dead_letters_total", "Records copied to ceilometer.dlq_topic.")
DUPLICATES = Counter("streams_bridge_duplicates_total", "Samples dropped as repeated within a batch "
                     "(Ceilometer's per_meter_topic).")
METER_SKIPPED = Counter("streams_bridge_meter_skipped_total",
                        "Meter definitions that matched an event but made no sample.", ["meter", "reason"])

MAYBE_STORED = [(MAYBE_STORED_HEADER, b"1")]


def _die(message: str) -> None:
    log.critical("%s; exiting without committing the batch", message, exc_info=True)
    logging.shutdown()
    os._exit(EXIT_UNCOMMITTED_FAILURE)


def commit_offsets(msgs: list) -> list[TopicPartition]:
    """The offsets to commit once ``msgs`` are delivered: the one after the last record of each partition."""
    last: dict[tuple[str, int], int] = {}
    for m in msgs:
        last[(m.topic(), m.partition())] = m.offset()
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


def build_translator(settings: Settings) -> BatchTranslator:
    """The pure part of the bridge from ``settings``.

    Raises:
        ConfigError: no signing key, a bad telemetry secret, or a bad meters file.
    """
    c, p = settings.ceilometer, settings.processor
    limits = p.limits()  # what the processor accepts: the bridge's records stay within it
    normalizer = Normalizer(p.max_future_skew, max_sample_age=settings.max_sample_age, limits=limits)
    reader = CeilometerReader(Verifier(c.secret()), normalizer,
                              Limits(c.max_record_bytes, c.max_depth, c.max_payload_entries))
    return BatchTranslator(reader, load_meters(c.meters, c.source),
                           BatchCodec(settings.signing.keyring(), limits=limits), limits)


class CeilometerBridge(Service):
    """Runs the consume / translate / store / produce / commit loop until stopped.

    Args:
        settings: ``kafka``, ``clickhouse``, ``signing`` and ``ceilometer`` sections.
        translator: default :func:`build_translator` of ``settings``.
        metrics_port: overrides ``ceilometer.metrics_port``.

    Raises:
        ConfigError: as :func:`build_translator`.
    """

    def __init__(self, settings: Settings, translator: BatchTranslator | None = None,
                 metrics_port: int | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        k, c = settings.kafka, settings.ceilometer
        self.translator = translator or build_translator(settings)
        self.consumer = Consumer({
            **k.client_config(),
            "group.id": c.group_id, "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "session.timeout.ms": k.session_timeout_ms,
            "heartbeat.interval.ms": max(500, k.session_timeout_ms // 6),
        })
        self.producer = Producer(producer_config(k, **{"linger.ms": 5}))
        self.events: EventStore | None = None
        self.assigned = False
        self.failed_deliveries = 0
        self.metrics = MetricsServer(c.metrics_port if metrics_port is None else metrics_port, settings.metrics_host,
                                     healthy=lambda: not self.should_stop, ready=lambda: self.assigned)

    def on_init_dependencies(self) -> list[Service]:
        return [self.metrics]

    async def on_start(self) -> None:
        c = self.settings.ceilometer
        if c.store_events:
            from streams.storage.backend import open_connection

            ch = self.settings.clickhouse
            self.events = EventStore(open_connection(ch.url, ch.database, ch.insert_block_size))

        def on_assign(consumer, partitions):
            self.assigned = True
            log.info("bridge assigned %d partitions of %s", len(partitions), ", ".join(c.topics))

        self.consumer.subscribe(list(c.topics), on_assign=on_assign)

    async def on_stop(self) -> None:
        await asyncio.to_thread(self.consumer.close)
        await asyncio.to_thread(self.producer.flush, 10)

    def _on_delivery(self, err: KafkaError | None, msg) -> None:
        if err is not None:
            self.failed_deliveries += 1
            log.error("broker refused a record for %s: %s", msg.topic(), err)

    @Service.task
    async def _consume(self) -> None:
        # Batch N is delivered and committed (broker and ClickHouse round trips) while batch N+1
        # is translated; deliveries and commits stay in batch order, one at a time.
        c = self.settings.ceilometer
        pending: asyncio.Task | None = None
        while not self.should_stop:
            msgs = await asyncio.to_thread(self.consumer.consume, c.batch_size, c.batch_timeout)
            good = []
            for m in msgs:
                if m.error() is None:
                    good.append(m)
                elif m.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", m.error())
            if not good:
                continue
            started = time.perf_counter()
            out = await asyncio.to_thread(self.translator.translate, good)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("batch of %d records: %d samples, %d events, %d dead letters; translated in %.0f ms",
                          len(good), out.samples, len(out.events), len(out.dead_letters),
                          (time.perf_counter() - started) * 1000)
            # Keep only the offsets of the batch: its records (~50 KB each) are not needed to commit, and
            # a dead letter holds its own record.
            offsets, count = commit_offsets(good), len(good)
            del good, msgs
            if pending is not None:
                await pending
            pending = asyncio.ensure_future(self._deliver_and_commit(out, offsets, count))
        if pending is not None:
            await pending

    async def _deliver_and_commit(self, out: TranslatedBatch, offsets: list[TopicPartition], count: int) -> None:
        await self.deliver(out)
        await self._commit(offsets)
        RECORDS.inc(count)

    async def deliver(self, out: TranslatedBatch) -> None:
        """Store the events, produce records and dead letters, and wait for the broker (exits on failure)."""
        if out.events and self.events is not None:
            try:
                stored = await asyncio.to_thread(self.events.store, out.events)
            except Exception:  # noqa: BLE001 - the store is unreachable or refused: re-read the batch later
                _die("events could not be stored")
            EVENTS.inc(stored)
        await asyncio.to_thread(self._produce, out)
        for stage, reason in out.rejected:
            REJECTED.labels(stage=stage, reason=reason).inc()
        for meter, reason in out.skipped_meters:
            METER_SKIPPED.labels(meter=meter, reason=reason).inc()
        DUPLICATES.inc(out.duplicates)
        DEAD_LETTERS.inc(len(out.dead_letters))
        SAMPLES.labels(origin="event").inc(out.derived)
        SAMPLES.labels(origin="sample").inc(out.samples - out.derived)

    def _produce(self, out: TranslatedBatch) -> None:
        """Runs in a worker thread: queue every record, flush, and exit the process if any was refused."""
        k, c = self.settings.kafka, self.settings.ceilometer
        produce, cb = self.producer.produce, self._on_delivery
        for dead in out.dead_letters:
            r = dead.record
            self._queue(produce, c.dlq_topic, r.key(), r.value(), dead.headers(), cb)
            log.warning("record %s[%d]@%d dead-lettered: %s", r.topic(), r.partition(), r.offset(), dead.error)
        for key, value in out.records:
            self._queue(produce, k.samples_topic, key, value, MAYBE_STORED, cb)
        out.records.clear()  # librdkafka holds copies now: free ours while waiting for the broker
        while len(self.producer):
            self.producer.flush(30)
            if self.failed_deliveries:
                break
        if self.failed_deliveries:
            _die(f"the broker refused {self.failed_deliveries} records")

    def _queue(self, produce, topic, key, value, headers, cb) -> None:
        while True:
            try:
                produce(topic, value=value, key=key, headers=headers, on_delivery=cb)
                return
            except BufferError:  # local queue full: serve delivery reports to make room
                self.producer.poll(1.0)

    async def commit(self, msgs: list) -> None:
        """Commit the offset after the last record of each partition in ``msgs``."""
        await self._commit(commit_offsets(msgs))

    async def _commit(self, offsets: list[TopicPartition]) -> None:
        try:
            await asyncio.to_thread(self.consumer.commit, offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # e.g. a rebalance: the batch is read again (repeats are dropped downstream)
            log.warning("commit failed, records will be read again: %s", exc)
