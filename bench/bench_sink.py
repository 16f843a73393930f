"""The ClickHouse sink alone: rows/s of columnar inserts through ``ClickHouseSink``.

For each batch size (the processor's ``batch_size`` is 4,000 records, i.e.
up to ~28,000 samples of 7 per record; 70,000 is 10,000 records, the default before), a fresh database is migrated (with
the rollup and resource views, as in production) and ``rounds`` batches are
added as the processor adds them (``add_columns`` of the decoder's
:class:`~streams.columns.SampleColumns`) and flushed; only ``add_columns`` +
``flush`` are timed. ``deduplicate`` on is
the shipped default (one primary-key lookup per flush before the insert);
off shows what that lookup costs.

Usage: ``python bench/bench_sink.py [--rows N]`` (needs ``streams dev up``), or
``run(settings)`` from bench/run.py. The goal on this machine (issue 16): 200,000 rows/s with the duplicate check on.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams.columns import SampleColumns  # noqa: E402
from streams.config import Settings, load_settings  # noqa: E402
from streams.storage.backend import open_connection  # noqa: E402
from streams.storage.clickhouse import ClickHouseSink  # noqa: E402
from streams.storage.migrations import apply  # noqa: E402

METERS = [("cpu", "cumulative", "ns"), ("cpu_util", "gauge", "%"), ("memory.usage", "gauge", "B"),
          ("disk.read.bytes", "cumulative", "B"), ("disk.write.bytes", "cumulative", "B"),
          ("network.incoming.bytes", "cumulative", "B"), ("network.outgoing.bytes", "cumulative", "B")]


def make_batch(n: int, start: int, base_us: int, resources: int = 1000) -> list[dict]:
    """``n`` host-like samples (7 meters per resource and poll), unique message ids."""
    out = []
    for k in range(start, start + n):
        rec, m = divmod(k, len(METERS))
        name, typ, unit = METERS[m]
        rid = f"bench-host-{rec % resources}"
        out.append({"message_id": uuid.uuid4().hex, "name": name, "type": typ, "unit": unit,
                    "volume": float(k % 9973), "user_id": None, "user_name": None, "project_id": "bench",
                    "project_name": None, "resource_id": rid, "timestamp": base_us + (rec // resources) * 10_000_000,
                    "monotonic_time": None, "resource_metadata": {"kind": "host", "name": rid}, "source": "bench"})
    return out


def measure(settings: Settings, batch: int, rounds: int, deduplicate: bool) -> dict:
    db = f"benchsink{uuid.uuid4().hex[:8]}"
    url = settings.clickhouse.url.rsplit("/", 1)[0] + f"/{db}"
    ch = settings.clickhouse.model_copy(update={"url": url, "deduplicate": deduplicate})
    conn = open_connection(url, db, ch.insert_block_size)
    apply(conn)
    sink = ClickHouseSink(ch, connection=conn)
    base_us = time.time_ns() // 1000 - 86_400_000_000
    seconds = add_s = 0.0
    try:
        for r in range(rounds):
            columns = SampleColumns()
            columns.extend_dicts(make_batch(batch, r * batch, base_us))
            t0 = time.perf_counter()
            sink.add_columns(columns)  # as the processor feeds it: the decoder's columns, no dict per sample
            add_s += time.perf_counter() - t0
            sink.flush()
            seconds += time.perf_counter() - t0
        [(stored,)] = conn.execute(f"SELECT count() FROM {db}.samples")
        assert stored == batch * rounds, (stored, batch * rounds)
    finally:
        conn.execute(f"DROP DATABASE IF EXISTS {db}")
        conn.close()
    rows = batch * rounds
    return {"batch": batch, "rows": rows, "deduplicate": deduplicate, "seconds": round(seconds, 3),
            "rows_per_s": round(rows / seconds), "add_s": round(add_s, 3),
            "lookup_s": round(sink.lookup_seconds, 3), "insert_s": round(sink.insert_seconds, 3),
            "insert_rows_per_s": round(rows / sink.insert_seconds)}


def run(settings: Settings, rows: int = 700_000) -> dict:
    """Rows/s of the sink at batch sizes 10k, 28k and 70k (dedup on) and 70k (dedup off).

    28,000 samples is one full processor batch (4,000 records of 7 samples); 70,000 was, at 10,000 records.

    Returns ``{"runs": [...], "best_rows_per_s": N, "goal_rows_per_s": 200000}``.
    """
    runs = []
    for batch, dedup in ((10_000, True), (28_000, True), (70_000, True), (70_000, False)):
        r = measure(settings, batch, max(1, rows // batch), dedup)
        runs.append(r)
        print(f"   sink batch {batch:>6} dedup {'on ' if dedup else 'off'}: {r['rows']} rows in {r['seconds']}s, "
              f"{r['rows_per_s']:,} rows/s (add {r['add_s']}s, lookup {r['lookup_s']}s, INSERT {r['insert_s']}s "
              f"= {r['insert_rows_per_s']:,} rows/s)")
    return {"runs": runs, "best_rows_per_s": max(r["rows_per_s"] for r in runs if r["deduplicate"]),
            "goal_rows_per_s": 200_000}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=700_000)
    args = ap.parse_args()
    print(run(load_settings(), args.rows))
