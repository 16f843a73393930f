"""Aodh's query languages, evaluated on rendered documents (pure).

* Simple queries: ``?q.field=F&q.op=OP&q.value=V[&q.type=T]`` repeated
  (WSME's list-of-Query), on ``GET /v2/alarms`` (fields of
  ``ALARM_QUERY_FIELDS_ALLOWED``, op ``eq`` only) and
  ``GET /v2/alarms/{id}/history`` (``type``, ``severity``, ``user``,
  ``project``, ``timestamp`` with lt/le/gt/ge, ``search_offset`` minutes).
* Complex queries: ``POST /v2/query/alarms`` and ``/v2/query/alarms/history``
  with ``{"filter": "<JSON>", "orderby": "<JSON>", "limit": N}``. The
  filter is Aodh's: ``=``, ``!=``, ``<``, ``<=``, ``=<``, ``>``, ``>=``, ``=>``,
  ``=~`` (regular expression) on one field, ``in`` with a list, ``and`` /
  ``or`` of two or more, ``not``; ``user`` and ``project`` stand for
  ``user_id`` and ``project_id``; ``timestamp`` and ``state_timestamp``
  compare as times. python-aodhclient uses it to find an alarm by name.

Messages and status codes are Aodh's (``aodh/api/controllers/v2/query.py``,
``utils.py``, WSME).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from streams.api.errors import AodhError, invalid_input, project_not_authorized, rbac_failed
from streams.api.mapping import Identity, parse_iso

ALARM_QUERY_FIELDS_ALLOWED = frozenset({"all_projects", "user_id", "project_id", "type", "name", "enabled",
                                        "state", "severity", "timestamp", "repeat_actions"})
HISTORY_QUERY_KEYS = ("project", "search_offset", "severity", "timestamp", "type", "user")
ALARM_FIELDS = ("alarm_id", "type", "enabled", "name", "description", "timestamp", "user_id", "project_id",
                "state", "state_timestamp", "state_reason", "ok_actions", "alarm_actions",
                "insufficient_data_actions", "repeat_actions", "rule", "time_constraints", "severity",
                "evaluate_timestamp")
CHANGE_FIELDS = ("event_id", "alarm_id", "type", "detail", "user_id", "project_id", "on_behalf_of",
                 "severity", "timestamp")
ALARM_SORT_KEYS = ("alarm_id", "enabled", "name", "type", "severity", "timestamp", "user_id", "project_id",
                   "state", "repeat_actions", "state_timestamp")
CHANGE_SORT_KEYS = ("event_id", "alarm_id", "on_behalf_of", "project_id", "user_id", "type", "timestamp",
                    "severity")
TIMESTAMP_FIELDS = ("timestamp", "state_timestamp")
MAX_REGEX = 256
_TRUE = {"1", "t", "true", "on", "y", "yes"}
_FALSE = {"0", "f", "false", "off", "n", "no"}


@dataclass(frozen=True)
class SimpleQuery:
    """One ``q.*`` triple (WSME's Query): field, op (default ``eq``), value, optional type."""

    field: str
    op: str
    value: str
    type: str = ""

    def __repr__(self) -> str:  # Aodh's messages print queries this way
        return f"<Query {self.field!r} {self.op} {self.value!r} {self.type or 'Unset'}>"

    def typed_value(self, forced: str | None = None) -> Any:
        """Aodh's ``Query.get_value``: converted by ``type`` (or ``forced``)."""
        kind = forced or self.type
        try:
            if not kind:
                return self.value
            if kind == "boolean":
                v = self.value.strip().lower()
                if v not in _TRUE | _FALSE:
                    raise ValueError(self.value)
                return v in _TRUE
            if kind == "integer":
                return int(self.value)
            if kind == "float":
                return float(self.value)
            if kind == "string":
                return self.value
            if kind == "datetime":
                return parse_iso(self.value)
        except ValueError:
            raise AodhError(f"Unable to convert the value {self.value} to the expected data type {kind}.") from None
        raise AodhError(f"The data type {kind} is not supported. The supported data type list is: "
                        f"['integer', 'float', 'string', 'boolean', 'datetime']")


def parse_simple(params: Mapping[str, Any]) -> list[SimpleQuery]:
    """``q.field`` / ``q.op`` / ``q.value`` / ``q.type`` (parallel lists of a MultiDict) as queries.

    Raises:
        AodhError: the lists do not line up.
    """
    fields, ops = params.getall("q.field", []), params.getall("q.op", [])
    values, types = params.getall("q.value", []), params.getall("q.type", [])
    if len(values) != len(fields):
        raise AodhError("Invalid input for field/attribute q. Value: 'q.field and q.value must be given "
                        "together'. Mandatory field missing.")
    ops = ops + ["eq"] * (len(fields) - len(ops))
    types = types + [""] * (len(fields) - len(types))
    return [SimpleQuery(f, o or "eq", v, t) for f, o, v, t in zip(fields, ops, values, types, strict=False)]


@dataclass(frozen=True)
class AlarmFilter:
    """Checked ``GET /v2/alarms`` filters: equality per field, and which projects are visible."""

    equals: dict[str, Any]
    all_projects: bool


def alarm_filter(queries: list[SimpleQuery], identity: Identity) -> AlarmFilter:
    """Aodh's ``AlarmsController.get_all`` checks: allowed fields, ``eq`` only, project scoping.

    Without ``all_projects=true`` only the caller's project is listed (admins
    included, as in Aodh); naming another project is 401 for a non-admin;
    ``all_projects`` is 403 for a non-admin.
    """
    keys = {q.field for q in queries}
    if not keys <= ALARM_QUERY_FIELDS_ALLOWED:
        raise invalid_input("field", _set_repr(keys), f"only fields {_set_repr(ALARM_QUERY_FIELDS_ALLOWED)} "
                            f"are allowed")
    ops = {q.op for q in queries}
    if ops - {"eq"}:
        raise invalid_input("op", _set_repr(ops), "only operations {'eq'} are allowed")
    equals: dict[str, Any] = {}
    all_projects = False
    for q in queries:
        if q.field == "all_projects":
            all_projects = q.typed_value("boolean")
        elif q.field in ("enabled", "repeat_actions"):
            equals[q.field] = q.typed_value("boolean")
        elif q.field == "timestamp":
            equals[q.field] = q.typed_value("datetime")
        else:
            equals[q.field] = q.typed_value()
            if not isinstance(equals[q.field], str):
                equals[q.field] = q.value
    if all_projects:
        if not identity.is_admin:
            raise rbac_failed()
    elif "project_id" not in equals:
        equals["project_id"] = identity.project_id
    elif not identity.is_admin and equals["project_id"] != identity.project_id:
        raise project_not_authorized(equals["project_id"])
    return AlarmFilter(equals, all_projects)


def matches_filter(alarm: dict[str, Any], f: AlarmFilter) -> bool:
    """True when the rendered ``alarm`` has every value of ``f``."""
    for field, want in f.equals.items():
        have = alarm.get(field)
        if field == "timestamp":
            if have is None or parse_iso(have) != want:
                return False
        elif have != want:
            return False
    return True


@dataclass(frozen=True)
class HistoryFilter:
    """Checked ``GET /v2/alarms/{id}/history`` filters."""

    types: list[str]
    severity: str | None
    user: str | None
    project: str | None
    since_us: tuple[int, bool] | None
    until_us: tuple[int, bool] | None


def _us(dt: datetime) -> int:
    from datetime import UTC

    return int(dt.replace(tzinfo=UTC).timestamp() * 1_000_000)


def history_filter(queries: list[SimpleQuery], identity: Identity) -> HistoryFilter:
    """Aodh's ``validate_query`` / ``query_to_kwargs`` for ``get_alarm_changes``."""
    translation = {"user_id": "user", "project_id": "project"}
    valid = set(HISTORY_QUERY_KEYS)
    stamps: dict[str, SimpleQuery] = {}
    out: dict[str, Any] = {}
    for q in queries:
        key = translation.get(q.field, q.field)
        if key not in valid:
            raise AodhError(f'Unknown argument: "{key}": unrecognized field in query: {queries!r}, '
                            f"valid keys: {sorted(valid)}")
        if key == "timestamp":
            if q.op not in ("lt", "le", "gt", "ge"):
                raise invalid_input("op", q.op, f"unimplemented operator for {q.field}")
            stamps["until" if q.op in ("lt", "le") else "since"] = q
        elif q.op != "eq":
            raise invalid_input("op", q.op, f"unimplemented operator for {q.field}")
        elif key == "search_offset":
            stamps["offset"] = q
        else:
            out[key] = q.value
    if "offset" in stamps and not ({"since", "until"} & set(stamps)):
        raise invalid_input("field", "search_offset", "search_offset cannot be used without timestamp")
    if not identity.is_admin and out.get("project") not in (None, identity.project_id):
        raise project_not_authorized(out["project"])
    offset = timedelta(minutes=int(stamps["offset"].value)) if "offset" in stamps else timedelta(0)

    def stamp(which: str, sign: int) -> tuple[int, bool] | None:
        q = stamps.get(which)
        if q is None:
            return None
        try:
            when = parse_iso(q.value)
        except ValueError:
            raise invalid_input("timestamp", q.value, "invalid timestamp format") from None
        return _us(when + sign * offset), q.op in ("le", "ge")

    return HistoryFilter([out["type"]] if "type" in out else [], out.get("severity"), out.get("user"),
                         out.get("project"), stamp("since", -1), stamp("until", 1))


def _set_repr(values) -> str:
    return "{" + ", ".join(repr(v) for v in sorted(values)) + "}"


# -- sort and pagination ---------------------------------------------------------------------------


def sort_and_page(items: list[dict[str, Any]], sorts: list[str], limit: str | None, marker: str | None,
                  keys: tuple[str, ...], primary: str, default: list[tuple[str, str]],
                  marker_not_found: Callable[[str], AodhError]) -> list[dict[str, Any]]:
    """Aodh's ``get_pagination_options`` and storage paging: ``sort=key[:asc|desc]``, ``limit``, ``marker``.

    The primary key is always the last sort key (stable pages).
    """
    order: list[tuple[str, str]] = []
    for s in sorts:
        key, _, direction = s.partition(":")
        if key not in keys or (direction or "asc") not in ("asc", "desc"):
            raise invalid_input("sort", s, "the sort parameter should be a pair of sort key and sort dir combined "
                                f"with ':', or only sort key specified and sort dir will be default 'asc', the "
                                f"supported sort keys are: {keys}")
        order.append((key, direction or "asc"))
    order = order or list(default)
    if primary not in {k for k, _ in order}:
        order.append((primary, order[-1][1] if order else "asc"))
    for key, direction in reversed(order):
        items.sort(key=lambda d, k=key: _sort_key(d.get(k)), reverse=direction == "desc")
    if marker:
        at = next((i for i, d in enumerate(items) if d.get(primary) == marker), None)
        if at is None:
            raise marker_not_found(marker)
        items = items[at + 1:]
    if limit is not None:
        try:
            n = int(limit)
        except ValueError:
            raise invalid_input("limit", limit, "it should be a positive integer.") from None
        if n <= 0:
            raise invalid_input("limit", limit, "it should be a positive integer.")
        items = items[:n]
    return items


def _sort_key(v: Any) -> tuple:
    return (v is not None, str(v) if not isinstance(v, int | float | bool) else v)


# -- complex queries -------------------------------------------------------------------------------

_SIMPLE_OPS = {"=": "eq", "!=": "ne", "<": "lt", ">": "gt", "<=": "le", "=<": "le", ">=": "ge", "=>": "ge",
               "=~": "re"}
_NAME_MAPPING = {"user": "user_id", "project": "project_id"}


@dataclass(frozen=True)
class ComplexQuery:
    """A validated complex query: ``predicate(doc)``, ``orderby`` [(field, asc|desc)], ``limit``."""

    predicate: Callable[[dict[str, Any]], bool]
    orderby: list[tuple[str, str]]
    limit: int | None


def complex_query(body: Any, fields: tuple[str, ...], identity: Identity, visibility: str) -> ComplexQuery:
    """Aodh's ValidatedComplexQuery: validate ``body``, and restrict a non-admin to its project.

    ``visibility`` is the project field (``project_id`` for alarms,
    ``on_behalf_of`` for history); a filter naming another project there is 401.
    """
    if not isinstance(body, dict):
        raise AodhError("Invalid input: the request body must be a JSON object")
    unknown = set(body) - {"filter", "orderby", "limit"}
    if unknown:
        raise AodhError(f"Unknown attribute for argument body: {', '.join(sorted(unknown))}")
    valid = set(fields) | set(_NAME_MAPPING)
    predicate: Callable[[dict[str, Any]], bool] = lambda d: True  # noqa: E731
    if body.get("filter") is not None:
        try:
            expr = json.loads(body["filter"]) if isinstance(body["filter"], str) else None
            if expr is None:
                raise ValueError("the filter must be a JSON string")
            predicate = _compile(expr, valid, 0)
        except (ValueError, RecursionError) as exc:
            raise AodhError(f"Filter expression not valid: {exc}") from None
        if not identity.is_admin:
            _check_cross_project(expr, visibility, identity.project_id)
    if not identity.is_admin:
        inner = predicate
        predicate = lambda d: d.get(visibility) == identity.project_id and inner(d)  # noqa: E731
    orderby: list[tuple[str, str]] = []
    if body.get("orderby") is not None:
        try:
            raw = json.loads(body["orderby"]) if isinstance(body["orderby"], str) else None
            if not isinstance(raw, list):
                raise ValueError("orderby must be a JSON list of {field: 'asc'|'desc'}")
            for item in raw:
                if not isinstance(item, dict) or len(item) != 1:
                    raise ValueError(f"{item!r} is not a one-field object")
                field, direction = next(iter(item.items()))
                if field not in valid or not isinstance(direction, str) \
                        or direction.lower() not in ("asc", "desc"):
                    raise ValueError(f"{item!r}: unknown field or direction")
                orderby.append((_NAME_MAPPING.get(field, field), direction.lower()))
        except ValueError as exc:
            raise AodhError(f"Order-by expression not valid: {exc}") from None
    limit = body.get("limit")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise invalid_input("limit", limit, f"Wrong type. Expected '{int}', got '{type(limit)}'")
        if limit <= 0:
            raise AodhError("Limit should be positive")
    return ComplexQuery(predicate, orderby, limit)


def apply_complex(items: list[dict[str, Any]], q: ComplexQuery) -> list[dict[str, Any]]:
    """Filter, order (default: as given) and limit ``items``."""
    out = [d for d in items if q.predicate(d)]
    for field, direction in reversed(q.orderby):
        out.sort(key=lambda d, f=field: _sort_key(d.get(f)), reverse=direction == "desc")
    return out[: q.limit] if q.limit is not None else out


def _compile(expr: Any, valid: set[str], depth: int) -> Callable[[dict[str, Any]], bool]:
    if depth > 32:
        raise ValueError("filter nested too deeply")
    if not isinstance(expr, dict) or len(expr) != 1:
        raise ValueError(f"{expr!r} should be an object with exactly one operator")
    op, arg = next(iter(expr.items()))
    op_l = op.lower() if isinstance(op, str) else op
    if op_l in ("and", "or"):
        if not isinstance(arg, list) or len(arg) < 2:
            raise ValueError(f"{op!r} needs a list of at least 2 expressions")
        parts = [_compile(a, valid, depth + 1) for a in arg]
        return (lambda d: all(p(d) for p in parts)) if op_l == "and" else (lambda d: any(p(d) for p in parts))
    if op_l == "not":
        inner = _compile(arg, valid, depth + 1)
        return lambda d: not inner(d)
    if not isinstance(arg, dict) or len(arg) != 1:
        raise ValueError(f"{expr!r}: the operand should be an object with exactly one field")
    field, value = next(iter(arg.items()))
    if field not in valid:
        raise ValueError(f"{field!r} is not a valid field ({', '.join(sorted(valid))})")
    field = _NAME_MAPPING.get(field, field)
    if op_l == "in":
        if not isinstance(value, list) or not value or not all(isinstance(v, str | int | float) for v in value):
            raise ValueError(f"'in' on {field!r} needs a non-empty list of strings or numbers")
        wanted = [_coerce(field, v) for v in value]
        return lambda d: any(_compare(d.get(field), "eq", w) for w in wanted)
    if op_l not in _SIMPLE_OPS:
        raise ValueError(f"{op!r} is not an operator ({', '.join(list(_SIMPLE_OPS) + ['in', 'and', 'or', 'not'])})")
    if not isinstance(value, str | int | float | bool):
        raise ValueError(f"the value of {field!r} should be a string, a number or a boolean")
    kind = _SIMPLE_OPS[op_l]
    if kind == "re":
        if not isinstance(value, str) or len(value) > MAX_REGEX:
            raise ValueError(f"'=~' needs a regular expression of at most {MAX_REGEX} characters")
        try:
            rx = re.compile(value)
        except re.error as exc:
            raise ValueError(f"bad regular expression {value!r}: {exc}") from None
        return lambda d: d.get(field) is not None and rx.search(str(d.get(field))) is not None
    want = _coerce(field, value)
    return lambda d: _compare(d.get(field), kind, want)


def _coerce(field: str, value: Any) -> Any:
    if field in TIMESTAMP_FIELDS and isinstance(value, str):
        try:
            return parse_iso(value)
        except ValueError:
            raise AodhError(f"Failed to parse the timestamp value {value}") from None
    return value


def _compare(have: Any, kind: str, want: Any) -> bool:
    if isinstance(want, datetime):
        if have is None:
            return False
        have = parse_iso(have) if isinstance(have, str) else have
    if kind == "eq":
        return have == want
    if kind == "ne":
        return have != want
    if have is None:
        return False
    try:
        return {"lt": have < want, "le": have <= want, "gt": have > want, "ge": have >= want}[kind]
    except TypeError:
        return False


def _check_cross_project(expr: Any, visibility: str, own: str | None) -> None:
    """Aodh's ``_check_cross_project_references``: a non-admin may only name its own project."""
    if not isinstance(expr, dict) or len(expr) != 1:
        return
    op, arg = next(iter(expr.items()))
    if str(op).lower() in ("and", "or"):
        for a in arg:
            _check_cross_project(a, visibility, own)
    elif str(op).lower() == "not":
        _check_cross_project(arg, visibility, own)
    elif isinstance(arg, dict) and len(arg) == 1:
        field, value = next(iter(arg.items()))
        if _NAME_MAPPING.get(field, field) == visibility and value != own:
            raise project_not_authorized(value)
