"""Writes the dashboards in deploy/grafana/dashboards/ (run: python deploy/grafana/build.py).

Every panel is one SQL query for the official grafana-clickhouse-datasource
plugin (v4). Queries are portable between ClickHouse 18.16 and current
releases: time buckets use intDiv on epoch seconds ($__interval_s) rather
than $__timeInterval, which expands to toStartOfInterval (absent on 18.16).
tests/integration/test_grafana.py expands the macros and runs every panel.
"""

from __future__ import annotations

import json
from pathlib import Path

DS = {"type": "grafana-clickhouse-datasource", "uid": "streams-clickhouse"}
DB = "${database}"
OUT = Path(__file__).parent / "dashboards"


def value(var: str) -> str:
    """A single-value variable as a ClickHouse string: percent-encoded by Grafana, decoded by ClickHouse.

    Grafana's quoting formats (``singlequote``, ``sqlstring``) do not escape the
    backslash, which ClickHouse literals interpret; percent-encoding leaves only
    ``A-Z a-z 0-9 - _ . ~ %`` in the literal, so no value can end the string
    (see streams/storage/grafana.py).
    """
    return f"decodeURLComponent('${{{var}:percentencode}}')"


def bucket(col: str, minimum: int = 1) -> str:
    step = f"greatest($__interval_s, {minimum})" if minimum > 1 else "$__interval_s"
    return f"toDateTime(intDiv(toUInt32({col}), {step}) * {step}, 'UTC')"


def panel(title: str, sql: str, kind: str = "timeseries", unit: str | None = None) -> dict:
    """kind: timeseries | table | stat."""
    fmt = 0 if kind == "timeseries" else 1
    p = {
        "type": kind, "title": title, "datasource": DS,
        "targets": [{"refId": "A", "datasource": DS, "editorType": "sql", "format": fmt,
                     "queryType": "timeseries" if kind == "timeseries" else "table", "rawSql": sql.strip()}],
        "fieldConfig": {"defaults": {"unit": unit} if unit else {}, "overrides": []},
        "options": {},
    }
    return p


def variable(name: str, sql: str | None = None, value: str | None = None) -> dict:
    if sql is None:
        return {"type": "constant", "name": name, "query": value, "hide": 2,
                "current": {"text": value, "value": value}}
    return {"type": "query", "name": name, "label": name, "datasource": DS, "query": sql.strip(),
            "definition": sql.strip(), "refresh": 2, "sort": 1, "multi": False, "includeAll": False}


def dashboard(uid: str, title: str, panels: list[dict], variables: list[dict]) -> dict:
    for i, p in enumerate(panels):
        p["id"] = i + 1
        p["gridPos"] = {"x": (i % 2) * 12, "y": (i // 2) * 8, "w": 12, "h": 8}
    return {
        "uid": uid, "title": title, "tags": ["streams"], "timezone": "utc", "schemaVersion": 39,
        "editable": True, "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [variable("database", value="streams"), *variables]},
        "panels": panels,
    }


FLEET = dashboard("streams-fleet", "Fleet overview", [
    panel("Samples stored per meter", f"""
SELECT {bucket('bucket', 60)} AS time, name, countMerge(count) AS samples
FROM {DB}.rollups_1m
WHERE $__timeFilter(bucket)
GROUP BY time, name
ORDER BY time, name"""),
    panel("CPU utilisation per resource (avg)", f"""
SELECT {bucket('bucket', 60)} AS time, resource_id, avgMerge(avg) AS cpu_util
FROM {DB}.rollups_1m
WHERE name = 'cpu_util' AND $__timeFilter(bucket)
GROUP BY time, resource_id
ORDER BY time, resource_id""", unit="percent"),
    panel("Resources seen", f"""
SELECT count() AS resources
FROM (SELECT resource_id FROM {DB}.resources FINAL WHERE $__timeFilter(last_seen))""", kind="stat"),
    panel("Top 10 resources by memory", f"""
SELECT resource_id, argMaxMerge(last) AS memory_bytes
FROM {DB}.rollups_1m
WHERE name = 'memory.usage' AND $__timeFilter(bucket)
GROUP BY resource_id
ORDER BY memory_bytes DESC
LIMIT 10""", kind="table", unit="bytes"),
    panel("Meters", f"""
SELECT name, unit, uniqExact(resource_id) AS resources, countMerge(count) AS samples,
       minMerge(min) AS min, maxMerge(max) AS max
FROM {DB}.rollups_1h
WHERE $__timeFilter(bucket)
GROUP BY name, unit
ORDER BY name""", kind="table"),
    panel("Recent events (Ceilometer)", f"""
SELECT generated, event_type, traits.value[indexOf(traits.key, 'resource_id')] AS resource_id,
       arrayStringConcat(arrayMap((k, v) -> concat(k, '=', v), traits.key, traits.value), ', ') AS traits,
       message_id
FROM {DB}.events FINAL
WHERE $__timeFilter(generated)
ORDER BY generated_us DESC
LIMIT 200""", kind="table"),
], [])

RESOURCE = dashboard("streams-resource", "Resource drill-down", [
    panel("${meter} of ${resource}: min / avg / max", f"""
SELECT {bucket('bucket', 60)} AS time, minMerge(min) AS min, avgMerge(avg) AS avg, maxMerge(max) AS max
FROM {DB}.rollups_1m
WHERE name = {value('meter')} AND resource_id = {value('resource')} AND $__timeFilter(bucket)
GROUP BY time
ORDER BY time"""),
    panel("${meter} of ${resource}: statistics", f"""
SELECT countMerge(count) AS count, minMerge(min) AS min, maxMerge(max) AS max, avgMerge(avg) AS avg,
       sumMerge(sum) AS sum, argMaxMerge(last) AS last
FROM {DB}.rollups_1m
WHERE name = {value('meter')} AND resource_id = {value('resource')} AND $__timeFilter(bucket)""", kind="stat"),
    panel("Raw samples", f"""
SELECT timestamp, name, volume, unit, type, message_id
FROM {DB}.samples FINAL
WHERE name = {value('meter')} AND resource_id = {value('resource')} AND $__timeFilter(timestamp)
ORDER BY timestamp_us DESC
LIMIT 200""", kind="table"),
    panel("Resource metadata", f"""
SELECT key, value, project_id, user_id, source, last_seen
FROM {DB}.resources FINAL
ARRAY JOIN metadata_keys AS key, metadata_values AS value
WHERE resource_id = {value('resource')}
ORDER BY key""", kind="table"),
], [
    variable("meter", f"SELECT DISTINCT name FROM {DB}.rollups_1h ORDER BY name"),
    variable("project", f"SELECT DISTINCT project_id FROM {DB}.resources FINAL ORDER BY project_id"),
    variable("resource", f"SELECT resource_id FROM {DB}.resources FINAL WHERE project_id = {value('project')} "
                         "ORDER BY resource_id"),
])

ALARMS = dashboard("streams-alarms", "Alarms", [
    panel("Current alarm states", f"""
SELECT alarm_id, argMax(alarm_name, timestamp_us) AS alarm_name, argMax(state, timestamp_us) AS state,
       argMax(severity, timestamp_us) AS severity, argMax(resource_id, timestamp_us) AS resource_id,
       toDateTime(intDiv(max(timestamp_us), 1000000), 'UTC') AS changed_at
FROM {DB}.alarm_history FINAL
GROUP BY alarm_id
ORDER BY state = 'alarm' DESC, severity, alarm_name""", kind="table"),
    panel("Alarm history", f"""
SELECT timestamp, alarm_name, previous_state, state, severity, resource_id, reason, reason_data
FROM {DB}.alarm_history FINAL
WHERE $__timeFilter(timestamp)
ORDER BY timestamp_us DESC
LIMIT 500""", kind="table"),
    panel("Transitions per interval", f"""
SELECT {bucket('timestamp')} AS time, state, count() AS transitions
FROM {DB}.alarm_history FINAL
WHERE $__timeFilter(timestamp)
GROUP BY time, state
ORDER BY time, state"""),
], [])

HEALTH = dashboard("streams-pipeline-health", "Pipeline health", [
    panel("Ingest rate (samples/s stored)", f"""
SELECT {bucket('flushed_at')} AS time, sum(rows) / $__interval_s AS samples_per_s
FROM {DB}.sink_flushes
WHERE $__timeFilter(flushed_at)
GROUP BY time
ORDER BY time""", unit="ops"),
    panel("Dead-letter rate by reason (records/s)", f"""
SELECT {bucket('timestamp')} AS time, concat(stage, '/', reason) AS reason, count() / $__interval_s AS per_s
FROM {DB}.dead_letters
WHERE $__timeFilter(timestamp)
GROUP BY time, reason
ORDER BY time, reason""", unit="ops"),
    panel("Sink flush latency (s)", f"""
SELECT {bucket('flushed_at')} AS time, avg(seconds) AS avg_s, max(seconds) AS max_s
FROM {DB}.sink_flushes
WHERE $__timeFilter(flushed_at)
GROUP BY time
ORDER BY time""", unit="s"),
    panel("Freshness: newest sample age at flush (s)", f"""
SELECT {bucket('flushed_at')} AS time, max(lag_seconds) AS lag_s
FROM {DB}.sink_flushes
WHERE $__timeFilter(flushed_at)
GROUP BY time
ORDER BY time""", unit="s"),
    panel("Redelivered samples skipped", f"""
SELECT {bucket('flushed_at')} AS time, sum(duplicates) AS duplicates
FROM {DB}.sink_flushes
WHERE $__timeFilter(flushed_at)
GROUP BY time
ORDER BY time"""),
], [])


if __name__ == "__main__":
    for name, d in (("fleet-overview", FLEET), ("resource", RESOURCE), ("alarms", ALARMS),
                    ("pipeline-health", HEALTH)):
        (OUT / f"{name}.json").write_text(json.dumps(d, indent=2) + "\n")
        print(f"wrote {OUT / name}.json")
