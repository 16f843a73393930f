"""Counting for the fault suite: expected alarm transitions (the pure evaluator run offline over the
samples the generator produced), and what the real stores hold (ClickHouse, the dead-letter topics,
the alarms topic, the webhook receiver), per phase; then the table.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from streams.alarms.evaluator import AlarmEvent, AlarmSet, advance, observe
from streams.alarms.model import AlarmDefinition
from streams.codec import Sample

# --------------------------------------------------------------------------- expected transitions


def expected_events(definitions: Iterable[AlarmDefinition], records: Iterable[list[Sample]], grace_us: int,
                    switch: tuple[int, AlarmDefinition] | None = None) -> list[AlarmEvent]:
    """Run :mod:`streams.alarms.evaluator` over ``records`` (each the samples of one resource from one
    poll, in production order) as the processor does per record: observe, then advance to the record's
    newest sample time minus the grace.

    Args:
        switch: (boundary T in µs, new definition): boundaries from T on are evaluated with the new
            definition of that alarm (a definition updated while the processor runs).

    Returns:
        every event (state changes and repeats), per resource in boundary order.
    """
    old = AlarmSet(definitions)
    new = AlarmSet([*(a for a in old.by_id.values() if not switch or a.alarm_id != switch[1].alarm_id),
                    switch[1]]) if switch else old
    states: dict[str, dict[str, Any]] = {}
    events: list[AlarmEvent] = []
    for samples in records:
        rid = samples[0]["resource_id"]
        state = states.setdefault(rid, {})
        if not observe(old, state, samples):
            continue
        clock = max(s["timestamp"] for s in samples)
        if switch:
            events += advance(old, state, rid, min(clock, switch[0] - 1 + grace_us), grace_us)
        events += advance(new, state, rid, clock, grace_us)
    return events


def hook_of(url: str, base: str) -> str | None:
    """The receiver's hook name of an action URL, or None for other actions."""
    return url.rsplit("/", 1)[1] if url.startswith(base) else None


# --------------------------------------------------------------------------- one row


@dataclass
class Row:
    """One phase of the run (one fault) and what was counted for it."""

    name: str
    fault: str
    start: float
    end: float = 0.0
    recovery_s: float | None = None
    recovery_what: str = ""
    notes: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    # samples
    produced: int = 0
    stored: int = 0
    dead_lettered: int = 0
    lost: int = 0
    duplicated: int = 0
    rollup_extra: int = 0
    # alarm transitions
    transitions_expected: int = 0
    transitions_seen: int = 0
    transitions_missing: list[str] = field(default_factory=list)
    transitions_unexpected: list[str] = field(default_factory=list)
    history_duplicated: int = 0
    topic_duplicated: int = 0
    # webhooks
    webhooks_expected: int = 0
    webhooks_delivered: int = 0
    webhooks_dead_lettered: int = 0
    webhooks_lost: int = 0
    webhooks_redelivered: int = 0
    webhooks_unexpected: int = 0
    # processes
    exits: dict[str, list[int]] = field(default_factory=dict)  # unplanned exit statuses per process
    peak_rss_mib: dict[str, float] = field(default_factory=dict)

    def holds(self, t: float) -> bool:
        return self.start <= t < self.end

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["transitions_missing"] = self.transitions_missing[:20]
        d["transitions_unexpected"] = self.transitions_unexpected[:20]
        return d


def row_of(rows: list[Row], t: float) -> Row | None:
    return next((r for r in rows if r.holds(t)), None)


# --------------------------------------------------------------------------- samples


def count_samples(rows: list[Row], ch, db: str, gen, derived: str, dlq_seqs: set[int]) -> dict:
    """Fill the samples columns of ``rows`` from ``<db>.samples`` and the 1-minute rollups (every meter
    but the ``derived`` one).

    stored = distinct message ids of the phase's project; duplicated = count() - uniqExact(message_id)
    without FINAL; rollup_extra = 1-minute rollup count - distinct stored (a sample counted twice by
    the views); lost = acknowledged ids neither stored nor dead-lettered. Returns global figures.
    """
    from tests.chaos.harness import project, seq_of

    stored = bytearray(len(gen.acked))
    foreign = 0
    for row in rows:
        p = project(row.name)
        ids = ch.execute(f"SELECT message_id, count() FROM {db}.samples WHERE project_id = %(p)s "
                         "AND name != %(d)s GROUP BY message_id", {"p": p, "d": derived})
        row.produced = gen.acked_n[p]
        row.stored = len(ids)
        row.duplicated = sum(c - 1 for _, c in ids)
        for mid, _ in ids:
            s = seq_of(mid)
            if 0 <= s < len(stored) and gen.is_acked(s):
                stored[s] = 1
            else:
                foreign += 1
        [(rolled,)] = ch.execute(f"SELECT countMerge(count) FROM {db}.rollups_1m WHERE project_id = %(p)s "
                                 "AND name != %(d)s", {"p": p, "d": derived})
        row.rollup_extra = int(rolled) - row.stored
    index = {project(r.name): r for r in rows}
    lost_ids: dict[str, list[int]] = {}
    dlq_by_row: Counter[str] = Counter()
    for seq in range(gen.total):
        if not gen.acked[seq]:
            continue
        row = index.get(gen.projects[gen.phase_of[seq]])
        if row is None:
            continue
        if seq in dlq_seqs:
            dlq_by_row[row.name] += 1
        elif not stored[seq]:
            lost_ids.setdefault(row.name, []).append(seq)
    for row in rows:
        row.dead_lettered += dlq_by_row[row.name]
        row.lost = len(lost_ids.get(row.name, []))
        if row.lost:
            row.notes.append(f"lost sample seqs (first 5): {lost_ids[row.name][:5]}")
    return {"foreign_rows": foreign, "lost": sum(len(v) for v in lost_ids.values())}


# --------------------------------------------------------------------------- alarms and webhooks


def count_alarms(rows: list[Row], expected: list[AlarmEvent], history: list[tuple], topic_events: list[dict],
                 deliveries: list[dict], dead_letters: list[tuple[str, str]], base_url: str) -> None:
    """Fill the alarm and webhook columns of ``rows``.

    Args:
        expected: the offline events (transitions and repeats).
        history: ``alarm_history`` rows (event_id, alarm_id, resource_id, previous, state, timestamp_us),
            read without FINAL.
        topic_events: decoded records of the alarms topic.
        deliveries: the receiver's deliveries (event_id, hook, arrival time t, ...); a row's
            redeliveries are those arriving during it (the other columns go by event time).
        dead_letters: (event_id, hook) of the alarms dead-letter topic.
    """
    expected_by_id = {e.event_id: e for e in expected}
    history_count = Counter(h[0] for h in history)
    history_time = {h[0]: h[5] for h in history}
    topic_count = Counter(e["event_id"] for e in topic_events)
    received = Counter((d["event_id"], d["hook"]) for d in deliveries)
    again: list[float] = []  # arrival times of deliveries whose event id the hook had received before
    first_seen: set[tuple[str, str]] = set()
    for d in sorted(deliveries, key=lambda d: d["t"]):
        key = (d["event_id"], d["hook"])
        if key in first_seen:
            again.append(d["t"])
        first_seen.add(key)
    dead = set(dead_letters)
    for row in rows:
        def here(t_us: int, row: Row = row) -> bool:
            return row.holds(t_us / 1e6)

        transitions = {e.event_id for e in expected if e.transition and here(e.timestamp_us)}
        seen = {i for i, t in history_time.items() if here(t)}
        row.transitions_expected = len(transitions)
        row.transitions_seen = len(transitions & seen & set(topic_count))
        row.transitions_missing = sorted(_describe(expected_by_id[i]) for i in transitions - seen)
        row.transitions_unexpected = sorted(i for i in seen - transitions)
        row.history_duplicated = sum(history_count[i] - 1 for i in seen)
        row.topic_duplicated = sum(topic_count[i] - 1 for i in transitions)
        pairs = {(e.event_id, h) for e in expected if here(e.timestamp_us)
                 for h in (hook_of(u, base_url) for u in e.actions) if h}
        row.webhooks_expected = len(pairs)
        delivered = {p for p in pairs if received[p]}
        row.webhooks_delivered = len(delivered)
        row.webhooks_dead_lettered = len((pairs - delivered) & dead)
        row.webhooks_lost = len(pairs) - row.webhooks_delivered - row.webhooks_dead_lettered
        row.webhooks_redelivered = sum(1 for t in again if row.holds(t))  # by arrival, unlike the rest
        row.webhooks_unexpected = sum(1 for (i, h), n in received.items()
                                      if (i, h) not in pairs and i in history_time and here(history_time[i]))


def _describe(e: AlarmEvent) -> str:
    return f"{e.alarm_id}/{e.resource_id}@{e.timestamp_us // 1_000_000}:{e.previous}->{e.current}"


# --------------------------------------------------------------------------- the table

COLUMNS = [
    ("fault", 34), ("produced", 9), ("stored", 9), ("dlq", 5), ("lost", 4), ("dup", 4),
    ("tr.exp", 6), ("tr.seen", 7), ("tr.dup", 6), ("wh.exp", 6), ("wh.deliv", 8), ("wh.dlq", 6),
    ("wh.redeliv", 10), ("recover", 10),
]


def table(rows: list[Row]) -> str:
    """The table as text (one line per fault)."""
    lines = [" ".join(f"{h:>{w}}" if i else f"{h:<{w}}" for i, (h, w) in enumerate(COLUMNS))]
    lines.append("-" * len(lines[0]))
    for r in rows:
        rec = "-" if r.recovery_s is None else f"{r.recovery_s:.1f} s"
        cells = [r.fault, r.produced, r.stored, r.dead_lettered, r.lost, r.duplicated + max(0, r.rollup_extra),
                 r.transitions_expected, r.transitions_seen, f"{r.history_duplicated}/{r.topic_duplicated}",
                 r.webhooks_expected, r.webhooks_delivered, r.webhooks_dead_lettered, r.webhooks_redelivered, rec]
        lines.append(" ".join(f"{str(c):>{w}}" if i else f"{str(c):<{w}}"
                              for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS, strict=True))))
    return "\n".join(lines)


def markdown(rows: list[Row]) -> str:
    """The table as Markdown, for the README."""
    head = ["fault", "samples produced", "stored", "dead-lettered", "lost", "duplicated",
            "transitions expected", "seen", "duplicated (history / topic)", "webhooks expected", "delivered",
            "dead-lettered", "redelivered (same event id)", "time to recover"]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        rec = "-" if r.recovery_s is None else f"{r.recovery_s:.1f} s"
        cells = [r.fault, f"{r.produced:,}", f"{r.stored:,}", r.dead_lettered, r.lost,
                 r.duplicated + max(0, r.rollup_extra), r.transitions_expected, r.transitions_seen,
                 f"{r.history_duplicated} / {r.topic_duplicated}", r.webhooks_expected, r.webhooks_delivered,
                 r.webhooks_dead_lettered, r.webhooks_redelivered, rec]
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(out)


def dump(path, rows: list[Row], extra: dict[str, Any]) -> None:
    path.write_text(json.dumps({"rows": [r.to_json() for r in rows], **extra}, indent=2, default=str))
