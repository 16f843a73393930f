"""The processor's CPU per sample between fetch and INSERT, at the soak's shape, without I/O.

What it times, per batch, as the processor does it (``streams.processor.batch``):
``BatchProcessor.prepare`` (verify, decode, normalize, the shipped ``etc/pipeline.yaml``'s
transformers: four derived byte rates per record), handing the rows and the derived samples to a
``ClickHouseSink`` (its column buffers; no INSERT: the buffers are dropped after each batch), and
``BatchState.commit`` (the changed states' JSON for the changelog, into a producer double). The
soak's three alarms (``cpu_util`` above 50, 80 and 95 over 10 s periods, on the resources
``soak-host-0*``, ``soak-host-1*`` and ``soak-host-2*``) watch the samples, as in ``make soak``,
unless ``--no-alarms``.

The records are ``make soak``'s (``bench/soak.py``: 7 samples each, 2,000 resources), in batches of
``--batch`` records (430: what 0.3 s of ``batch_timeout`` gathers at 10,000 samples/s). The first
sixth of the batches warm the states up and are not timed. The garbage collector is tuned as
``streams process`` tunes it (``processor.gc_threshold``). Prints µs of CPU (``time.process_time``)
per sample, and samples per CPU-second.

To compare two trees side by side: ``cd <tree> && python <this file>``, alternating (the tree in the
current directory is imported first).

Usage: ``python bench/bench_prepare.py [--batch 430] [--resources 2000] [--rounds 12] [--no-alarms]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())

from streams.alarms.evaluator import AlarmSet  # noqa: E402
from streams.alarms.model import parse_alarm  # noqa: E402
from streams.alarms.stage import AlarmStage  # noqa: E402
from streams.codec import BatchCodec  # noqa: E402
from streams.config import ClickHouseSettings, Settings  # noqa: E402
from streams.pipeline import load_pipeline  # noqa: E402
from streams.processor.app import tune_gc  # noqa: E402
from streams.processor.batch import BatchProcessor  # noqa: E402
from streams.processor.normalize import Normalizer  # noqa: E402
from streams.processor.stages import RecordProcessor  # noqa: E402
from streams.processor.state import ChangelogWriter  # noqa: E402
from streams.signing import Keyring  # noqa: E402
from streams.storage.clickhouse import ClickHouseSink  # noqa: E402

# After streams: soak puts this checkout first on sys.path, and the tree in the current directory is measured.
sys.path.insert(1, str(Path(__file__).resolve().parent))
from soak import record  # noqa: E402

PIPELINE = Path(__file__).resolve().parent.parent / "etc" / "pipeline.yaml"


class _Connection:
    """What ClickHouseSink reads of a connection before its first flush (none happens here)."""

    database = "bench"


class _Table(dict):
    """The state table: its local store is itself."""

    @property
    def data(self) -> dict:
        return self


class _Producer:
    """Counts changelog records; acknowledges everything."""

    produced = 0

    def produce(self, topic, value, key, partition=None, on_delivery=None, headers=None) -> None:
        self.produced += 1

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


class _Message:
    __slots__ = ("key", "value", "offset", "partition", "topic", "headers")

    def __init__(self, key: bytes, value: bytes, offset: int, partition: int) -> None:
        self.key, self.value, self.offset, self.partition = key, value, offset, partition
        self.topic, self.headers = "samples", []


class _Publisher:
    """The clickhouse:// publisher: ClickHouseSink's column buffers, dropped at flush (no INSERT)."""

    def __init__(self, sink: ClickHouseSink) -> None:
        self.sink = sink

    def add(self, samples, maybe_stored=True, origins=None) -> None:
        self.sink.add(samples, maybe_stored, origins)

    def add_columns(self, columns, rows, maybe_stored=True, origins=None) -> None:
        self.sink.add_columns(columns, rows, maybe_stored, origins)

    def flush(self) -> int:
        """Drop the buffered columns instead of inserting them; nothing skipped."""
        self.sink._columns = [[] for _ in self.sink._columns]
        self.sink._check, self.sink._origins = [], []
        return 0


def soak_alarms() -> AlarmStage:
    """The alarm stage with ``make soak``'s three alarms (``bench/soak.py``); nothing is stored."""
    alarms = AlarmSet(parse_alarm({
        "alarm_id": f"soak-{i}", "name": f"soak {i}", "alarm_actions": ["log://"], "ok_actions": ["log://"],
        "threshold_rule": {"meter_name": "cpu_util", "comparison_operator": "gt", "threshold": threshold,
                           "period": 10, "evaluation_periods": 2, "query": {"resource_id": f"soak-host-{i}*"}}})
        for i, threshold in enumerate((50, 80, 95)))
    return AlarmStage(Settings(signing={"keys": {"bench": "bench-secret"}, "active": "bench"}), lambda: alarms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=430, help="records per batch")
    ap.add_argument("--resources", type=int, default=2_000)
    ap.add_argument("--rounds", type=int, default=12, help="records per resource")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--no-alarms", action="store_true", help="without the soak's three alarms")
    args = ap.parse_args()

    tune_gc(Settings().processor.gc_threshold)  # as `streams process` does
    codec = BatchCodec(Keyring({"bench": b"bench-secret"}, "bench"))
    stages = RecordProcessor(codec, Normalizer(max_sample_age=0.0, limits=codec.limits))
    publisher = _Publisher(ClickHouseSink(ClickHouseSettings(), connection=_Connection()))
    producer = _Producer()
    writer = ChangelogWriter(None, "bench-resource-state-changelog", producer=producer)
    processor = BatchProcessor(stages, load_pipeline(str(PIPELINE)), {"clickhouse://": publisher}, _Table(),
                               writer, "bench.dlq", partitions=args.partitions,
                               alarm_stage=None if args.no_alarms else soak_alarms())
    processor.past_replay.update(range(args.partitions))  # no duplicate lookups: the records are new

    records = []
    for i in range(args.resources * args.rounds):
        samples = record(i, args.resources)
        for s in samples:
            s["timestamp"] += i * 1000  # each record 1 ms after the last: every rate has a previous sample
        records.append(_Message(samples[0]["resource_id"].encode(), codec.encode(samples), i, i % args.partitions))
    batches = [records[i:i + args.batch] for i in range(0, len(records), args.batch)]

    def run(chunk: list[list[_Message]]) -> None:
        for records in chunk:
            batch = processor.prepare(records)
            processor._write(batch)  # what store() runs in its worker thread: the publishers' add and flush
            batch.state.commit(writer)

    warm = len(batches) // 6
    run(batches[:warm])
    gc.collect()
    started = time.process_time()
    run(batches[warm:])
    cpu = time.process_time() - started
    samples = sum(len(b) for b in batches[warm:]) * 7
    tree = Path(sys.modules["streams"].__file__).parent.parent
    shape = f"{args.batch} records per batch{'' if args.no_alarms else ', 3 alarms'}"
    print(f"{tree}: {shape}: {cpu / samples * 1e6:.2f} µs of CPU per sample, "
          f"{samples / cpu:,.0f} samples per CPU-second ({samples:,} samples, {producer.produced:,} state writes)")


if __name__ == "__main__":
    main()
