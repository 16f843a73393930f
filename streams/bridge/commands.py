"""``streams bridge ...``: services that bring other systems' data into the pipeline."""

from __future__ import annotations

import click

from streams.config import ConfigError


@click.group()
def bridge() -> None:
    """Bridges from other telemetry systems into the samples topic."""


@bridge.command("ceilometer")
@click.option("--metrics-port", type=int, help="Override ceilometer.metrics_port (0 = off).")
@click.option("--create-topics", is_flag=True,
              help="Create ceilometer.topics and ceilometer.dlq_topic first (kafka.partitions each, idempotent).")
def ceilometer(metrics_port: int | None, create_topics: bool) -> None:
    """Run the Ceilometer bridge: ceilometer.topics (what Ceilometer's notifier://...?driver=kafka
    publisher writes) -> verified, signed SampleBatch records on kafka.samples_topic; events into
    <db>.events; refused records to ceilometer.dlq_topic."""
    import logging
    import sys

    from mode import Worker

    from streams.bridge.service import CeilometerBridge

    s = click.get_current_context().find_root().obj.settings
    logging.basicConfig(level=s.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if create_topics:
        from streams.topics import create_topics as create

        for name, state in create(s.kafka, [*s.ceilometer.topics, s.ceilometer.dlq_topic]).items():
            click.echo(f"{name}: {state}")
    try:
        service = CeilometerBridge(s, metrics_port=metrics_port)
    except ConfigError as exc:
        raise click.ClickException(f"bad configuration: {exc}") from None
    Worker(service, loglevel=s.log_level.lower(), quiet=True).execute_from_commandline()
