"""Streaming alarm evaluation: event-time tumbling windows, Aodh's threshold and composite rules.

Pure logic, no I/O: everything lives in a JSON-able dict per resource (the
processor keeps it in the resource's Faust table state, so it is committed
with the batch and recovered after a restart or rebalance).

State shapes (times are integer microseconds since the epoch, UTC)::

    resource_state["alarms"] = {
        alarm_id: {
            "state": "ok" | "alarm" | "insufficient data",
            "until": T,            # last evaluated boundary (a multiple of the alarm's tick)
            "fp": "...",           # which rule shapes the windows belong to
            "project_id": ..., "user_id": ...,   # of the resource's latest matching sample
            "rules": [ {window_start_us (str): [count, sum, min, max, last, last_ts]}, ... ],  # per leaf
            "late": n,             # samples dropped because their window had been evaluated
            "override": T,         # optional: timestamp of the alarm's state_override last adopted
        }, ...}

Windows: leaf rule ``r`` puts a sample stamped ``ts`` in the window starting
at ``ts - ts % r.period`` (tumbling, aligned to the epoch). The alarm is
evaluated at every boundary ``T`` (multiple of its tick: the shortest period
of its rules) once the clock passes ``T + grace``; a window ending at or
before an evaluated boundary is closed, and later samples for it are
counted in ``late`` and ignored. The clock is the resource's newest sample
time when samples arrive, and wall-clock time from the processor's timer, so
a resource that stops reporting still reaches insufficient data.

Aodh semantics (``aodh/evaluator/threshold.py``, ``composite.py``,
``__init__.py``), evaluated at each boundary ``T`` as Aodh evaluates at ``now``:

* Statistics: one value per window with data among the ``evaluation_periods
  + 1`` windows before ``T`` (Aodh's ``look_back = 1``), the last
  ``evaluation_periods`` of them. Fewer -> insufficient data.
* All breach -> alarm; none -> ok; mixed -> the state is kept, except from
  insufficient data, where it becomes the newest window's verdict (Aodh's
  trending state).
* A notification is emitted on every state change; with ``repeat_actions``
  also on every evaluation that keeps the state (Aodh's ``_refresh``).
  Reason texts and ``reason_data`` keys are Aodh's (plus ``statistics``,
  ``threshold``, ... for threshold rules).
* Composite: leaf rules are combined with Aodh's two passes (raw states,
  then trending states mapped as Aodh maps them); insufficient data is
  entered once, never repeated.
* Outside every time constraint the alarm is not evaluated (the window
  still collects samples); disabled alarms are not evaluated.
* A state set through the API (``AlarmDefinition.state_override``, Aodh's
  ``PUT .../state``) is adopted by every resource state of the alarm that
  existed when it was set, once (at the next :func:`advance`, without an
  event: Aodh notifies no action for it either); boundaries up to the
  override's time are then skipped, so every later transition is stamped
  after it. A resource state created after the override starts as usual.
"""

from __future__ import annotations

import json
import math
import operator
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from streams.alarms.model import ALARM, OK, UNKNOWN, AlarmDefinition, AndRule, OrRule, ThresholdRule

STATE_KEY = "alarms"
"""Key of the alarm states in a resource's state dict."""

COMPARATORS = {"gt": operator.gt, "lt": operator.lt, "ge": operator.ge,
               "le": operator.le, "eq": operator.eq, "ne": operator.ne}
"""Aodh's COMPARATORS."""

MAX_CATCH_UP = 1000
"""Most boundaries evaluated in one call; after a longer pause only the last ones that can still see data are."""

MAX_OVERRIDE_LEAD_US = 3600 * 1_000_000
"""Furthest a state override's time may be ahead of a resource's clock (a wrong API clock): 1 h."""

_EVENT_NS = uuid.UUID("6f0b8a56-8c57-4d0b-9c3a-0b6f2f1a7a11")


@dataclass
class AlarmEvent:
    """One evaluation that changed the state or re-notifies it (``repeat_actions``).

    ``transition`` is True for a state change (recorded in ``alarm_history``);
    False for a repeat notification. ``event_id`` is deterministic (uuid5 of
    alarm, resource, boundary and states), so a replay produces the same id.
    ``timestamp_us`` is the evaluated boundary ``T`` (event time).
    """

    event_id: str
    alarm_id: str
    alarm_name: str
    type: str
    severity: str
    resource_id: str
    project_id: str | None
    user_id: str | None
    previous: str
    current: str
    transition: bool
    reason: str
    reason_data: dict[str, Any]
    actions: list[str]
    timestamp_us: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """The ``streams.AlarmEvent`` Avro record (``reason_data`` as JSON text)."""
        d = asdict(self)
        d.pop("extra")
        d["reason_data"] = json.dumps(self.reason_data, sort_keys=True, default=_json_default)
        d["timestamp"] = d.pop("timestamp_us")
        return d


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    raise TypeError(type(o).__name__)


class AlarmSet:
    """An immutable snapshot of alarm definitions, indexed by meter name.

    Args:
        alarms: the definitions (disabled ones included: they keep their state
            but are not evaluated).
    """

    def __init__(self, alarms: Iterable[AlarmDefinition] = ()) -> None:
        self.by_id: dict[str, AlarmDefinition] = {a.alarm_id: a for a in alarms}
        self.by_meter: dict[str, list[tuple[AlarmDefinition, int, ThresholdRule]]] = {}
        self.fingerprints: dict[str, str] = {}
        for a in self.by_id.values():
            leaves = a.leaves()
            for i, r in enumerate(leaves):
                self.by_meter.setdefault(r.meter_name, []).append((a, i, r))
            self.fingerprints[a.alarm_id] = json.dumps(
                [[r.meter_name, r.query.model_dump(), r.period_us] for r in leaves], sort_keys=True)

    def __len__(self) -> int:
        return len(self.by_id)


# -- windows -------------------------------------------------------------------------------------


def _stat(agg: list, statistic: str) -> float:
    count, total, lo, hi, last, _ = agg
    return {"avg": lambda: total / count, "min": lambda: lo, "max": lambda: hi, "sum": lambda: total,
            "count": lambda: float(count), "last": lambda: last}[statistic]()


def _add(windows: dict[str, list], start: int, volume: float, ts: int) -> None:
    agg = windows.get(str(start))
    if agg is None:
        windows[str(start)] = [1, volume, volume, volume, volume, ts]
        return
    agg[0] += 1
    agg[1] += volume
    agg[2] = min(agg[2], volume)
    agg[3] = max(agg[3], volume)
    if ts >= agg[5]:
        agg[4], agg[5] = volume, ts


def _new_alarm_state(alarm: AlarmDefinition, fp: str, ts: int) -> dict[str, Any]:
    tick = alarm.tick_us
    astate = {"state": UNKNOWN, "until": ts - ts % tick, "fp": fp, "project_id": None, "user_id": None,
              "rules": [{} for _ in alarm.leaves()], "late": 0}
    if alarm.state_override is not None:
        astate["override"] = alarm.state_override.timestamp  # set before this state existed: not adopted
    return astate


def _override_pending(alarm: AlarmDefinition, astate: dict[str, Any]) -> bool:
    override = alarm.state_override
    return override is not None and astate.get("override", 0) < override.timestamp


def _adopt_override(alarm: AlarmDefinition, astate: dict[str, Any], clock_us: int) -> None:
    """Continue from the alarm's state_override; skip boundaries up to its time.

    Also when this resource's clock is behind it (samples in flight or a
    backlog): the operator decided the state as of the override. At most
    :data:`MAX_OVERRIDE_LEAD_US` ahead of the clock, so a skewed API clock
    cannot stall evaluation for longer.
    """
    override = alarm.state_override
    assert override is not None
    astate["state"] = override.state
    astate["override"] = override.timestamp
    upto = min(override.timestamp, clock_us + MAX_OVERRIDE_LEAD_US)
    astate["until"] = max(astate["until"], upto - upto % alarm.tick_us)


def _reconcile(alarm: AlarmDefinition, fp: str, astate: dict[str, Any]) -> None:
    """Adapt a state to an updated definition: new rule shapes restart the windows, a new tick realigns."""
    if astate.get("fp") != fp:
        astate["fp"] = fp
        astate["rules"] = [{} for _ in alarm.leaves()]
    tick = alarm.tick_us
    astate["until"] -= astate["until"] % tick


def observe(alarms: AlarmSet, resource_state: dict[str, Any], samples: Iterable[dict[str, Any]],
            on_error: Callable[[str, Exception], None] | None = None) -> bool:
    """Add ``samples`` (normalized ``streams.Sample`` dicts of one resource) to the matching windows.

    Args:
        on_error: called with (alarm_id, exception) when handling a sample for
            one alarm raises; that alarm is skipped and the others go on. None:
            the exception propagates.

    Returns:
        True if any sample matched an alarm (so the caller should :func:`advance`).
    """
    matched = False
    states: dict[str, Any] | None = resource_state.get(STATE_KEY)
    for s in samples:
        targets = alarms.by_meter.get(s["name"])
        if not targets:
            continue
        for alarm, i, rule in targets:
            try:
                if not rule.query.matches(s):
                    continue
                if states is None:
                    states = resource_state.setdefault(STATE_KEY, {})
                fp = alarms.fingerprints[alarm.alarm_id]
                astate = states.get(alarm.alarm_id)
                if astate is None:
                    astate = states[alarm.alarm_id] = _new_alarm_state(alarm, fp, s["timestamp"])
                else:
                    _reconcile(alarm, fp, astate)
                matched = True
                ts, p = s["timestamp"], rule.period_us
                start = ts - ts % p
                if start + p <= astate["until"]:
                    astate["late"] += 1
                    continue
                _add(astate["rules"][i], start, float(s["volume"]), ts)
                astate["project_id"] = s.get("project_id")
                astate["user_id"] = s.get("user_id")
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(alarm.alarm_id, exc)
    return matched


def _grace_us(alarm: AlarmDefinition, default_grace_us: int) -> int:
    return default_grace_us if alarm.grace is None else int(alarm.grace * 1_000_000)


def due(alarms: AlarmSet, resource_state: dict[str, Any], clock_us: int, default_grace_us: int) -> bool:
    """Cheap read-only check: would :func:`advance` at ``clock_us`` change anything?"""
    for alarm_id, astate in (resource_state.get(STATE_KEY) or {}).items():
        alarm = alarms.by_id.get(alarm_id)
        if alarm is None or astate.get("fp") != alarms.fingerprints[alarm_id]:
            return True
        if astate["until"] + alarm.tick_us <= clock_us - _grace_us(alarm, default_grace_us):
            return True
        if _override_pending(alarm, astate):
            return True
    return False


def advance(alarms: AlarmSet, resource_state: dict[str, Any], resource_id: str, clock_us: int,
            default_grace_us: int, on_error: Callable[[str, Exception], None] | None = None) -> list[AlarmEvent]:
    """Evaluate every boundary ``T`` with ``T + grace <= clock_us`` not yet evaluated, for each alarm.

    First adopts the alarm's ``state_override`` where this state has not yet
    (see the module docstring). Also drops the state of deleted alarms, prunes windows no evaluation can
    see again, and forgets an alarm's state for this resource once it is in
    insufficient data with no window left (it would restart identically).

    Args:
        on_error: called with (alarm_id, exception) when evaluating one alarm
            raises (e.g. a time constraint whose cron cannot be computed); that
            alarm's events of this call are dropped and the others go on. None:
            the exception propagates.

    Returns:
        the events, in boundary order per alarm.
    """
    states: dict[str, Any] | None = resource_state.get(STATE_KEY)
    if not states:
        return []
    events: list[AlarmEvent] = []
    for alarm_id in list(states):
        alarm = alarms.by_id.get(alarm_id)
        if alarm is None:
            del states[alarm_id]
            continue
        try:
            events.extend(_advance_one(alarms, alarm, states, resource_id, clock_us, default_grace_us))
        except Exception as exc:
            if on_error is None:
                raise
            on_error(alarm_id, exc)
    if not states:
        resource_state.pop(STATE_KEY, None)
    return events


def _advance_one(alarms: AlarmSet, alarm: AlarmDefinition, states: dict[str, Any], resource_id: str,
                 clock_us: int, default_grace_us: int) -> list[AlarmEvent]:
    alarm_id = alarm.alarm_id
    astate = states[alarm_id]
    _reconcile(alarm, alarms.fingerprints[alarm_id], astate)
    if _override_pending(alarm, astate):
        _adopt_override(alarm, astate, clock_us)
    tick = alarm.tick_us
    leaves = alarm.leaves()
    horizon = max((r.evaluation_periods + 1) * r.period_us for r in leaves)
    target = clock_us - _grace_us(alarm, default_grace_us)
    last = target - target % tick
    if last <= astate["until"]:
        return []
    events: list[AlarmEvent] = []
    if (last - astate["until"]) // tick > MAX_CATCH_UP:
        astate["until"] = max(astate["until"], last - (horizon // tick + 2) * tick)
    t = astate["until"] + tick
    while t <= last:
        if alarm.enabled and alarm.within_time_constraints(t):
            event = evaluate(alarm, astate, resource_id, t)
            if event is not None:
                events.append(event)
        astate["until"] = t
        t += tick
    for i, r in enumerate(leaves):
        oldest = astate["until"] - astate["until"] % r.period_us - (r.evaluation_periods + 1) * r.period_us
        windows = astate["rules"][i]
        for k in [k for k in windows if int(k) < oldest]:
            del windows[k]
    if astate["state"] == UNKNOWN and not any(astate["rules"]):
        del states[alarm_id]
    return events


# -- Aodh's rules --------------------------------------------------------------------------------


@dataclass
class RuleResult:
    """Aodh's ``evaluate_rule`` result: (state, trending_state, statistics, number_outside)."""

    state: str | None
    trending: str | None
    statistics: list[float]
    outside: int
    windows: list[int]


def evaluate_rule(rule: ThresholdRule, windows: dict[str, list], t: int) -> RuleResult:
    """Aodh's ThresholdEvaluator.evaluate_rule at boundary ``t`` over this resource's windows.

    Looks at the ``evaluation_periods + 1`` windows of ``rule.period`` ending
    at the last period boundary at or before ``t``, keeps those with data,
    then the newest ``evaluation_periods`` of them.
    """
    p, n = rule.period_us, rule.evaluation_periods
    end = t - t % p
    begin = end - (n + 1) * p
    starts = sorted(int(k) for k in windows if begin <= int(k) < end)[-n:]
    stats = [_stat(windows[str(k)], rule.statistic) for k in starts]
    if len(stats) < n:
        return RuleResult(UNKNOWN, None, stats, len(stats), starts)
    op, limit = COMPARATORS[rule.comparison_operator], rule.threshold
    compared = [op(v, limit) for v in stats]
    distilled = all(compared)
    outside = sum(compared)
    if distilled or not any(compared):
        return RuleResult(ALARM if distilled else OK, None, stats, outside, starts)
    return RuleResult(None, ALARM if compared[-1] else OK, stats, outside, starts)


def _event_id(alarm_id: str, resource_id: str, t: int, previous: str, current: str) -> str:
    return str(uuid.uuid5(_EVENT_NS, f"{alarm_id}\x00{resource_id}\x00{t}\x00{previous}\x00{current}"))


def _refresh(alarm: AlarmDefinition, astate: dict[str, Any], resource_id: str, t: int, state: str,
             reason: str, reason_data: dict[str, Any]) -> AlarmEvent | None:
    """Aodh's ``Evaluator._refresh``: set the state; an event on change, or on every call with repeat_actions."""
    previous = astate["state"]
    astate["state"] = state
    if previous == state and not alarm.repeat_actions:
        return None
    return AlarmEvent(
        event_id=_event_id(alarm.alarm_id, resource_id, t, previous, state), alarm_id=alarm.alarm_id,
        alarm_name=alarm.name, type=alarm.type, severity=alarm.severity, resource_id=resource_id,
        project_id=astate.get("project_id"), user_id=astate.get("user_id"), previous=previous, current=state,
        transition=previous != state, reason=reason, reason_data=reason_data,
        actions=list(alarm.actions_for(state)), timestamp_us=t)


def _fmt(v: Any) -> str:
    return str(v)


def _threshold_reason(rule: ThresholdRule, res: RuleResult, previous: str, state: str,
                      count: int) -> tuple[str, dict[str, Any]]:
    """Aodh's ThresholdEvaluator._reason (plus streams' extra reason_data keys)."""
    stats = res.statistics
    if state == OK:
        disposition, count = "inside", len(stats) - count
    else:
        disposition = "outside"
    last = stats[-1] if stats else None
    data = _reason_data(rule, res, disposition, count, last)
    verb = "Transition to" if previous != state else "Remaining as"
    return (f"{verb} {state} due to {count} samples {disposition} threshold, most recent: {_fmt(last)}", data)


def _reason_data(rule: ThresholdRule, res: RuleResult, disposition: str, count: int,
                 last: float | None) -> dict[str, Any]:
    return {"type": "threshold", "disposition": disposition, "count": count, "most_recent": last,
            "statistics": res.statistics, "window_starts_us": res.windows, "threshold": rule.threshold,
            "comparison_operator": rule.comparison_operator, "statistic": rule.statistic,
            "meter_name": rule.meter_name, "period": rule.period}


def _evaluate_threshold(alarm: AlarmDefinition, astate: dict[str, Any], resource_id: str,
                        t: int) -> AlarmEvent | None:
    """Aodh's ThresholdEvaluator._transition_alarm."""
    rule = alarm.threshold_rule
    assert rule is not None
    res = evaluate_rule(rule, astate["rules"][0], t)
    current = astate["state"]
    unknown = current == UNKNOWN
    continuous = alarm.repeat_actions
    if res.trending:
        if unknown or continuous:
            state = res.trending if unknown else current
            reason, data = _threshold_reason(rule, res, current, state, res.outside)
            return _refresh(alarm, astate, resource_id, t, state, reason, data)
    if res.state == UNKNOWN and not unknown:
        n = rule.evaluation_periods
        last = res.statistics[-1] if res.statistics else None
        return _refresh(alarm, astate, resource_id, t, UNKNOWN, f"{n} datapoints are unknown",
                        _reason_data(rule, res, "unknown", n, last))
    if res.state and (current != res.state or continuous):
        reason, data = _threshold_reason(rule, res, current, res.state, res.outside)
        return _refresh(alarm, astate, resource_id, t, res.state, reason, data)
    return None


_STATE_CHANGE = {ALARM: "outside their threshold.", OK: "inside their threshold.",
                 UNKNOWN: "state evaluated to unknown."}


class _Leaf:
    def __init__(self, name: str, rule: ThresholdRule, result: RuleResult) -> None:
        self.name, self.rule, self.result = name, rule, result
        self.state = result.state


def _build(node: Any, leaves: list[_Leaf], it: Any) -> Any:
    """Aodh's _parse_composite_rule: returns (alarm expression, ok expression) as nested tuples."""
    if isinstance(node, ThresholdRule):
        leaf = next(it)
        leaves.append(leaf)
        return ("alarm", leaf), ("ok", leaf)
    if isinstance(node, AndRule):
        parts = [_build(n, leaves, it) for n in node.and_]
        return ("and", [a for a, _ in parts]), ("or", [o for _, o in parts])
    assert isinstance(node, OrRule)
    parts = [_build(n, leaves, it) for n in node.or_]
    return ("or", [a for a, _ in parts]), ("and", [o for _, o in parts])


def _truth(expr: Any) -> bool:
    kind, arg = expr
    if kind == "alarm":
        return arg.state == ALARM
    if kind == "ok":
        return arg.state == OK
    return all(map(_truth, arg)) if kind == "and" else any(map(_truth, arg))


def _form(expr: Any) -> str:
    kind, arg = expr
    if kind in ("alarm", "ok"):
        return arg.name
    return "(" + f" {kind} ".join(map(_form, arg)) + ")"


def _evaluate_composite(alarm: AlarmDefinition, astate: dict[str, Any], resource_id: str,
                        t: int) -> AlarmEvent | None:
    """Aodh's CompositeEvaluator.evaluate (leaves evaluated eagerly: same result, rules are pure here)."""
    rules = alarm.leaves()
    results = iter(_Leaf(f"rule{i + 1}", r, evaluate_rule(r, astate["rules"][i], t)) for i, r in enumerate(rules))
    leaves: list[_Leaf] = []
    alarm_expr, ok_expr = _build(alarm.composite_rule, leaves, results)
    current = astate["state"]

    def reason(new_state: str) -> tuple[str, dict[str, Any]]:
        causes = {lf.name: lf.rule.model_dump(mode="json") for lf in leaves if lf.state == new_state}
        data = {"type": "composite", "composition_form": _form(alarm_expr), "causative_rules": causes}
        verb = "transition to" if current != new_state else "remaining as"
        return (f"Composite rule alarm with composition form: {_form(alarm_expr)} {verb} {new_state}, "
                f"due to rules: {', '.join(sorted(causes))} {_STATE_CHANGE[new_state]}", data)

    for second_pass in (False, True):
        if second_pass:
            for lf in leaves:
                trending = lf.result.trending
                if trending is not None:
                    if current == UNKNOWN:
                        lf.state = trending
                    elif trending == ALARM:
                        lf.state = OK
                    elif trending == OK:
                        lf.state = ALARM
        if _truth(alarm_expr):
            return _refresh(alarm, astate, resource_id, t, ALARM, *reason(ALARM))
        if _truth(ok_expr):
            return _refresh(alarm, astate, resource_id, t, OK, *reason(OK))
    if current != UNKNOWN:
        return _refresh(alarm, astate, resource_id, t, UNKNOWN, *reason(UNKNOWN))
    return None


def evaluate(alarm: AlarmDefinition, astate: dict[str, Any], resource_id: str, t: int) -> AlarmEvent | None:
    """Evaluate ``alarm`` for one resource at boundary ``t`` (µs); mutate ``astate``; maybe return an event."""
    if alarm.type == "threshold":
        return _evaluate_threshold(alarm, astate, resource_id, t)
    return _evaluate_composite(alarm, astate, resource_id, t)
