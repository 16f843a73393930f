"""Compute pollsters: real metrics of this host and its processes, via psutil.

Meters (names follow Ceilometer's compute meters):

========================  ==========  ====  =====================================
meter                     type        unit  value
========================  ==========  ====  =====================================
cpu                       cumulative  ns    CPU time used (all cores; for the host:
                                            everything but idle and iowait)
cpu_util                  gauge       %     cpu delta / (wall delta x cores) x 100,
                                            so 0..100 whatever the core count
                                            (Ceilometer's cpu_util); none on the
                                            first poll of a resource
memory.usage              gauge       B     host: total - available; process: RSS
disk.read.bytes           cumulative  B     host: all disks; process: its I/O
disk.write.bytes          cumulative  B     as above
network.incoming.bytes    cumulative  B     host only (psutil has no per-process
network.outgoing.bytes    cumulative  B     network counters)
========================  ==========  ====  =====================================
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from functools import partial
from typing import get_args

import psutil

from streams.codec import Sample, metadata_to_strings
from streams.pollers.base import Discovery, Meter, Pollster, Resource, make_sample
from streams.pollers.cmdline import CmdlineMode, describe_cmdline

CPU = Meter("cpu", "cumulative", "ns")
CPU_UTIL = Meter("cpu_util", "gauge", "%")
MEMORY = Meter("memory.usage", "gauge", "B")
DISK_READ = Meter("disk.read.bytes", "cumulative", "B")
DISK_WRITE = Meter("disk.write.bytes", "cumulative", "B")
NET_IN = Meter("network.incoming.bytes", "cumulative", "B")
NET_OUT = Meter("network.outgoing.bytes", "cumulative", "B")

NS = 1_000_000_000

NODE_NAME_ENV = "NODE_NAME"
"""Environment variable that names this host in resource ids when set. The Helm chart sets it to
the Kubernetes node name (downward API ``spec.nodeName``), so a node's resource ids survive the
agent pod's replacement, with or without ``hostNetwork``."""


def hostname() -> str:
    """This host's name, as used in resource ids: ``$NODE_NAME`` if set, else the hostname."""
    return os.environ.get(NODE_NAME_ENV) or socket.gethostname()


class _Utilisation:
    """Turns successive (cpu seconds, monotonic seconds) readings into cpu_util %.

    Keyed per resource; the first reading of a key gives ``None``; a counter
    that went backwards (process restart, counter reset) restarts the series.
    """

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}

    def update(self, key: str, cpu_s: float, mono_s: float, cores: int) -> float | None:
        prev = self._last.get(key)
        self._last[key] = (cpu_s, mono_s)
        if prev is None or cpu_s < prev[0] or mono_s <= prev[1]:
            return None
        util = 100.0 * (cpu_s - prev[0]) / ((mono_s - prev[1]) * cores)
        return min(max(util, 0.0), 100.0)

    def retain(self, keys: set[str]) -> None:
        """Forget resources that are gone, so state does not grow forever."""
        for k in self._last.keys() - keys:
            del self._last[k]


class LocalHostDiscovery(Discovery):
    """This host as one resource (id = hostname)."""

    def discover(self) -> list[Resource]:
        return [
            Resource(
                id=hostname(),
                metadata={
                    "kind": "host",
                    "host": hostname(),
                    "cpu_number": psutil.cpu_count() or 1,
                    "os": os.uname().sysname,
                    "kernel": os.uname().release,
                    "boot_time": int(psutil.boot_time()),
                },
            )
        ]


class HostPollster(Pollster):
    """Host-wide meters: cpu, cpu_util, memory.usage, disk and network bytes."""

    meters = (CPU, CPU_UTIL, MEMORY, DISK_READ, DISK_WRITE, NET_IN, NET_OUT)
    default_discovery = "local_host"

    def __init__(self, source: str = "streams", **params: object) -> None:
        super().__init__(source, **params)
        self._util = _Utilisation()

    def get_samples(self, resources: Iterable[Resource]) -> list[Sample]:
        out: list[Sample] = []
        cores = psutil.cpu_count() or 1
        for res in resources:
            ts = time.time_ns() // 1000
            mono = time.monotonic()
            md = metadata_to_strings(res.metadata)
            t = psutil.cpu_times()
            busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)

            sample = partial(make_sample, resource=res, timestamp_us=ts, monotonic_time=mono,
                             source=self.source, metadata=md)
            out.append(sample(CPU, round(busy * NS)))
            util = self._util.update(res.id, busy, mono, cores)
            if util is not None:
                out.append(sample(CPU_UTIL, util))
            vm = psutil.virtual_memory()
            out.append(sample(MEMORY, vm.total - vm.available))
            disk = psutil.disk_io_counters()
            if disk is not None:
                out += [sample(DISK_READ, disk.read_bytes), sample(DISK_WRITE, disk.write_bytes)]
            net = psutil.net_io_counters()
            if net is not None:
                out += [sample(NET_IN, net.bytes_recv), sample(NET_OUT, net.bytes_sent)]
        return out


_PROC_ATTRS = ["pid", "name", "username", "create_time", "cpu_times", "memory_info", "io_counters"]


class LocalProcessDiscovery(Discovery):
    """This host's processes, busiest (most CPU time) first, at most ``limit``.

    Resource id: ``<hostname>/process/<pid>-<start time in ms>``, so a reused
    pid is a new resource. Metadata ``cmdline`` is the executable's name
    (``cmdline: name``, the default) or the command line with secrets redacted
    (``cmdline: full``); see :mod:`streams.pollers.cmdline`.

    Raises:
        ValueError: ``cmdline`` is neither ``name`` nor ``full``.
    """

    def __init__(self, limit: int = 500, cmdline: CmdlineMode = "name", **kwargs: object) -> None:
        super().__init__(**kwargs)
        if cmdline not in get_args(CmdlineMode):
            raise ValueError(f"cmdline must be one of {', '.join(get_args(CmdlineMode))}, not {cmdline!r}")
        self.limit = limit
        self.cmdline = cmdline
        # The full command line is not even read unless asked for.
        self._attrs = _PROC_ATTRS + (["cmdline"] if cmdline == "full" else [])

    def discover(self) -> list[Resource]:
        host = hostname()
        found: list[Resource] = []
        for proc in psutil.process_iter(self._attrs, ad_value=None):
            info = proc.info
            if info.get("cpu_times") is None or info.get("create_time") is None:
                continue
            start_ms = int(info["create_time"] * 1000)
            cmdline = describe_cmdline(info.get("name") or "", info.get("cmdline"), self.cmdline)
            found.append(
                Resource(
                    id=f"{host}/process/{info['pid']}-{start_ms}",
                    metadata={
                        "kind": "process",
                        "host": host,
                        "pid": info["pid"],
                        "name": info.get("name") or "",
                        "username": info.get("username") or "",
                        "cmdline": cmdline,
                        "cpu_number": psutil.cpu_count() or 1,
                    },
                    handle=info,
                )
            )
        found.sort(key=lambda r: -(r.handle["cpu_times"].user + r.handle["cpu_times"].system))
        return found[: self.limit]


class ProcessPollster(Pollster):
    """Per-process meters: cpu, cpu_util, memory.usage (RSS), disk read/write bytes.

    Uses the psutil snapshot taken by :class:`LocalProcessDiscovery`;
    a meter the process does not expose to us (AccessDenied) is left out.
    """

    meters = (CPU, CPU_UTIL, MEMORY, DISK_READ, DISK_WRITE)
    default_discovery = "local_processes"

    def __init__(self, source: str = "streams", **params: object) -> None:
        super().__init__(source, **params)
        self._util = _Utilisation()

    def get_samples(self, resources: Iterable[Resource]) -> list[Sample]:
        out: list[Sample] = []
        cores = psutil.cpu_count() or 1
        seen: set[str] = set()
        ts = time.time_ns() // 1000
        mono = time.monotonic()
        for res in resources:
            info = res.handle
            if info is None:
                continue
            seen.add(res.id)
            md = metadata_to_strings(res.metadata)

            sample = partial(make_sample, resource=res, timestamp_us=ts, monotonic_time=mono,
                             source=self.source, metadata=md)
            ct = info["cpu_times"]
            cpu_s = ct.user + ct.system
            out.append(sample(CPU, round(cpu_s * NS)))
            util = self._util.update(res.id, cpu_s, mono, cores)
            if util is not None:
                out.append(sample(CPU_UTIL, util))
            if info.get("memory_info") is not None:
                out.append(sample(MEMORY, info["memory_info"].rss))
            io = info.get("io_counters")
            if io is not None:
                out += [sample(DISK_READ, io.read_bytes), sample(DISK_WRITE, io.write_bytes)]
        self._util.retain(seen)
        return out
