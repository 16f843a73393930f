"""The ``streams`` command line.

Every command takes ``--config PATH`` (or ``$STREAMS_CONFIG``); settings can
also come from ``STREAMS_<SECTION>__<KEY>`` environment variables. Bad
configuration stops the command before it does anything, naming the file,
key and problem.
"""

from __future__ import annotations

import logging
import sys

import click

from streams.config import ConfigError, Settings, load_settings


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


class _Ctx:
    def __init__(self, config: str | None) -> None:
        self.config = config
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.config)
            except ConfigError as exc:
                raise click.ClickException(f"bad configuration: {exc}") from None
        return self._settings


pass_ctx = click.make_pass_decorator(_Ctx)


class _StreamsGroup(click.Group):
    """Turns a ZooKeeper refusal or outage into a one-line error (exit 1) instead of a traceback."""

    def invoke(self, ctx: click.Context):
        from streams.coordination.security import CoordinationError

        try:
            return super().invoke(ctx)
        except CoordinationError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_StreamsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "-c", envvar="STREAMS_CONFIG", type=click.Path(dir_okay=False),
              help="YAML config file (env STREAMS_CONFIG).")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """Metering and alarming on Kafka, Faust and ClickHouse."""
    ctx.obj = _Ctx(config)


@cli.group()
def topics() -> None:
    """Kafka topics."""


@topics.command("create")
@click.option("--partitions", type=click.IntRange(min=1), help="Override kafka.partitions.")
@click.option("--ceilometer", is_flag=True,
              help="Also create the Ceilometer bridge's ceilometer.topics and ceilometer.dlq_topic "
                   "(what `streams bridge ceilometer --create-topics` creates).")
@pass_ctx
def topics_create(c: _Ctx, partitions: int | None, ceilometer: bool) -> None:
    """Create the samples, dead-letter and processor state topics (idempotent)."""
    from streams.processor.app import ensure_state_topic
    from streams.processor.state import changelog_topic
    from streams.topics import create_topics, pipeline_topics

    settings = c.settings
    if partitions:
        settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"partitions": partitions})})
    s = settings.kafka
    names = None
    if ceilometer:
        names = [*pipeline_topics(s), *settings.ceilometer.topics, settings.ceilometer.dlq_topic]
    for name, state in create_topics(s, names).items():
        click.echo(f"{name}: {state} ({s.partitions} partitions requested)")
    try:
        ensure_state_topic(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{changelog_topic(settings.processor.app_id)}: ready (compacted, {s.partitions} partitions)")


@topics.command("list")
@pass_ctx
def topics_list(c: _Ctx) -> None:
    """List topics and their partition counts."""
    from streams.topics import describe_topics

    for name, n in sorted(describe_topics(c.settings.kafka).items()):
        click.echo(f"{name}\t{n}")


@cli.group()
def schema() -> None:
    """ClickHouse schema."""


@schema.command("migrate")
@pass_ctx
def schema_migrate(c: _Ctx) -> None:
    """Apply pending numbered migrations (idempotent, version-aware DDL), under the
    ZooKeeper leader lock `schema-migrate` when coordination.hosts is set."""
    from streams.coordination import leader
    from streams.storage.commands import migrate_command

    with leader(c.settings.coordination, "schema-migrate"):
        migrate_command(c.settings)


@schema.command("status")
@pass_ctx
def schema_status(c: _Ctx) -> None:
    """Show applied and pending migrations."""
    from streams.storage.commands import status_command

    status_command(c.settings)


@cli.command()
@click.option("--once", is_flag=True, help="Poll every source once (no coordination), wait for delivery, and exit.")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True),
              help="Override the interval of every source (s).")
@click.option("--agent", type=click.Choice(["compute", "central"]), help="Override poller.agent.")
@click.option("--polling", type=click.Path(dir_okay=False), help="polling.yaml (overrides poller.polling).")
@pass_ctx
def poll(c: _Ctx, once: bool, interval: float | None, agent: str | None, polling: str | None) -> None:
    """Run a polling agent: samples of its polling.yaml sources to Kafka.

    The compute agent (default) polls this host, its processes and cgroups; the
    central agent polls remote endpoints and, with coordination.hosts set,
    only its share of them (ZooKeeper group + consistent hash ring).
    """
    from mode import Worker

    from streams.codec import BatchCodec
    from streams.pollers.polling import PollingConfigError, build_tasks, default_compute_definition, load_polling
    from streams.pollers.service import PollingService
    from streams.publisher import KafkaPublisher

    s = c.settings
    _setup_logging(s.log_level)
    agent = agent or s.poller.agent
    polling = polling or s.poller.polling
    try:
        codec = BatchCodec(s.signing.keyring())
        if polling:
            tasks = load_polling(polling, agent, sample_source=s.poller.source, interval=interval, settings=s)
        elif agent == "compute":
            tasks = build_tasks(default_compute_definition(interval or s.poller.interval, s.poller.processes,
                                                           s.poller.max_processes), agent,
                                sample_source=s.poller.source, label="compute defaults", settings=s)
        else:
            raise click.ClickException("the central agent needs a polling.yaml (--polling or poller.polling)")
    except (ConfigError, PollingConfigError) as exc:
        raise click.ClickException(f"bad configuration: {exc}") from None
    publisher = KafkaPublisher(s.kafka, codec)
    if once:
        service = PollingService(publisher, tasks)
        samples = service.collect_all()
        records = publisher.publish(samples)
        undelivered = publisher.flush()
        click.echo(f"published {len(samples)} samples in {records} records; "
                   f"{publisher.failed} samples failed, {undelivered} records undelivered")
        sys.exit(1 if (undelivered or publisher.failed) else 0)
    coordinator, hooks, services = None, None, []
    if s.coordination.hosts:
        from streams.coordination.membership import PartitionCoordinator
        from streams.coordination.registry import ServiceRegistration
        from streams.coordination.session import ZooKeeperSession
        from streams.coordination.watch import WatchedConfig
        from streams.pollers.hooks import HookChain

        session = ZooKeeperSession(s.coordination)
        hooks = HookChain()
        services = [session, ServiceRegistration(session, f"streams-poll-{agent}", s.poller.report_interval),
                    WatchedConfig(session, f"{s.coordination.root}/hooks", hooks.load)]
        if agent == "central":
            coordinator = PartitionCoordinator(session, f"poll-{agent}")
    service = PollingService(publisher, tasks, metrics_port=s.poller.metrics_port, coordinator=coordinator,
                             hooks=hooks, services=services, metrics_host=s.metrics_host)
    Worker(service, loglevel=s.log_level.lower(), quiet=True).execute_from_commandline()


@cli.group()
def services() -> None:
    """The live-service registry in ZooKeeper."""


@services.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also show registered services that stopped reporting.")
@pass_ctx
def services_list(c: _Ctx, show_all: bool) -> None:
    """Print the services that are alive: binary, host, pid, version, uptime, last report."""
    import time

    from streams.coordination import connect
    from streams.coordination.registry import list_services

    s = c.settings.coordination
    if not s.hosts:
        raise click.ClickException("coordination.hosts is not set: there is no registry")
    client = connect(s)
    try:
        rows = list_services(client, s.root)
    finally:
        client.stop()
        client.close()
    now = time.time()
    click.echo("binary\thost\tpid\tversion\tup_s\tlast_report_s\talive")
    for r in rows:
        if r["alive"] or show_all:
            click.echo(f"{r.get('binary')}\t{r.get('host')}\t{r.get('pid')}\t{r.get('version')}\t"
                       f"{now - float(r.get('started_at', now)):.0f}\t{r['age']:.1f}\t{'yes' if r['alive'] else 'no'}")


@cli.command()
@pass_ctx
def process(c: _Ctx) -> None:
    """Run the processor: samples topic -> verify, normalize -> ClickHouse."""
    from streams.processor.app import run

    s = c.settings
    try:
        s.signing.keyring()
    except ConfigError as exc:
        raise click.ClickException(f"bad configuration: {exc}") from None
    run(s, loglevel=s.log_level.lower())


from streams.alarms.commands import alarm, notify  # noqa: E402
from streams.api.commands import api  # noqa: E402
from streams.bridge.commands import bridge  # noqa: E402
from streams.checks import check, wait  # noqa: E402
from streams.coordination.commands import coordination, hooks  # noqa: E402
from streams.demo import demo  # noqa: E402  (commands defined in their own modules)
from streams.devenv import dev  # noqa: E402
from streams.storage.commands import query  # noqa: E402

cli.add_command(dev)
cli.add_command(query)
cli.add_command(demo)
cli.add_command(alarm)
cli.add_command(notify)
cli.add_command(coordination)
cli.add_command(hooks)
cli.add_command(wait)
cli.add_command(check)
cli.add_command(api)
cli.add_command(bridge)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="streams")


if __name__ == "__main__":
    main()
