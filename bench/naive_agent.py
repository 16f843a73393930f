"""Benchmark baseline: a naive per-event Faust agent doing the processor's work one record at a time.

Same stages as ``streams process`` (decode, verify, normalize, pipeline
routing), but it iterates ``stream.events()`` and inserts each record's
samples with its own INSERT — the way a first Faust agent is usually written.
Settings come from the same ``STREAMS_*`` environment as the processor.
Not part of the product; run by ``bench/run.py``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import faust

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streams.codec import BatchCodec, RejectedMessage  # noqa: E402
from streams.config import load_settings  # noqa: E402
from streams.observability import MetricsServer  # noqa: E402
from streams.pipeline import load_pipeline  # noqa: E402
from streams.processor.normalize import Normalizer  # noqa: E402
from streams.processor.stages import RecordProcessor  # noqa: E402
from streams.storage.clickhouse import ClickHouseSink  # noqa: E402


def main() -> None:
    settings = load_settings()
    k, p = settings.kafka, settings.processor
    stages = RecordProcessor(BatchCodec(settings.signing.keyring()), Normalizer())
    pipeline = load_pipeline(p.pipeline)
    app = faust.App(p.app_id, broker=f"kafka://{k.bootstrap_servers}", key_serializer="raw",
                    value_serializer="raw", web_enabled=False, topic_disable_leader=True,
                    topic_allow_declare=False, store="memory://", datadir=p.data_dir,
                    consumer_auto_offset_reset="earliest", broker_session_timeout=k.session_timeout_ms / 1000,
                    broker_heartbeat_interval=1.0)
    topic = app.topic(k.samples_topic, key_serializer="raw", value_serializer="raw")
    joined = []
    app.on_partitions_assigned.connect(lambda *a, **kw: joined.append(1))
    metrics = MetricsServer(p.metrics_port, ready=lambda: bool(joined))

    @app.agent(topic)
    async def naive(stream: faust.StreamT) -> None:
        sink = ClickHouseSink(settings.clickhouse)
        state: dict[str, dict] = {}  # in memory only: the naive agent has no table
        async for event in stream.events():
            try:
                samples = stages.decode_record(event.message.value, event.message.key)
            except RejectedMessage:
                continue
            out: dict[str, list] = {}
            pipeline.route(samples, lambda rid: state.setdefault(rid, {}), out)
            sink.add(out.get("clickhouse://", []))
            await asyncio.to_thread(sink.flush)

    faust.Worker(app, metrics, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
