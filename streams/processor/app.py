"""The processor: a faust-streaming app consuming the samples topic; a thin shell around
:class:`~streams.processor.batch.BatchProcessor`.

Faust owns the consumer group, the partitions, the state table and its
recovery, the commit of acknowledged offsets, and the worker's lifecycle.
The samples topic's records reach the agent a fetch at a time through an
:class:`~streams.processor.intake.Intake`, not one by one through Faust's
streams; the agent takes batches from it (at most ``batch_size`` records or
``batch_max_bytes`` bytes, handed over once the oldest record has waited
``batch_timeout`` seconds), lets the :class:`BatchProcessor` prepare batch
N+1 while it stores batch N, and acknowledges a batch's records to Faust's
consumer once it is stored. Faust commits acknowledged offsets only. The batch logic, its per-stage error
policy and the delivery order are documented in :mod:`streams.processor.batch`.

If storing fails for good (:class:`~streams.processor.batch.StoreUnavailable`),
the process exits at once with status 70 without acknowledging the batch,
and the restarted worker re-reads it.

Two timers go through the same store lane as the batches, so they never
race a batch's state: one closes alarm windows of resources that stopped
reporting; one evicts the state of resources idle for ``processor.state_ttl``
(changelog tombstones, so compaction removes them too).

Samples arrive keyed by resource_id, so no repartitioning is needed: all
records of a resource are on one partition, hence in one worker.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import ssl
import time
from pathlib import Path

import faust

from streams.alarms.stage import create_alarm_stage
from streams.codec import BatchCodec
from streams.config import ConfigError, KafkaSettings, Settings
from streams.coordination.registry import registration
from streams.observability import MetricsServer
from streams.pipeline import Pipeline, load_pipeline
from streams.processor import fastpath
from streams.processor.batch import BatchProcessor, StoreUnavailable, quiet_partitions
from streams.processor.intake import Intake
from streams.processor.normalize import Normalizer
from streams.processor.publishers import open_publisher
from streams.processor.stages import RecordProcessor
from streams.processor.state import ChangelogWriter, changelog_topic, create_state_table
from streams.topics import create_topics, describe_topics

log = logging.getLogger(__name__)

EXIT_UNACKED_FAILURE = 70
"""Exit status when a batch could not be stored: nothing of it was acknowledged."""

DEFAULT_STATE_TTL = 3600.0
"""Seconds of idleness before a resource's state is evicted, unless the pipeline needs longer."""


def _die(message: str) -> None:
    log.critical("%s; exiting without acknowledging the batch", message, exc_info=True)
    logging.shutdown()
    os._exit(EXIT_UNACKED_FAILURE)


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


def state_ttl(settings: Settings, pipeline: Pipeline) -> float:
    """``processor.state_ttl``, or by default the larger of :data:`DEFAULT_STATE_TTL` and twice the
    longest aggregator ``retention_time`` of the pipeline (seconds). Alarm windows need no margin:
    resources that hold them are never evicted (the evaluator releases them itself)."""
    if settings.processor.state_ttl is not None:
        return settings.processor.state_ttl
    longest = max(((getattr(t, "retention_us", None) or 0) / 1e6
                   for sink in pipeline.sinks.values() for t in sink.transformers), default=0.0)
    return max(DEFAULT_STATE_TTL, 2 * longest)


def create_app(settings: Settings) -> tuple[faust.App, MetricsServer]:
    """Build the Faust app and its metrics server from ``settings``.

    Returns:
        (app, metrics service): run both with ``faust.Worker(app, metrics)``.

    Raises:
        ConfigError: no signing key configured, or a bad pipeline file.
    """
    k, p = settings.kafka, settings.processor
    limits = p.limits()
    codec = BatchCodec(settings.signing.keyring(), limits=limits)
    stages = RecordProcessor(codec, Normalizer(p.max_future_skew, max_sample_age=settings.max_sample_age,
                                               limits=limits))
    pipeline = load_pipeline(p.pipeline)
    ttl = state_ttl(settings, pipeline)
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
    processor = BatchProcessor(
        stages, pipeline, {}, table, ChangelogWriter(k, changelog_topic(p.app_id)), k.dlq_topic,
        alarm_stage=create_alarm_stage(settings, app),  # None unless alarms.enabled and coordination.hosts
        partitions=k.partitions, dlq_max_bytes=k.dlq_max_bytes)
    intake = Intake(p.batch_size, p.batch_max_bytes, p.batch_timeout)
    consumer = app.consumer
    consumer.intake, consumer.intake_topics = intake, frozenset({k.samples_topic})
    consumer.set_fetch_max_wait(p.fetch_max_wait)
    joined = []
    assigned_at = [time.monotonic()]

    @app.on_partitions_revoked.connect
    async def _on_revoked(sender: object, *args: object, **kwargs: object) -> None:
        intake.clear()  # Faust seeks back to the committed offsets: what is queued comes again

    @app.on_partitions_assigned.connect
    async def _on_assigned(sender: object, *args: object, **kwargs: object) -> None:
        # Ready once the worker has joined the group (a standby with no partitions is fine).
        joined.append(True)
        assigned_at[0] = time.monotonic()
        processor.on_rebalance()

    metrics = MetricsServer(p.metrics_port, settings.metrics_host, healthy=lambda: not app.should_stop,
                            ready=lambda: bool(joined))

    def owned() -> list:
        return [tp for tp in app.consumer.assignment() if tp.topic == k.samples_topic]

    def active_partitions() -> set[int]:
        return {tp.partition for tp in owned()}

    def idle() -> bool:
        # Timers add work only between rebalances, once the agent runs.
        return not processor.publishers or app.rebalancing or app.tables.recovery.in_recovery

    def submit(batch, after=None):
        # Every store is watched: a failure exits at once, even if nothing awaits it yet.
        prev = processor.submit(batch, after)
        processor.tail.add_done_callback(_exit_on_failure)
        return prev

    @app.agent(samples_topic, name="process_samples")
    async def process_samples(stream: faust.StreamT) -> None:
        # The stream itself stays empty: its records come through the intake (streams.processor.intake).
        processor.publishers = {url: open_publisher(url, settings, codec) for url in pipeline.publishers}
        sink = getattr(processor.publishers.get("clickhouse://"), "sink", None)
        processor.dead_letter_table = getattr(sink, "conn", None)
        # Two stages: batch N+1 is prepared while batch N is stored; a batch is acked only once stored.
        async for messages in intake.batches():
            batch = processor.prepare(messages)

            async def ack(messages=messages) -> None:
                for message in messages:
                    consumer.ack(message)

            await _awaited(processor.wait_turn(submit(batch, ack)))
        await _awaited(processor.drain())

    if processor.alarm_stage is not None:
        @app.timer(settings.alarms.timer_interval)
        async def close_alarm_windows() -> None:
            # Resources that stopped reporting: close their windows by wall-clock time, on owned partitions.
            if idle():
                return
            tps = owned()
            highwaters = {tp.partition: app.consumer.highwater(tp) for tp in tps}
            # Nothing prepared on a partition since the rebalance: it is idle only if nothing lies beyond
            # its committed offset. (Not the consumer's position: that counts the records already fetched
            # and queued in the intake, so a restarted worker's whole backlog looked prepared, and the
            # timer closed its windows by wall clock.)
            committed = getattr(app.consumer, "_committed_offset", {})
            starts = {tp.partition: committed.get(tp) for tp in tps if tp.partition not in processor.prepared_offsets}
            quiet = quiet_partitions({tp.partition: app.monitor.stream_inbound_time.get(tp) for tp in tps},
                                     consumer.last_round, assigned_at[0], time.monotonic(), settings.alarms.idle_after)
            clocks = processor.timer_clocks(highwaters, time.time_ns() // 1000, starts, quiet)
            batch = processor.alarm_timer_batch(clocks)
            if batch is not None:
                submit(batch)

    @app.timer(min(60.0, ttl / 10))
    async def evict_idle_state() -> None:
        if idle():
            return
        batch = processor.eviction_batch(active_partitions(), ttl)
        if batch is not None:
            submit(batch)

    return app, metrics


async def _awaited(future) -> None:
    """Await a store; on :class:`StoreUnavailable` (or any failure) exit without acknowledging."""
    try:
        await future
    except StoreUnavailable as exc:
        _die(str(exc))
    except Exception:  # noqa: BLE001 - a failed store must never be acknowledged
        _die("storing a batch failed")


def _exit_on_failure(future) -> None:
    if not future.cancelled() and future.exception() is not None:
        exc = future.exception()
        try:
            raise exc
        except Exception:  # noqa: BLE001 - log with the traceback, then exit
            _die(str(exc) if isinstance(exc, StoreUnavailable) else "storing a batch failed")


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
    # An in-process chdb session must be closed before the interpreter tears objects down:
    # destroyed during finalization (the publishers outlive the event loop), it crashes the process.
    from streams.storage.backend import close_chdb

    atexit.register(close_chdb)
    worker = worker_for(services, loglevel)
    worker.execute_from_commandline()


def worker_for(services: tuple, loglevel: str) -> faust.Worker:
    """The Faust worker that runs ``services``, logging at ``loglevel`` (a level name).

    Without Faust's terminal spinner: at WARNING and above, Faust's worker sets the root logger to
    DEBUG for its spinner handler (``faust.Worker._setup_spinner_handler``), so every library's debug
    call (aiokafka's per fetch, clickhouse-driver's per block) built a log record only for the
    handler to drop it: about 1 % of the processor's time at ``make soak``'s load.
    """
    worker = faust.Worker(*services, loglevel=loglevel, quiet=True)
    worker.spinner = None
    return worker
