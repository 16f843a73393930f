"""Container pollster: cgroup v2 control groups of this host (containers, systemd units, pods).

Read straight from the unified hierarchy (``/sys/fs/cgroup`` when it is
cgroup v2, i.e. has ``cgroup.controllers``; on a hybrid host
``/sys/fs/cgroup/unified``). Nothing is polled on a host without cgroup v2.

========================  ==========  ====  ====================================
meter                     type        unit  value
========================  ==========  ====  ====================================
cpu                       cumulative  ns    ``cpu.stat`` usage_usec x 1000
cpu_util                  gauge       %     as the host's cpu_util (0..100 of all cores)
memory.usage              gauge       B     ``memory.current``
disk.read.bytes           cumulative  B     ``io.stat`` rbytes, all devices
disk.write.bytes          cumulative  B     ``io.stat`` wbytes, all devices
========================  ==========  ====  ====================================

Resource id: ``<hostname>/cgroup/<path below the root>``; metadata ``kind=cgroup``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path

from streams.codec import Sample, metadata_to_strings
from streams.pollers.base import Discovery, Pollster, Resource, make_sample
from streams.pollers.compute import CPU, CPU_UTIL, DISK_READ, DISK_WRITE, MEMORY, _Utilisation, hostname

DEFAULT_ROOTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")


def cgroup2_root(candidates: Iterable[str] = DEFAULT_ROOTS) -> Path | None:
    """The first candidate that is a cgroup v2 hierarchy (has ``cgroup.controllers``), else None."""
    for c in candidates:
        if (Path(c) / "cgroup.controllers").is_file():
            return Path(c)
    return None


def _read_kv(path: Path) -> dict[str, int]:
    """``key value`` lines (``cpu.stat``) as ints; missing file = {}."""
    out: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            if v.strip().isdigit():
                out[k] = int(v)
    except OSError:
        pass
    return out


def _io_bytes(path: Path) -> tuple[int, int] | None:
    """Sum of rbytes / wbytes over the devices of an ``io.stat`` file; None if absent."""
    try:
        text = path.read_text()
    except OSError:
        return None
    rd = wr = 0
    for line in text.splitlines():
        for field in line.split()[1:]:
            k, _, v = field.partition("=")
            if k == "rbytes":
                rd += int(v)
            elif k == "wbytes":
                wr += int(v)
    return rd, wr


class CgroupDiscovery(Discovery):
    """Control groups with a ``cpu.stat``, down to ``max_depth`` levels below the root.

    Params:
        root: hierarchy to walk (default: auto-detected cgroup v2 root; none = no resources).
        max_depth: how deep to walk (default 2: e.g. ``system.slice/docker-<id>.scope``).
    """

    def __init__(self, root: str | None = None, max_depth: int = 2, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.root = Path(root) if root else cgroup2_root()
        self.max_depth = max_depth

    def discover(self) -> list[Resource]:
        if self.root is None or not (self.root / "cgroup.controllers").is_file():
            return []
        host = hostname()
        found: list[Resource] = []
        base_depth = len(self.root.parts)
        for dirpath, dirnames, filenames in os.walk(self.root):
            depth = len(Path(dirpath).parts) - base_depth
            if depth >= self.max_depth:
                dirnames.clear()
            if depth == 0 or "cpu.stat" not in filenames:
                continue
            rel = str(Path(dirpath).relative_to(self.root))
            found.append(Resource(id=f"{host}/cgroup/{rel}",
                                  metadata={"kind": "cgroup", "host": host, "cgroup": rel,
                                            "cpu_number": os.cpu_count() or 1},
                                  handle=Path(dirpath)))
        return found


class CgroupPollster(Pollster):
    """Per-cgroup cpu, cpu_util, memory.usage and disk bytes from cgroup v2 files.

    A cgroup that vanished between discovery and poll yields nothing; a
    controller that is not enabled (no ``memory.current``) leaves its meter out.
    """

    meters = (CPU, CPU_UTIL, MEMORY, DISK_READ, DISK_WRITE)
    default_discovery = "local_cgroups"

    def __init__(self, source: str = "streams", **params: object) -> None:
        super().__init__(source, **params)
        self._util = _Utilisation()

    def get_samples(self, resources: Iterable[Resource]) -> list[Sample]:
        out: list[Sample] = []
        cores = os.cpu_count() or 1
        seen: set[str] = set()
        for res in resources:
            path: Path = res.handle
            stat = _read_kv(path / "cpu.stat")
            if "usage_usec" not in stat:
                continue
            seen.add(res.id)
            ts, mono = time.time_ns() // 1000, time.monotonic()
            sample = partial(make_sample, resource=res, timestamp_us=ts, monotonic_time=mono,
                             source=self.source, metadata=metadata_to_strings(res.metadata))
            cpu_s = stat["usage_usec"] / 1e6
            out.append(sample(CPU, stat["usage_usec"] * 1000))
            util = self._util.update(res.id, cpu_s, mono, cores)
            if util is not None:
                out.append(sample(CPU_UTIL, util))
            try:
                out.append(sample(MEMORY, int((path / "memory.current").read_text())))
            except (OSError, ValueError):
                pass
            io = _io_bytes(path / "io.stat")
            if io is not None:
                out += [sample(DISK_READ, io[0]), sample(DISK_WRITE, io[1])]
        self._util.retain(seen)
        return out
