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
