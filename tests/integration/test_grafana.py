"""Every Grafana panel's SQL, macros expanded as the plugin does, runs on the real server and on chdb.

On the 18.16 server the panels run as the read-only ``grafana`` user of the
generated users.xml, so the dashboards need nothing that user cannot do.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from streams.bridge.ceilometer import Event
from streams.bridge.events import EventStore, SourcedEvent
from streams.config import ClickHouseSettings
from streams.storage.backend import Connection, EmbeddedConnection, ServerConnection, close_chdb
from streams.storage.clickhouse import ClickHouseSink
from streams.storage.grafana import expand, panels, variable_queries
from streams.storage.health import DeadLetter, record_dead_letters
from streams.storage.migrations import apply
from tests.conftest import make_test_sample

DASHBOARDS = Path(__file__).parents[2] / "deploy" / "grafana" / "dashboards"

EXPECTED_COLUMNS = {
    "Samples stored per meter": ["time", "name", "samples"],
    "CPU utilisation per resource (avg)": ["time", "resource_id", "cpu_util"],
    "Resources seen": ["resources"],
    "Top 10 resources by memory": ["resource_id", "memory_bytes"],
    "Meters": ["name", "unit", "resources", "samples", "min", "max"],
    "Recent events (Ceilometer)": ["generated", "event_type", "resource_id", "traits", "message_id"],
    "${meter} of ${resource}: min / avg / max": ["time", "min", "avg", "max"],
    "${meter} of ${resource}: statistics": ["count", "min", "max", "avg", "sum", "last"],
    "Raw samples": ["timestamp", "name", "volume", "unit", "type", "message_id"],
    "Resource metadata": ["key", "value", "project_id", "user_id", "source", "last_seen"],
    "Current alarm states": ["alarm_id", "alarm_name", "state", "severity", "resource_id", "changed_at"],
    "Alarm history": ["timestamp", "alarm_name", "previous_state", "state", "severity", "resource_id", "reason",
                      "reason_data"],
    "Transitions per interval": ["time", "state", "transitions"],
    "Ingest rate (samples/s stored)": ["time", "samples_per_s"],
    "Dead-letter rate by reason (records/s)": ["time", "reason", "per_s"],
    "Sink flush latency (s)": ["time", "avg_s", "max_s"],
    "Freshness: newest sample age at flush (s)": ["time", "lag_s"],
    "Redelivered samples skipped": ["time", "duplicates"],
}


def seed(conn: Connection, settings: ClickHouseSettings) -> None:
    """Migrate and store an hour of samples, alarm transitions and dead letters."""
    apply(conn)
    now_us = time.time_ns() // 1000
    sink = ClickHouseSink(settings, connection=conn)
    samples = [make_test_sample(name=name, unit=unit, resource_id=f"host-{r}", volume=float(i % 97 + r),
                                timestamp=now_us - i * 30_000_000, resource_metadata={"kind": "host", "rack": str(r)})
               for i in range(120) for r in range(3)
               for name, unit in (("cpu_util", "%"), ("memory.usage", "B"))]
    sink.add(samples)
    sink.flush()
    sink.add(samples[:10])  # a redelivery, so "duplicates" has something to show
    sink.flush()
    db = conn.database
    transitions = [("a1", "cpu high", "host-0", "ok", "alarm", "critical"),
                   ("a1", "cpu high", "host-0", "alarm", "ok", "critical"),
                   ("a2", "memory", "host-1", "insufficient data", "alarm", "moderate")]
    cols = ("event_id", "alarm_id", "alarm_name", "type", "severity", "project_id", "resource_id",
            "previous_state", "state", "reason", "reason_data", "timestamp_us")
    rows = [(str(uuid.uuid4()), a, n, "threshold", sev, "p-1", r, prev, cur, f"{n}: {prev} -> {cur}",
             json.dumps({"type": "threshold", "disposition": "outside", "most_recent": 93.5}), now_us - k * 60_000_000)
            for k, (a, n, r, prev, cur, sev) in enumerate(transitions)]
    conn.insert_columns(f"{db}.alarm_history", cols, [list(c) for c in zip(*rows, strict=True)])
    record_dead_letters(conn, [DeadLetter("verify", "bad_signature", "hmac mismatch", "samples", 0, 17, b"evil"),
                               DeadLetter("decode", "not_single_object", "", "samples", 1, 3)])
    EventStore(conn).store([SourcedEvent(Event(str(uuid.uuid4()), "compute.instance.create.end", now_us - k * 60_000_000,
                                               (("resource_id", 1, "host-0"), ("memory_mb", 2, 2048))),
                                         "event.sample", 0, k) for k in range(3)])


def run_dashboards(conn: Connection, database: str) -> dict[str, int]:
    """Run every panel; return rows per panel title. Fails on missing rows or wrong columns."""
    start, end = datetime.now(UTC) - timedelta(hours=6), datetime.now(UTC) + timedelta(minutes=5)
    seen = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        dash = json.loads(path.read_text())
        variables = {"database": database}
        for name, sql in variable_queries(dash):  # in order: later variables use earlier ones
            _, rows = conn.execute_with_names(expand(sql, start, end, 60, variables))
            values = [r[0] for r in rows]
            assert values, f"{path.name}: variable {name} has no values"
            variables[name] = "cpu_util" if "cpu_util" in values else values[0]
        for title, kind, sql in panels(dash):
            for interval in (60, 300):
                names, rows = conn.execute_with_names(expand(sql, start, end, interval, variables))
                assert rows, f"{path.name}: panel {title!r} returned no rows"
                assert names == EXPECTED_COLUMNS[title], f"{path.name}: {title!r} columns {names}"
                if kind == "timeseries":  # Grafana needs a time column first
                    expanded = expand(sql, start, end, interval, variables)
                    [(typ,)] = conn.execute(f"SELECT toTypeName({names[0]}) FROM ({expanded}) LIMIT 1")
                    assert typ.startswith("DateTime"), f"{title!r}: first column is {typ}"
            seen[title] = len(rows)
    assert set(seen) == set(EXPECTED_COLUMNS)
    return seen


def test_every_panel_returns_rows_on_the_server_as_the_readonly_user(pipeline):
    seed(ServerConnection(pipeline.settings.clickhouse.url), pipeline.settings.clickhouse)
    host, port = pipeline.settings.clickhouse.client_kwargs()["host"], pipeline.settings.clickhouse.client_kwargs()["port"]
    grafana = ServerConnection(f"clickhouse://grafana@{host}:{port}/{pipeline.db}")
    try:
        seen = run_dashboards(grafana, pipeline.db)
        assert seen["Resources seen"] == 1
        with pytest.raises(Exception, match="readonly|Cannot execute query in readonly mode"):
            grafana.execute(f"INSERT INTO {pipeline.db}.dead_letters (stage) SELECT 'x'")
    finally:
        grafana.close()


def test_every_panel_returns_rows_on_chdb(tmp_path):
    url = f"chdb://{tmp_path / 'chdb'}?database=g{uuid.uuid4().hex[:8]}"
    settings = ClickHouseSettings(url=url)
    conn = EmbeddedConnection(url)
    try:
        seed(conn, settings)
        run_dashboards(conn, settings.database)
        # The plugin's own $__timeInterval works on current ClickHouse (not on 18.16).
        [(n,)] = conn.execute(expand(f"SELECT count() FROM (SELECT $__timeInterval(timestamp) AS t FROM "
                                     f"{settings.database}.samples GROUP BY t)",
                                     datetime.now(UTC), datetime.now(UTC), 60))
        assert n >= 60
    finally:
        close_chdb()


def rows_of(conn: Connection, sql: str) -> list[tuple]:
    """Rows of ``sql`` sent as is (``execute`` would %-format it, and percent-encoded values hold '%')."""
    return conn.execute_with_names(sql)[1]


EVIL_RESOURCE = "evil'\\x2d\\' OR 1=1 --"  # a quote, a systemd-style \x2d, and a backslash before a quote
EVIL_PROJECT = "p'q\\"


def test_a_resource_id_with_quotes_and_backslashes_works_end_to_end_and_cannot_inject(pipeline):
    """The resource dashboard, with Grafana's exact variable expansion, selects exactly the rows of a resource
    whose id would break (or inject into) a quoted literal; a raw '${resource}' fails, and Grafana's
    singlequote format would run injected SQL on ClickHouse (why the dashboards percent-encode)."""
    conn = ServerConnection(pipeline.settings.clickhouse.url)
    try:
        seed(conn, pipeline.settings.clickhouse)
        now_us = time.time_ns() // 1000
        sink = ClickHouseSink(pipeline.settings.clickhouse, connection=conn)
        evil = [make_test_sample(name="cpu_util", unit="%", resource_id=EVIL_RESOURCE, project_id=EVIL_PROJECT,
                                 volume=float(i), timestamp=now_us - i * 30_000_000,
                                 resource_metadata={"kind": "cgroup", "path": EVIL_RESOURCE})
                for i in range(7)]
        sink.add(evil)
        sink.flush()
        start, end = datetime.now(UTC) - timedelta(hours=6), datetime.now(UTC) + timedelta(minutes=5)
        dash = json.loads((DASHBOARDS / "resource.json").read_text())
        variables = {"database": pipeline.db, "meter": "cpu_util", "project": EVIL_PROJECT}
        [(_, resource_query)] = [(n, q) for n, q in variable_queries(dash) if n == "resource"]
        assert [r[0] for r in rows_of(conn, expand(resource_query, start, end, 60, variables))] == [EVIL_RESOURCE]
        variables["resource"] = EVIL_RESOURCE
        by_title = {title: sql for title, _kind, sql in panels(dash)}
        rows = rows_of(conn, expand(by_title["Raw samples"], start, end, 60, variables))
        assert sorted(r[2] for r in rows) == [float(i) for i in range(7)]  # its 7 samples, nobody else's
        [(count, lo, hi, *_)] = rows_of(conn, expand(by_title["${meter} of ${resource}: statistics"], start, end, 60,
                                                     variables))
        assert (count, lo, hi) == (7, 0.0, 6.0)
        metadata = dict((k, v) for k, v, *_ in rows_of(conn, expand(by_title["Resource metadata"], start, end, 60,
                                                                    variables)))
        assert metadata["path"] == EVIL_RESOURCE
        assert rows_of(conn, expand(by_title["${meter} of ${resource}: min / avg / max"], start, end, 60, variables))

        # A raw '${resource}' (what the dashboards had) breaks on this id: the test would fail.
        raw = by_title["Raw samples"].replace("decodeURLComponent('${resource:percentencode}')", "'${resource}'")
        with pytest.raises(Exception, match="Syntax error"):
            rows_of(conn, expand(raw, start, end, 60, variables))
        # Grafana's singlequote escapes the quote but not the backslash: ClickHouse then runs injected SQL.
        injected = expand(f"SELECT count() FROM {pipeline.db}.samples WHERE resource_id = ${{resource:singlequote}}",
                          start, end, 60, {"resource": "x\\' OR 1=1 --"})
        [(n,)] = rows_of(conn, injected + "\n")
        assert n > 7  # every row of the table, not the zero rows of resource "x\' OR 1=1 --"
    finally:
        conn.close()
