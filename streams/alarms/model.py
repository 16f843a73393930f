"""Alarm definitions: Aodh's threshold and composite alarm model, validated with pydantic.

The fields and defaults are Aodh's (``aodh/api/controllers/v2/alarms.py`` and
``alarm_rules/threshold.py``, ``composite.py``), so operators know them::

    alarm_id: cpu-high                 # [A-Za-z0-9._-]{1,128}; default: a uuid4
    name: cpu high
    type: threshold                    # threshold | composite
    threshold_rule:
      meter_name: cpu_util
      query: {resource_id: "host-*", project_id: p-1, metadata: {kind: host}}
      statistic: avg                   # avg | min | max | sum | count | last
      comparison_operator: gt          # lt | le | eq | ne | ge | gt
      threshold: 90
      period: 60                       # seconds, > 0 (fractions allowed, e.g. 1.5)
      evaluation_periods: 3
    severity: critical                 # low | moderate | critical
    repeat_actions: false
    alarm_actions: ["https://hooks.example/alarm", "log://"]
    ok_actions: []
    insufficient_data_actions: []
    time_constraints:
      - {name: office, start: "0 9 * * 1-5", duration: 32400, timezone: Europe/Paris}
    enabled: true
    state_override: {state: ok, timestamp: 1767225600000000}   # optional: set through streams api
    aodh: {type: gnocchi_resources_threshold, rule: {...}}     # optional: the Aodh document (streams/api)

A composite alarm has ``type: composite`` and ``composite_rule``, a nested
``{"and": [...]}`` / ``{"or": [...]}`` of threshold rules (Aodh's
composite rule).

Query matching (streams, not Aodh's query language): ``resource_id``,
``project_id``, ``user_id`` and each ``metadata`` value are shell-style
patterns (:func:`fnmatch.fnmatchcase`: ``*``, ``?``, ``[...]``; a value
without them must be equal). Alarms are evaluated per matching resource.

Every invalid field raises :class:`AlarmDefinitionError`, whose message names
each bad field, e.g. ``threshold_rule.statistic: Input should be 'avg', ...``.
"""

from __future__ import annotations

import fnmatch
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cached_property
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

OK = "ok"
ALARM = "alarm"
UNKNOWN = "insufficient data"
"""Aodh's three states (``aodh/evaluator/__init__.py``)."""
STATES = (OK, ALARM, UNKNOWN)

STATISTICS = ("avg", "min", "max", "sum", "count", "last")
OPERATORS = ("lt", "le", "eq", "ne", "ge", "gt")
SEVERITIES = ("low", "moderate", "critical")
ACTION_SCHEMES = ("http", "https", "log")
"""URL schemes of actions the built-in notifiers handle (see :mod:`streams.notifiers`)."""

ALARM_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_DOCUMENT_BYTES = 64 << 10
"""Largest alarm definition accepted (JSON bytes), checked before parsing."""
MAX_RULE_DEPTH = 16
"""Deepest nesting of composite and/or rules."""


class AlarmDefinitionError(ValueError):
    """An alarm definition is invalid; the message names every bad field and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ResourceQuery(_Strict):
    """Which samples an alarm rule looks at, besides the meter. Unset fields match anything."""

    resource_id: str | None = Field(None, description="Resource id or pattern, e.g. host-* .")
    project_id: str | None = Field(None, description="Project id or pattern.")
    user_id: str | None = Field(None, description="User id or pattern.")
    metadata: dict[str, str] = Field(default_factory=dict,
                                     description="resource_metadata key -> value or pattern; all must match.")

    def matches(self, sample: dict[str, Any]) -> bool:
        """True when ``sample`` (a ``streams.Sample`` dict) satisfies every set field."""
        for field in ("resource_id", "project_id", "user_id"):
            want = getattr(self, field)
            if want is not None and not fnmatch.fnmatchcase(sample.get(field) or "", want):
                return False
        if self.metadata:
            meta = sample.get("resource_metadata") or {}
            for k, want in self.metadata.items():
                if k not in meta or not fnmatch.fnmatchcase(meta[k], want):
                    return False
        return True


class ThresholdRule(_Strict):
    """Aodh's threshold rule: ``statistic`` of ``meter_name`` over each ``period`` vs ``threshold``."""

    type: Literal["threshold"] = "threshold"
    meter_name: str = Field(min_length=1, description="Meter the rule watches, e.g. cpu_util.")
    query: ResourceQuery = Field(default_factory=ResourceQuery)
    statistic: Literal["avg", "min", "max", "sum", "count", "last"] = "avg"
    comparison_operator: Literal["lt", "le", "eq", "ne", "ge", "gt"] = "eq"
    threshold: float = Field(allow_inf_nan=False)
    period: float = Field(60.0, gt=0, le=86400 * 366, description="Window length, seconds.")
    evaluation_periods: int = Field(1, ge=1, le=1000, description="Windows that must agree.")

    @cached_property
    def period_us(self) -> int:
        """``period`` in µs."""
        return int(round(self.period * 1_000_000))

    @field_validator("period")
    @classmethod
    def _whole_us(cls, v: float) -> float:
        if int(round(v * 1_000_000)) < 1000:
            raise ValueError("must be at least 0.001 s")
        return v


class AndRule(_Strict):
    """All sub-rules (Aodh composite ``and``)."""

    and_: list[RuleNode] = Field(alias="and", min_length=1)


class OrRule(_Strict):
    """Any sub-rule (Aodh composite ``or``)."""

    or_: list[RuleNode] = Field(alias="or", min_length=1)


def _rule_kind(v: Any) -> str:
    if isinstance(v, dict):
        if "and" in v:
            return "and"
        if "or" in v:
            return "or"
        return "threshold"
    if isinstance(v, AndRule):
        return "and"
    if isinstance(v, OrRule):
        return "or"
    return "threshold"


RuleNode = Annotated[
    Union[Annotated[ThresholdRule, Tag("threshold")], Annotated[AndRule, Tag("and")],  # noqa: UP007
          Annotated[OrRule, Tag("or")]],
    Discriminator(_rule_kind),
]
AndRule.model_rebuild()
OrRule.model_rebuild()


class TimeConstraint(_Strict):
    """When the alarm is evaluated (Aodh's AlarmTimeConstraint): from each cron ``start`` for ``duration`` s."""

    name: str = Field(min_length=1)
    description: str = ""
    start: str = Field(description="Cron expression of each interval's start, e.g. '0 9 * * 1-5'.")
    duration: int = Field(ge=0, description="Seconds the interval lasts.")
    timezone: str | None = Field(None, description="IANA zone of ``start``, e.g. Europe/Paris; default UTC.")

    @field_validator("start")
    @classmethod
    def _cron(cls, v: str) -> str:
        if not croniter.is_valid(v):
            raise ValueError(f"{v!r} is not a valid cron expression")
        # Valid syntax is not enough: '0 0 30 2 *' (February 30th) never fires, and croniter
        # raises CroniterBadDateError for it at evaluation time. Require a previous and a next date.
        try:
            croniter(v, datetime.now(UTC)).get_next(datetime)
            croniter(v, datetime.now(UTC)).get_prev(datetime)
        except (CroniterBadDateError, ValueError, OverflowError) as exc:
            raise ValueError(f"{v!r} never fires ({type(exc).__name__})") from None
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        if v:
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {v!r}") from None
        return v or None

    def contains(self, when_us: int) -> bool:
        """Aodh's ``within_time_constraint`` for one constraint, at ``when_us`` (µs since epoch, UTC)."""
        now = datetime.fromtimestamp(when_us / 1e6, tz=UTC)
        if self.timezone:
            now = now.astimezone(ZoneInfo(self.timezone))
        cron = croniter(self.start, now)
        # Aodh's _is_exact_match: at a start point (to the minute) croniter returns the previous start.
        cron.get_prev()
        if abs((now - cron.get_next(datetime)).total_seconds()) < 60:
            return True
        latest = croniter(self.start, now).get_prev(datetime)
        return latest.timestamp() <= now.timestamp() <= latest.timestamp() + self.duration


class StateOverride(_Strict):
    """A state set by an operator (Aodh's ``PUT /v2/alarms/{id}/state``, ``streams api``).

    The evaluator adopts it once per resource state of the alarm (the first
    time it sees this ``timestamp``) and continues from it; see
    :func:`streams.alarms.evaluator.advance`.
    """

    state: Literal["ok", "alarm", "insufficient data"]
    timestamp: int = Field(gt=0, description="When it was set, µs since the epoch (UTC).")


def _check_actions(v: list[str]) -> list[str]:
    for url in v:
        scheme = urlsplit(url).scheme
        if scheme not in _action_schemes():
            raise ValueError(f"action {url!r}: scheme must be one of {', '.join(_action_schemes())}")
        if scheme in ("http", "https") and not urlsplit(url).hostname:
            raise ValueError(f"action {url!r}: no host")
    return v


def _action_schemes() -> tuple[str, ...]:
    try:
        from streams.notifiers import available_notifiers

        return tuple(sorted(available_notifiers()))
    except Exception:  # noqa: BLE001 - plugins broken: the built-ins still validate
        return ACTION_SCHEMES


class AlarmDefinition(_Strict):
    """One alarm, as stored in ZooKeeper at ``<root>/alarms/<alarm_id>`` (JSON)."""

    alarm_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    name: str = Field(min_length=1, max_length=255)
    description: str = ""
    type: Literal["threshold", "composite"] = "threshold"
    threshold_rule: ThresholdRule | None = None
    composite_rule: RuleNode | None = None
    enabled: bool = True
    severity: Literal["low", "moderate", "critical"] = "low"
    repeat_actions: bool = False
    ok_actions: list[str] = Field(default_factory=list)
    alarm_actions: list[str] = Field(default_factory=list)
    insufficient_data_actions: list[str] = Field(default_factory=list)
    time_constraints: list[TimeConstraint] = Field(default_factory=list)
    grace: float | None = Field(None, ge=0, description="Seconds a window stays open for late samples after "
                                "it ends; None = the processor's alarms.grace.")
    project_id: str | None = None
    user_id: str | None = None
    disabled_reason: str | None = Field(
        None, max_length=2000,
        description="Why the processor disabled this alarm (its evaluation raised); cleared by an update that "
        "re-enables it. Shown by `streams alarm show` and `list`.")
    state_override: StateOverride | None = Field(
        None, description="State set through the API; every resource's evaluation continues from it.")
    aodh: dict[str, Any] | None = Field(
        None, description="The Aodh API document the alarm was made from (type, rule, timestamps), kept so that "
        "the API returns what it was given (streams/api/mapping.py).")

    @field_validator("alarm_id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not ALARM_ID.match(v):
            raise ValueError("must be 1-128 characters of A-Z a-z 0-9 . _ - (it names a znode and a Kafka key)")
        if v in (".", ".."):
            raise ValueError("must not be . or ..")
        return v

    @field_validator("ok_actions", "alarm_actions", "insufficient_data_actions")
    @classmethod
    def _actions(cls, v: list[str]) -> list[str]:
        return _check_actions(v)

    @model_validator(mode="after")
    def _rule_matches_type(self) -> AlarmDefinition:
        if self.type == "threshold":
            if self.threshold_rule is None:
                raise ValueError("type threshold needs threshold_rule")
            if self.composite_rule is not None:
                raise ValueError("type threshold must not have composite_rule")
        else:
            if self.composite_rule is None:
                raise ValueError("type composite needs composite_rule ({'and': [...]} or {'or': [...]})")
            if self.threshold_rule is not None:
                raise ValueError("type composite must not have threshold_rule")
        names = [tc.name for tc in self.time_constraints]
        if len(names) != len(set(names)):
            raise ValueError("time constraint names must be unique for a given alarm")
        if self.type == "composite" and _depth(self.composite_rule) > MAX_RULE_DEPTH:
            raise ValueError(f"composite rule nests deeper than {MAX_RULE_DEPTH} levels")
        return self

    # -- derived ---------------------------------------------------------------------------------

    @property
    def rule(self) -> RuleNode:
        """The root rule (threshold or composite)."""
        return self.threshold_rule if self.type == "threshold" else self.composite_rule  # type: ignore[return-value]

    def leaves(self) -> list[ThresholdRule]:
        """Threshold rules in definition order (Aodh names them rule1, rule2, ...); do not modify."""
        return self._leaves

    @cached_property
    def _leaves(self) -> list[ThresholdRule]:
        # Cached: the evaluator asks for every sample and timer pass. Rules are never changed in
        # place, and the model copies made elsewhere change other fields (alarm_id, aodh).
        return list(_walk(self.rule))

    @cached_property
    def tick_us(self) -> int:
        """Evaluation interval, µs: the shortest period of its rules (windows close on its multiples)."""
        return min(r.period_us for r in self.leaves())

    def actions_for(self, state: str) -> list[str]:
        """Aodh's ALARM_ACTIONS_MAP: the URLs to call on entering/remaining in ``state``."""
        return {OK: self.ok_actions, ALARM: self.alarm_actions, UNKNOWN: self.insufficient_data_actions}[state]

    def within_time_constraints(self, when_us: int) -> bool:
        """Aodh's ``within_time_constraint``: no constraints, or ``when_us`` inside at least one."""
        return not self.time_constraints or any(tc.contains(when_us) for tc in self.time_constraints)

    def to_json(self) -> str:
        """The document stored in ZooKeeper (aliases ``and``/``or``, no unset extras)."""
        return json.dumps(self.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=True)


def _depth(node: Any) -> int:
    if isinstance(node, AndRule):
        return 1 + max(_depth(n) for n in node.and_)
    if isinstance(node, OrRule):
        return 1 + max(_depth(n) for n in node.or_)
    return 1


def _walk(node: Any) -> Iterator[ThresholdRule]:
    if isinstance(node, ThresholdRule):
        yield node
    elif isinstance(node, AndRule):
        for n in node.and_:
            yield from _walk(n)
    elif isinstance(node, OrRule):
        for n in node.or_:
            yield from _walk(n)


def _nesting(data: Any) -> int:
    """Deepest nesting of dicts and lists in ``data`` (iterative: no recursion limit to hit)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > 1000:
            break
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return deepest


def _loc(loc: tuple) -> str:
    """``composite_rule.and[0].threshold`` from pydantic's loc, without the union's tags."""
    parts: list[str] = []
    expect_tag = False
    for x in loc:
        if expect_tag and x in ("threshold", "and", "or"):
            expect_tag = False
            continue
        if isinstance(x, int):
            parts.append(f"[{x}]")
            expect_tag = True
        else:
            parts.append(f".{x}" if parts else str(x))
            expect_tag = x == "composite_rule"
    return "".join(parts) or "alarm"


def parse_alarm(data: Any) -> AlarmDefinition:
    """Validate ``data`` (a dict, or JSON text/bytes) as an :class:`AlarmDefinition`.

    Raises:
        AlarmDefinitionError: not JSON, not an object, or any field invalid;
            the message lists ``field.path: problem`` for every error.
    """
    if isinstance(data, bytes | bytearray):
        if len(data) > MAX_DOCUMENT_BYTES:
            raise AlarmDefinitionError(f"document of {len(data)} bytes; the limit is {MAX_DOCUMENT_BYTES}")
        data = data.decode("utf-8", errors="replace")
    if isinstance(data, str):
        if len(data) > MAX_DOCUMENT_BYTES:
            raise AlarmDefinitionError(f"document of {len(data)} characters; the limit is {MAX_DOCUMENT_BYTES}")
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise AlarmDefinitionError(f"not valid JSON: {exc}") from None
        except RecursionError:
            raise AlarmDefinitionError("document nests too deeply") from None
    if not isinstance(data, dict):
        raise AlarmDefinitionError(f"an alarm definition must be an object, got {type(data).__name__}")
    if _nesting(data) > 4 * MAX_RULE_DEPTH:
        raise AlarmDefinitionError(f"document nests too deeply (composite rules: at most {MAX_RULE_DEPTH} levels)")
    try:
        return AlarmDefinition.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{_loc(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
        raise AlarmDefinitionError(problems) from None
    except RecursionError:
        raise AlarmDefinitionError(f"composite rule nests too deeply (limit {MAX_RULE_DEPTH} levels)") from None
