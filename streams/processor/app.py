"""The processor: a faust-streaming app consuming the samples topic.

Per batch of Kafka records (``Stream.noack_take``: nothing is acknowledged
until this code does it):

1. decode, verify and normalize each record
   (:class:`~streams.processor.stages.RecordProcessor`);
2. check event-time lateness and run the pipeline's sinks (transformer
   chains, :mod:`streams.pipeline`) against a batch-local copy of each
   resource's state (:class:`~streams.processor.state.BatchState`);
3. send rejected records to the dead-letter topic and wait for the broker;
4. add outputs to their publishers and flush them all (ClickHouse insert,
   Kafka re-publish) and wait;
5. write changed states to the Faust table's store and its changelog
   (librdkafka, :class:`~streams.processor.state.ChangelogWriter`), flush;
6. only then acknowledge the events. Faust commits acknowledged offsets only.

Steps 1-2 of batch N+1 run on the event loop while steps 3-6 of batch N run
(the inserts in a worker thread); at most one batch is being stored.

So an offset is committed after its rows are stored, and state never runs
ahead of storage: a crash anywhere replays the batch, and replayed samples
derive the same rows (deterministic ids; the ReplacingMergeTree removes
duplicates) or are recognised as already seen.

If a publisher or the dead-letter producer fails for good, the process exits
at once with status 70 without acknowledging the batch, and the restarted
worker re-reads it.

Samples arrive keyed by resource_id, so no repartitioning is needed: all
records of a resource are on one partition, hence in one worker.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import ssl
import time
from functools import partial
from pathlib import Path
from typing import Any

import faust

from streams.alarms.stage import create_alarm_stage
from streams.codec import BatchCodec, RejectedMessage
from streams.config import ConfigError, KafkaSettings, Settings
from streams.coordination.registry import registration
from streams.observability import RECORDS_REJECTED, SAMPLES_DERIVED, SAMPLES_PROCESSED, MetricsServer
from streams.pipeline import load_pipeline
from streams.processor import fastpath
from streams.processor.normalize import Normalizer
from streams.processor.publishers import open_publisher
from streams.processor.stages import RecordProcessor, dlq_headers
from streams.processor.state import BatchState, ChangelogWriter, StateWriteError, changelog_topic, create_state_table
from streams.storage.health import DeadLetter, record_dead_letters
from streams.topics import create_topics, describe_topics

log = logging.getLogger(__name__)

EXIT_UNACKED_FAILURE = 70
"""Exit status when a batch could not be stored: nothing of it was acknowledged."""


def _die(message: str) -> None:
    log.critical("%s; exiting without acknowledging the batch", message, exc_info=True)
    logging.shutdown()
    os._exit(EXIT_UNACKED_FAILURE)


class _Batch:
    """One batch of Kafka events between the prepare and store stages."""

    def __init__(self, events: list, state: BatchState) -> None:
        self.events = events
        self.state = state
        self.outputs: dict[str, list] = {}  # samples of records from partitions known to be past any replay
        self.replayed: dict[str, list] = {}  # samples that a previous owner may have stored already
        self.replay_partitions: set[int] = set()
        self.generation = 0  # consumer-group rebalances seen when the batch was prepared
        self.timings: dict[str, float] = {}  # seconds per stage, logged at DEBUG
        self.rejected: list[tuple[Any, RejectedMessage]] = []
        self.received = 0
        self.alarm_events: list = []  # streams.alarms.evaluator.AlarmEvent, stored before the ack


class _StoreLane:
    """Stores batches strictly in the order they were prepared (agent batches and alarm-timer batches)."""

    def __init__(self) -> None:
        self.tail: asyncio.Future | None = None
        self.pending: dict = {}  # uncommitted states of batches being stored (BatchState overlay)
        self.store = None  # the agent's store(batch) coroutine function, once it runs

    def submit(self, batch: _Batch) -> asyncio.Future | None:
        """Chain ``store(batch)`` after the previous batch; return the previous one's future."""
        prev = self.tail

        async def run() -> None:
            if prev is not None:
                await prev
            await self.store(batch)

        self.tail = asyncio.ensure_future(run())
        return prev


def kafka_credentials(k: KafkaSettings) -> faust.auth.Credentials | None:
    """Faust (aiokafka) credentials from the same settings librdkafka clients use
    (:meth:`KafkaSettings.client_config`), so every client of the processor connects alike.

    Returns None for PLAINTEXT (Faust's default).
    """
    context = None
    if k.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=k.ssl_ca_location)
        if k.ssl_certificate_location:
            context.load_cert_chain(k.ssl_certificate_location, k.ssl_key_location)
    if k.sasl_mechanism:
        return faust.SASLCredentials(username=k.sasl_username, password=k.sasl_password.get_secret_value(),
                                     ssl_context=context, mechanism=k.sasl_mechanism)
    return faust.SSLCredentials(context) if context is not None else None


def create_app(settings: Settings) -> tuple[faust.App, MetricsServer]:
    """Build the Faust app and its metrics server from ``settings``.

    Returns:
        (app, metrics service): run both with ``faust.Worker(app, metrics)``.

    Raises:
        ConfigError: no signing key configured, or a bad pipeline file.
    """
    k, p = settings.kafka, settings.processor
    codec = BatchCodec(settings.signing.keyring())
    stages = RecordProcessor(codec, Normalizer(p.max_future_skew))
    pipeline = load_pipeline(p.pipeline)
    session_timeout = k.session_timeout_ms / 1000
    Path(p.data_dir).mkdir(parents=True, exist_ok=True)
    app = faust.App(
        p.app_id,
        broker=[f"kafka://{b.strip()}" for b in k.bootstrap_servers.split(",")],
        broker_credentials=kafka_credentials(k),
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,  # every topic is created explicitly (streams topics create)
        store="memory://",
        datadir=p.data_dir,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session_timeout,
        broker_heartbeat_interval=max(0.5, session_timeout / 6),
        broker_commit_interval=p.commit_interval,
        stream_wait_empty=False,
    )
    fastpath.install(app)  # before anything creates the consumer
    samples_topic = app.topic(k.samples_topic, schema=fastpath.RawSchema())
    table = create_state_table(app, k.partitions)
    changelog = ChangelogWriter(k, changelog_topic(p.app_id))
    alarm_stage = create_alarm_stage(settings, app)  # None unless alarms.enabled and coordination.hosts
    lane = _StoreLane()
    rebalances = 0
    # Partitions whose records are known to be new to storage. What a previous owner
    # stored of a partition is a prefix from the committed offset (batches are stored
    # whole and in order), so once a checked flush finds none of a partition's records
    # stored, the rest of that partition needs no duplicate lookup (docs/storage.md).
    past_replay: set[int] = set()

    @app.on_partitions_assigned.connect
    async def _on_assigned(sender: object, *args: object, **kwargs: object) -> None:
        # Ready once the worker has joined the group (a standby with no partitions is fine).
        nonlocal rebalances
        rebalances += 1
        past_replay.clear()

    metrics = MetricsServer(p.metrics_port, settings.metrics_host, healthy=lambda: not app.should_stop,
                            ready=lambda: rebalances > 0)

    @app.agent(samples_topic, name="process_samples")
    async def process_samples(stream: faust.StreamT) -> None:
        publishers = {url: open_publisher(url, settings, codec) for url in pipeline.publishers}
        pending = lane.pending  # uncommitted states of the batch being stored

        def prepare(events: list) -> _Batch:
            batch = _Batch(events, BatchState(table, pending))
            batch.generation = rebalances
            for event in events:
                msg = event.message
                try:
                    samples = stages.decode_record(msg.value)
                    if pipeline.stateful:
                        pipeline.check_lateness(samples, batch.state.get(samples[0]["resource_id"], msg.partition))
                    if msg.partition in past_replay:
                        outputs = batch.outputs
                    else:
                        outputs = batch.replayed
                        batch.replay_partitions.add(msg.partition)
                    pipeline.route(samples, partial(batch.state.get, partition=msg.partition), outputs)
                    if alarm_stage is not None:
                        batch.alarm_events += alarm_stage.on_record(
                            samples, partial(batch.state.get, partition=msg.partition), msg.partition)
                    batch.received += len(samples)
                except RejectedMessage as exc:
                    batch.rejected.append((msg, exc))
            return batch

        store_conn = getattr(publishers.get("clickhouse://"), "sink", None)

        def write(batch: _Batch) -> int:
            """Runs in a worker thread: flush every publisher, then note dead letters for Grafana.

            Returns samples the publishers skipped as already stored.
            """
            skipped = 0
            for url in batch.outputs.keys() | batch.replayed.keys():
                new, replayed = batch.outputs.get(url, []), batch.replayed.get(url, [])
                if new or replayed:
                    publishers[url].add(new, maybe_stored=False)
                    publishers[url].add(replayed, maybe_stored=True)
                    skipped += publishers[url].flush()
                    SAMPLES_DERIVED.labels(scheme=url.split(":", 1)[0]).inc(len(new) + len(replayed))
            rejected = batch.rejected
            if rejected and store_conn is not None:
                letters = [DeadLetter(e.stage, e.reason, e.detail, m.topic, m.partition, m.offset, m.key)
                           for m, e in rejected]
                try:  # the dead-letter topic is the durable record; this table only feeds dashboards
                    record_dead_letters(store_conn.conn, letters)
                except Exception:  # noqa: BLE001
                    log.warning("could not record %d dead letters in ClickHouse", len(letters), exc_info=True)
            return skipped

        async def store(batch: _Batch) -> None:
            for msg, error in batch.rejected:
                headers = list(msg.headers or []) + dlq_headers(error, msg.topic, msg.partition, msg.offset)
                try:
                    await app.producer.send_and_wait(k.dlq_topic, msg.key, msg.value, None, None, headers)
                except Exception:  # noqa: BLE001
                    _die(f"dead-letter topic {k.dlq_topic} refused a record")
                RECORDS_REJECTED.labels(stage=error.stage, reason=error.reason).inc()
                log.warning("record %s[%d]@%d rejected: %s", msg.topic, msg.partition, msg.offset, error)
            try:
                started = time.perf_counter()
                skipped = await asyncio.to_thread(write, batch)
                batch.timings["write"] = time.perf_counter() - started
            except Exception:  # noqa: BLE001
                _die("a publisher could not store the batch")
            if batch.replay_partitions and not skipped and batch.generation == rebalances:
                past_replay.update(batch.replay_partitions)  # checked, nothing was stored: past the replay
            if batch.alarm_events:
                try:
                    await alarm_stage.publish(app.producer, batch.alarm_events)
                except Exception:  # noqa: BLE001
                    _die("alarm events could not be stored")
            # State reaches the changelog only after the outputs are stored, and is
            # flushed before the events are acknowledged.
            if batch.state.commit(changelog):
                started = time.perf_counter()
                try:
                    await asyncio.to_thread(changelog.flush)
                except StateWriteError:
                    _die("the state changelog refused writes")
                batch.timings["changelog"] = time.perf_counter() - started
            for event in batch.events:
                await stream.ack(event)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("batch of %d records, %d samples: %s", len(batch.events), batch.received,
                          ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in batch.timings.items()))
            SAMPLES_PROCESSED.inc(batch.received)

        # Two stages: batch N+1 is decoded and transformed while batch N is stored.
        # At most one batch is being stored; a batch is acked only once stored.
        lane.store = store
        async for events in stream.noack_take(p.batch_size, within=p.batch_timeout):
            started = time.perf_counter()
            batch = prepare(events)
            batch.timings["prepare"] = time.perf_counter() - started
            prev = lane.submit(batch)
            if prev is not None:
                await prev
        if lane.tail is not None:
            await lane.tail

    if alarm_stage is not None:
        @app.timer(settings.alarms.timer_interval)
        async def close_alarm_windows() -> None:
            # Resources that stopped reporting: close their windows by wall-clock time, on owned partitions.
            if lane.store is None or app.rebalancing or app.tables.recovery.in_recovery:
                return
            active = {tp.partition for tp in app.consumer.assignment() if tp.topic == k.samples_topic}
            if not active:
                return
            batch = _Batch([], BatchState(table, lane.pending))
            touched, batch.alarm_events = alarm_stage.close_windows(table, batch.state, active,
                                                                    time.time_ns() // 1000)
            if touched:
                lane.submit(batch)

    return app, metrics


def ensure_state_topic(settings: Settings) -> None:
    """Create the state table's changelog topic (compacted, partitions = samples topic's).

    Raises:
        ConfigError: the samples topic is missing, or the changelog exists with
            another partition count (state would not follow its resources).
    """
    k = settings.kafka
    partitions = describe_topics(k)
    if k.samples_topic not in partitions:
        raise ConfigError(f"topic {k.samples_topic!r} does not exist; run `streams topics create` first")
    n = partitions[k.samples_topic]
    if n != k.partitions:
        raise ConfigError(f"kafka.partitions is {k.partitions} but topic {k.samples_topic!r} has {n} partitions")
    name = changelog_topic(settings.processor.app_id)
    if name in partitions and partitions[name] != n:
        raise ConfigError(f"changelog {name!r} has {partitions[name]} partitions, {k.samples_topic!r} has {n}")
    create_topics(k, [name], partitions=n, config={"cleanup.policy": "compact"})


def tune_gc(threshold: int) -> None:
    """Fewer cyclic garbage collections for a process that allocates dicts by the million.

    Decoding a batch creates one dict per sample and per metadata map; they
    are freed by reference counting, but every 700 allocations (Python's
    default) the collector scans the young generation, and the older ones
    with everything long-lived (Faust, the state table) in turn. Profiled
    under ``make bench``, that was about a fifth of the processor's time,
    counted against the decoder. The young generation is collected every
    ``threshold`` allocations instead; ``threshold`` 0 leaves Python's
    settings. (``gc.freeze()`` of start-up objects was tried too: the
    process then crashed at exit with chdb loaded, and it added nothing
    measurable.)
    """
    if threshold:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(threshold, gen1, gen2)


def run(settings: Settings, loglevel: str = "info") -> None:
    """Run the processor until SIGTERM/SIGINT (blocking). Exits the process."""
    ensure_state_topic(settings)
    app, metrics = create_app(settings)
    tune_gc(settings.processor.gc_threshold)
    # Listed by `streams services list` while it runs (None when coordination.hosts is unset).
    registered = registration(settings.coordination, "streams-process")
    services = (app, metrics) if registered is None else (app, metrics, registered)
    worker = faust.Worker(*services, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
