from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from streams.storage.grafana import expand, format_value, panels, variable_queries

DASHBOARDS = sorted((Path(__file__).parents[3] / "deploy" / "grafana" / "dashboards").glob("*.json"))
T0, T1 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)


def test_macros_expand_like_the_plugin():
    sql = ("SELECT $__timeInterval(ts) AS t FROM x WHERE $__timeFilter(ts) AND d = '${meter}' "
           "AND $__conditionalAll(p IN (${project:singlequote}), $project) AND n > $__interval_s")
    out = expand(sql, T0, T1, 30, {"meter": "it's", "project": "p1"})
    # The plugin escapes nothing in a plain ${meter}: the quote breaks the literal, as it would in Grafana.
    assert out == ("SELECT toStartOfInterval(toDateTime(ts), INTERVAL 30 second) AS t FROM x WHERE "
                   "ts >= toDateTime(1767225600) AND ts <= toDateTime(1767312000) AND d = 'it's' "
                   "AND p IN ('p1') AND n > 30")
    assert expand("$__conditionalAll(a = 1, $v)", T0, T1, 1, {"v": "$__all"}) == "1=1"
    assert expand("$__dateFilter(d)", T0, T1, 1) == "d >= toDate('2026-01-01') AND d <= toDate('2026-01-02')"


def test_unknown_macros_and_variables_fail():
    with pytest.raises(ValueError, match="macro"):
        expand("$__nope(x)", T0, T1, 1)
    with pytest.raises(ValueError, match="variable"):
        expand("'${missing}'", T0, T1, 1)


def test_dashboards_are_complete():
    assert {p.stem for p in DASHBOARDS} == {"fleet-overview", "resource", "alarms", "pipeline-health"}
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        assert d["uid"].startswith("streams-")
        for title, _kind, sql in panels(d):
            expand(sql, T0, T1, 60, {"database": "db", "meter": "m", "project": "p", "resource": "r"})
            assert "$__timeInterval" not in sql, f"{title}: toStartOfInterval is missing on ClickHouse 18.16"
    resource = json.loads((DASHBOARDS[0].parent / "resource.json").read_text())
    assert [n for n, _ in variable_queries(resource)] == ["meter", "project", "resource"]


def test_provisioned_data_source_is_the_one_the_dashboards_use():
    import yaml

    root = DASHBOARDS[0].parents[1]
    [ds] = yaml.safe_load((root / "provisioning" / "datasources" / "clickhouse.yaml").read_text())["datasources"]
    assert ds["type"] == "grafana-clickhouse-datasource" and ds["jsonData"]["username"] == "grafana"
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        assert {p["datasource"]["uid"] for p in d["panels"]} == {ds["uid"]}
    provider = yaml.safe_load((root / "provisioning" / "dashboards" / "streams.yaml").read_text())
    assert provider["providers"][0]["type"] == "file"


def test_devenv_users_xml_has_a_readonly_grafana_user(tmp_path):
    import xml.etree.ElementTree as ET

    from streams import devenv

    svc = devenv.ClickHouse(tmp_path)
    svc.prepare()
    root = ET.parse(svc.workdir / "users.xml").getroot()
    assert root.find("users/grafana/profile").text == "readonly"
    assert root.find("profiles/readonly/readonly").text == "2"


@pytest.mark.parametrize("value, fmt, expected", [
    ("a'b\\c", None, "a'b\\c"),  # the plugin's own callback: no escaping
    (["a", "b'c"], None, "'a','b'c'"),
    ("a'b\\c", "raw", "a'b\\c"),
    ("a'b\\c", "singlequote", "'a\\'b\\c'"),  # Grafana escapes the quote only, never the backslash
    (["a", "b'c"], "singlequote", "'a','b\\'c'"),
    ("a'b\"c", "sqlstring", "'a''b\\\"c'"),
    ("a'b\\x2d /€!*()~._-", "percentencode", "a%27b%5Cx2d%20%2F%E2%82%AC%21%2A%28%29~._-"),
    (["a", "b"], "percentencode", "%7Ba%2Cb%7D"),
])
def test_variable_formats_are_grafanas(value, fmt, expected):
    assert format_value(value, fmt) == expected


def test_unmodelled_format_fails():
    with pytest.raises(ValueError, match="format 'lucene' is not modelled"):
        expand("${v:lucene}", T0, T1, 1, {"v": "x"})


VARIABLE = re.compile(r"\$\{(?P<a>\w+)(?::(?P<fmt>\w+))?\}|\[\[(?P<b>\w+)\]\]|\$(?P<c>\w+)")


def test_every_value_variable_is_percent_encoded_and_decoded_by_clickhouse():
    """No dashboard SQL may put a variable's value in a literal unescaped, or with a quoting format
    (which leaves backslashes to ClickHouse); ``database`` is a hidden constant used as an identifier."""
    checked = 0
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        for where, sql in [*((t, s) for t, _k, s in panels(d)), *variable_queries(d)]:
            for m in VARIABLE.finditer(sql):
                name = m["a"] or m["b"] or m["c"]
                if name.startswith("__") or name == "database":
                    continue
                checked += 1
                assert m["fmt"] == "percentencode", f"{path.name}: {where}: {m[0]} is not percent-encoded"
                before, after = sql[:m.start()], sql[m.end():]
                assert before.endswith("decodeURLComponent('") and after.startswith("')"), \
                    f"{path.name}: {where}: {m[0]} is not decoded by ClickHouse"
    assert checked >= 8  # meter, project, resource in the resource dashboard
