"""Alarm definitions in ZooKeeper: ``<coordination.root>/alarms/<alarm_id>``, one JSON document each.

:class:`AlarmDefinitionStore` is the blocking CRUD used by ``streams alarm``
(updates are compare-and-set on the znode version). :class:`AlarmWatcher`
is the processor's live view: a kazoo ``ChildrenWatch`` on the folder plus a
``DataWatch`` per alarm, so creates, updates and deletes apply within
milliseconds, without a restart. An invalid document is logged and ignored
(the previous valid version of that alarm stays in force).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, KazooException, NodeExistsError, NoNodeError
from mode import Service

from streams.alarms.evaluator import AlarmSet
from streams.alarms.model import AlarmDefinition, AlarmDefinitionError, parse_alarm
from streams.codec import clip
from streams.coordination.session import ZooKeeperSession

log = logging.getLogger(__name__)


def alarms_path(root: str) -> str:
    """The folder of alarm definitions under ``root`` (``coordination.root``)."""
    return f"{root.rstrip('/')}/alarms"


class AlarmNotFound(KeyError):
    """No alarm with that id."""


class AlarmExists(ValueError):
    """An alarm with that id already exists."""


class AlarmDefinitionStore:
    """CRUD of definitions on a started kazoo client (blocking calls).

    Raises (per method): :class:`AlarmNotFound`, :class:`AlarmExists`,
    :class:`~streams.alarms.model.AlarmDefinitionError`, kazoo errors on connection loss.
    """

    def __init__(self, client: KazooClient, root: str) -> None:
        self.client = client
        self.path = alarms_path(root)

    def _node(self, alarm_id: str) -> str:
        return f"{self.path}/{alarm_id}"

    def create(self, alarm: AlarmDefinition) -> AlarmDefinition:
        self.client.ensure_path(self.path)
        try:
            self.client.create(self._node(alarm.alarm_id), alarm.to_json().encode())
        except NodeExistsError:
            raise AlarmExists(f"alarm {alarm.alarm_id!r} already exists") from None
        return alarm

    def get(self, alarm_id: str) -> tuple[AlarmDefinition, int]:
        """The definition and its znode version."""
        try:
            data, stat = self.client.get(self._node(alarm_id))
        except NoNodeError:
            raise AlarmNotFound(alarm_id) from None
        return parse_alarm(data), stat.version

    def list(self) -> list[AlarmDefinition]:
        """The valid definitions (invalid ones are logged and left out; see :meth:`list_all`)."""
        out = []
        for alarm_id, alarm, error in self.list_all():
            if alarm is not None:
                out.append(alarm)
            else:
                log.warning("skipping alarm %s: %s", alarm_id, error)
        return out

    def list_all(self) -> list[tuple[str, AlarmDefinition | None, str]]:
        """Every znode under the alarms folder: (id, definition or None, why it is invalid or '')."""
        try:
            ids = sorted(self.client.get_children(self.path))
        except NoNodeError:
            return []
        out: list[tuple[str, AlarmDefinition | None, str]] = []
        for i in ids:
            try:
                out.append((i, self.get(i)[0], ""))
            except AlarmNotFound:
                continue
            except AlarmDefinitionError as exc:
                out.append((i, None, clip(str(exc), 300)))
        return out

    def update(self, alarm_id: str, change: Callable[[dict], dict]) -> AlarmDefinition:
        """Apply ``change`` to the stored document (as a dict), validate, write if unchanged meanwhile.

        Retries on a concurrent write (compare-and-set on the znode version).
        """
        for _ in range(10):
            current, version = self.get(alarm_id)
            doc = change(current.model_dump(mode="json", by_alias=True, exclude_none=True))
            doc["alarm_id"] = alarm_id
            new = parse_alarm(doc)
            try:
                self.client.set(self._node(alarm_id), new.to_json().encode(), version=version)
                return new
            except BadVersionError:
                continue
        raise RuntimeError(f"alarm {alarm_id!r} kept changing; update not applied")

    def disable(self, alarm_id: str, reason: str, expected: str) -> bool:
        """Disable an alarm whose evaluation raised: ``enabled: false`` and ``disabled_reason``.

        Written only if the stored definition is still ``expected`` (its
        :meth:`AlarmDefinition.to_json`), so a fix an operator made meanwhile is
        not overwritten. Returns True if written (or already disabled with a reason).
        """
        for _ in range(10):
            try:
                current, version = self.get(alarm_id)
            except (AlarmNotFound, AlarmDefinitionError):
                return False
            if current.disabled_reason:
                return True
            if current.to_json() != expected:
                return False
            doc = json.loads(current.to_json())
            doc.update(enabled=False, disabled_reason=reason)
            try:
                self.client.set(self._node(alarm_id), parse_alarm(doc).to_json().encode(), version=version)
                return True
            except BadVersionError:
                continue
        return False

    def delete(self, alarm_id: str) -> None:
        try:
            self.client.delete(self._node(alarm_id))
        except NoNodeError:
            raise AlarmNotFound(alarm_id) from None


class AlarmWatcher(Service):
    """Keeps :attr:`alarms` (an immutable :class:`AlarmSet`) equal to what ZooKeeper holds.

    kazoo callbacks run in kazoo's thread; they rebuild the snapshot under a
    lock and swap the reference, which the event loop reads without locking.
    ``on_change(AlarmSet)`` (optional) is called after each swap, in kazoo's thread.
    """

    def __init__(self, session: ZooKeeperSession, on_change: Callable[[AlarmSet], None] | None = None,
                 **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.session = session
        self.path = alarms_path(session.root)
        self.alarms = AlarmSet()
        self.on_change = on_change
        self._defs: dict[str, AlarmDefinition] = {}
        self._watched: set[str] = set()
        self._lock = threading.RLock()  # DataWatch calls back at once, inside _on_children
        self._established = False

    def on_init_dependencies(self) -> list[Service]:
        return [self.session]

    def _publish(self) -> None:
        self.alarms = AlarmSet(self._defs.values())
        if self.on_change:
            self.on_change(self.alarms)

    def _on_children(self, children: list[str]) -> None:
        with self._lock:
            gone = set(self._defs) - set(children)
            for alarm_id in gone:
                del self._defs[alarm_id]
            if gone:
                log.info("alarms deleted: %s", ", ".join(sorted(gone)))
                self._publish()
            for alarm_id in children:
                if alarm_id not in self._watched:
                    self._watched.add(alarm_id)
                    self.session.client.DataWatch(f"{self.path}/{alarm_id}", self._data_cb(alarm_id))

    def _data_cb(self, alarm_id: str) -> Callable:
        def changed(data: bytes | None, stat: object) -> bool | None:
            with self._lock:
                if data is None:  # deleted: stop this watch
                    self._watched.discard(alarm_id)
                    if self._defs.pop(alarm_id, None) is not None:
                        log.info("alarm %s deleted", alarm_id)
                        self._publish()
                    return False
                try:
                    alarm = parse_alarm(data)
                    if alarm.alarm_id != alarm_id:
                        alarm = alarm.model_copy(update={"alarm_id": alarm_id})
                except Exception as exc:  # noqa: BLE001 - AlarmDefinitionError, or a bug: never kill the watch
                    log.error("alarm %s/%s is invalid, keeping the previous version: %s", self.path, alarm_id,
                              clip(str(exc)))
                    return None
                self._defs[alarm_id] = alarm
                log.info("alarm %s loaded (%s, enabled=%s)", alarm_id, alarm.name, alarm.enabled)
                self._publish()
                return None
        return changed

    def _establish(self) -> None:
        if self._established or not self.session.connected:
            return
        try:
            self.session.client.ensure_path(self.path)
            self.session.client.ChildrenWatch(self.path, self._on_children)
            self._established = True
            log.info("watching alarm definitions under %s", self.path)
        except KazooException as exc:
            log.debug("alarm watch on %s deferred: %r", self.path, exc)

    def disable(self, alarm_id: str, reason: str, expected: str) -> None:
        """Persist a processor's decision to disable an alarm (:meth:`AlarmDefinitionStore.disable`), in a
        background thread, retrying while ZooKeeper is away (up to ten minutes); never raises."""

        def run() -> None:
            store = AlarmDefinitionStore(self.session.client, self.session.root)
            for attempt in range(120):
                try:
                    if store.disable(alarm_id, reason, expected):
                        log.info("alarm %s disabled in ZooKeeper: %s", alarm_id, reason)
                    return
                except KazooException as exc:
                    if attempt == 0:
                        log.warning("could not disable alarm %s in ZooKeeper yet (%r); retrying", alarm_id, exc)
                    threading.Event().wait(5.0)
                except Exception:  # noqa: BLE001 - a bug here must not kill anything
                    log.exception("could not disable alarm %s in ZooKeeper", alarm_id)
                    return

        threading.Thread(target=run, name=f"disable-alarm-{alarm_id}", daemon=True).start()

    async def on_started(self) -> None:
        await asyncio.to_thread(self._establish)

    @Service.timer(1.0)
    async def _ensure_watch(self) -> None:
        if not self._established:
            await asyncio.to_thread(self._establish)
