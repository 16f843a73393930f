"""``streams api``: serve Aodh's v2 REST API (see :mod:`streams.api`)."""

from __future__ import annotations

import click


@click.command("api")
@click.option("--host", help="Override api.host.")
@click.option("--port", type=click.IntRange(1, 65535), help="Override api.port.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), help="Override api.metrics_port (0 = off).")
@click.option("--auth", type=click.Choice(["noauth", "token", "keystone"]), help="Override api.auth.")
def api(host: str | None, port: int | None, metrics_port: int | None, auth: str | None) -> None:
    """Serve Aodh's v2 API (python-aodhclient, Heat, Horizon) over the alarms in ZooKeeper.

    Needs coordination.hosts (definitions live in ZooKeeper) and ClickHouse
    (alarm_history). The default authentication is static tokens (api.tokens):
    without one it refuses to start; --auth noauth must be chosen explicitly.
    """
    import logging
    import sys

    from mode import Worker

    from streams.api.auth import create_authenticator
    from streams.api.service import ApiService
    from streams.config import ConfigError

    s = click.get_current_context().find_root().obj.settings
    overrides = {k: v for k, v in (("host", host), ("port", port), ("metrics_port", metrics_port),
                                   ("auth", auth)) if v is not None}
    if overrides:
        s = s.model_copy(update={"api": s.api.model_copy(update=overrides)})
    if not s.coordination.hosts:
        raise click.ClickException("coordination.hosts is not set: alarm definitions live in ZooKeeper")
    try:
        authenticator = create_authenticator(s.api)
    except ConfigError as exc:
        raise click.ClickException(f"bad configuration: {exc}") from None
    logging.basicConfig(level=s.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if s.api.auth == "noauth":
        logging.getLogger(__name__).warning(
            "api.auth is noauth: X-User-Id / X-Project-Id / X-Roles headers are trusted; keep %s on loopback",
            s.api.host)
    Worker(ApiService(s, authenticator), loglevel=s.log_level.lower(), quiet=True).execute_from_commandline()
