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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
@pass_ctx
def topics_create(c: _Ctx, partitions: int | None) -> None:
    """Create the samples, dead-letter and processor state topics (idempotent)."""
    from streams.processor.app import ensure_state_topic
    from streams.processor.state import changelog_topic
    from streams.topics import create_topics

    settings = c.settings
    if partitions:
        settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"partitions": partitions})})
    s = settings.kafka
    for name, state in create_topics(s).items():
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
    """Create the database and tables if missing (idempotent, version-aware DDL)."""
    from streams.storage.clickhouse import connect
    from streams.storage.schema import migrate

    s = c.settings.clickhouse
    tables = migrate(connect(s), s.database)
    click.echo(f"database {s.database}: {', '.join(tables)}")


@cli.command()
@click.option("--once", is_flag=True, help="Poll once, wait for delivery, and exit.")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), help="Override poller.interval (s).")
@pass_ctx
def poll(c: _Ctx, once: bool, interval: float | None) -> None:
    """Run the compute poller: this host's and its processes' metrics to Kafka."""
    from mode import Worker

    from streams.codec import BatchCodec
    from streams.pollers.compute import HostPollster, LocalHostDiscovery, LocalProcessDiscovery, ProcessPollster
    from streams.pollers.service import PollingService
    from streams.publisher import KafkaPublisher

    s = c.settings
    _setup_logging(s.log_level)
    try:
        codec = BatchCodec(s.signing.keyring())
    except ConfigError as exc:
        raise click.ClickException(f"bad configuration: {exc}") from None
    pollsters = [(LocalHostDiscovery(), HostPollster(s.poller.source))]
    if s.poller.processes:
        pollsters.append((LocalProcessDiscovery(s.poller.max_processes), ProcessPollster(s.poller.source)))
    publisher = KafkaPublisher(s.kafka, codec)
    service = PollingService(publisher, pollsters, interval or s.poller.interval,
                             metrics_port=0 if once else s.poller.metrics_port)
    if once:
        samples = service.collect()
        records = publisher.publish(samples)
        undelivered = publisher.flush()
        click.echo(f"published {len(samples)} samples in {records} records; "
                   f"{publisher.failed} samples failed, {undelivered} records undelivered")
        sys.exit(1 if (undelivered or publisher.failed) else 0)
    Worker(service, loglevel=s.log_level.lower(), quiet=True).execute_from_commandline()


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


from streams.demo import demo  # noqa: E402  (commands defined in their own modules)
from streams.devenv import dev  # noqa: E402

cli.add_command(dev)
cli.add_command(demo)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="streams")


if __name__ == "__main__":
    main()
