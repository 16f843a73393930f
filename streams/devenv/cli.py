"""``streams dev up|down|status|restart``: the click group over :mod:`streams.devenv.api`."""

from __future__ import annotations

import logging
import sys
import time

import click

from streams.devenv.api import down, restart, status, up_detailed
from streams.devenv.base import dev_dir


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    else:
        logging.getLogger("streams.devenv").setLevel(level)


def _describe_extra(extra: dict[str, str]) -> str:
    return "  ".join(f"{k} {v}" for k, v in extra.items())


@click.group(name="dev")
@click.option("-v", "--verbose", count=True, help="-v: info logs, -vv: debug logs.")
def dev(verbose: int) -> None:
    """Run the local broker, ZooKeeper and ClickHouse (state in $STREAMS_DEV_DIR, default ./.dev)."""
    _setup_logging(verbose)


_service_arg = click.argument("services", nargs=-1, metavar="[SERVICE]...")
"""kafka, zookeeper, clickhouse, or a cluster node (clickhouse-s1r2); checked by the API."""


@dev.command("up")
@_service_arg
@click.option("--timeout", type=float, default=None, help="Seconds to wait for each service to answer.")
@click.option("--clickhouse-cluster", metavar="SHARDSxREPLICAS",
              help="Also start a local ClickHouse cluster, e.g. 2x2: nodes clickhouse-s<shard>r<replica> "
                   "on the dev ZooKeeper, cluster name 'streams'.")
def up_cmd(services: tuple[str, ...], timeout: float | None, clickhouse_cluster: str | None) -> None:
    """Start services (default: all) unless running, wait until they answer."""
    results = up_detailed(services or None, timeout, clickhouse_cluster)
    for r in results:
        if r.action == "started":
            what = f"started pid {r.pid}, answering after {r.seconds:.2f}s"
        elif r.action == "running":
            what = f"already running, pid {r.pid}"
        else:
            what = "already answering (not started by streams dev)"
        click.echo(f"{r.service:<16} {r.address:<16} {what}  {_describe_extra(r.extra)}".rstrip())
    click.echo(f"dev dir: {dev_dir()}  (logs in {dev_dir() / 'logs'})")


@dev.command("down")
@_service_arg
@click.option("--purge", is_flag=True, help="Also delete ZooKeeper and ClickHouse data dirs.")
def down_cmd(services: tuple[str, ...], purge: bool) -> None:
    """Stop services started by 'up' (default: all)."""
    for name, outcome in down(purge=purge, services=services or None).items():
        click.echo(f"{name:<16} {outcome}")
    if purge:
        click.echo(f"purged data under {dev_dir()}")


@dev.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status() dict as JSON.")
def status_cmd(as_json: bool) -> None:
    """Show each service; exit 1 unless all answer."""
    report = status()
    if as_json:
        import json

        click.echo(json.dumps(report, indent=2))
    else:
        for name, st in report.items():
            state = "running" if st["running"] else "stopped"
            pid = st["pid"] if st["pid"] is not None else ("external" if st["running"] else "-")
            answering = "yes" if st["answering"] else "no"
            click.echo(
                f"{name:<16} {state:<8} pid {str(pid):<9} {st['address']:<16} answering {answering:<4} "
                f"{_describe_extra(st['extra'])}".rstrip()
            )
    sys.exit(0 if all(st["answering"] for st in report.values()) else 1)


@dev.command("restart")
@click.argument("service")
@click.option("--timeout", type=float, default=None, help="Seconds to wait for the service to answer.")
def restart_cmd(service: str, timeout: float | None) -> None:
    """Stop and start one service (data kept; the in-memory broker comes back empty)."""
    started = time.monotonic()
    address = restart(service, timeout)
    click.echo(f"{service:<16} {address:<16} restarted in {time.monotonic() - started:.2f}s")


