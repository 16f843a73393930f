"""``streams demo``: the whole pipeline on this machine's real metrics, for about a minute.

Starts the local services (unless already running), creates the topics and
schema, runs the compute poller and the processor as real processes, shows
progress from ClickHouse while they run, prints what was stored, and stops
everything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "etc" / "streams.dev.yaml"


def _spawn(name: str, args: list[str], config: Path, logdir: Path) -> tuple[subprocess.Popen, Path]:
    log_path = logdir / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "--config", str(config), *args],
        stdout=log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    return proc, log_path


def _stop(proc: subprocess.Popen, timeout: float = 30.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _table(rows: list[tuple], headers: tuple[str, ...]) -> str:
    cells = [headers] + [tuple("" if v is None else str(v) for v in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(cells[0]), line(tuple("-" * w for w in widths))] + [line(r) for r in cells[1:]])


@click.command()
@click.option("--duration", type=click.IntRange(min=5), default=60, show_default=True,
              help="Seconds to run the poller.")
@click.option("--keep-services", is_flag=True, help="Leave the local services running afterwards.")
@click.pass_context
def demo(ctx: click.Context, duration: int, keep_services: bool) -> None:
    """Run poller + processor on this host's metrics, then report from ClickHouse."""
    from streams import devenv
    from streams.config import load_settings
    from streams.storage.clickhouse import connect
    from streams.storage.schema import migrate
    from streams.topics import create_topics

    config = Path(ctx.obj.config) if ctx.obj and ctx.obj.config else DEFAULT_CONFIG
    settings = load_settings(config)
    echo = lambda msg: click.echo(msg, err=False)  # noqa: E731

    echo("==> starting local services (broker, ZooKeeper, ClickHouse)")
    results = devenv.up_detailed()
    started = [r.service for r in results if r.action == "started"]
    for r in results:
        echo(f"    {r.service:<10} {r.address:<16} {r.action}")

    logdir = devenv.dev_dir() / "demo"
    logdir.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[str, subprocess.Popen, Path]] = []
    try:
        echo("==> creating topics and schema")
        for name, state in create_topics(settings.kafka).items():
            echo(f"    topic {name}: {state}")
        client = connect(settings.clickhouse)
        db = settings.clickhouse.database
        echo(f"    database {db}: tables {', '.join(migrate(client, db))}")

        start_us = time.time_ns() // 1000
        echo(f"==> running processor and compute poller (interval {settings.poller.interval:g}s) "
             f"for {duration}s; logs in {logdir}")
        for name, args in (("processor", ["process"]), ("poller", ["poll"])):
            proc, log_path = _spawn(name, args, config, logdir)
            procs.append((name, proc, log_path))

        def stored() -> tuple[int, int]:
            return client.execute(
                f"SELECT count(), uniqExact(resource_id) FROM {db}.samples WHERE timestamp_us >= %(s)s",
                {"s": start_us})[0]

        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < duration:
            time.sleep(min(5.0, duration - elapsed))
            for name, proc, log_path in procs:
                if proc.poll() is not None:
                    raise click.ClickException(f"{name} exited with {proc.returncode}; see {log_path}")
            rows, resources = stored()
            echo(f"    [{time.monotonic() - t0:4.0f}s] {rows:>7} samples stored from {resources} resources")

        echo("==> stopping the poller (it flushes what it holds), letting the processor drain")
        _stop(procs[1][1])
        last, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < 3 and time.monotonic() - t0 < duration + 60:
            time.sleep(0.5)
            rows, _ = stored()
            if rows != last:
                last, stable_since = rows, time.monotonic()
        _stop(procs[0][1])

        where = f"FROM {db}.samples FINAL WHERE timestamp_us >= {int(start_us)}"
        echo("\n== Rows per meter")
        echo(_table(client.execute(
            f"SELECT name, unit, count() AS rows, uniqExact(resource_id) AS resources {where} "
            "GROUP BY name, unit ORDER BY name"), ("meter", "unit", "rows", "resources")))

        echo("\n== Resources seen")
        echo(_table(client.execute(
            "SELECT resource_metadata.value[indexOf(resource_metadata.key, 'kind')] AS kind, "
            f"uniqExact(resource_id), count() {where} GROUP BY kind ORDER BY kind"),
            ("kind", "resources", "samples")))

        echo("\n== Latest cpu utilisation per resource (top 15 by utilisation)")
        echo(_table(client.execute(
            "SELECT resource_id, if(any(resource_metadata.value[indexOf(resource_metadata.key, 'kind')]) = 'host', "
            "'(host)', any(resource_metadata.value[indexOf(resource_metadata.key, 'name')])) AS proc, "
            "round(argMax(volume, timestamp_us), 2) AS cpu_util_pct, "
            "toString(max(timestamp)) AS at "
            f"{where} AND name = 'cpu_util' GROUP BY resource_id ORDER BY cpu_util_pct DESC LIMIT 15"),
            ("resource", "process", "cpu_util %", "at (UTC)")))
        if settings.processor.pipeline:
            echo(f"\n== Derived by the pipeline ({settings.processor.pipeline}): latest value per host meter")
            echo(_table(client.execute(
                "SELECT name, unit, round(argMax(volume, timestamp_us), 1), count() "
                f"{where} AND resource_metadata.value[indexOf(resource_metadata.key, 'kind')] = 'host' "
                "AND name LIKE '%.rate' GROUP BY name, unit ORDER BY name"),
                ("meter", "unit", "latest", "samples")))
        rows, resources = stored()
        echo(f"\n{rows} samples from {resources} resources stored in {db}.samples "
             f"(ClickHouse {settings.clickhouse.url.rsplit('@', 1)[-1]})")
    finally:
        for _, proc, _ in procs:
            _stop(proc)
        if started and not keep_services:
            echo(f"==> stopping the services this demo started: {', '.join(started)}")
            devenv.down(services=started)
    os.environ.pop("STREAMS_CONFIG", None)
