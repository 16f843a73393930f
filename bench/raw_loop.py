"""Benchmark ceiling: one confluent-kafka consumer + fastavro decode + columnar ClickHouse insert.

No signature check, no normalization, no transformers, no Faust: the
practical upper bound for one Python process on this machine. It runs with
the processor's garbage-collector settings (``processor.gc_threshold``), so
the comparison is about the work done, not GC tuning. Reads the
``STREAMS_*`` environment like the processor; stops after ``--samples`` rows.
Not part of the product; run by ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import fastavro
from confluent_kafka import Consumer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streams.codec import BATCH_SCHEMA, HEADER_SIZE, SchemaStore  # noqa: E402
from streams.config import load_settings  # noqa: E402
from streams.processor.app import tune_gc  # noqa: E402
from streams.storage.clickhouse import ClickHouseSink  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, required=True)
    args = ap.parse_args()
    settings = load_settings()
    tune_gc(settings.processor.gc_threshold)  # the processor's GC settings, so the ceiling is comparable
    schema = SchemaStore()[BATCH_SCHEMA].parsed
    # The ceiling: no duplicate lookup either (the processor skips it outside replays too).
    sink = ClickHouseSink(settings.clickhouse.model_copy(update={"deduplicate": False}))
    consumer = Consumer({
        "bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": settings.processor.app_id,
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "session.timeout.ms": settings.kafka.session_timeout_ms,
    })
    consumer.subscribe([settings.kafka.samples_topic])
    done = 0
    started = None
    while done < args.samples:
        msgs = consumer.consume(num_messages=10_000, timeout=1.0)
        if not msgs:
            continue
        started = started or time.perf_counter()
        for m in msgs:
            if m.error() is None:
                sink.add(fastavro.schemaless_reader(io.BytesIO(m.value()[HEADER_SIZE:]), schema, None)["samples"])
        done += sink.flush()
        consumer.commit(asynchronous=False)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    print(f"{done} {elapsed:.3f}")
    consumer.close()


if __name__ == "__main__":
    main()
