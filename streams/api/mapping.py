"""Aodh alarm documents <-> :class:`~streams.alarms.model.AlarmDefinition` (pure, no I/O).

Accepted types and how they map onto the streaming evaluator (one alarm
state per matching resource, see docs/alarms.md):

``gnocchi_resources_threshold``
    ``metric`` -> ``threshold_rule.meter_name``; ``resource_id`` -> the query's
    ``resource_id`` (matched literally); ``granularity`` -> ``period``;
    ``aggregation_method`` -> ``statistic``; ``resource_type`` is kept (a
    resource id names one resource here whatever its type).
``gnocchi_aggregation_by_resources_threshold``
    ``query`` (Gnocchi's JSON search, e.g. Heat's ``{"=": {"server_group": "…"}}``)
    -> the query's fields: ``id`` -> ``resource_id``, ``project_id``,
    ``user_id``, ``ended_at = null`` (always true: resources here are the ones
    reporting), any other attribute -> the ``resource_metadata`` key of that
    name. Conditions may be ``=`` (``==``, ``eq``) or ``like`` (``%``/``_``),
    combined with ``and``; anything else is rejected (400) with the reason.
``composite``
    ``{"and" | "or": [sub-rules...]}`` of the two types above, nested.

Aggregation methods -> statistics: ``mean`` -> avg, ``min``, ``max``, ``sum``,
``count``, ``last``. ``rate:mean|min|max|last`` of a cumulative metric needs
``api.rate_meters[metric]``, the meter that carries its per-second rate in the
samples topic (a poller's, or a ``rate_of_change`` transformer's published
back to it); Gnocchi's rate is the change per ``granularity``, so the
threshold is divided by the granularity. Other Gnocchi methods (median, std,
first, percentiles) cannot be computed from what a window keeps (count, sum,
min, max, last) and are rejected.

Non-admin alarms, and admin alarms made on behalf of another project, only
see samples of that project (``query.project_id``), as Aodh scopes its
Gnocchi queries to the alarm's project.

The Aodh document (type, normalized rule, timestamps) is stored in the
definition's ``aodh`` field, so ``GET`` returns what was given. If the rule
was changed since outside the API (``streams alarm update``), or the alarm
was made with ``streams alarm create``, the Aodh view is derived from the
streams rule instead (:func:`aodh_rule`).
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from croniter import croniter

from streams.alarms.model import (
    ALARM,
    OK,
    OPERATORS,
    SEVERITIES,
    STATES,
    UNKNOWN,
    AlarmDefinition,
    AlarmDefinitionError,
    AndRule,
    OrRule,
    ThresholdRule,
    parse_alarm,
)
from streams.api.errors import (
    AodhError,
    invalid_input,
    mandatory,
    project_not_authorized,
    unknown_attribute,
    wrong_type,
)

SUPPORTED_TYPES = ("composite", "gnocchi_aggregation_by_resources_threshold", "gnocchi_resources_threshold")
THRESHOLD_TYPES = ("gnocchi_aggregation_by_resources_threshold", "gnocchi_resources_threshold")
UNSUPPORTED_TYPES = {
    "gnocchi_aggregation_by_metrics_threshold":
        "it names Gnocchi metric UUIDs, and this pipeline has meters of resources, not Gnocchi metrics "
        "(use gnocchi_resources_threshold or gnocchi_aggregation_by_resources_threshold)",
    "prometheus": "it runs a PromQL query on a Prometheus server, and alarms here are evaluated on the "
                  "samples streaming through the processor",
    "event": "it is evaluated on OpenStack notifications (events), and alarms here are evaluated on samples",
    "loadbalancer_member_health": "it asks the Octavia API for load-balancer member health, which this "
                                  "pipeline does not poll",
    "threshold": "Aodh removed it with Ceilometer's API (use gnocchi_resources_threshold: metric = meter name)",
}
AODH_TYPES = SUPPORTED_TYPES + tuple(UNSUPPORTED_TYPES)
"""Every type python-aodhclient knows; each has a ``<type>_rule`` attribute."""

ALARM_ATTRIBUTES = frozenset({
    "alarm_id", "name", "description", "enabled", "ok_actions", "alarm_actions", "insufficient_data_actions",
    "repeat_actions", "type", "time_constraints", "project_id", "user_id", "timestamp", "state",
    "state_timestamp", "state_reason", "severity", "evaluate_timestamp",
} | {f"{t}_rule" for t in AODH_TYPES})
"""Attributes of Aodh's Alarm (read-only ones are accepted and ignored on POST and PUT)."""

AGGREGATIONS = {"mean": "avg", "min": "min", "max": "max", "sum": "sum", "count": "count", "last": "last"}
"""Gnocchi aggregation method -> the evaluator's statistic."""
RATE_AGGREGATIONS = ("mean", "min", "max", "last")
"""``rate:<agg>`` accepted where the rate is approximately (per-second rate) x granularity."""
STATISTIC_METHODS = {v: k for k, v in AGGREGATIONS.items()}

MAX_COMPOSITE_RULES = 32
MAX_COMPOSITE_DEPTH = 8

REASON_DEFAULT = "Not evaluated yet"
REASON_MANUAL = "Manually set via API"
"""Aodh's ALARM_REASON_DEFAULT and ALARM_REASON_MANUAL."""

_GNOCCHI_COMMON = ("granularity", "comparison_operator", "threshold", "aggregation_method", "evaluation_periods")
RULE_KEYS = {
    "gnocchi_resources_threshold": _GNOCCHI_COMMON + ("metric", "resource_id", "resource_type"),
    "gnocchi_aggregation_by_resources_threshold": _GNOCCHI_COMMON + ("metric", "query", "resource_type"),
}
"""Each rule's attributes, in the order Aodh's ``as_dict`` lists them."""

_TRUE = {"1", "t", "true", "on", "y", "yes"}
_FALSE = {"0", "f", "false", "off", "n", "no"}


# -- identity --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who a request acts as: from headers (noauth), a static token, or Keystone."""

    user_id: str | None
    project_id: str | None
    roles: tuple[str, ...] = ()

    @property
    def is_admin(self) -> bool:
        """Aodh's default policy: ``context_is_admin`` is ``role:admin``."""
        return any(r.strip().lower() == "admin" for r in self.roles)


def scope_project(identity: Identity, alarm_project: str | None) -> str | None:
    """The project whose samples an alarm may see (None: any), as Aodh's ``get_auth_project``."""
    if identity.is_admin and alarm_project == identity.project_id:
        return None
    return alarm_project


# -- WSME-like field conversion --------------------------------------------------------------------


def _text(field: str, v: Any, required: bool = False) -> str | None:
    if v is None:
        if required:
            raise mandatory(field)
        return None
    if not isinstance(v, str):
        raise wrong_type(field, v, str)
    return v


def _float(field: str, v: Any, required: bool = True) -> float | None:
    if v is None:
        if required:
            raise mandatory(field)
        return None
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise wrong_type(field, v, float)
    try:
        f = float(v)
    except ValueError:
        raise wrong_type(field, v, float) from None
    if not math.isfinite(f):
        raise invalid_input(field, v, "Value should be a finite number")
    return f


def _int(field: str, v: Any, lo: int, hi: int, default: int) -> int:
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise wrong_type(field, v, int)
    try:
        n = int(v) if not isinstance(v, float) or v.is_integer() else None
    except ValueError:
        n = None
    if n is None:
        raise wrong_type(field, v, int)
    if n < lo:
        raise invalid_input(field, v, f"Value should be greater or equal to {lo}")
    if n > hi:
        raise invalid_input(field, v, f"Value should be lower or equal to {hi}")
    return n


def _bool(field: str, v: Any, default: bool) -> bool:
    if v is None:
        return default
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise wrong_type(field, v, bool)


def _enum(field: str, v: Any, values: Iterable[str], default: str | None) -> str | None:
    if v is None:
        return default
    values = sorted(values)
    if v not in values:
        raise invalid_input(field, v, f"Value should be one of: {', '.join(values)}")
    return v


def _escape(value: str) -> str:
    """``value`` as an fnmatch pattern that matches only itself."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in value)


def _literal(pattern: str) -> str | None:
    """The value a pattern matches, if it matches exactly one (only escaped specials), else None."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c in "*?":
            return None
        if c == "[":
            if i + 2 < len(pattern) and pattern[i + 2] == "]" and pattern[i + 1] != "!":
                out.append(pattern[i + 1])
                i += 3
                continue
            return None
        out.append(c)
        i += 1
    return "".join(out)


# -- rules -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Translated:
    """An Aodh alarm body, validated: the normalized Aodh view and the definition fields it maps to."""

    type: str
    rule: dict[str, Any]  # the <type>_rule as Aodh returns it (composite: the composite_rule)
    fields: dict[str, Any]  # name, description, enabled, ... in streams' names
    state: str | None  # the state given in the body, if any


def _aggregation(method: str, metric: str, granularity: int, rate_meters: dict[str, str]) -> tuple[str, str, float]:
    """(meter, statistic, threshold divisor) for Gnocchi's ``aggregation_method`` on ``metric``."""
    if method in AGGREGATIONS:
        return metric, AGGREGATIONS[method], 1.0
    allowed = list(AGGREGATIONS) + [f"rate:{a}" for a in RATE_AGGREGATIONS]
    head = f"aggregation_method should be in {allowed} not {method}"
    if method.startswith("rate:") and method[5:] in RATE_AGGREGATIONS:
        meter = rate_meters.get(metric)
        if meter is None:
            raise AodhError(f"{head}: no per-second rate meter is configured for metric {metric!r} "
                            f"(api.rate_meters maps a cumulative meter to the meter a rate_of_change "
                            f"transformer derives from it); alarms are evaluated on samples as they stream, "
                            f"not on stored Gnocchi aggregates")
        return meter, AGGREGATIONS[method[5:]], float(granularity)
    raise AodhError(f"{head}: an evaluation window keeps count, sum, min, max and last, so median, std, "
                    f"first, percentiles and other rates cannot be computed")


_EQ_OPS = ("=", "==", "eq")
_FIELD_ATTRS = {"id": "resource_id", "resource_id": "resource_id", "project_id": "project_id",
                "user_id": "user_id"}


def _like_to_pattern(like: str) -> str:
    out, i = [], 0
    while i < len(like):
        c = like[i]
        if c == "\\" and i + 1 < len(like):
            out.append(_escape(like[i + 1]))
            i += 2
            continue
        out.append("*" if c == "%" else "?" if c == "_" else _escape(c))
        i += 1
    return "".join(out)


def resource_query(text: str) -> dict[str, Any]:
    """Gnocchi's resource search (JSON text) -> ResourceQuery fields (patterns).

    Raises:
        AodhError: not JSON (Aodh's ``rule/query`` InvalidInput), or a
            condition this service cannot evaluate, with the reason.
    """
    try:
        expr = json.loads(text)
    except (ValueError, RecursionError):
        raise invalid_input("rule/query", text) from None
    out: dict[str, Any] = {}

    def reject(why: str) -> AodhError:
        return invalid_input("rule/query", text,
                             f"{why}: resources are selected here by the samples' resource_id, project_id, "
                             f"user_id and resource_metadata, so a query is an 'and' of '=' or 'like' "
                             f"conditions on them")

    def put(attr: str, pattern: str) -> None:
        if attr in _FIELD_ATTRS:
            key, current = _FIELD_ATTRS[attr], out.get(_FIELD_ATTRS[attr])
        else:
            key, current = attr, out.get("metadata", {}).get(attr)
        if current is not None and current != pattern:
            raise reject(f"two different conditions on {attr!r}")
        if attr in _FIELD_ATTRS:
            out[key] = pattern
        else:
            out.setdefault("metadata", {})[attr] = pattern

    def walk(node: Any, depth: int) -> None:
        if depth > MAX_COMPOSITE_DEPTH * 4:
            raise reject("query nested too deeply")
        if node == {}:
            return
        if not isinstance(node, dict) or len(node) != 1:
            raise reject(f"{json.dumps(node)[:200]} is not a condition")
        op, arg = next(iter(node.items()))
        op_l = op.lower()
        if op_l == "and" and isinstance(arg, list):
            for sub in arg:
                walk(sub, depth + 1)
            return
        if op_l in _EQ_OPS + ("like",) and isinstance(arg, dict) and len(arg) == 1:
            attr, value = next(iter(arg.items()))
            if attr == "ended_at":
                if value is None and op_l in _EQ_OPS:
                    return  # Aodh's advice to skip deleted resources: those reporting samples are alive
                raise reject("'ended_at' can only be tested '= null'")
            if op_l == "like":
                if not isinstance(value, str):
                    raise reject(f"'like' on {attr!r} needs a string")
                put(attr, _like_to_pattern(value))
                return
            if value is None or isinstance(value, dict | list):
                raise reject(f"{attr!r} = {json.dumps(value)} cannot be compared with a sample's text")
            put(attr, _escape(json.dumps(value) if isinstance(value, bool) else str(value)))
            return
        raise reject(f"operator {op!r} is not supported")

    walk(expr, 0)
    return out


def _threshold_rule(kind: str, rule: dict[str, Any], scope: str | None,
                    rate_meters: dict[str, str]) -> dict[str, Any]:
    """A normalized Gnocchi rule -> a streams ThresholdRule document."""
    meter, statistic, divisor = _aggregation(rule["aggregation_method"], rule["metric"], rule["granularity"],
                                             rate_meters)
    if kind == "gnocchi_resources_threshold":
        query: dict[str, Any] = {"resource_id": _escape(rule["resource_id"])}
    else:
        query = resource_query(rule["query"])
    if scope is not None:
        if query.get("project_id") not in (None, _escape(scope)):
            raise project_not_authorized(query["project_id"])
        query["project_id"] = _escape(scope)
    return {"meter_name": meter, "query": query, "statistic": statistic,
            "comparison_operator": rule["comparison_operator"], "threshold": rule["threshold"] / divisor,
            "period": float(rule["granularity"]), "evaluation_periods": rule["evaluation_periods"]}


def normalize_rule(kind: str, rule: Any, argument: str, allow_type: bool = False) -> dict[str, Any]:
    """Validate a Gnocchi rule as WSME does; return it with Aodh's defaults, in Aodh's ``as_dict`` shape."""
    if not isinstance(rule, dict):
        raise invalid_input(argument, rule, "Value should be an object")
    unknown = set(rule) - set(RULE_KEYS[kind]) - ({"type"} if allow_type else set())
    if unknown:
        raise unknown_attribute(argument, list(unknown))
    out = {
        "granularity": _int("granularity", rule.get("granularity"), 1, 86400 * 365, 60),
        "comparison_operator": _enum("comparison_operator", rule.get("comparison_operator"), OPERATORS, "eq"),
        "threshold": _float("threshold", rule.get("threshold")),
        "aggregation_method": _text("aggregation_method", rule.get("aggregation_method"), required=True),
        "evaluation_periods": _int("evaluation_periods", rule.get("evaluation_periods"), 1, 100, 1),
        "metric": _text("metric", rule.get("metric"), required=True),
    }
    for key in RULE_KEYS[kind][6:]:
        out[key] = _text(key, rule.get(key), required=True)
    if not out["metric"]:
        raise invalid_input("metric", out["metric"], "Value should not be empty")
    return out


def _composite(node: Any, scope: str | None, rate_meters: dict[str, str], depth: int,
               count: list[int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Aodh's CompositeRule.valid_composite_rule -> (normalized Aodh node, streams rule node)."""
    invalid = AodhError(f"Invalid input composite rule: {node}, it should be a dict with an \"and\" or \"or\" "
                        f"as key, and the value of dict should be a list of basic threshold rules or sub "
                        f"composite rules, can be nested.")
    if depth > MAX_COMPOSITE_DEPTH:
        raise AodhError(f"composite rule nested deeper than {MAX_COMPOSITE_DEPTH} levels")
    if isinstance(node, dict) and len(node) == 1 and "type" not in node:
        key = next(iter(node))
        if key not in ("and", "or"):
            raise AodhError('Threshold rules should be combined with "and" or "or"')
        if not isinstance(node[key], list) or not node[key]:
            raise invalid
        parts = [_composite(sub, scope, rate_meters, depth + 1, count) for sub in node[key]]
        return {key: [a for a, _ in parts]}, {key: [s for _, s in parts]}
    if not isinstance(node, dict):
        raise invalid
    kind = node.get("type")
    if not kind:
        raise AodhError("type must be set in every rule")
    if kind not in THRESHOLD_TYPES:
        why = UNSUPPORTED_TYPES.get(kind, "it is not an Aodh threshold rule type")
        raise AodhError(f"Unsupported sub-rule type :{kind} in composite rule, should be one of: "
                        f"{sorted(THRESHOLD_TYPES)} ({kind}: {why})")
    count[0] += 1
    if count[0] > MAX_COMPOSITE_RULES:
        raise AodhError(f"composite rule has more than {MAX_COMPOSITE_RULES} sub-rules")
    rule = normalize_rule(kind, node, "composite_rule", allow_type=True)
    return {**rule, "type": kind}, _threshold_rule(kind, rule, scope, rate_meters)


def _actions(name: str, v: Any, identity: Identity) -> list[str]:
    """Aodh's check_alarm_actions for one state: known schemes, de-duplicated, no log:// for non-admins."""
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(a, str) for a in v):
        raise wrong_type(name, v, list)
    from streams.alarms.model import _action_schemes

    schemes = _action_schemes()
    out: list[str] = []
    for action in v:
        try:
            url = urlsplit(action)
        except ValueError:
            raise AodhError(f"Unable to parse action {action}") from None
        if url.scheme.startswith("trust+") or url.scheme == "zaqar":
            raise AodhError(f"Unsupported action {action}: Keystone trusts and Zaqar queues are not supported "
                            f"here; use a pre-signed webhook URL (e.g. a Heat scaling policy's alarm_url)")
        if url.scheme not in schemes:
            raise AodhError(f"Unsupported action {action}: supported schemes are {', '.join(schemes)}")
        if url.scheme in ("http", "https") and not url.hostname:
            raise AodhError(f"Unsupported action {action}: no host")
        if url.scheme == "log" and not identity.is_admin:
            raise AodhError(f"You are not authorized to create action: {action}", 401)
        if action not in out:
            out.append(action)
    return out


def _time_constraints(v: Any) -> list[dict[str, Any]]:
    """Aodh's AlarmTimeConstraint list -> streams TimeConstraint documents."""
    if v is None:
        return []
    if not isinstance(v, list):
        raise wrong_type("time_constraints", v, list)
    out = []
    for tc in v:
        if not isinstance(tc, dict):
            raise wrong_type("time_constraints", tc, dict)
        unknown = set(tc) - {"name", "description", "start", "duration", "timezone"}
        if unknown:
            raise unknown_attribute("time_constraints", list(unknown))
        name = _text("name", tc.get("name"), required=True)
        start = _text("start", tc.get("start"), required=True)
        if not croniter.is_valid(start):
            raise invalid_input("start", start, "Invalid cron expression")
        duration = _int("duration", tc.get("duration"), 0, 2**31 - 1, -1)
        if duration < 0:
            raise mandatory("duration")
        timezone = _text("timezone", tc.get("timezone")) or ""
        if timezone:
            try:
                ZoneInfo(timezone)
            except (ValueError, KeyError, OSError):
                raise AodhError(f"Timezone {timezone} is not valid") from None
        description = _text("description", tc.get("description")) or ""
        out.append({"name": name, "description": description, "start": start, "duration": duration,
                    "timezone": timezone or None})
    names = [tc["name"] for tc in out]
    if len(names) != len(set(names)):
        raise AodhError("Time constraint names must be unique for a given alarm.")
    return out


def translate(body: Any, identity: Identity, rate_meters: dict[str, str],
              owner: tuple[str | None, str | None] | None = None) -> Translated:
    """Validate an Aodh alarm body (POST, or PUT when ``owner`` is the current (user_id, project_id)).

    Ownership as Aodh's: a non-admin's alarm belongs to the caller (naming
    another user or project on POST is 401); an admin may name any, and
    without one the caller (POST) or the current owner (PUT) is kept.

    Raises:
        AodhError: the first problem, with Aodh's status and message.
    """
    if not isinstance(body, dict):
        raise AodhError("Invalid input: the request body must be a JSON object")
    unknown = set(body) - ALARM_ATTRIBUTES
    if unknown:
        raise unknown_attribute("data", list(unknown))
    name = _text("name", body.get("name"), required=True)
    kind = body.get("type")
    if kind is None:
        raise mandatory("type")
    if kind not in SUPPORTED_TYPES:
        why = UNSUPPORTED_TYPES.get(kind)
        reason = f"Alarm type {kind} is not supported here: {why}. " if why else ""
        raise invalid_input("type", kind, f"{reason}Value should be one of: {', '.join(SUPPORTED_TYPES)}")
    rule_key = f"{kind}_rule"
    if body.get(rule_key) is None:
        raise AodhError(f"{rule_key} must be set for {kind} type alarm")
    others = [f"{t}_rule" for t in AODH_TYPES if f"{t}_rule" != rule_key and body.get(f"{t}_rule")]
    if others:
        raise AodhError(f"{rule_key} and {others[0]} cannot be set at the same time")

    fields: dict[str, Any] = {}
    for aspect, current in (("user", owner[0] if owner else None), ("project", owner[1] if owner else None)):
        requested = _text(f"{aspect}_id", body.get(f"{aspect}_id"))
        caller = identity.user_id if aspect == "user" else identity.project_id
        if not identity.is_admin:
            if owner is None and requested is not None and requested != caller:
                raise project_not_authorized(requested, aspect)
            fields[f"{aspect}_id"] = caller  # on PUT too, as Aodh's get_limited_to
        else:
            fields[f"{aspect}_id"] = requested if requested is not None else (current if owner else caller)
    scope = scope_project(identity, fields["project_id"])

    if kind == "composite":
        if not isinstance(body[rule_key], dict):
            raise AodhError(f"Invalid input composite rule: {body[rule_key]}, it should be a dict with an \"and\" "
                            f"or \"or\" as key")
        aodh_rule, streams_rule = _composite(body[rule_key], scope, rate_meters, 0, [0])
        fields.update(type="composite", composite_rule=streams_rule)
    else:
        aodh_rule = normalize_rule(kind, body[rule_key], rule_key)
        fields.update(type="threshold", threshold_rule=_threshold_rule(kind, aodh_rule, scope, rate_meters))
    fields.update(
        name=name,
        description=_text("description", body.get("description")) or "",
        enabled=_bool("enabled", body.get("enabled"), True),
        repeat_actions=_bool("repeat_actions", body.get("repeat_actions"), False),
        severity=_enum("severity", body.get("severity"), SEVERITIES, "low"),
        ok_actions=_actions("ok_actions", body.get("ok_actions"), identity),
        alarm_actions=_actions("alarm_actions", body.get("alarm_actions"), identity),
        insufficient_data_actions=_actions("insufficient_data_actions", body.get("insufficient_data_actions"),
                                           identity),
        time_constraints=_time_constraints(body.get("time_constraints")),
    )
    state = _enum("state", body.get("state"), STATES, None)
    return Translated(kind, aodh_rule, fields, state)


def build_definition(alarm_id: str, t: Translated, now_us: int, base: dict[str, Any] | None = None,
                     state_override: dict[str, Any] | None = None, created: str | None = None) -> AlarmDefinition:
    """The definition for ``t``: a new one, or ``base`` (the stored document) with the Aodh fields replaced.

    Fields the Aodh API does not know (``grace``, a state override not
    replaced) are kept from ``base``. ``created`` (ISO) is the creation time
    to record when ``base`` was not made through the API.

    Raises:
        AodhError: the streams model rejected it (400 ``Alarm incorrect: ...``).
    """
    doc = dict(base or {})
    for key in ("threshold_rule", "composite_rule"):
        doc.pop(key, None)
    doc.update(t.fields)
    doc["alarm_id"] = alarm_id
    created = ((base or {}).get("aodh") or {}).get("created") or created or iso(now_us)
    if base is not None and base.get("enabled") is False and t.fields["enabled"]:
        doc.pop("disabled_reason", None)  # re-enabled by an operator: the reason it was disabled is history
    if state_override is not None:
        doc["state_override"] = state_override
    try:
        definition = parse_alarm(doc)
    except AlarmDefinitionError as exc:
        raise AodhError(f"Alarm incorrect: {exc}") from None
    doc["aodh"] = {"type": t.type, "rule": t.rule, "timestamp": iso(now_us), "created": created,
                   "streams_rule": _rule_dump(definition)}
    return definition.model_copy(update={"aodh": doc["aodh"]})


def _rule_dump(definition: AlarmDefinition) -> Any:
    return definition.rule.model_dump(mode="json", by_alias=True)


# -- definitions -> Aodh view ------------------------------------------------------------------------


def iso(ts_us: int | None) -> str | None:
    """Aodh's timestamps: naive UTC ISO 8601 with microseconds when not zero."""
    if ts_us is None:
        return None
    return datetime.fromtimestamp(ts_us / 1e6, tz=UTC).replace(tzinfo=None).isoformat()


def parse_iso(text: str) -> datetime:
    """An ISO 8601 timestamp as naive UTC (Aodh compares naive UTC datetimes).

    Raises:
        ValueError: not ISO 8601.
    """
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt


def _number(v: float) -> int | float:
    return int(v) if float(v).is_integer() else v


def _condition(attr: str, pattern: str) -> dict[str, Any]:
    literal = _literal(pattern)
    if literal is not None:
        return {"=": {attr: literal}}
    if re.fullmatch(r"(\[[^!\]]\]|[^\[\]])*", pattern):  # only * ? and single-character escapes
        like, i = [], 0
        while i < len(pattern):
            c = pattern[i]
            if c == "[":
                ch = pattern[i + 1]
                like.append("\\" + ch if ch in "%_\\" else ch)
                i += 3
                continue
            like.append("%" if c == "*" else "_" if c == "?" else "\\" + c if c in "%_\\" else c)
            i += 1
        return {"like": {attr: "".join(like)}}
    return {"=~": {attr: fnmatch.translate(pattern)}}


def aodh_rule(rule: ThresholdRule) -> tuple[str, dict[str, Any]]:
    """A streams threshold rule as an Aodh Gnocchi rule: (type, rule), for alarms not made through the API."""
    q = rule.query
    common = {"granularity": _number(rule.period), "comparison_operator": rule.comparison_operator,
              "threshold": rule.threshold, "aggregation_method": STATISTIC_METHODS[rule.statistic],
              "evaluation_periods": rule.evaluation_periods, "metric": rule.meter_name}
    literal = _literal(q.resource_id) if q.resource_id is not None else None
    if literal is not None and not q.metadata and q.user_id is None:
        return "gnocchi_resources_threshold", {**common, "resource_id": literal, "resource_type": "generic"}
    conditions = []
    for attr, pattern in (("id", q.resource_id), ("user_id", q.user_id), *sorted(q.metadata.items())):
        if pattern is not None:
            conditions.append(_condition(attr, pattern))
    query = conditions[0] if len(conditions) == 1 else {"and": conditions} if conditions else {}
    return "gnocchi_aggregation_by_resources_threshold", {**common, "query": json.dumps(query),
                                                          "resource_type": "generic"}


def _aodh_node(node: Any) -> dict[str, Any]:
    if isinstance(node, ThresholdRule):
        kind, rule = aodh_rule(node)
        return {**rule, "type": kind}
    if isinstance(node, AndRule):
        return {"and": [_aodh_node(n) for n in node.and_]}
    assert isinstance(node, OrRule)
    return {"or": [_aodh_node(n) for n in node.or_]}


def aodh_type_and_rule(definition: AlarmDefinition) -> tuple[str, dict[str, Any]]:
    """The alarm's Aodh type and rule: as given to the API if the streams rule is unchanged since."""
    stored = definition.aodh or {}
    if stored.get("type") in SUPPORTED_TYPES and stored.get("streams_rule") == _rule_dump(definition):
        return stored["type"], stored["rule"]
    if definition.type == "composite":
        return "composite", _aodh_node(definition.composite_rule)
    assert definition.threshold_rule is not None
    return aodh_rule(definition.threshold_rule)


@dataclass(frozen=True)
class AlarmState:
    """An alarm's state as the API shows it (aggregated over its resources, see :mod:`streams.api.state`)."""

    state: str = UNKNOWN
    timestamp_us: int | None = None
    reason: str = REASON_DEFAULT


def render(definition: AlarmDefinition, state: AlarmState, mtime_us: int | None = None,
           ctime_us: int | None = None) -> dict[str, Any]:
    """The Alarm document of Aodh's v2 API.

    ``mtime_us`` / ``ctime_us`` (the znode's) stand in for the definition
    and creation times of alarms not made through the API.
    """
    kind, rule = aodh_type_and_rule(definition)
    stored = definition.aodh or {}
    timestamp = stored.get("timestamp") or iso(mtime_us)
    created = stored.get("created") or iso(ctime_us) or timestamp
    reason = state.reason
    if not definition.enabled and definition.disabled_reason:
        reason = definition.disabled_reason  # the processor disabled it: say why
    return {
        "alarm_id": definition.alarm_id,
        "name": definition.name,
        "description": definition.description or f"{kind} alarm rule",
        "enabled": definition.enabled,
        "ok_actions": list(definition.ok_actions),
        "alarm_actions": list(definition.alarm_actions),
        "insufficient_data_actions": list(definition.insufficient_data_actions),
        "repeat_actions": definition.repeat_actions,
        "type": kind,
        "time_constraints": [
            {"name": tc.name,
             "description": tc.description or f"Time constraint at {tc.start} lasting for {tc.duration} seconds",
             "start": tc.start, "duration": tc.duration, "timezone": tc.timezone or ""}
            for tc in definition.time_constraints],
        "project_id": definition.project_id,
        "user_id": definition.user_id,
        "timestamp": timestamp,
        "state": state.state,
        "state_timestamp": iso(state.timestamp_us) if state.timestamp_us is not None else created,
        "state_reason": reason,
        "severity": definition.severity,
        "evaluate_timestamp": None,
        f"{kind}_rule": rule,
    }


__all__ = ["ALARM", "OK", "UNKNOWN", "AlarmState", "Identity", "Translated", "aodh_type_and_rule",
           "build_definition", "iso", "parse_iso", "render", "resource_query", "scope_project", "translate"]
