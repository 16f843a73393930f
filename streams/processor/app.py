"""The processor: a faust-streaming app consuming the samples topic.

Per batch of Kafka records (``Stream.take_events``): decode, verify and
normalize (:class:`~streams.processor.stages.RecordProcessor`), send rejected
records to the dead-letter topic and wait for the broker's acknowledgement,
insert accepted samples into ClickHouse and wait for it, and only then let
Faust acknowledge the events. Faust commits acknowledged offsets only, so an
offset is committed after its rows are in ClickHouse (at-least-once; the
table's ReplacingMergeTree removes redelivered rows).

If the sink or the dead-letter producer fails for good, the process exits at
once with status 70 *without* acknowledging the batch (``take_events`` would
otherwise ack it on the way out), and the restarted worker re-reads it.

Samples arrive keyed by resource_id, so no repartitioning is needed: all
records of a resource are on one partition, hence in one worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import faust

from streams.codec import BatchCodec
from streams.config import Settings
from streams.observability import RECORDS_REJECTED, SAMPLES_PROCESSED, MetricsServer
from streams.processor.normalize import Normalizer
from streams.processor.stages import RecordProcessor, dlq_headers
from streams.storage.clickhouse import ClickHouseSink

log = logging.getLogger(__name__)

EXIT_UNACKED_FAILURE = 70
"""Exit status when a batch could not be stored: nothing of it was acknowledged."""


def _die(message: str) -> None:
    log.critical("%s; exiting without acknowledging the batch", message, exc_info=True)
    logging.shutdown()
    os._exit(EXIT_UNACKED_FAILURE)


def create_app(settings: Settings) -> tuple[faust.App, MetricsServer]:
    """Build the Faust app and its metrics server from ``settings``.

    Returns:
        (app, metrics service): run both with ``faust.Worker(app, metrics)``.

    Raises:
        ConfigError: no signing key configured.
    """
    k, p = settings.kafka, settings.processor
    codec = BatchCodec(settings.signing.keyring())
    stages = RecordProcessor(codec, Normalizer(p.max_future_skew))
    session_timeout = k.session_timeout_ms / 1000
    Path(p.data_dir).mkdir(parents=True, exist_ok=True)
    app = faust.App(
        p.app_id,
        broker=[f"kafka://{b.strip()}" for b in k.bootstrap_servers.split(",")],
        broker_credentials=None,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        store="memory://",
        datadir=p.data_dir,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session_timeout,
        broker_heartbeat_interval=max(0.5, session_timeout / 6),
        broker_commit_interval=1.0,
        stream_wait_empty=False,
    )
    samples_topic = app.topic(k.samples_topic, key_serializer="raw", value_serializer="raw")
    rebalances = 0

    @app.on_partitions_assigned.connect
    async def _on_assigned(sender: object, *args: object, **kwargs: object) -> None:
        # Ready once the worker has joined the group (a standby with no partitions is fine).
        nonlocal rebalances
        rebalances += 1

    metrics = MetricsServer(p.metrics_port, healthy=lambda: not app.should_stop,
                            ready=lambda: rebalances > 0)

    @app.agent(samples_topic, name="process_samples")
    async def process_samples(stream: faust.StreamT) -> None:
        sink = ClickHouseSink(settings.clickhouse, retry_for=float("inf"))
        async for events in stream.take_events(p.batch_size, within=p.batch_timeout):
            samples, rejected = stages.process([e.message.value for e in events])
            for r in rejected:
                msg = events[r.index].message
                headers = list(msg.headers or []) + dlq_headers(r.error, msg.topic, msg.partition, msg.offset)
                try:
                    await app.producer.send_and_wait(
                        k.dlq_topic, msg.key, msg.value, None, None, headers
                    )
                except Exception:  # noqa: BLE001
                    _die(f"dead-letter topic {k.dlq_topic} refused a record")
                RECORDS_REJECTED.labels(stage=r.error.stage, reason=r.error.reason).inc()
                log.warning("record %s[%d]@%d rejected: %s", msg.topic, msg.partition, msg.offset, r.error)
            if samples:
                sink.add(samples)
                try:
                    await asyncio.to_thread(sink.flush)
                except Exception:  # noqa: BLE001
                    _die("ClickHouse insert failed")
                SAMPLES_PROCESSED.inc(len(samples))

    return app, metrics


def run(settings: Settings, loglevel: str = "info") -> None:
    """Run the processor until SIGTERM/SIGINT (blocking). Exits the process."""
    app, metrics = create_app(settings)
    worker = faust.Worker(app, metrics, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
