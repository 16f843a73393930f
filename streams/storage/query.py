"""Queries over stored samples: Ceilometer's statistics and sample listing.

Both read ``samples FINAL``, so a sample stored twice (before a merge) counts
once. Times in and out are microseconds since the epoch, UTC; the CLI
(``streams query``) converts to ISO 8601.

Statistics follow Ceilometer's ``/v2/meters/<meter>/statistics``: per period
and group, ``min``, ``max``, ``avg``, ``sum``, ``count``, ``duration_start``
and ``duration_end`` (first and last sample in the period), ``duration``
(their distance, seconds), ``period`` (seconds, 0 = one period over
everything), ``period_start``/``period_end``, ``unit`` and ``groupby``.
Periods are anchored at ``start`` when given, else at the first matching
sample, as Ceilometer's storage drivers do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from streams.storage.backend import Connection
from streams.storage.schema import quote_ident

GROUPBY = {"resource_id": "resource_id", "project_id": "ifNull(project_id, '')"}
"""Allowed ``groupby`` fields -> SQL expression."""


def iso(us: int | None) -> str | None:
    """Microseconds since the epoch -> ISO 8601 UTC (``2026-11-22T03:47:12.123456+00:00``)."""
    return None if us is None else datetime.fromtimestamp(us / 1e6, UTC).isoformat()


def parse_time(text: str) -> int:
    """ISO 8601 (naive means UTC) or an integer of epoch seconds -> microseconds since the epoch.

    Raises:
        ValueError: neither form.
    """
    if text.lstrip("-").isdigit():
        return int(text) * 1_000_000
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1_000_000)


@dataclass(frozen=True)
class Statistics:
    """One period of one group (Ceilometer's ``Statistics``); times in microseconds, duration in seconds."""

    min: float
    max: float
    avg: float
    sum: float
    count: int
    duration: float
    duration_start: int
    duration_end: int
    period: int
    period_start: int
    period_end: int
    unit: str
    groupby: dict[str, str] | None

    def as_json(self) -> dict:
        """Ceilometer's JSON shape: times as ISO 8601 strings."""
        d = asdict(self)
        for k in ("duration_start", "duration_end", "period_start", "period_end"):
            d[k] = iso(d[k])
        return d


def _filters(meter: str | None, resource: str | None, project: str | None,
             start_us: int | None, end_us: int | None) -> tuple[str, dict]:
    where, params = [], {}
    for col, key, val in (("name", "meter", meter), ("resource_id", "resource", resource),
                          ("project_id", "project", project)):
        if val is not None:
            where.append(f"{col} = %({key})s")
            params[key] = val
    if start_us is not None:
        where.append("timestamp_us >= %(start)s")
        params["start"] = int(start_us)
    if end_us is not None:
        where.append("timestamp_us < %(end)s")
        params["end"] = int(end_us)
    return (" WHERE " + " AND ".join(where)) if where else "", params


def statistics(conn: Connection, meter: str, resource: str | None = None, project: str | None = None,
               period: int | None = None, start_us: int | None = None, end_us: int | None = None,
               groupby: str | None = None) -> list[Statistics]:
    """Ceilometer's statistics of ``meter``, ordered by group then period.

    Args:
        period: seconds per period (> 0), or None for one period over everything.
        groupby: ``resource_id`` or ``project_id``.

    Raises:
        ValueError: unknown ``groupby`` or a non-positive ``period``.
    """
    if groupby is not None and groupby not in GROUPBY:
        raise ValueError(f"groupby must be one of {', '.join(GROUPBY)}, not {groupby!r}")
    if period is not None and period <= 0:
        raise ValueError("period must be a positive number of seconds")
    table = f"{quote_ident(conn.database)}.samples"
    where, params = _filters(meter, resource, project, start_us, end_us)
    anchor = start_us
    if period and anchor is None:
        [(first, n)] = conn.execute(f"SELECT min(timestamp_us), count() FROM {table} FINAL{where}", params)
        if not n:
            return []
        anchor = first
    params["anchor"], params["period_us"] = int(anchor or 0), int((period or 0) * 1_000_000)
    idx = "intDiv(timestamp_us - %(anchor)s, %(period_us)s)" if period else "toInt64(0)"
    group = GROUPBY[groupby] if groupby else "''"
    rows = conn.execute(f"""
SELECT {group} AS g, {idx} AS idx, min(volume), max(volume), avg(volume), sum(volume), count(),
       min(timestamp_us), max(timestamp_us), any(unit)
FROM {table} FINAL{where}
GROUP BY g, idx
ORDER BY g, idx""", params)
    out = []
    for g, i, mn, mx, avg, sm, n, first, last, unit in rows:
        if period:
            pstart = params["anchor"] + i * params["period_us"]
            pend = pstart + params["period_us"]
        else:
            pstart, pend = first, last
        out.append(Statistics(mn, mx, avg, sm, n, (last - first) / 1e6, first, last, period or 0, pstart, pend,
                              unit, {groupby: g} if groupby else None))
    return out


def samples(conn: Connection, meter: str | None = None, resource: str | None = None, project: str | None = None,
            start_us: int | None = None, end_us: int | None = None, limit: int = 100) -> list[dict]:
    """Raw samples, newest first (Ceilometer's ``/v2/samples``): dicts with ISO ``timestamp`` and a
    ``resource_metadata`` dict."""
    table = f"{quote_ident(conn.database)}.samples"
    where, params = _filters(meter, resource, project, start_us, end_us)
    params["limit"] = int(limit)
    rows = conn.execute(f"""
SELECT message_id, name, type, unit, volume, user_id, project_id, resource_id, timestamp_us, source,
       resource_metadata.key, resource_metadata.value
FROM {table} FINAL{where}
ORDER BY timestamp_us DESC, message_id
LIMIT %(limit)s""", params)
    keys = ("message_id", "meter", "type", "unit", "volume", "user_id", "project_id", "resource_id",
            "timestamp", "source")
    out = []
    for r in rows:
        d = dict(zip(keys, r[:10], strict=True))
        d["timestamp"] = iso(d["timestamp"])
        d["resource_metadata"] = dict(zip(r[10], r[11], strict=True))
        out.append(d)
    return out
