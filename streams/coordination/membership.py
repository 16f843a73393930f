"""Group membership with ephemeral znodes, and each member's share of the work.

A member of group ``G`` holds the ephemeral znode ``<root>/groups/G/<member id>``;
its liveness is its ZooKeeper session, so a member killed with ``kill -9``
drops out once its session times out (``coordination.session_timeout``).
Every member watches the group's children and keeps the last membership it
saw; :meth:`PartitionCoordinator.extract_my_subset` cuts its share from that
with the consistent hash ring of :mod:`streams.coordination.ring`
(Ceilometer's ``PartitionCoordinator``, with tooz replaced by kazoo).

ZooKeeper unavailable: the last known membership stays in force, so the
member keeps polling the share it had. When the session returns (or a new
one replaces an expired one) the 1-s timer recreates the member's znode and
re-reads the group.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterable
from typing import TypeVar

from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError
from mode import Service

from streams.coordination import ring
from streams.coordination.session import ZooKeeperSession
from streams.observability import COORDINATION_MEMBERS

log = logging.getLogger(__name__)
T = TypeVar("T")


def default_member_id() -> str:
    """``<hostname>-<pid>-<random>``: unique per process, readable in ``zkCli ls``."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class PartitionCoordinator(Service):
    """Membership of ``group`` and this member's share of resources.

    Args:
        session: the process's ZooKeeper session (a dependency of this service).
        group: group name (e.g. ``poll-central``); members of one group share work.
        member_id: this member's id (default :func:`default_member_id`).
        refresh: seconds between membership checks (znode present, children re-read).
    """

    def __init__(self, session: ZooKeeperSession, group: str, member_id: str | None = None,
                 refresh: float = 1.0, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.session = session
        self.group = group
        self.member_id = member_id or default_member_id()
        self.refresh = refresh
        self.group_path = f"{session.root}/groups/{group}"
        self.path = f"{self.group_path}/{self.member_id}"
        self._members: frozenset[str] = frozenset({self.member_id})
        self._watching = False
        self.on_change: list[Callable[[frozenset[str]], None]] = []

    def on_init_dependencies(self) -> list[Service]:
        return [self.session]

    @property
    def members(self) -> frozenset[str]:
        """The last membership seen (this member included while it is not yet/again registered)."""
        return self._members

    def _set_members(self, children: Iterable[str]) -> None:
        new = frozenset(children)
        if new and new != self._members:
            log.info("group %s: %d members %s (me: %s)", self.group, len(new), sorted(new), self.member_id)
            self._members = new
            COORDINATION_MEMBERS.labels(group=self.group).set(len(new))
            for cb in self.on_change:
                cb(new)

    def extract_my_subset(self, items: Iterable[T], key: Callable[[T], str] = str) -> list[T]:
        """This member's share of ``items`` under the last known membership (Ceilometer's rule)."""
        return ring.extract_my_subset(self._members, self.member_id, items, key)

    def _sync(self) -> None:
        """Blocking: make sure our znode exists, (re)establish the watch, re-read the group."""
        s = self.session
        if not s.connected:
            return
        try:
            if s.call("exists", self.path) is None:
                try:
                    s.call("create", self.path, self.member_id.encode(), ephemeral=True, makepath=True)
                    log.info("joined group %s as %s", self.group, self.member_id)
                except NodeExistsError:
                    pass
            if not self._watching:
                s.client.ChildrenWatch(self.group_path, self._watch)
                self._watching = True
            self._set_members(s.call("get_children", self.group_path))
        except (KazooException, TimeoutError, NoNodeError) as exc:
            log.debug("membership sync of %s deferred: %r", self.group, exc)

    def _watch(self, children: list[str]) -> None:  # kazoo thread
        self._set_members(children)

    async def on_started(self) -> None:
        await asyncio.to_thread(self._sync)

    @Service.timer(1.0)
    async def _keep_membership(self) -> None:
        await asyncio.to_thread(self._sync)

    async def on_stop(self) -> None:
        await asyncio.to_thread(self.session.delete_quietly, self.path)
