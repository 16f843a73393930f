r"""Grafana panel SQL, expanded as the grafana-clickhouse-datasource plugin (v4) does.

Used by the tests to run every dashboard panel against ClickHouse, and by
anyone who wants to see the SQL a panel sends. Macros (the plugin's
``pkg/macros``; times are whole epoch seconds):

========================  ==========================================================
``$__timeFilter(c)``      ``c >= toDateTime(FROM) AND c <= toDateTime(TO)``
``$__timeFilter_ms(c)``   ``c >= fromUnixTimestamp64Milli(FROM_MS) AND c <= ...``
``$__dateFilter(c)``      ``c >= toDate('YYYY-MM-DD') AND c <= toDate('YYYY-MM-DD')``
``$__fromTime``           ``toDateTime(FROM)`` (``$__toTime`` likewise)
``$__interval_s``         the panel's interval in seconds
``$__timeInterval(c)``    ``toStartOfInterval(toDateTime(c), INTERVAL N second)`` (not on 18.16)
``$__conditionalAll(cond, $v)``  ``cond``, or ``1=1`` when ``$v`` is All
========================  ==========================================================

Template variables (``$name``, ``${name}``, ``[[name]]``, ``${name:format}``) are
replaced as Grafana's template service does for this plugin (its ``format``
callback, and Grafana's format registry for an explicit format):

======================  =====================================  ======================
written                 single value ``v``                     multi-value ``[a, b]``
======================  =====================================  ======================
``${v}``                ``v`` as is: **no escaping at all**    ``'a','b'`` unescaped
``${v:raw}``            ``v`` as is                            ``a,b``
``${v:singlequote}``    ``'v'`` with ``'`` -> ``\'`` only       ``'a','b'``
``${v:sqlstring}``      ``'v'`` with ``'`` -> ``''``             ``'a','b'``
``${v:percentencode}``  ``v`` percent-encoded: only            ``{a,b}`` encoded
                        ``A-Z a-z 0-9 - _ . ~`` stay
======================  =====================================  ======================

None of the quoting formats escapes the backslash, which ClickHouse string
literals treat as an escape character: ``x\' OR 1=1 --`` under
``singlequote`` becomes ``'x\\' OR 1=1 --'``, the string ``x\`` followed by SQL
(checked on the 18.16 server in tests/integration/test_grafana.py), and
systemd's cgroup names (``system-getty\x2d...``) change meaning. So the
dashboards write every value variable as ``decodeURLComponent('${v:percentencode}')``:
the literal holds nothing but ``A-Z a-z 0-9 - _ . ~ %``, and ClickHouse decodes the exact value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from urllib.parse import quote


def _quoted(values: Sequence[str], escape: Callable[[str], str], quote: str = "'") -> str:
    return ",".join(f"{quote}{escape(v)}{quote}" for v in values)


_FORMATS: dict[str, Callable[[str | Sequence[str], bool], str]] = {
    "raw": lambda v, multi: ",".join(v) if multi else v,
    "csv": lambda v, multi: ",".join(v) if multi else v,
    "singlequote": lambda v, multi: _quoted(v if multi else [v], lambda x: x.replace("'", "\\'")),
    "doublequote": lambda v, multi: _quoted(v if multi else [v], lambda x: x.replace('"', '\\"'), '"'),
    "sqlstring": lambda v, multi: _quoted(v if multi else [v], lambda x: x.replace("'", "''").replace('"', '\\"')),
    "percentencode": lambda v, multi: quote("{" + ",".join(v) + "}" if multi else v, safe=""),
}


def format_value(value: str | Sequence[str], fmt: str | None) -> str:
    """A template variable's value as Grafana writes it into this plugin's SQL (table in the module docstring).

    ``value``: a string (single value) or a list of strings (multi-value).

    Raises:
        ValueError: a format Grafana has but these tests do not model.
    """
    multi = not isinstance(value, str)
    if fmt is None:  # the plugin's own format callback
        return "'" + "','".join(value) + "'" if multi else value
    if fmt not in _FORMATS:
        raise ValueError(f"variable format {fmt!r} is not modelled (known: {', '.join(sorted(_FORMATS))})")
    return _FORMATS[fmt](list(value) if multi else value, multi)


def _args(text: str, start: int) -> tuple[list[str], int]:
    """Comma-separated arguments of a macro call whose '(' is at ``start``; returns (args, end)."""
    depth, i, args, cur = 0, start, [], []
    while i < len(text):
        ch = text[i]
        if ch == "(":
            depth += 1
            if depth > 1:
                cur.append(ch)
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append("".join(cur).strip())
                return args, i + 1
            cur.append(ch)
        elif ch == "," and depth == 1:
            args.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
        i += 1
    raise ValueError(f"unbalanced parentheses in macro call at {start}: {text[start:start + 40]!r}")


def expand(sql: str, start: datetime, end: datetime, interval_s: int,
           variables: Mapping[str, str | Sequence[str]] | None = None) -> str:
    """``sql`` with the plugin's macros and the template ``variables`` expanded.

    Args:
        start, end: the dashboard's time range (aware datetimes; naive = UTC).
        interval_s: ``$__interval`` in seconds (>= 1).
        variables: template variable values (a list for a multi-value variable), formatted by
            :func:`format_value` exactly as Grafana would: unescaped unless the SQL asks for a format.

    Raises:
        ValueError: an unknown ``$__`` macro, an unset template variable or an unmodelled format remains.
    """
    def secs(t: datetime) -> int:
        return int((t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp())

    t0, t1 = secs(start), secs(end)
    variables = dict(variables or {})

    # Template variables first: macros may take them as arguments.
    def var(m: re.Match) -> str:
        name = m.group("a") or m.group("b") or m.group("c") or m.group("d")
        if name.startswith("__"):
            return m.group(0)
        if name not in variables:
            raise ValueError(f"template variable {name!r} has no value")
        value = variables[name]
        return format_value(value if isinstance(value, list | tuple) else str(value), m.group("fmt"))

    sql = re.sub(r"\$\{(?P<a>\w+)(?::(?P<fmt>\w+))?\}|\[\[(?P<b>\w+)\]\]|\$(?P<c>\w+)(?P<d>)", var, sql)

    simple = {
        "$__fromTime_ms": f"fromUnixTimestamp64Milli({t0 * 1000})",
        "$__toTime_ms": f"fromUnixTimestamp64Milli({t1 * 1000})",
        "$__fromTime": f"toDateTime({t0})",
        "$__toTime": f"toDateTime({t1})",
        "$__interval_s": str(int(interval_s)),
    }
    calls = {
        "$__timeFilter_ms": lambda a: (f"{a[0]} >= fromUnixTimestamp64Milli({t0 * 1000}) AND "
                                       f"{a[0]} <= fromUnixTimestamp64Milli({t1 * 1000})"),
        "$__timeFilter": lambda a: f"{a[0]} >= toDateTime({t0}) AND {a[0]} <= toDateTime({t1})",
        "$__dateFilter": lambda a: (f"{a[0]} >= toDate('{datetime.fromtimestamp(t0, UTC):%Y-%m-%d}') AND "
                                    f"{a[0]} <= toDate('{datetime.fromtimestamp(t1, UTC):%Y-%m-%d}')"),
        "$__timeInterval_ms": lambda a: (f"toStartOfInterval(toDateTime64({a[0]}, 3), "
                                         f"INTERVAL {int(interval_s) * 1000} millisecond)"),
        "$__timeInterval": lambda a: f"toStartOfInterval(toDateTime({a[0]}), INTERVAL {int(interval_s)} second)",
        "$__conditionalAll": lambda a: "1=1" if a[1] in ("$__all", "", "All") else a[0],
    }
    out, i = [], 0
    pattern = re.compile(r"\$__\w+")
    while True:
        m = pattern.search(sql, i)
        if not m:
            out.append(sql[i:])
            break
        out.append(sql[i:m.start()])
        name = m.group(0)
        if name in calls and m.end() < len(sql) and sql[m.end()] == "(":
            args, i = _args(sql, m.end())
            out.append(calls[name](args))
        elif name in simple:
            out.append(simple[name])
            i = m.end()
        else:
            raise ValueError(f"unknown Grafana macro {name}")
    return "".join(out)


def panels(dashboard: Mapping) -> Iterator[tuple[str, str, str]]:
    """(panel title, query type, raw SQL) of every panel target of a dashboard JSON, rows included."""
    stack = list(dashboard.get("panels", []))
    while stack:
        p = stack.pop(0)
        stack.extend(p.get("panels", []))
        for t in p.get("targets", []):
            if "rawSql" in t:
                yield p["title"], t.get("queryType", "table"), t["rawSql"]


def variable_queries(dashboard: Mapping) -> Iterator[tuple[str, str]]:
    """(variable name, SQL) of every query-type template variable."""
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            yield v["name"], v["query"] if isinstance(v["query"], str) else v["query"].get("rawSql", "")
