"""A ClickHouse cluster as the sink sees it: shards, replicas, and which shard holds a resource.

The topology is read from ``system.clusters`` of the server in ``clickhouse.url``
(the cluster named by ``clickhouse.cluster`` in its ``remote_servers``). A row
belongs to the shard that ``Distributed`` would choose for it with the sharding
key :data:`streams.storage.schema.RESOURCE_SHARD_KEY`: ``halfMD5(resource_id)``
modulo the sum of shard weights, each shard owning ``weight`` consecutive slots
in ``remote_servers`` order. :func:`shard_hash` computes ``halfMD5`` in Python
(first 8 bytes of MD5, big-endian), so the sink can write each shard directly.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

from streams.storage.backend import Connection

log = logging.getLogger(__name__)


class ClusterError(RuntimeError):
    """The cluster named in the settings is not known to the server."""


def shard_hash(resource_id: str) -> int:
    """ClickHouse's ``halfMD5(resource_id)``: UInt64 from the first 8 bytes of MD5, big-endian."""
    return int.from_bytes(hashlib.md5(resource_id.encode()).digest()[:8], "big")


@dataclass(frozen=True)
class Shard:
    """One shard: its number (1-based, as ``{shard}`` in ``system.clusters``), weight and replicas
    as ``(host, port)`` in configuration order."""

    num: int
    weight: int
    replicas: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Topology:
    """The shards of a cluster and the slot table that maps a hash to a shard (as Distributed does)."""

    name: str
    shards: tuple[Shard, ...]

    @classmethod
    def read(cls, conn: Connection, cluster: str) -> Topology:
        """Read ``system.clusters`` on ``conn``.

        Raises:
            ClusterError: the server has no cluster of that name.
        """
        rows = conn.execute(
            "SELECT shard_num, shard_weight, replica_num, host_address, port FROM system.clusters "
            "WHERE cluster = %(c)s ORDER BY shard_num, replica_num", {"c": cluster})
        if not rows:
            raise ClusterError(f"cluster {cluster!r} is not in system.clusters of the server in clickhouse.url; "
                               "its remote_servers must define it (see docs/storage.md)")
        by_shard: dict[int, tuple[int, list[tuple[str, int]]]] = {}
        for num, weight, _replica, host, port in rows:
            by_shard.setdefault(num, (weight, []))[1].append((host, int(port)))
        return cls(cluster, tuple(Shard(n, w, tuple(r)) for n, (w, r) in sorted(by_shard.items())))

    @property
    def slots(self) -> list[int]:
        """Index into :attr:`shards` for each slot ``hash % len(slots)``."""
        return [i for i, s in enumerate(self.shards) for _ in range(max(1, s.weight))]

    def shard_of(self, resource_id: str) -> int:
        """Index into :attr:`shards` of the shard holding ``resource_id``."""
        slots = self.slots
        return slots[shard_hash(resource_id) % len(slots)]

    def nodes(self) -> list[tuple[str, int]]:
        """Every replica of every shard, ``(host, port)``."""
        return [r for s in self.shards for r in s.replicas]


def cluster_nodes(conn: Connection, cluster: str) -> list[tuple[str, int]]:
    """``(host, port)`` of every server of ``cluster`` (see :meth:`Topology.read`)."""
    return Topology.read(conn, cluster).nodes()


class ShardWriter:
    """Writes rows to the shard that owns them, on a live replica (used by the sink in cluster mode).

    For each shard it keeps one current replica and stays on it while it works
    (so the sink's duplicate check reads where its own inserts went). When the
    current replica fails with a transient error, the next one in configuration
    order takes over. Before a replica first answers a duplicate check, the
    writer waits (at most :attr:`CATCH_UP_WAIT` s) until ``system.replicas`` says
    it has pulled the whole replication log and fetched every inserted part, so a
    replica that just came back does not miss a stored row. If it cannot catch up
    (the only holder of a part is down), ingestion goes on after the wait with a
    warning: then a *replayed* sample stored only on the down replica may be
    stored again (see docs/storage.md). If no replica of a shard works, the last
    transient error is raised: the caller retries and acknowledges nothing.

    Args:
        entry: a connection to any node (``clickhouse.url``); the topology is read there.
        cluster: the cluster name (``clickhouse.cluster``).
        local_table: the table rows go to on a node, e.g. ``streams.samples_local``.
    """

    CATCH_UP_WAIT = 10.0
    """Seconds to wait for a replica to catch up before its first duplicate check."""

    def __init__(self, entry, cluster: str, local_table: str) -> None:
        self.entry, self.cluster, self.local_table = entry, cluster, local_table
        self._db, self._table = local_table.split(".", 1)
        self._topology: Topology | None = None
        self._conns: dict[tuple[str, int], object] = {}
        self._current: dict[int, int] = {}
        self._synced: set[tuple[str, int]] = set()
        self._shard_cache: dict[str, int] = {}

    @property
    def topology(self) -> Topology:
        """Read on first use (so an unreachable entry node is a retried error, not a crash at start)."""
        if self._topology is None:
            self._topology = Topology.read(self.entry, self.cluster)
            log.info("cluster %s: %d shards, replicas %s", self.cluster, len(self._topology.shards),
                     [len(s.replicas) for s in self._topology.shards])
        return self._topology

    def split(self, resource_ids: list[str]) -> dict[int, list[int]]:
        """Row indices per shard index, by ``halfMD5(resource_id)`` as Distributed would route them."""
        topo, cache = self.topology, self._shard_cache
        if len(cache) > 100_000:
            cache.clear()
        out: dict[int, list[int]] = {}
        for i, rid in enumerate(resource_ids):
            shard = cache.get(rid)
            if shard is None:
                shard = cache[rid] = topo.shard_of(rid)
            out.setdefault(shard, []).append(i)
        return out

    def _conn(self, addr: tuple[str, int]):
        conn = self._conns.get(addr)
        if conn is None:
            conn = self._conns[addr] = self.entry.to_node(*addr)
        return conn

    def run(self, shard: int, work, needs_sync: bool, transient):
        """``work(connection)`` on a live replica of shard ``shard``; return its result.

        ``needs_sync``: the work reads what the shard stored (the duplicate check), so the
        replica is caught up first if it has not been yet. ``transient(exc)`` tells an
        unreachable replica (try the next one) from any other error.

        Raises:
            the last transient error when no replica of the shard works; any other error at once.
        """
        replicas = self.topology.shards[shard].replicas
        start = self._current.get(shard, 0)
        last: BaseException | None = None
        for k in range(len(replicas)):
            idx = (start + k) % len(replicas)
            addr = replicas[idx]
            conn = self._conn(addr)
            try:
                if needs_sync and addr not in self._synced:
                    self._catch_up(conn, addr)
                    self._synced.add(addr)
                result = work(conn)
            except Exception as exc:
                if not transient(exc):
                    raise
                last = exc
                conn.close()
                self._synced.discard(addr)
                log.warning("shard %d replica %s:%d unavailable (%s); trying the next replica",
                            self.topology.shards[shard].num, *addr, str(exc).splitlines()[0][:200])
                continue
            if idx != start:
                log.info("shard %d: writing to replica %s:%d", self.topology.shards[shard].num, *addr)
            self._current[shard] = idx
            return result
        raise last  # every replica failed transiently

    def lag(self, conn) -> tuple[int, int]:
        """(replication log entries not pulled yet, inserted parts not fetched yet) of the local table."""
        [(pointer, top, inserts)] = conn.execute(
            "SELECT log_pointer, log_max_index, inserts_in_queue FROM system.replicas "
            "WHERE database = %(d)s AND table = %(t)s", {"d": self._db, "t": self._table})
        # log_max_index is the newest entry's index (0 also when the log is empty); log_pointer the next
        # entry this replica will pull, kept in ZooKeeper across restarts.
        pointer, top = int(pointer), int(top)
        return (0 if pointer == top == 0 else max(0, top + 1 - pointer)), int(inserts)

    def _catch_up(self, conn, addr: tuple[str, int]) -> None:
        deadline = time.monotonic() + self.CATCH_UP_WAIT
        while (lag := self.lag(conn)) != (0, 0):
            if time.monotonic() > deadline:
                log.warning("replica %s:%d has not caught up after %.0fs (%d log entries, %d parts behind): "
                            "checking for stored samples there anyway; a replayed sample held only by a down "
                            "replica may be stored again", *addr, self.CATCH_UP_WAIT, *lag)
                return
            time.sleep(0.2)

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        self._synced.clear()
