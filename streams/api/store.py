"""Alarm definitions for the API: the same znodes ``streams alarm`` and the processor use.

A thin layer over :class:`~streams.alarms.definitions.AlarmDefinitionStore`
that also returns each znode's creation and modification times (Aodh's
``timestamp`` for alarms made outside the API) and reads a listing with
parallel requests. Blocking: call from a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from streams.alarms.definitions import AlarmDefinitionStore, AlarmNotFound
from streams.alarms.model import ALARM_ID, AlarmDefinition, AlarmDefinitionError, parse_alarm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredAlarm:
    """A definition with its znode's creation and last modification times (µs)."""

    definition: AlarmDefinition
    ctime_us: int
    mtime_us: int


class AlarmRepository:
    """CRUD on ``<root>/alarms`` with a started kazoo client.

    Raises (every method): :class:`~streams.alarms.definitions.AlarmNotFound`,
    :class:`~streams.alarms.definitions.AlarmExists`,
    :class:`~streams.alarms.model.AlarmDefinitionError`, kazoo errors when
    ZooKeeper cannot be reached.
    """

    def __init__(self, client: KazooClient, root: str) -> None:
        self.client = client
        self.store = AlarmDefinitionStore(client, root)

    def _stored(self, alarm_id: str, data: bytes, stat) -> StoredAlarm:
        definition = parse_alarm(data)
        if definition.alarm_id != alarm_id:
            definition = definition.model_copy(update={"alarm_id": alarm_id})
        return StoredAlarm(definition, stat.ctime * 1000, stat.mtime * 1000)

    def get(self, alarm_id: str) -> StoredAlarm:
        if not ALARM_ID.match(alarm_id) or alarm_id in (".", ".."):
            raise AlarmNotFound(alarm_id)
        try:
            data, stat = self.client.get(f"{self.store.path}/{alarm_id}")
        except NoNodeError:
            raise AlarmNotFound(alarm_id) from None
        return self._stored(alarm_id, data, stat)

    def list(self) -> list[StoredAlarm]:
        """Every valid definition (an invalid document is logged and left out, as the processor does)."""
        try:
            ids = self.client.get_children(self.store.path)
        except NoNodeError:
            return []
        pending = [(i, self.client.get_async(f"{self.store.path}/{i}")) for i in ids]
        out = []
        for alarm_id, result in pending:
            try:
                data, stat = result.get(timeout=10)
                out.append(self._stored(alarm_id, data, stat))
            except NoNodeError:
                continue  # deleted meanwhile
            except AlarmDefinitionError as exc:
                log.warning("alarm %s is invalid, not listed: %s", alarm_id, exc)
        return out

    def create(self, definition: AlarmDefinition) -> None:
        self.store.create(definition)

    def update(self, alarm_id: str, change: Callable[[dict], AlarmDefinition]) -> AlarmDefinition:
        """Compare-and-set: ``change(current document)`` -> the new definition; retried on a concurrent write."""
        return self.store.update(alarm_id, lambda doc: change(doc).model_dump(mode="json", by_alias=True,
                                                                              exclude_none=True))

    def delete(self, alarm_id: str) -> None:
        if not ALARM_ID.match(alarm_id):
            raise AlarmNotFound(alarm_id)
        self.store.delete(alarm_id)
