"""``streams api`` as a ``mode`` service: the aiohttp server, its ZooKeeper session, metrics and registry.

Ready (``/readyz``) while the ZooKeeper session is connected and the
server listens; alive (``/healthz``) while the service runs. A ZooKeeper
outage does not stop the service: requests answer 503 until the session is
back. The process registers in the live-service registry as ``streams-api``.
"""

from __future__ import annotations

import logging

from aiohttp import web
from mode import Service

from streams.api.app import AodhApi
from streams.api.auth import Authenticator
from streams.api.history import HistoryStore
from streams.api.store import AlarmRepository
from streams.config import Settings
from streams.coordination.registry import ServiceRegistration
from streams.coordination.session import ZooKeeperSession
from streams.observability import MetricsServer

log = logging.getLogger(__name__)


class ApiService(Service):
    """Serves Aodh's API on ``api.host:api.port`` while it runs.

    Args:
        settings: all settings (``api``, ``coordination``, ``clickhouse``).
        authenticator: from :func:`streams.api.auth.create_authenticator`.
    """

    def __init__(self, settings: Settings, authenticator: Authenticator, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.session = ZooKeeperSession(settings.coordination)
        self.registration = ServiceRegistration(self.session, "streams-api", 10.0)
        c = settings.clickhouse
        self.history = HistoryStore(c.url, c.database, c.ca_file, c.cluster)
        self._repository = AlarmRepository(self.session.client, settings.coordination.root)
        self.api = AodhApi(settings, authenticator, self._connected_repository, self.history)
        self._runner: web.AppRunner | None = None
        self.metrics = MetricsServer(settings.api.metrics_port, settings.metrics_host,
                                     healthy=lambda: not self.should_stop,
                                     ready=lambda: self._runner is not None and self.session.connected)

    def _connected_repository(self) -> AlarmRepository | None:
        return self._repository if self.session.connected else None

    def on_init_dependencies(self) -> list[Service]:
        return [self.session, self.registration, self.metrics]

    async def on_start(self) -> None:
        a = self.settings.api
        runner = web.AppRunner(self.api.application(), access_log=log)
        await runner.setup()
        await web.TCPSite(runner, a.host, a.port).start()
        self._runner = runner
        log.info("Aodh API on http://%s:%d (auth %s)", a.host, a.port, a.auth)

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.history.close()
