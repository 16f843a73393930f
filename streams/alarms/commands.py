"""``streams alarm create | list | show | update | delete | history`` and ``streams notify``.

Definitions are written to ZooKeeper (``<coordination.root>/alarms/<id>``);
running processors pick changes up within seconds. ``history`` reads
ClickHouse ``alarm_history``.
"""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path
from typing import Any

import click
import yaml

from streams.alarms.model import AlarmDefinitionError, parse_alarm


def _ctx_settings():
    ctx = click.get_current_context()
    return ctx.find_root().obj.settings


def _store(settings):
    from streams.alarms.definitions import AlarmDefinitionStore
    from streams.coordination import connect

    if not settings.coordination.hosts:
        raise click.ClickException("coordination.hosts is not set: alarm definitions live in ZooKeeper")
    client = connect(settings.coordination)
    return client, AlarmDefinitionStore(client, settings.coordination.root)


def _close(client) -> None:
    client.stop()
    client.close()


def _rule_options(f):
    for opt in reversed([
        click.option("--name", help="Alarm name."),
        click.option("--description"),
        click.option("--meter", "meter_name", help="Meter name (threshold rule)."),
        click.option("--threshold", type=float),
        click.option("--operator", "comparison_operator", type=click.Choice(["lt", "le", "eq", "ne", "ge", "gt"])),
        click.option("--statistic", type=click.Choice(["avg", "min", "max", "sum", "count", "last"])),
        click.option("--period", type=float, help="Window length, s."),
        click.option("--evaluation-periods", type=int),
        click.option("--resource-id", help="Resource id or pattern."),
        click.option("--project-id"),
        click.option("--user-id"),
        click.option("--metadata", multiple=True, help="KEY=VALUE (pattern); repeatable."),
        click.option("--severity", type=click.Choice(["low", "moderate", "critical"])),
        click.option("--alarm-action", multiple=True, help="URL; repeatable."),
        click.option("--ok-action", multiple=True, help="URL; repeatable."),
        click.option("--insufficient-data-action", multiple=True, help="URL; repeatable."),
        click.option("--repeat-actions/--no-repeat-actions", default=None),
        click.option("--enabled/--disabled", default=None),
        click.option("--grace", type=float, help="Seconds windows stay open for late samples."),
        click.option("--file", "-f", "file", type=click.Path(exists=True, dir_okay=False),
                     help="YAML or JSON definition (flags override its fields)."),
    ]):
        f = opt(f)
    return f


def _patch(doc: dict[str, Any], o: dict[str, Any]) -> dict[str, Any]:
    if o.get("file"):
        loaded = yaml.safe_load(Path(o["file"]).read_text())
        if not isinstance(loaded, dict):
            raise click.ClickException(f"{o['file']}: an alarm definition must be a mapping")
        doc = {**doc, **loaded}
    for key in ("name", "description", "severity", "repeat_actions", "enabled", "grace"):
        if o.get(key) is not None:
            doc[key] = o[key]
    if o.get("enabled"):
        doc.pop("disabled_reason", None)  # re-enabled by hand: the processor's reason no longer holds
    for key, opt in (("alarm_actions", "alarm_action"), ("ok_actions", "ok_action"),
                     ("insufficient_data_actions", "insufficient_data_action")):
        if o.get(opt):
            doc[key] = list(o[opt])
    rule_keys = ("meter_name", "threshold", "comparison_operator", "statistic", "period", "evaluation_periods")
    query_keys = ("resource_id", "project_id", "user_id")
    if any(o.get(k) is not None for k in rule_keys + query_keys) or o.get("metadata"):
        if doc.get("type", "threshold") != "threshold":
            raise click.ClickException("rule flags apply to threshold alarms; edit composite rules with --file")
        rule = dict(doc.get("threshold_rule") or {})
        for k in rule_keys:
            if o.get(k) is not None:
                rule[k] = o[k]
        query = dict(rule.get("query") or {})
        for k in query_keys:
            if o.get(k) is not None:
                query[k] = o[k]
        if o.get("metadata"):
            meta = dict(query.get("metadata") or {})
            for item in o["metadata"]:
                key, sep, value = item.partition("=")
                if not sep:
                    raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--metadata")
                meta[key] = value
            query["metadata"] = meta
        rule["query"] = query
        doc["threshold_rule"] = rule
        doc.setdefault("type", "threshold")
    return doc


def _echo(alarm) -> None:
    click.echo(json.dumps(alarm.model_dump(mode="json", by_alias=True, exclude_none=True), indent=2, sort_keys=True))


@click.group()
def alarm() -> None:
    """Alarm definitions (ZooKeeper) and history (ClickHouse)."""


@alarm.command("create")
@click.option("--id", "alarm_id", help="Alarm id (default: a uuid4).")
@_rule_options
def alarm_create(alarm_id: str | None, **o: Any) -> None:
    """Create an alarm from flags and/or --file; prints it."""
    doc = _patch({}, o)
    if alarm_id:
        doc["alarm_id"] = alarm_id
    try:
        definition = parse_alarm(doc)
    except AlarmDefinitionError as exc:
        raise click.ClickException(f"invalid alarm: {exc}") from None
    from streams.alarms.definitions import AlarmExists

    client, store = _store(_ctx_settings())
    try:
        store.create(definition)
    except AlarmExists as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        _close(client)
    _echo(definition)


@alarm.command("list")
def alarm_list() -> None:
    """One line per alarm: id, name, type, enabled, severity, rule, and why it is disabled
    (by the processor) or invalid (a document in ZooKeeper that does not validate: never evaluated)."""
    client, store = _store(_ctx_settings())
    try:
        alarms = store.list_all()
    finally:
        _close(client)
    click.echo("alarm_id\tname\ttype\tenabled\tseverity\trule\tdisabled_reason")
    for alarm_id, a, error in alarms:
        if a is None:
            click.echo(f"{alarm_id}\t-\t-\tinvalid\t-\t-\t{error}")
            continue
        r = a.threshold_rule
        rule = (f"{r.statistic}({r.meter_name}) {r.comparison_operator} {r.threshold:g} "
                f"x{r.evaluation_periods} per {r.period:g}s" if r else "composite")
        click.echo(f"{a.alarm_id}\t{a.name}\t{a.type}\t{a.enabled}\t{a.severity}\t{rule}\t"
                   f"{a.disabled_reason or ''}")


@alarm.command("show")
@click.argument("alarm_id")
def alarm_show(alarm_id: str) -> None:
    """Print a definition as JSON."""
    from streams.alarms.definitions import AlarmNotFound

    client, store = _store(_ctx_settings())
    try:
        definition, _ = store.get(alarm_id)
    except AlarmNotFound:
        raise click.ClickException(f"no alarm {alarm_id!r}") from None
    finally:
        _close(client)
    _echo(definition)


@alarm.command("update")
@click.argument("alarm_id")
@_rule_options
def alarm_update(alarm_id: str, **o: Any) -> None:
    """Change fields of an alarm (flags and/or --file); running processors apply it within seconds."""
    from streams.alarms.definitions import AlarmNotFound

    client, store = _store(_ctx_settings())
    try:
        definition = store.update(alarm_id, lambda doc: _patch(doc, o))
    except AlarmNotFound:
        raise click.ClickException(f"no alarm {alarm_id!r}") from None
    except AlarmDefinitionError as exc:
        raise click.ClickException(f"invalid alarm: {exc}") from None
    finally:
        _close(client)
    _echo(definition)


@alarm.command("delete")
@click.argument("alarm_id")
def alarm_delete(alarm_id: str) -> None:
    """Delete an alarm."""
    from streams.alarms.definitions import AlarmNotFound

    client, store = _store(_ctx_settings())
    try:
        store.delete(alarm_id)
    except AlarmNotFound:
        raise click.ClickException(f"no alarm {alarm_id!r}") from None
    finally:
        _close(client)
    click.echo(f"deleted {alarm_id}")


@alarm.command("history")
@click.argument("alarm_id")
@click.option("--resource-id", help="Only this resource.")
@click.option("--limit", type=int, default=100, show_default=True)
def alarm_history(alarm_id: str, resource_id: str | None, limit: int) -> None:
    """State transitions of an alarm from ClickHouse alarm_history, oldest first."""
    from datetime import datetime

    from streams.storage import open_connection
    from streams.storage.schema import quote_ident

    conn = open_connection(_ctx_settings().clickhouse)
    try:
        where = "alarm_id = %(a)s" + (" AND resource_id = %(r)s" if resource_id else "")
        rows = conn.execute(
            f"SELECT timestamp_us, resource_id, previous_state, state, severity, reason "
            f"FROM {quote_ident(conn.database)}.alarm_history FINAL WHERE {where} "
            f"ORDER BY timestamp_us DESC LIMIT {int(limit)}", {"a": alarm_id, "r": resource_id})
    finally:
        conn.close()
    click.echo("timestamp\tresource_id\tprevious\tstate\tseverity\treason")
    for ts, rid, prev, state, sev, reason in reversed(rows):
        when = datetime.fromtimestamp(ts / 1e6, tz=UTC).isoformat()
        click.echo(f"{when}\t{rid}\t{prev}\t{state}\t{sev}\t{reason}")


@click.command()
@click.option("--metrics-port", type=int, help="Override notifier.metrics_port (0 = off).")
def notify(metrics_port: int | None) -> None:
    """Run the notifier: alarms topic -> webhooks and log actions (dead letters to kafka.alarms_dlq_topic)."""
    import logging
    import sys

    from mode import Worker

    from streams.notifiers.service import NotifierService

    s = _ctx_settings()
    logging.basicConfig(level=s.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    Worker(NotifierService(s, metrics_port=metrics_port), loglevel=s.log_level.lower(),
           quiet=True).execute_from_commandline()
