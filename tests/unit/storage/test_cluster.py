"""Shard routing and replica failover of cluster mode, with in-memory doubles of the replicas."""

from __future__ import annotations

import pytest
from clickhouse_driver.errors import NetworkError, ServerException

from streams.storage.clickhouse import classify
from streams.storage.cluster import Shard, ShardWriter, Topology, shard_hash


def test_shard_hash_is_clickhouses_halfmd5(chdb_conn):
    ids = ["host-a", "", "h/process/123-456", "ünï"]
    rows = chdb_conn.execute("SELECT arrayJoin(%(ids)s) AS r, halfMD5(r)", {"ids": ids})
    assert {r: int(h) for r, h in rows} == {r: shard_hash(r) for r in ids}


def test_slots_follow_shard_weights_in_order():
    topo = Topology("c", (Shard(1, 1, (("a", 1),)), Shard(2, 3, (("b", 1),))))
    assert topo.slots == [0, 1, 1, 1]
    assert {topo.shard_of(f"r{i}") for i in range(100)} == {0, 1}
    assert all(topo.shard_of(r) == topo.slots[shard_hash(r) % 4] for r in ("x", "y", "z"))


class FakeReplica:
    """A replica double: answers, or raises ``error``; caught up unless told otherwise."""

    def __init__(self, addr, error=None, lag=(0, 0)):
        self.addr, self.error, self.lag, self.work, self.closed = addr, error, lag, 0, 0

    def execute(self, sql, params=None):
        if self.error:
            raise self.error
        pointer = 1 if self.lag == (0, 0) else 0
        return [(pointer, 0 if self.lag == (0, 0) else 5, self.lag[1])]

    def close(self):
        self.closed += 1


class FakeEntry:
    def __init__(self, replicas):
        self.replicas = {r.addr: r for r in replicas}

    def execute(self, sql, params=None):
        return [(1, 1, i + 1, host, port) for i, (host, port) in enumerate(self.replicas)]

    def to_node(self, host, port):
        return self.replicas[(host, port)]


def _writer(*replicas) -> ShardWriter:
    return ShardWriter(FakeEntry(replicas), "c", "db.samples_local")


def transient(exc) -> bool:
    return classify(exc) == "transient"


def work(conn):
    if conn.error:
        raise conn.error
    conn.work += 1
    return conn.addr


def test_a_dead_replica_is_skipped_and_the_writer_stays_on_the_live_one():
    dead, live = FakeReplica(("h", 1), NetworkError("refused")), FakeReplica(("h", 2))
    w = _writer(dead, live)
    assert w.run(0, work, needs_sync=True, transient=transient) == ("h", 2)
    assert w.run(0, work, needs_sync=True, transient=transient) == ("h", 2) and live.work == 2 and dead.closed == 1


def test_no_live_replica_raises_the_transient_error_and_bad_data_is_not_retried_elsewhere():
    w = _writer(FakeReplica(("h", 1), NetworkError("refused")), FakeReplica(("h", 2), NetworkError("refused")))
    with pytest.raises(NetworkError):
        w.run(0, work, needs_sync=False, transient=transient)
    bad = ServerException("Cannot parse input", code=27)
    first, second = FakeReplica(("h", 1), bad), FakeReplica(("h", 2))
    with pytest.raises(ServerException):
        _writer(first, second).run(0, work, needs_sync=False, transient=transient)
    assert second.work == 0


def test_replica_and_zookeeper_errors_are_transient_data_errors_are_not():
    assert transient(ServerException("Table is in readonly mode", code=242))
    assert transient(ServerException("All connection tries failed", code=279))
    assert transient(ConnectionRefusedError())
    assert not transient(ServerException("Cannot parse input", code=27))
    assert not transient(ValueError("x"))


def test_a_lagging_replica_gets_time_to_catch_up_then_is_used_with_a_warning(caplog, monkeypatch):
    monkeypatch.setattr(ShardWriter, "CATCH_UP_WAIT", 0.3)
    behind = FakeReplica(("h", 1), lag=(5, 2))
    w = _writer(behind)
    assert w.run(0, work, needs_sync=True, transient=transient) == ("h", 1)
    assert "has not caught up" in caplog.text
