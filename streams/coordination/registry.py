"""Live-service registry (Nova's service table, in ZooKeeper).

Every long-running service holds the ephemeral znode
``<root>/services/<binary>/<member id>`` whose JSON says::

    {"host": ..., "binary": "streams-poll-central", "version": "0.1.0", "pid": 123,
     "started_at": 1700000000.0, "report_interval": 10.0, "last_report": 1700000042.0}

and rewrites ``last_report`` (Unix seconds) every ``report_interval``. A
service is *alive* while its znode exists (its ZooKeeper session lives) and
its last report is at most ``2 x report_interval`` old (its loop still runs).

To register a service, add :func:`registration` 's result to its mode
dependencies (the pollers and the processor do; the notifier does not yet)::

    deps.append(registration(settings.coordination, "streams-process", 10.0))
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from importlib.metadata import PackageNotFoundError, version

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError
from mode import Service

from streams.config import CoordinationSettings
from streams.coordination.membership import default_member_id
from streams.coordination.session import ZooKeeperSession
from streams.observability import REGISTRY_LAST_REPORT

log = logging.getLogger(__name__)


def package_version() -> str:
    try:
        return version("streams-metering")
    except PackageNotFoundError:
        return "unknown"


class ServiceRegistration(Service):
    """Registers this process as ``binary`` and refreshes its report every ``report_interval`` s.

    Outages are tolerated: the report is retried on the next tick and the
    znode recreated if the session was replaced.
    """

    def __init__(self, session: ZooKeeperSession, binary: str, report_interval: float = 10.0,
                 member_id: str | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.session = session
        self.binary = binary
        self.report_interval = report_interval
        self.member_id = member_id or default_member_id()
        self.path = f"{session.root}/services/{binary}/{self.member_id}"
        self.started_at = time.time()
        self.reports = 0

    def on_init_dependencies(self) -> list[Service]:
        return [self.session]

    def record(self) -> dict:
        return {"host": socket.gethostname(), "binary": self.binary, "version": package_version(),
                "pid": os.getpid(), "member_id": self.member_id, "started_at": self.started_at,
                "report_interval": self.report_interval, "last_report": time.time()}

    def report(self) -> bool:
        """Blocking: write (or create) the znode; False when ZooKeeper is unavailable."""
        record = self.record()
        data = json.dumps(record).encode()
        try:
            try:
                self.session.call("set", self.path, data)
            except NoNodeError:
                try:
                    self.session.call("create", self.path, data, ephemeral=True, makepath=True)
                except NodeExistsError:
                    self.session.call("set", self.path, data)
            self.reports += 1
            REGISTRY_LAST_REPORT.labels(binary=self.binary).set(record["last_report"])
            return True
        except (KazooException, TimeoutError) as exc:
            log.debug("service report deferred: %r", exc)
            return False

    async def on_started(self) -> None:
        await asyncio.to_thread(self.report)
        self.add_future(self._report_loop())

    async def _report_loop(self) -> None:
        async for _ in self.itertimer(self.report_interval, name="service-report"):
            await asyncio.to_thread(self.report)

    async def on_stop(self) -> None:
        await asyncio.to_thread(self.session.delete_quietly, self.path)


def registration(settings: CoordinationSettings, binary: str, report_interval: float = 10.0,
                 session: ZooKeeperSession | None = None) -> ServiceRegistration | None:
    """A registry entry for this process, to run as a mode dependency; None when
    coordination is off. Pass the process's ``session`` to share one ZooKeeper session."""
    if not settings.hosts:
        return None
    return ServiceRegistration(session or ZooKeeperSession(settings), binary, report_interval)


def list_services(client: KazooClient, root: str, now: float | None = None) -> list[dict]:
    """Every registered service under ``root``, each record plus ``alive`` and ``age`` (s since last report).

    Sorted by binary then host. Records that vanish while being read are skipped.
    """
    now = time.time() if now is None else now
    out: list[dict] = []
    base = f"{root}/services"
    try:
        binaries = client.get_children(base)
    except NoNodeError:
        return []
    for b in binaries:
        try:
            members = client.get_children(f"{base}/{b}")
        except NoNodeError:
            continue
        for m in members:
            try:
                data, _ = client.get(f"{base}/{b}/{m}")
                rec = json.loads(data)
            except (NoNodeError, ValueError):
                continue
            rec["age"] = now - float(rec.get("last_report", 0))
            rec["alive"] = rec["age"] <= 2 * float(rec.get("report_interval", 10))
            out.append(rec)
    return sorted(out, key=lambda r: (r.get("binary", ""), r.get("host", ""), r.get("pid", 0)))
