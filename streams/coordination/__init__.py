"""Coordination through ZooKeeper (kazoo): connection, leader election, and the modules below.

Everything here is optional: with ``coordination.hosts`` unset, callers run
as the only member (see :class:`~streams.config.CoordinationSettings`).

Znode layout under ``coordination.root`` (default ``/streams``)::

    /locks/<name>                   kazoo Lock recipe: leader election for singleton jobs (:func:`leader`)
    /groups/<group>/<member id>     ephemeral: live members of a work-sharing group (membership.py)
    /services/<binary>/<member id>  ephemeral JSON: the live-service registry (registry.py)
    /hooks                          YAML/JSON: edge hooks of the polling agents, watched (watch.py)
    /alarms/<id>                    JSON: alarm definitions (streams.alarms.definitions)

With ``coordination.username`` set, every znode here has a digest ACL for that
identity alone (``security``; ``streams coordination secure`` migrates old ones).

Modules: ``ring`` (consistent hash ring, pure), ``session`` (one kazoo session
per process as a mode service, outage counting), ``security`` (authentication,
ACLs, TLS), ``membership``
(:class:`~streams.coordination.membership.PartitionCoordinator`), ``registry``
and ``watch``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError

from streams.config import CoordinationSettings
from streams.coordination.security import CoordinationError, check_access, new_client, tls_problem

log = logging.getLogger(__name__)


def connect(settings: CoordinationSettings) -> KazooClient:
    """Start a kazoo client for ``settings.hosts`` (authenticated, ACLs and TLS as configured: see
    :mod:`streams.coordination.security`), wait until connected and check access to ``settings.root``.

    Raises:
        ValueError: coordination is not configured (``hosts`` unset).
        CoordinationError: no connection within ``connect_timeout`` (with the TLS failure when there
            was one), or a TLS file missing.
        CoordinationAccessError: ZooKeeper refused this identity access to the root (names the user).
    """
    client = new_client(settings)
    try:
        client.start(timeout=settings.connect_timeout)
    except KazooTimeoutError:  # kazoo has stopped and closed the client
        problem = tls_problem(settings)
        raise CoordinationError(f"ZooKeeper {settings.hosts} not reachable within {settings.connect_timeout:g}s"
                                + (f": {problem}" if problem else "")) from None
    try:
        check_access(client, settings)
    except CoordinationError:
        client.stop()
        client.close()
        raise
    return client


@contextlib.contextmanager
def leader(settings: CoordinationSettings, name: str, identifier: str = "",
           timeout: float | None = None) -> Iterator[bool]:
    """Hold the ZooKeeper lock ``<root>/locks/<name>`` for the duration of the block.

    Used for singleton jobs (e.g. schema migration): one holder at a time
    across the deployment; others wait up to ``timeout`` seconds (None = forever).
    Yields True when the lock is held, or when coordination is off (single member).

    Raises:
        kazoo.exceptions.LockTimeout: not acquired within ``timeout``.
    """
    if not settings.hosts:
        yield True
        return
    client = connect(settings)
    try:
        lock = client.Lock(f"{settings.root}/locks/{name}", identifier)
        with lock if timeout is None else _acquired(lock, timeout):
            log.info("holding leader lock %s/locks/%s", settings.root, name)
            yield True
    finally:
        client.stop()
        client.close()


@contextlib.contextmanager
def _acquired(lock, timeout: float) -> Iterator[None]:
    lock.acquire(timeout=timeout)
    try:
        yield
    finally:
        lock.release()
