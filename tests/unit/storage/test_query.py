from __future__ import annotations

import pytest

from streams.storage.clickhouse import ClickHouseSink
from streams.storage.query import parse_time, samples, statistics
from tests.conftest import make_test_sample, recent_hour_us

T0 = recent_hour_us()  # µs, an hour boundary a day ago: inside the fixture's 7-day TTL on any date


@pytest.fixture
def stored(chdb_conn):
    sink = ClickHouseSink(chdb_conn.settings, connection=chdb_conn)
    rows = [make_test_sample(name="cpu_util", unit="%", resource_id=f"r{i % 2}", project_id=f"p{i % 3}",
                             volume=float(i), timestamp=T0 + i * 10_000_000) for i in range(30)]
    sink.add(rows)
    sink.add(rows[:5])  # redelivered: must not count
    sink.flush()
    return chdb_conn, rows


def test_statistics_over_everything(stored):
    conn, rows = stored
    [s] = statistics(conn, "cpu_util")
    vols = [r["volume"] for r in rows]
    assert (s.count, s.min, s.max, s.sum) == (30, min(vols), max(vols), sum(vols))
    assert s.avg == pytest.approx(sum(vols) / 30)
    assert s.duration == 290.0 and s.period == 0 and s.unit == "%"
    assert (s.period_start, s.period_end) == (T0, T0 + 290_000_000)


def test_statistics_periods_anchor_at_start_and_group(stored):
    conn, rows = stored
    stats = statistics(conn, "cpu_util", period=60, start_us=T0, groupby="resource_id")
    assert {s.groupby["resource_id"] for s in stats} == {"r0", "r1"}
    r0 = [s for s in stats if s.groupby["resource_id"] == "r0"]
    assert [s.period_start for s in r0] == [T0 + k * 60_000_000 for k in range(5)]
    assert all(s.period_end - s.period_start == 60_000_000 for s in r0)
    assert r0[0].count == 3 and r0[0].sum == 0 + 2 + 4
    assert sum(s.count for s in stats) == 30
    assert statistics(conn, "cpu_util", resource="r1", end_us=T0 + 20_000_000)[0].count == 1
    by_project = statistics(conn, "cpu_util", groupby="project_id")
    assert [(s.groupby["project_id"], s.count) for s in by_project] == [("p0", 10), ("p1", 10), ("p2", 10)]
    assert statistics(conn, "nothing", period=60) == []
    with pytest.raises(ValueError):
        statistics(conn, "cpu_util", groupby="user_id")


def test_samples_newest_first(stored):
    conn, rows = stored
    got = samples(conn, meter="cpu_util", limit=3)
    assert [g["message_id"] for g in got] == [r["message_id"] for r in rows[::-1][:3]]
    assert got[0]["resource_metadata"] == {"kind": "host"} and got[0]["timestamp"].endswith("+00:00")


def test_parse_time():
    fixed = 1_795_000_000_000_000  # parsing only: no rows, so a fixed date is safe here
    assert parse_time("1795000000") == fixed
    assert parse_time("2026-11-18T11:06:40") == parse_time("2026-11-18T11:06:40+00:00") == fixed
