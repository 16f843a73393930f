"""Storage commands of the ``streams`` CLI: ``schema migrate|status`` bodies and the ``query`` group.

``streams query statistics --meter M [--resource R] [--project P] [--period S]
[--start T] [--end T] [--groupby resource_id|project_id] [--json]`` prints
Ceilometer's statistics (:func:`streams.storage.query.statistics`);
``streams query samples`` lists raw samples, newest first. Times are ISO 8601
(naive = UTC) or epoch seconds. Both work on ``clickhouse://`` and ``chdb://``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence

import click

from streams.config import ConfigError, Settings, load_settings


@contextlib.contextmanager
def _storage_errors() -> Iterator[None]:
    """Storage errors (unreachable server, refused TLS, unknown cluster) as one-line CLI errors, no traceback."""
    from clickhouse_driver.errors import Error as ClickHouseError

    from streams.storage.backend import StorageError
    from streams.storage.cluster import ClusterError

    try:
        yield
    except (ClickHouseError, StorageError, ClusterError) as exc:
        raise click.ClickException(f"clickhouse: {str(exc).strip().splitlines()[0]}") from None


def _connection(settings: Settings):
    from streams.storage import open_connection

    try:
        return open_connection(settings)
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None


@_storage_errors()
def migrate_command(settings: Settings) -> None:
    """Apply pending migrations (on every node of a cluster) and print what was applied, then the tables."""
    from streams.storage import layout
    from streams.storage.migrations import apply
    from streams.storage.schema import quote_ident

    s = settings.clickhouse
    conn = _connection(settings)
    try:
        done = apply(conn, retention_days=s.retention_days, layout=layout(settings))
        for m in done:
            click.echo(f"applied {m.version:>3} {m.name}" + (f" on {m.node}" if m.node else "")
                       + (f"  ({m.note})" if m.note else ""))
        if not done:
            click.echo("nothing to apply")
        click.echo(_readonly_user(conn, settings))
        tables = [r[0] for r in conn.execute(f"SHOW TABLES FROM {quote_ident(conn.database)}")]
        click.echo(f"database {conn.database} (ClickHouse {conn.version}): {', '.join(sorted(tables))}")
    finally:
        conn.close()


def _readonly_user(conn, settings: Settings) -> str:
    """The idempotent user step of every migrate (streams.storage.access), node by node in a cluster."""
    from streams.storage import layout
    from streams.storage.access import ensure_readonly_user
    from streams.storage.migrations import nodes

    s = settings.clickhouse
    pairs = nodes(conn, layout(settings))
    try:
        return ensure_readonly_user([c for _, c in pairs], s.readonly_password.get_secret_value(),
                                    s.readonly_networks)
    finally:
        for _, c in pairs:
            if c is not conn:
                c.close()


@_storage_errors()
def status_command(settings: Settings) -> None:
    """Print one line per migration: version, name, applied time or ``pending`` (per node in a cluster)."""
    from streams.storage import layout
    from streams.storage.migrations import status

    conn = _connection(settings)
    try:
        states = status(conn, layout(settings))
    finally:
        conn.close()
    for m in states:
        when = m.applied_at or "pending"
        click.echo((f"{m.node:<22} " if m.node else "") + f"{m.version:>3}  {m.name:<24} {when}"
                   + (f"  ({m.note})" if m.note else ""))
    pending = sum(m.applied_at is None for m in states)
    click.echo(f"{len(states) - pending} applied, {pending} pending"
               + (f" on {len({m.node for m in states})} nodes" if states and states[0].node else ""))


def render_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Fixed-width text table of ``rows`` (dicts) with a header; floats to 6 significant digits."""
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.6g}"
        if isinstance(v, dict):
            return ",".join(f"{k}={x}" for k, x in v.items())
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _time(ctx, param, value):
    if value is None:
        return None
    from streams.storage.query import parse_time

    try:
        return parse_time(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither ISO 8601 nor epoch seconds") from None


def _settings(ctx: click.Context) -> Settings:
    obj = ctx.find_root().obj
    try:
        return obj.settings if obj is not None else load_settings()
    except ConfigError as exc:
        raise click.ClickException(f"bad configuration: {exc}") from None


@click.group()
def query() -> None:
    """Read stored samples: Ceilometer's statistics and sample listing."""


_common = [
    click.option("--resource", "-r", help="Only this resource_id."),
    click.option("--project", "-p", help="Only this project_id."),
    click.option("--start", callback=_time, help="From this time (inclusive): ISO 8601 (naive = UTC) or epoch s."),
    click.option("--end", callback=_time, help="Until this time (exclusive)."),
    click.option("--json", "as_json", is_flag=True, help="JSON output instead of a table."),
]


def _with_common(f):
    for opt in reversed(_common):
        f = opt(f)
    return f


@query.command("statistics")
@click.option("--meter", "-m", required=True, help="Meter name, e.g. cpu_util.")
@_with_common
@click.option("--period", type=click.IntRange(min=1), help="Seconds per period; default one period over all.")
@click.option("--groupby", type=click.Choice(["resource_id", "project_id"]), help="One row per group and period.")
@click.pass_context
@_storage_errors()
def query_statistics(ctx, meter, resource, project, start, end, as_json, period, groupby) -> None:
    """min, max, avg, sum, count, duration and period bounds of a meter (Ceilometer's statistics)."""
    from streams.storage.query import statistics

    conn = _connection(_settings(ctx))
    try:
        stats = [s.as_json() for s in statistics(conn, meter, resource, project, period, start, end, groupby)]
    finally:
        conn.close()
    if as_json:
        click.echo(json.dumps(stats, indent=2))
        return
    cols = (["groupby"] if groupby else []) + ["period_start", "period_end", "count", "min", "max", "avg", "sum",
                                               "duration", "unit"]
    click.echo(render_table(stats, cols))


@query.command("samples")
@click.option("--meter", "-m", help="Meter name.")
@_with_common
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.pass_context
@_storage_errors()
def query_samples(ctx, meter, resource, project, start, end, as_json, limit) -> None:
    """Raw samples, newest first."""
    from streams.storage.query import samples

    conn = _connection(_settings(ctx))
    try:
        rows = samples(conn, meter, resource, project, start, end, limit)
    finally:
        conn.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(render_table(rows, ["timestamp", "meter", "volume", "unit", "type", "resource_id", "project_id"]))
