"""One ZooKeeper session per process, as a ``mode`` service that survives outages.

Kazoo keeps reconnecting in its own thread (forever, at most 2 s apart); this
service only watches its state: an outage (SUSPENDED or LOST after being
connected, or no connection at start) is logged and counted in
``streams_coordination_outages_total``, and ``streams_coordination_connected``
says whether the session is up. Users (membership, registry, watched config)
check :attr:`connected` before talking to ZooKeeper and repair their own
znodes when it returns, so a ZooKeeper outage never stops the service.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from kazoo.client import KazooState
from kazoo.exceptions import KazooException
from kazoo.retry import KazooRetry
from mode import Service

from streams.config import CoordinationSettings
from streams.coordination.security import CoordinationAccessError, check_access, new_client
from streams.observability import COORDINATION_CONNECTED, COORDINATION_OUTAGES

log = logging.getLogger(__name__)


class ZooKeeperSession(Service):
    """Owns a started kazoo client for ``settings.hosts`` while it runs (authenticated, ACLs and
    TLS as configured: :mod:`streams.coordination.security`).

    Starting waits up to ``settings.connect_timeout`` for the first connection;
    without one it goes on (counted as an outage) and kazoo keeps trying.
    Once connected, access to ``settings.root`` is checked: a refusal (wrong
    password, or no credentials for a secured tree) is logged naming the user
    and stops the service with :class:`~streams.coordination.security.CoordinationAccessError`,
    since nothing it would do there could succeed.

    Raises:
        ValueError: coordination is not configured (``settings.hosts`` unset).
        CoordinationError: a TLS file named in the settings does not exist.
    """

    def __init__(self, settings: CoordinationSettings, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if not settings.hosts:
            raise ValueError("coordination.hosts is not set")
        self.settings = settings
        self.client = new_client(
            settings,
            connection_retry=KazooRetry(max_tries=-1, delay=0.2, backoff=2, max_delay=2),
            command_retry=KazooRetry(max_tries=3, delay=0.1, max_delay=1),
        )
        self.access_checked = False
        self.outages = 0
        self._was_connected = False
        self._lock = threading.Lock()
        self.client.add_listener(self._on_state)

    @property
    def root(self) -> str:
        return self.settings.root

    @property
    def connected(self) -> bool:
        return bool(self.client.connected)

    def _on_state(self, state: str) -> None:  # kazoo thread: never block here
        with self._lock:
            if state == KazooState.CONNECTED:
                COORDINATION_CONNECTED.set(1)
                if not self._was_connected:
                    log.info("ZooKeeper session up (%s)", self.settings.hosts)
                self._was_connected = True
            else:
                COORDINATION_CONNECTED.set(0)
                if self._was_connected:
                    self.outages += 1
                    COORDINATION_OUTAGES.inc()
                    log.warning("ZooKeeper %s (%s): polling goes on with the last known membership",
                                "session lost" if state == KazooState.LOST else "connection lost",
                                self.settings.hosts)
                self._was_connected = False

    async def on_start(self) -> None:
        event = self.client.start_async()
        if not await asyncio.to_thread(event.wait, self.settings.connect_timeout) or not self.connected:
            with self._lock:
                self.outages += 1
                COORDINATION_OUTAGES.inc()
                COORDINATION_CONNECTED.set(0)
            log.warning("ZooKeeper %s not reachable within %.0fs; running on, retrying in the background",
                        self.settings.hosts, self.settings.connect_timeout)
            return
        await self._check_access()

    async def _check_access(self) -> None:
        """Check access to the root once connected; raises CoordinationAccessError on a refusal."""
        try:
            await asyncio.to_thread(check_access, self.client, self.settings)
        except CoordinationAccessError as exc:
            log.error("%s", exc)
            raise
        except (KazooException, TimeoutError) as exc:  # connection lost meanwhile: checked again later
            log.debug("access check deferred: %r", exc)
            return
        self.access_checked = True

    @Service.timer(1.0)
    async def _check_access_when_connected(self) -> None:
        # For a session that was not connected at start: check as soon as it is.
        if not self.access_checked and self.connected:
            try:
                await self._check_access()
            except CoordinationAccessError as exc:
                await self.crash(exc)

    async def on_stop(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        try:
            self.client.stop()
            self.client.close()
        except Exception:  # noqa: BLE001 - stopping must not fail the shutdown
            log.exception("closing the ZooKeeper client")

    def delete_quietly(self, path: str) -> None:
        """Delete ``path`` if the session is up; otherwise do nothing.

        For a member's own ephemeral znode on a clean stop: if the session is
        gone, ZooKeeper removes ephemeral nodes itself.
        """
        if self.connected:
            try:
                self.call("delete", path)
            except (KazooException, TimeoutError):
                pass

    def call(self, fn_name: str, *args: object, timeout: float = 2.0, **kwargs: object):
        """Run ``client.<fn_name>_async(*args, **kwargs)`` and wait up to ``timeout`` s (blocking).

        Raises:
            kazoo.exceptions.ConnectionLoss: not connected now.
            kazoo errors of the call itself (NoNodeError, NodeExistsError...), or timeout.
        """
        from kazoo.exceptions import ConnectionLoss

        if not self.connected:
            raise ConnectionLoss("not connected to ZooKeeper")
        return getattr(self.client, f"{fn_name}_async")(*args, **kwargs).get(timeout=timeout)
