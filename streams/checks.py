"""``streams wait`` and ``streams check``: what a deployment asks before and after it starts.

``streams wait [kafka] [clickhouse] [zookeeper] --timeout S`` blocks until each
named dependency answers (default: Kafka, ClickHouse, and ZooKeeper when
``coordination.hosts`` is set), retrying with exponential backoff (tenacity),
and exits 1 naming the one that did not answer within ``S`` seconds. The Helm
chart's hook Job runs it as an init step, so topics and migrations start only
once the services are reachable, and a missing one fails the Job within its
deadline instead of burning its retries.

``streams check [--service BINARY ...]`` verifies an installation, read-only:
every pipeline topic and the processor's changelog exist with
``kafka.partitions`` partitions, every ClickHouse migration is applied, and each
named binary has a live entry in the service registry. It prints one line per
check and exits 1 if any failed (``helm test`` runs it).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import click
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from streams.config import Settings

DEPENDENCIES = ("kafka", "clickhouse", "zookeeper")


class CheckFailed(Exception):
    """A dependency did not answer, or an installation check found a problem (message says which)."""


def _kafka(settings: Settings, timeout: float) -> str:
    from confluent_kafka import KafkaException

    from streams.topics import admin

    try:
        md = admin(settings.kafka).list_topics(timeout=timeout)
    except KafkaException as exc:
        raise CheckFailed(f"no answer from {settings.kafka.bootstrap_servers}: {exc}") from None
    return f"{len(md.brokers)} broker(s) at {settings.kafka.bootstrap_servers}"


def _clickhouse(settings: Settings, timeout: float) -> str:
    from streams.storage import open_connection

    try:
        conn = open_connection(settings)
        try:
            return f"ClickHouse {conn.version}"
        finally:
            conn.close()
    except Exception as exc:  # noqa: BLE001 - any driver or socket error means "not yet"
        raise CheckFailed(f"no answer from the ClickHouse of clickhouse.url: {exc}") from None


def _zookeeper(settings: Settings, timeout: float) -> str:
    from streams.coordination import connect

    s = settings.coordination
    if not s.hosts:
        raise CheckFailed("coordination.hosts is not set")
    try:
        client = connect(s.model_copy(update={"connect_timeout": timeout}))
    except Exception as exc:  # noqa: BLE001 - kazoo raises timeouts and socket errors
        raise CheckFailed(f"no answer from {s.hosts}: {exc}") from None
    client.stop()
    client.close()
    return f"ZooKeeper at {s.hosts}"


PROBES: dict[str, Callable[[Settings, float], str]] = {
    "kafka": _kafka, "clickhouse": _clickhouse, "zookeeper": _zookeeper}


def wait_for(settings: Settings, dependency: str, timeout: float) -> str:
    """Retry the probe of ``dependency`` until it answers; return its description.

    Raises:
        CheckFailed: no answer within ``timeout`` seconds (the last error is in the message).
    """
    probe = PROBES[dependency]
    deadline = time.monotonic() + timeout
    for attempt in Retrying(stop=stop_after_delay(timeout), wait=wait_exponential(0.5, max=5),
                            retry=retry_if_exception_type(CheckFailed), reraise=True):
        with attempt:
            return probe(settings, max(1.0, min(10.0, deadline - time.monotonic())))
    raise AssertionError("unreachable")  # Retrying either returns or re-raises


def topic_problems(settings: Settings) -> list[str]:
    """Missing pipeline topics, or topics whose partition count is not ``kafka.partitions``."""
    from streams.processor.state import changelog_topic
    from streams.topics import describe_topics, pipeline_topics

    k = settings.kafka
    found = describe_topics(k)
    problems = []
    for name in [*pipeline_topics(k), changelog_topic(settings.processor.app_id)]:
        if name not in found:
            problems.append(f"topic {name!r} does not exist")
        elif found[name] != k.partitions:
            problems.append(f"topic {name!r} has {found[name]} partitions, kafka.partitions is {k.partitions}")
    return problems


def schema_problems(settings: Settings) -> list[str]:
    """Migrations of :data:`streams.storage.migrations.MIGRATIONS` not recorded as applied (read-only)."""
    from streams.storage import open_connection
    from streams.storage.migrations import MIGRATIONS
    from streams.storage.schema import quote_ident

    conn = open_connection(settings)
    try:
        db = quote_ident(conn.database)
        tables = {r[0] for r in conn.execute(f"SHOW TABLES FROM {db}")} if conn.execute(
            "SELECT count() FROM system.databases WHERE name = %(db)s", {"db": conn.database})[0][0] else set()
        if "schema_migrations" not in tables:
            return [f"database {conn.database!r} has no schema_migrations table: run `streams schema migrate`"]
        applied = {r[0] for r in conn.execute(f"SELECT DISTINCT version FROM {db}.schema_migrations")}
    finally:
        conn.close()
    return [f"migration {m.version} ({m.name}) is pending" for m in MIGRATIONS if m.version not in applied]


def registry_problems(settings: Settings, binaries: tuple[str, ...]) -> list[str]:
    """Each of ``binaries`` without a live entry in the service registry."""
    from streams.coordination import connect
    from streams.coordination.registry import list_services

    if not binaries:
        return []
    s = settings.coordination
    if not s.hosts:
        return ["coordination.hosts is not set: there is no service registry to check"]
    client = connect(s)
    try:
        alive = {r.get("binary") for r in list_services(client, s.root) if r["alive"]}
    finally:
        client.stop()
        client.close()
    return [f"no live {b!r} in the service registry {s.root}/services" for b in binaries if b not in alive]


@click.command()
@click.argument("dependencies", nargs=-1, type=click.Choice(DEPENDENCIES))
@click.option("--timeout", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="Seconds to wait for all of them together.")
@click.pass_obj
def wait(c, dependencies: tuple[str, ...], timeout: float) -> None:
    """Wait until Kafka, ClickHouse and ZooKeeper answer (default: those configured); exit 1 on timeout."""
    s = c.settings
    names = dependencies or tuple(d for d in DEPENDENCIES if d != "zookeeper" or s.coordination.hosts)
    deadline = time.monotonic() + timeout
    for name in names:
        started = time.monotonic()
        try:
            what = wait_for(s, name, max(1.0, deadline - started))
        except CheckFailed as exc:
            raise click.ClickException(f"{name} did not answer within {timeout:.0f} s: {exc}") from None
        click.echo(f"{name}: ready after {time.monotonic() - started:.1f} s ({what})")


@click.command()
@click.option("--service", "services", multiple=True, metavar="BINARY",
              help="A binary that must have a live registry entry, e.g. streams-poll-compute; repeatable.")
@click.option("--skip", type=click.Choice(["topics", "schema"]), multiple=True, help="Leave out a check.")
@click.pass_obj
def check(c, services: tuple[str, ...], skip: tuple[str, ...]) -> None:
    """Check an installation: topics, ClickHouse migrations, live services; exit 1 if anything is missing."""
    s = c.settings
    checks = [("topics", lambda: topic_problems(s)), ("schema", lambda: schema_problems(s)),
              ("services", lambda: registry_problems(s, services))]
    failed = 0
    for name, run in checks:
        if name in skip or (name == "services" and not services):
            continue
        try:
            problems = run()
        except Exception as exc:  # noqa: BLE001 - an unreachable service is a failed check, said plainly
            problems = [f"could not check: {exc}"]
        click.echo(f"{name}: {'ok' if not problems else 'FAILED'}")
        for p in problems:
            click.echo(f"  - {p}")
        failed += bool(problems)
    if failed:
        raise click.ClickException(f"{failed} check(s) failed")
