"""The Python API of the dev environment: :func:`up`, :func:`down`, :func:`status`,
:func:`restart`, :func:`addresses` (re-exported by :mod:`streams.devenv`)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from streams.devenv.base import (
    DevEnvError,
    PortInUseError,
    Service,
    ServiceStartError,
    dev_dir,
    env_port,
    port_open,
    port_owner,
)
from streams.devenv.clickhouse import CLUSTER_FILE, ClickHouse, ClusterLayout
from streams.devenv.kafka import KafkaBroker
from streams.devenv.process import (
    launch,
    locked,
    managed_process,
    stop_process,
    stop_processes,
    wait_answering,
    wait_ready,
)
from streams.devenv.zookeeper import ZooKeeper

log = logging.getLogger(__name__)

SERVICE_CLASSES: dict[str, type[Service]] = {cls.name: cls for cls in (KafkaBroker, ZooKeeper, ClickHouse)}
"""Service name -> class of the always-present services, in start order."""

SERVICE_NAMES: tuple[str, ...] = tuple(SERVICE_CLASSES)

CLUSTER_PORT_ENV = "STREAMS_DEV_CLICKHOUSE_CLUSTER_PORT"
"""Base port of the dev cluster's nodes (default 19100; node k uses base + 10 k .. + 3)."""
CLUSTER_ZK_ROOT_ENV = "STREAMS_DEV_CLICKHOUSE_CLUSTER_ZK_ROOT"
"""ZooKeeper chroot of the dev cluster's servers (default ``/streams-dev-clickhouse``)."""


def _services(names: Iterable[str] | None = None, root: Path | None = None) -> list[Service]:
    """The services of the dev dir ``root``: the three base ones, then the nodes of its
    ClickHouse cluster if ``up --clickhouse-cluster`` made one; or those named.

    :raises DevEnvError: an unknown name.
    """
    root = root or dev_dir()
    every: list[Service] = [cls(root) for cls in SERVICE_CLASSES.values()]
    layout = ClusterLayout.load(root)
    if layout is not None:
        every += layout.nodes(root)
    if names is None:
        return every
    by_name = {s.name: s for s in every}
    names = list(names)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise DevEnvError(f"unknown service(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
    return [by_name[n] for n in names]


@dataclass
class UpResult:
    """What :func:`up_detailed` did for one service.

    ``action`` is ``"started"``, ``"running"`` (already ours) or ``"external"``
    (answering, not started by us); ``seconds`` is the launch-to-answer time
    for ``"started"``, else 0.0.
    """

    service: str
    address: str
    action: str
    pid: int | None
    seconds: float
    log_path: Path
    extra: dict[str, str]


def _cluster_layout(shape: str, root: Path) -> ClusterLayout:
    """The layout for ``--clickhouse-cluster SHAPE``: the saved one if it has that shape, else a new one
    on the dev ZooKeeper (saved).

    :raises DevEnvError: a cluster of another shape is saved here.
    """
    wanted = ClusterLayout.parse(shape, zookeeper=ZooKeeper(root).address,
                                 base_port=env_port(CLUSTER_PORT_ENV, ClusterLayout.base_port),
                                 zookeeper_root=os.environ.get(CLUSTER_ZK_ROOT_ENV, "/streams-dev-clickhouse"))
    saved = ClusterLayout.load(root)
    if saved is not None and saved.shape != wanted.shape:
        raise DevEnvError(f"a {saved.shape} ClickHouse cluster is set up in {root}; "
                          "'streams dev down' first to change its shape")
    if saved is None:
        wanted.save(root)
    return saved or wanted


def start(svcs: list[Service], timeout: float | None = None) -> list[UpResult]:
    """Start those of ``svcs`` that are not running and wait until each answers (no dev-dir lock).

    For private servers outside the dev dir too, e.g. a test's own cluster nodes
    (``ClusterLayout(...).nodes(tmp_path)``); :func:`stop` stops them.

    :raises DevEnvError: one or more failed (all messages); the others stay up.
    """
    results: dict[str, UpResult] = {}
    failures: list[DevEnvError] = []
    launched = []
    for svc in svcs:
        proc = managed_process(svc)
        if proc is not None:
            log.debug("%s: pid %d already running", svc.name, proc.pid)
            results[svc.name] = UpResult(svc.name, svc.address, "running", proc.pid, 0.0, svc.log_path, svc.extra)
            try:
                wait_answering(svc, timeout or svc.start_timeout)  # usually answers at once
            except ServiceStartError as exc:
                failures.append(exc)
                results.pop(svc.name)
            continue
        if port_open(svc.port):
            if svc.ready(timeout=3.0):
                log.info("%s: %s already answers (not started by us); using it", svc.name, svc.address)
                results[svc.name] = UpResult(svc.name, svc.address, "external", None, 0.0, svc.log_path, svc.extra)
                continue
            hint = f"set {svc.port_env} to a free port" if svc.port_env else "choose another base port"
            failures.append(PortInUseError(
                f"{svc.name}: port {svc.port} is taken by {port_owner(svc.port)}, which does not answer "
                f"like {svc.name}; stop it or {hint}"))
            continue
        try:
            ex = launch(svc, timeout or svc.start_timeout)
        except DevEnvError as exc:
            failures.append(exc)
            continue
        launched.append(ex)
        results[svc.name] = UpResult(svc.name, svc.address, "started", ex.process.pid, 0.0, svc.log_path,
                                     svc.extra)
    for ex in launched:
        try:
            seconds = wait_ready(ex)
        except ServiceStartError as exc:
            failures.append(exc)
            results.pop(ex.svc.name, None)
            continue
        results[ex.svc.name].seconds = seconds
        log.info("%s: answering on %s after %.2fs", ex.svc.name, ex.svc.address, seconds)
    if failures:
        if len(failures) == 1:
            raise failures[0]
        raise DevEnvError("\n\n".join(f.message for f in failures))
    return [results[s.name] for s in svcs]


def stop(svcs: list[Service], purge: bool = False, sig: int = signal.SIGTERM) -> dict[str, str]:
    """Stop those of ``svcs`` that were started by :func:`start` or :func:`up` (found by pid file):
    cluster nodes all at once, then the others in reverse order; ``sig=SIGKILL`` crashes them
    instead (failure tests). No dev-dir lock.

    :returns: ``{service: outcome}``, see :func:`down`.
    """
    outcomes: dict[str, str] = {}
    nodes = [s for s in svcs if s.name not in SERVICE_CLASSES]
    base = [s for s in svcs if s.name in SERVICE_CLASSES]
    running = [(s, p) for s in nodes if (p := managed_process(s)) is not None]
    stop_processes(running, sig=sig)  # cluster nodes together, before the ZooKeeper they use
    outcomes.update({s.name: f"stopped pid {p.pid}" for s, p in running})
    for svc in reversed(base + [s for s in nodes if s.name not in outcomes]):
        proc = managed_process(svc)
        if proc is not None:
            stop_process(svc, proc, sig=sig)
            outcomes[svc.name] = f"stopped pid {proc.pid}"
        elif port_open(svc.port) and svc.ready(timeout=1.0):
            outcomes[svc.name] = "external, left alone"
        else:
            outcomes[svc.name] = "not running"
    for svc in svcs if purge else ():
        for d in svc.data_dirs:
            if d.exists():
                shutil.rmtree(d)
                log.info("%s: purged %s", svc.name, d)
    return {s.name: outcomes[s.name] for s in svcs}


def up_detailed(services: Iterable[str] | None = None, timeout: float | None = None,
                clickhouse_cluster: str | None = None) -> list[UpResult]:
    """Like :func:`up` but return one :class:`UpResult` per service (used by the CLI).

    All services that need starting are launched first and then waited for in
    turn, so a cold start takes about as long as the slowest service (cluster
    nodes start after ZooKeeper answers: they need it).
    """
    root = dev_dir()
    with locked(root):
        layout = _cluster_layout(clickhouse_cluster, root) if clickhouse_cluster else None
        svcs = _services(services, root)
        if layout is not None and services is not None:
            svcs += [n for n in layout.nodes(root) if n.name not in {s.name for s in svcs}]
        base = [s for s in svcs if s.name in SERVICE_CLASSES]
        nodes = [s for s in svcs if s.name not in SERVICE_CLASSES]
        results = start(base, timeout)
        if nodes:
            ClusterLayout.load(root).ensure_zookeeper_root()
            results += start(nodes, timeout)
    return results


def up(services: Iterable[str] | None = None, timeout: float | None = None,
       clickhouse_cluster: str | None = None) -> dict[str, str]:
    """Start the local services that are not already running and wait until each answers.

    :param services: names from :data:`SERVICE_NAMES` or cluster nodes
        (``clickhouse-s1r2``; default: all of the dev dir).
    :param timeout: seconds to wait per service for an answer (default: the
        service's ``start_timeout``: kafka 30, zookeeper 60, clickhouse 60).
    :param clickhouse_cluster: ``"SHARDSxREPLICAS"`` (e.g. ``"2x2"``): also start a
        local ClickHouse cluster of that shape on the dev ZooKeeper (nodes
        ``clickhouse-s<shard>r<replica>``, ports from 19100, cluster name ``streams``);
        it stays part of the dev dir until :func:`down` stops everything.
    :returns: ``{service: "127.0.0.1:PORT"}``, e.g.
        ``{"kafka": "127.0.0.1:19092", "zookeeper": "127.0.0.1:12181", "clickhouse": "127.0.0.1:19000"}``
        (ClickHouse's native port; its HTTP and TLS ports are in :func:`status` under ``extra``).
    :raises ServiceStartError: a service exited or did not answer in time (names its log).
    :raises PortInUseError: a port is taken by something that is not that service.
    :raises MissingDependencyError: a server is not installed.

    Idempotent: services already running (or answering on their port) are left alone.
    Services that did come up stay up even if another one failed.
    """
    return {r.service: r.address for r in up_detailed(services, timeout, clickhouse_cluster)}


def down(purge: bool = False, services: Iterable[str] | None = None) -> dict[str, str]:
    """Stop the services :func:`up` started (SIGTERM, SIGKILL after 20 s) and remove their pid files.

    :param purge: also delete the services' data dirs (ZooKeeper and ClickHouse data;
        the broker keeps everything in memory anyway). Logs and configs are kept.
    :param services: names to stop (default: all, which also forgets the cluster layout).
    :returns: ``{service: outcome}`` where outcome is ``"stopped pid N"``,
        ``"not running"`` or ``"external, left alone"``.
    """
    root = dev_dir()
    with locked(root) if root.exists() else contextlib.nullcontext():
        outcomes = stop(_services(services, root), purge=purge)
        if services is None:
            (root / CLUSTER_FILE).unlink(missing_ok=True)
    return outcomes


def restart(service: str, timeout: float | None = None) -> str:
    """Stop (if running) and start one service, wait until it answers, return its address.

    Data dirs are kept, so ZooKeeper and ClickHouse keep their data; the broker
    (in-memory) comes back empty.

    :raises DevEnvError: unknown service, or it is answering but was not started by us.
    :raises ServiceStartError: it did not come back (names its log).
    """
    (svc,) = _services([service])
    with locked(svc.root):
        proc = managed_process(svc)
        if proc is not None:
            stop_process(svc, proc)
        elif port_open(svc.port):
            raise DevEnvError(
                f"{service}: {svc.address} is served by {port_owner(svc.port)}, not started by "
                f"'streams dev up' in {svc.root}; cannot restart it"
            )
    return up([service], timeout)[service]


def status() -> dict[str, dict]:
    """Report each service (cluster nodes included) without starting or stopping anything.

    :returns: ``{service: {"running": bool, "pid": int | None, "managed": bool,
        "address": "127.0.0.1:PORT", "answering": bool, "log": str, "extra": {...}}}``.
        ``running`` is True if our process is alive or the port answers (then
        ``managed`` is False and ``pid`` None).
    """
    report: dict[str, dict] = {}
    for svc in _services():
        proc = managed_process(svc) if svc.pid_path.exists() else None
        answering = svc.ready(timeout=2.0)
        report[svc.name] = {
            "running": proc is not None or answering,
            "pid": proc.pid if proc is not None else None,
            "managed": proc is not None,
            "address": svc.address,
            "answering": answering,
            "log": str(svc.log_path),
            "extra": svc.extra,
        }
    return report


def addresses() -> dict[str, str]:
    """Configured ``{service: "127.0.0.1:PORT"}`` (env overrides applied); starts nothing."""
    return {svc.name: svc.address for svc in _services()}
