"""Configuration documents kept in ZooKeeper and applied while the service runs.

:class:`WatchedConfig` calls ``on_data(bytes | None)`` with the znode's
content at start and after every change (a kazoo ``DataWatch``: changes
arrive within milliseconds of the write); ``None`` means the znode does not
exist. The watch survives reconnections (kazoo re-reads on reconnect), and
is set up once ZooKeeper is first reachable if it was not at start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from kazoo.exceptions import KazooException
from mode import Service

from streams.coordination.session import ZooKeeperSession

log = logging.getLogger(__name__)


class WatchedConfig(Service):
    """Watches ``path``; ``on_data`` runs in kazoo's thread, so it must be quick and thread-safe.

    An exception raised by ``on_data`` is logged; the watch stays.
    """

    def __init__(self, session: ZooKeeperSession, path: str, on_data: Callable[[bytes | None], None],
                 **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.session = session
        self.path = path
        self.on_data = on_data
        self._watch = None

    def on_init_dependencies(self) -> list[Service]:
        return [self.session]

    def _changed(self, data: bytes | None, stat: object) -> None:
        try:
            self.on_data(data)
        except Exception:  # noqa: BLE001 - a bad document must not kill the watch
            log.exception("applying %s failed", self.path)

    def _establish(self) -> None:
        if self._watch is None and self.session.connected:
            try:
                self._watch = self.session.client.DataWatch(self.path, self._changed)
                log.info("watching %s", self.path)
            except KazooException as exc:
                log.debug("watch on %s deferred: %r", self.path, exc)

    async def on_started(self) -> None:
        await asyncio.to_thread(self._establish)

    @Service.timer(1.0)
    async def _ensure_watch(self) -> None:
        if self._watch is None:
            await asyncio.to_thread(self._establish)
