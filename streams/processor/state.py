"""Per-resource transformer state: a Faust table co-partitioned with the samples topic.

Key: resource_id. Value: JSON dict ``{transformer_id: state, "_watermark": us}``.
The table's changelog topic has as many partitions as the samples topic, and
a resource's state is written to the changelog partition its samples arrive
on, so the worker that owns a samples partition recovers exactly the state
of the resources on it — after a restart or a rebalance.

Faust normally takes that partition from the "current event", which a batched
agent (``Stream.take_events``) does not set per record; :class:`ResourceStateTable`
takes it from :attr:`ResourceStateTable.write_partition`, set by the processor
for each write.
"""

from __future__ import annotations

import copy
from typing import Any

import faust

STATE_TABLE = "resource-state"


def changelog_topic(app_id: str) -> str:
    """Name Faust gives the state table's changelog topic for ``app_id``."""
    return f"{app_id}-{STATE_TABLE}-changelog"


class ResourceStateTable(faust.Table):
    """A Faust table whose changelog partition is chosen explicitly per write."""

    write_partition: int | None = None

    def partition_for_key(self, key: Any) -> int | None:
        if self.write_partition is None:
            raise TypeError("ResourceStateTable: set write_partition before writing a key")
        return self.write_partition


def create_state_table(app: faust.App, partitions: int) -> ResourceStateTable:
    """Register the state table on ``app`` (``partitions`` = samples topic partitions)."""
    table = ResourceStateTable(app, name=STATE_TABLE, default=None, partitions=partitions,
                               key_type=str, beacon=app.tables.beacon,
                               help="Transformer state and event-time watermark per resource.")
    return app.tables.add(table)


class BatchState:
    """Copy-on-read overlay of the table for one batch.

    Transformers mutate copies; :meth:`commit` writes back only what changed,
    after the batch's outputs are durable, so the changelog never runs ahead
    of what storage holds.

    The processor prepares batch N+1 while batch N is still being stored, so
    reads go through ``pending``: states of earlier batches that are computed
    but not yet committed. Batches commit in order.

    Args:
        table: the state table.
        pending: shared ``resource_id -> (state, owner batch)`` of uncommitted states.
    """

    def __init__(self, table: ResourceStateTable,
                 pending: dict[str, tuple[dict[str, Any], BatchState]] | None = None) -> None:
        self.table = table
        self.pending = pending if pending is not None else {}
        self._copies: dict[str, dict[str, Any]] = {}
        self._originals: dict[str, Any] = {}
        self._partitions: dict[str, int] = {}

    def get(self, resource_id: str, partition: int) -> dict[str, Any]:
        """The mutable state of ``resource_id`` for this batch (records its partition)."""
        state = self._copies.get(resource_id)
        if state is None:
            earlier = self.pending.get(resource_id)
            original = earlier[0] if earlier is not None else self.table.get(resource_id)
            self._originals[resource_id] = copy.deepcopy(original) if original else {}
            state = self._copies[resource_id] = copy.deepcopy(original) if original else {}
            self._partitions[resource_id] = partition
            self.pending[resource_id] = (state, self)
        return state

    def commit(self) -> int:
        """Write changed states to the table (and so to its changelog); returns how many."""
        written = 0
        for rid, state in self._copies.items():
            if state != self._originals[rid]:
                self.table.write_partition = self._partitions[rid]
                self.table[rid] = state
                written += 1
            if self.pending.get(rid, (None, None))[1] is self:
                del self.pending[rid]
        self.table.write_partition = None
        return written
