"""Per-resource transformer state: a Faust table co-partitioned with the samples topic.

Key: resource_id. Value: JSON dict ``{transformer_id: state, "_watermark": us}``.
The table's changelog topic has as many partitions as the samples topic, and
a resource's state is written to the changelog partition its samples arrive
on, so the worker that owns a samples partition recovers exactly the state
of the resources on it — after a restart or a rebalance.

Faust reads the changelog back (recovery); the processor writes it itself
with :class:`ChangelogWriter`, a librdkafka producer, and puts each state in
the table's local store directly. Faust's own table write path sends every
key through its pure-Python producer, about 0.3 ms per record, which was a
third of the processor's time with a stateful pipeline. The records are the
ones Faust would write (JSON key and value, Faust's ``json`` codec), so
Faust's recovery reads them unchanged.

Every committed state carries a version (:data:`VERSION_KEY`), and the table
never lets a changelog record replace a newer state it holds
(:meth:`ResourceStateTable.apply_changelog_batch`). Faust's recovery re-reads
a partition's changelog at every rebalance, up to the high watermark it sees
when recovery starts, and with the in-memory store it re-applies the
processor's own records: a batch stored while the rebalance began (state in
the store, its changelog record not yet on the broker) was rolled back to the
state before it, and the next batch built on that, losing that batch's
samples from its alarm windows and transformer state.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import faust
import orjson
from confluent_kafka import KafkaError, Producer

from streams.config import KafkaSettings
from streams.publisher import producer_config

STATE_TABLE = "resource-state"
SEEN_KEY = "_seen"
"""Key of a state's last change, wall-clock seconds since the epoch (set on commit; drives eviction)."""
PARTITION_KEY = "_partition"
"""Key of the samples partition a state belongs to (set on commit; tombstones and the alarm timer use it)."""
VERSION_KEY = "_v"
"""Key of a state's version (set on commit): above the version of the state it replaces, and at least
the wall clock in µs, so a worker that takes a partition over continues above what it recovered even
if its clock is behind. A resource's states are written one after another, each built on the last."""


def state_json(value: dict[str, Any]) -> bytes:
    """``value`` as a changelog record's JSON: what ``json.dumps(value, separators=(",", ":"))``
    encodes, read back as the same value by Faust's ``json`` codec.

    orjson writes it, about three times faster for the processor's states (alarm windows make them
    about 800 bytes). orjson differs from :mod:`json` on a few values: it writes NaN and infinities as
    ``null``, and refuses integers beyond 64 bits, non-string keys and lone surrogates. So its output
    is used only when it reads back (``orjson.loads``) equal to ``value``; anything else is written by
    :mod:`json`, exactly as before. Floats may be spelled differently (``1.5e-7`` for ``1.5e-07``), and
    non-ASCII characters are UTF-8 rather than ``\\u`` escapes; never another value.

    Raises:
        TypeError, ValueError: ``value`` is not JSON-serializable (as ``json.dumps`` raises).
    """
    try:
        out = orjson.dumps(value)
        if orjson.loads(out) == value:
            return out
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        pass
    return json.dumps(value, separators=(",", ":")).encode()


def next_version(previous: int) -> int:
    """The version of a state that replaces one of version ``previous`` (:data:`VERSION_KEY`)."""
    return max(previous + 1, time.time_ns() // 1000)


def supersedes(held: dict[str, Any] | None, value: dict[str, Any] | None, timestamp_s: float | None) -> bool:
    """Whether the state ``held`` in the table is newer than a changelog record (``value``; None for a
    tombstone, then compared by the record's timestamp, ``timestamp_s`` seconds of the writer's wall
    clock: Kafka's CreateTime, as Faust's ``Message.timestamp`` gives it) and must be kept.

    States without a version (written by an earlier release) never supersede anything.
    """
    version = held.get(VERSION_KEY, 0) if held else 0
    if not version:
        return False
    if value is None:
        return timestamp_s is not None and version > timestamp_s * 1_000_000
    return version >= value.get(VERSION_KEY, 0)


class StateWriteError(RuntimeError):
    """The broker did not acknowledge every write of a batch (the batch must not be acknowledged)."""


def changelog_topic(app_id: str) -> str:
    """Name Faust gives the state table's changelog topic for ``app_id``."""
    return f"{app_id}-{STATE_TABLE}-changelog"


class ResourceStateTable(faust.Table):
    """The state table. Written through :meth:`BatchState.commit` only, which
    names the changelog partition of every write; Faust's own write path
    (``table[key] = value``) is refused, as it would pick the partition
    from a "current event" that batched agents do not have."""

    skipped = 0
    """Changelog records not applied because the table held a newer state (:func:`supersedes`)."""

    def partition_for_key(self, key: Any) -> int | None:
        raise TypeError("ResourceStateTable is written by BatchState.commit, not table[key] = value")

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        """Apply changelog records (Faust's recovery and standby reads), except those older than the
        state the table holds for their key (module docstring)."""
        data = self.data
        fresh = []
        for event in batch:
            held = data.get(event.key)
            if held and supersedes(held, event.value, getattr(event.message, "timestamp", None)):
                self.skipped += 1
                continue
            fresh.append(event)
        if fresh:
            super().apply_changelog_batch(fresh)


class ChangelogWriter:
    """Produces state changes to the state table's changelog with librdkafka; also the
    processor's other per-batch writes (dead letters, alarm events), so one flush covers all.

    Changelog records are what Faust's table would send: key ``json(resource_id)``,
    value ``json(state)`` (compact), to an explicit partition; a deletion is a
    tombstone (value None), which compaction removes and Faust's recovery applies
    as a delete. Idempotent, ``acks=all`` (:func:`streams.publisher.producer_config`).

    Args:
        settings: Kafka connection settings.
        topic: the changelog topic (:func:`changelog_topic`).
        producer: a ready producer (tests); default: a new one from ``settings``.
    """

    def __init__(self, settings: KafkaSettings, topic: str, producer: Any = None) -> None:
        self.topic = topic
        # message.max.bytes above kafka.dlq_max_bytes: a dead letter is sized by that setting, never
        # refused by the client (fit_dead_letter).
        self._producer = producer or Producer(producer_config(
            settings, **{"linger.ms": 5, "message.max.bytes": settings.dlq_max_bytes + (1 << 20)}))
        self._failed: list[str] = []

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._failed.append(f"{msg.key()!r}: {err}")

    def send(self, partition: int, key: str, value: dict[str, Any] | None) -> None:
        """Queue one state write, or a tombstone for ``value`` None (non-blocking; waits only
        while librdkafka's queue is full)."""
        k = json.dumps(key).encode()
        v = None if value is None else state_json(value)
        self._produce(self.topic, v, k, partition)

    def produce(self, topic: str, value: bytes | None, key: bytes | None,
                headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue one record to ``topic`` (partitioned by key); acknowledged by the same :meth:`flush`."""
        self._produce(topic, value, key, None, headers)

    def _produce(self, topic: str, value: bytes | None, key: bytes | None, partition: int | None,
                 headers: list[tuple[str, bytes]] | None = None) -> None:
        kwargs: dict[str, Any] = {"on_delivery": self._on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        while True:
            try:
                self._producer.produce(topic, value, key, **kwargs)
                return
            except BufferError:
                self._producer.poll(0.1)

    def flush(self, timeout: float = 60.0) -> None:
        """Block until every queued write is acknowledged by the broker (run it in a thread).

        Raises:
            StateWriteError: a write failed, or some were still unacknowledged after ``timeout`` seconds.
        """
        remaining = self._producer.flush(timeout)
        failed, self._failed = self._failed, []
        if remaining or failed:
            raise StateWriteError(f"changelog {self.topic} (and the batch's other writes): {remaining} writes "
                                  f"unacknowledged after {timeout}s, "
                                  f"{len(failed)} failed (first: {failed[0] if failed else '-'})")


def create_state_table(app: faust.App, partitions: int) -> ResourceStateTable:
    """Register the state table on ``app`` (``partitions`` = samples topic partitions)."""
    table = ResourceStateTable(app, name=STATE_TABLE, default=None, partitions=partitions,
                               key_type=str, beacon=app.tables.beacon,
                               help="Transformer state and event-time watermark per resource.")
    return app.tables.add(table)


_GONE: dict[str, Any] = {}
"""The pending value of a state deleted by an uncommitted batch: empty, and never handed out (readers copy)."""


def copy_json_py(value: Any) -> Any:
    """A deep copy of JSON-shaped data: exact dicts and lists are copied (a dict keeps its order and
    its key objects), anything else is the same object again (JSON scalars are immutable). Several
    times faster than :func:`copy.deepcopy`, which handles any object and keeps a memo: states are
    JSON (the changelog's codec), so nothing else can be in them.

    :func:`copy_json` is the C version of this (``streams._columns``; on the soak's 640-byte states
    4.5-5.1 µs against 11.3-11.4 µs), and this one when the extension is not built.

    Raises:
        RecursionError: nested deeper than Python's recursion limit (a cycle included).
    """
    kind = type(value)
    if kind is dict:
        return {k: copy_json_py(v) for k, v in value.items()}
    if kind is list:
        return [copy_json_py(v) for v in value]
    return value


try:
    from streams._columns import copy_json
except ImportError:  # the extension is not built (streams.columns warns): the same copies, slower
    copy_json = copy_json_py


class BatchState:
    """Copy-on-read overlay of the table for one batch.

    Transformers mutate copies; :meth:`commit` writes back only what changed,
    after the batch's outputs are durable, so the changelog never runs ahead
    of what storage holds. A state is written to the table's local store and
    to the changelog partition of the samples partition it was read for.

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
        self._deleted: dict[str, int] = {}  # resource_id -> partition of its tombstone

    def get(self, resource_id: str, partition: int) -> dict[str, Any]:
        """The mutable state of ``resource_id`` for this batch (records its partition).

        The original (the table's value, or an earlier batch's uncommitted one) is never
        mutated: this batch works on a copy, and commits store new dicts.
        """
        state = self._copies.get(resource_id)
        if state is None:
            earlier = self.pending.get(resource_id)
            original = earlier[0] if earlier is not None else self.table.get(resource_id)
            self._originals[resource_id] = original or {}
            state = self._copies[resource_id] = copy_json(original) if original else {}
            self._partitions[resource_id] = partition
            self.pending[resource_id] = (state, self)
        return state

    def delete(self, resource_id: str, partition: int) -> None:
        """Drop ``resource_id``'s state at :meth:`commit` (store entry removed, changelog tombstone).

        Read after this in the same batch (or by a later batch before this one commits), the state
        is empty. Nothing is copied: an eviction deletes many states at once, and each costs only
        two dict entries until its batch commits."""
        copy = self._copies.get(resource_id)
        if copy is not None:
            copy.clear()
        else:
            self.pending[resource_id] = (_GONE, self)
        self._deleted[resource_id] = partition

    def commit(self, changelog: ChangelogWriter, now_s: int | None = None) -> int:
        """Write changed states to the table's store and queue them on ``changelog``.

        Changed states are stamped with :data:`SEEN_KEY` (``now_s``, default the
        wall clock), :data:`PARTITION_KEY` and :data:`VERSION_KEY`; deleted ones become tombstones.

        Returns:
            how many states changed; if any, the caller must ``changelog.flush()``
            before acknowledging the batch.
        """
        written = 0
        store = self.table.data
        now_s = int(time.time()) if now_s is None else now_s
        pending = self.pending
        for rid, partition in self._deleted.items():
            store.pop(rid, None)
            changelog.send(partition, rid, None)
            written += 1
            if pending.get(rid, (None, None))[1] is self:
                del pending[rid]
        for rid, state in self._copies.items():
            if rid in self._deleted:
                continue
            if state != self._originals[rid]:
                stamped = {**state, SEEN_KEY: now_s, PARTITION_KEY: self._partitions[rid],
                           VERSION_KEY: next_version(self._originals[rid].get(VERSION_KEY, 0))}
                store[rid] = stamped
                changelog.send(self._partitions[rid], rid, stamped)
                written += 1
            if self.pending.get(rid, (None, None))[1] is self:
                del self.pending[rid]
        return written


def idle_resources(items: Iterable[tuple[str, Any]], pending: dict, active_partitions: set[int],
                   idle_before_s: float, unseen_s: float, partitions: int,
                   keep: Callable[[dict[str, Any]], bool], limit: int | None = None) -> list[tuple[str, int]]:
    """Resources whose state may be evicted, as (resource_id, partition).

    Args:
        items: the table's (resource_id, state) pairs.
        pending: states held by batches being stored (never evicted: they are newer).
        active_partitions: samples partitions this worker owns.
        idle_before_s: evict states last changed before this (wall-clock seconds).
        unseen_s: when a state without :data:`SEEN_KEY` (written by an earlier
            version) is taken to have changed, e.g. the worker's start.
        partitions: partition count, to place a state without :data:`PARTITION_KEY`
            where librdkafka's default partitioner put its key
            (``consistent_random``: CRC32 of the key).
        keep: True for states that must stay (e.g. holding alarm windows, which
            the evaluator releases itself).
        limit: at most this many (None: all); the rest wait for the next pass.
    """
    out = []
    for rid, state in items:
        if not state or rid in pending:
            continue
        if state.get(SEEN_KEY, unseen_s) >= idle_before_s or keep(state):
            continue
        partition = state.get(PARTITION_KEY)
        if partition is None:
            partition = zlib.crc32(rid.encode()) % partitions
        if partition in active_partitions:
            out.append((rid, partition))
            if limit is not None and len(out) >= limit:
                break
    return out
