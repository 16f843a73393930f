"""Coordination through ZooKeeper (kazoo): connection, leader election, and the modules below.

Everything here is optional: with ``coordination.hosts`` unset, callers run
as the only member (see :class:`~streams.config.CoordinationSettings`).

Znode layout under ``coordination.root`` (default ``/streams``)::

    /locks/<name>                   kazoo Lock recipe: leader election for singleton jobs (:func:`leader`)
    /groups/<group>/<member id>     ephemeral: live members of a work-sharing group (membership.py)
    /services/<binary>/<member id>  ephemeral JSON: the live-service registry (registry.py)
    /hooks                          YAML/JSON: edge hooks of the polling agents, watched (watch.py)

Modules: ``ring`` (consistent hash ring, pure), ``session`` (one kazoo session
per process as a mode service, outage counting), ``membership``
(:class:`~streams.coordination.membership.PartitionCoordinator`), ``registry``
and ``watch``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from kazoo.client import KazooClient

from streams.config import CoordinationSettings

log = logging.getLogger(__name__)


def connect(settings: CoordinationSettings) -> KazooClient:
    """Start a kazoo client for ``settings.hosts`` and wait until connected.

    Raises:
        ValueError: coordination is not configured (``hosts`` unset).
        kazoo.handlers.threading.KazooTimeoutError: no connection within ``connect_timeout``.
    """
    if not settings.hosts:
        raise ValueError("coordination.hosts is not set")
    client = KazooClient(hosts=settings.hosts, timeout=settings.session_timeout)
    client.start(timeout=settings.connect_timeout)
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
