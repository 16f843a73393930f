"""The sink on chdb: columnar inserts, redelivered samples skipped, rollups equal raw."""

from __future__ import annotations

import pytest

from streams.storage.clickhouse import ClickHouseSink
from tests.conftest import make_test_sample, recent_hour_us

BASE_US = recent_hour_us()  # inside the fixture's 7-day TTL whatever the date


def _samples(n: int) -> list[dict]:
    return [make_test_sample(name=("cpu_util", "memory.usage")[i % 2], resource_id=f"r{i % 5}",
                             volume=float(i * 3 % 17), timestamp=BASE_US + i * 7_000_000) for i in range(n)]


def rollups_agree(conn, table: str) -> None:
    raw = conn.execute(f"""
        SELECT name, resource_id, intDiv(timestamp_us, {60_000_000 if table.endswith('1m') else 3_600_000_000}) AS b,
               count(), min(volume), max(volume), sum(volume), avg(volume), argMax(volume, timestamp_us)
        FROM t.samples FINAL GROUP BY name, resource_id, b ORDER BY name, resource_id, b""")
    roll = conn.execute(f"""
        SELECT name, resource_id, intDiv(toUInt32(bucket), {60 if table.endswith('1m') else 3600}) AS b,
               countMerge(count), minMerge(min), maxMerge(max), sumMerge(sum), avgMerge(avg), argMaxMerge(last)
        FROM t.{table} GROUP BY name, resource_id, b ORDER BY name, resource_id, b""")
    assert len(raw) == len(roll) > 0
    for r, g in zip(raw, roll, strict=True):
        assert r[:4] == g[:4]
        assert g[4:] == pytest.approx(r[4:])


def test_redelivered_samples_are_skipped_and_rollups_agree(chdb_conn):
    sink = ClickHouseSink(chdb_conn.settings, connection=chdb_conn)
    first = _samples(300)
    sink.add(first)
    assert sink.flush() == 300
    # A replay: the tail of the first batch again, a repeat inside the batch, and new samples.
    new = [make_test_sample(resource_id="r9", timestamp=BASE_US + 5)]
    sink.add(first[200:] + first[200:201] + new)
    assert sink.flush() == 1
    assert sink.duplicates == 101
    [(n, uniq)] = chdb_conn.execute("SELECT count(), uniqExact(message_id) FROM t.samples")
    assert n == uniq == 301
    for table in ("rollups_1m", "rollups_1h"):
        rollups_agree(chdb_conn, table)
    [(rows, dups)] = chdb_conn.execute("SELECT sum(rows), sum(duplicates) FROM t.sink_flushes")
    assert (rows, dups) == (301, 101)


def test_empty_flush_and_buffer_kept_on_error(chdb_conn):
    sink = ClickHouseSink(chdb_conn.settings, connection=chdb_conn)
    assert sink.flush() == 0
    sink.add([make_test_sample()])
    chdb_conn.execute("RENAME TABLE t.samples TO t.samples_away")
    with pytest.raises(Exception):  # noqa: B017 (the engine's error type)
        sink.flush()
    assert len(sink) == 1
    chdb_conn.execute("RENAME TABLE t.samples_away TO t.samples")
    assert sink.flush() == 1


def test_resources_keep_latest_metadata(chdb_conn):
    sink = ClickHouseSink(chdb_conn.settings, connection=chdb_conn)
    sink.add([make_test_sample(resource_id="vm1", timestamp=BASE_US, resource_metadata={"flavor": "small"}),
              make_test_sample(resource_id="vm1", timestamp=BASE_US + 10, resource_metadata={"flavor": "big"})])
    sink.flush()
    sink.add([make_test_sample(resource_id="vm1", timestamp=BASE_US - 10, resource_metadata={"flavor": "old"})])
    sink.flush()
    assert chdb_conn.execute("SELECT metadata_values FROM t.resources FINAL WHERE resource_id = 'vm1'") == [(["big"],)]


def _spread_over_months(n: int, resource_id: str = "poison") -> list[dict]:
    """``n`` samples of one resource, each in a different month (a different partition)."""
    now = recent_hour_us()
    return [make_test_sample(resource_id=resource_id, timestamp=now - k * 32 * 86_400_000_000) for k in range(n)]


def test_a_record_the_store_refuses_is_isolated_and_the_rest_stored(chdb_conn):
    from streams.storage.clickhouse import RecordsRejected

    conn = chdb_conn
    conn.execute("ALTER TABLE t.samples MODIFY TTL toDateTime(timestamp) + INTERVAL 20 YEAR")  # keep old months
    sink = ClickHouseSink(conn.settings, connection=conn)
    good = [_samples(5) for _ in range(7)]
    for i, rec in enumerate(good[:4]):
        sink.add(rec, maybe_stored=False, origins=[i] * len(rec))
    poison = _spread_over_months(101)  # ClickHouse: "Too many partitions for single INSERT block (more than 100)"
    sink.add(poison, maybe_stored=False, origins=[4] * len(poison))
    for i, rec in enumerate(good[4:], start=5):
        sink.add(rec, maybe_stored=False, origins=[i] * len(rec))
    with pytest.raises(RecordsRejected) as err:
        sink.flush()
    assert list(err.value.rejected) == [4]
    assert "252" in err.value.rejected[4] and "partitions" in err.value.rejected[4].lower()
    assert err.value.inserted == 35 and len(sink) == 0
    stored = {r[0] for r in conn.execute("SELECT message_id FROM t.samples")}
    assert stored == {s["message_id"] for rec in good for s in rec}
    for table in ("rollups_1m", "rollups_1h"):
        rollups_agree(conn, table)


def test_store_errors_are_raised_not_blamed_on_records(chdb_conn):
    from streams.storage.clickhouse import StoreRejectedEverything, classify

    sink = ClickHouseSink(chdb_conn.settings, connection=chdb_conn)
    for i in range(3):
        sink.add(_samples(2), maybe_stored=False, origins=[i, i])
    chdb_conn.execute("ALTER TABLE t.samples ADD CONSTRAINT nothing_passes CHECK volume < -1e300")
    # A constraint every row breaks: the error looks like data, but no record is to blame.
    with pytest.raises(StoreRejectedEverything):
        sink.flush()
    assert len(sink) == 6  # kept for a retry; nothing was dead-lettered

    class Code(Exception):
        pass
    from streams.storage.backend import StorageError
    assert classify(StorageError("Code: 60. DB::Exception: Table t.x does not exist")) == "store"
    assert classify(StorageError("Code: 241. DB::Exception: Memory limit exceeded")) == "transient"
    assert classify(StorageError("Code: 252. DB::Exception: Too many parts (300). Merges are slower")) == "transient"
    assert classify(StorageError("Code: 252. DB::Exception: Too many partitions for single INSERT block")) == "data"
    assert classify(StorageError("Code: 53. DB::Exception: Type mismatch")) == "data"
    assert classify(ConnectionRefusedError()) == "transient"
    assert classify(Code("a bug")) == "store"


def test_a_server_going_away_during_the_duplicate_lookup_is_retried(chdb_conn):
    """The lookup of already-stored samples follows the insert's policy: a connection error there (the
    server stopping between attempts) is retried like one from the INSERT, not raised at once."""
    from clickhouse_driver.errors import NetworkError

    class GoesAway:
        def __init__(self, conn, failures: int) -> None:
            self.conn, self.failures, self.database = conn, failures, conn.database

        def existing_keys(self, table, keys):
            if self.failures:
                self.failures -= 1
                raise NetworkError("Code: 210. Connection refused (127.0.0.1:9000)")
            return self.conn.existing_keys(table, keys)

        def __getattr__(self, name):
            return getattr(self.conn, name)

    flaky = GoesAway(chdb_conn, failures=2)
    sink = ClickHouseSink(chdb_conn.settings, retry_for=30, connection=flaky)
    sink.add(_samples(10), maybe_stored=True)
    assert sink.flush() == 10
    assert flaky.failures == 0
    [(n,)] = chdb_conn.execute("SELECT count() FROM t.samples")
    assert n == 10
