"""The yardstick: what a user would write instead, a plain Quix Streams application doing the same job.

Per record of the samples topic: verify the HMAC on the raw bytes, decode with fastavro,
normalize (the same rules as the processor), run the bench pipeline (``rate_of_change`` with its
state in Quix's RocksDB store, changelogged to Kafka, keyed by the record key = resource id), and
store every output with batched columnar ClickHouse inserts in a Quix ``BatchingSink``: Quix
flushes the sink at each checkpoint and commits offsets only after it. Bad records are skipped.

Runs in its own virtualenv (``.venv-quix``: Quix Streams pins an older confluent-kafka than the
project's), built by ``make bench``. Reads the ``STREAMS_*`` environment like the processor; stops
after ``--samples`` input rows are stored, printing ``<rows> <seconds>``. Not part of the product.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import io
import os
import sys
import threading
import time
from pathlib import Path

import fastavro
from quixstreams import Application
from quixstreams.sinks import BatchingSink, SinkBatch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streams.codec import BATCH_SCHEMA, HEADER_SIZE, SchemaStore  # noqa: E402
from streams.config import load_settings  # noqa: E402
from streams.pipeline import load_pipeline  # noqa: E402
from streams.processor.normalize import Normalizer  # noqa: E402
from streams.storage.clickhouse import ClickHouseSink  # noqa: E402


class ClickHouseBatchSink(BatchingSink):
    """Columnar inserts of everything a checkpoint holds (duplicate lookup off: Quix has no replay bookkeeping)."""

    def __init__(self, settings) -> None:
        super().__init__()
        self.sink = ClickHouseSink(settings.clickhouse.model_copy(update={"deduplicate": False}))
        self.stored = 0

    def write(self, batch: SinkBatch) -> None:
        samples = [s for item in batch for s in item.value]
        self.sink.add(samples)
        self.sink.flush()
        self.stored += sum(1 for s in samples if s["name"] != "bench.cpu_rate")  # input rows, as the others


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, required=True, help="stop once this many input rows are stored")
    args = ap.parse_args()
    settings = load_settings()
    k, p = settings.kafka, settings.processor
    store = SchemaStore()
    schema = store[BATCH_SCHEMA].parsed
    fingerprint = store[BATCH_SCHEMA].fingerprint
    keys = {kid: v.get_secret_value().encode() for kid, v in settings.signing.keys.items()}
    normalizer = Normalizer(p.max_future_skew)
    pipeline = load_pipeline(p.pipeline)

    first: list[float] = []

    def process(value: bytes, state) -> list[dict] | None:
        if not first:
            first.append(time.perf_counter())
        if len(value) < HEADER_SIZE + 33 or value[2:HEADER_SIZE] != fingerprint:
            return None
        body = io.BytesIO(value)
        body.seek(HEADER_SIZE)
        key_id = fastavro.schemaless_reader(io.BytesIO(value[HEADER_SIZE:]), {"type": "string"}, None)
        secret = keys.get(key_id)
        if secret is None or not hmac.compare_digest(
                hmac.new(secret, value[:-32], hashlib.sha256).digest(), value[-32:]):
            return None
        try:
            samples = normalizer.normalize(fastavro.schemaless_reader(body, schema, None)["samples"])
        except Exception:  # noqa: BLE001 - a bad record is skipped
            return None
        resource_state = state.get("s", {})
        out: dict[str, list] = {}
        pipeline.route(samples, lambda rid: resource_state, out)
        state.set("s", resource_state)
        return out.get("clickhouse://", [])

    app = Application(
        broker_address=k.bootstrap_servers,
        consumer_group=f"{p.app_id}",
        auto_offset_reset="earliest",
        commit_interval=p.commit_interval,
        state_dir=os.path.join(p.data_dir, "quix-state"),
        consumer_extra_config={"session.timeout.ms": k.session_timeout_ms},
    )
    topic = app.topic(k.samples_topic, key_deserializer="bytes", value_deserializer="bytes")
    sink = ClickHouseBatchSink(settings)
    sdf = app.dataframe(topic).apply(process, stateful=True).filter(lambda v: bool(v))
    sdf.sink(sink)
    deadline = time.perf_counter() + 900
    done: list[float] = []

    def watch() -> None:
        while sink.stored < args.samples and time.perf_counter() < deadline:
            time.sleep(0.05)
        done.append(time.perf_counter())
        app.stop()

    threading.Thread(target=watch, daemon=True).start()
    app.run()
    print(f"{sink.stored} {done[0] - (first[0] if first else done[0]):.3f}")


if __name__ == "__main__":
    main()
