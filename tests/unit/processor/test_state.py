"""BatchState: copy-on-read overlay, chaining through uncommitted batches, ordered commits."""

import json

import pytest

from streams.processor.state import BatchState, ChangelogWriter, StateWriteError


class TableDouble(dict):
    """In-memory stand-in for ResourceStateTable: ``data`` is its local store, ``writes`` its changelog."""

    def __init__(self):
        super().__init__()
        self.writes = []

    @property
    def data(self):
        return self

    def send(self, partition, key, value):  # the ChangelogWriter interface
        assert self.get(key) == value  # the store is written first
        value = None if value is None else {k: v for k, v in value.items() if k not in ("_seen", "_partition")}
        self.writes.append((partition, key, value))

    def __getitem__(self, key):  # states without the commit's stamps (_seen, _partition)
        return {k: v for k, v in dict.__getitem__(self, key).items() if k not in ("_seen", "_partition")}


def test_reads_are_copies_and_only_changes_are_written():
    table = TableDouble()
    dict.__setitem__(table, "r1", {"t": {"n": 1}})
    dict.__setitem__(table, "r2", {"t": {"n": 5}})
    batch = BatchState(table)
    s1 = batch.get("r1", partition=3)
    s1["t"]["n"] = 2
    batch.get("r2", partition=1)  # read, unchanged
    batch.get("r3", partition=0)["new"] = True
    assert table["r1"] == {"t": {"n": 1}}  # nothing written before commit
    assert batch.commit(table) == 2
    assert table.writes == [(3, "r1", {"t": {"n": 2}}), (0, "r3", {"new": True})]


def test_next_batch_sees_uncommitted_state_of_the_previous_one():
    table = TableDouble()
    pending: dict = {}
    first = BatchState(table, pending)
    first.get("r", 0)["count"] = 1
    second = BatchState(table, pending)  # prepared while `first` is still being stored
    state = second.get("r", 0)
    assert state == {"count": 1}
    state["count"] = 2
    assert first.commit(table) == 1 and table["r"] == {"count": 1}
    assert pending["r"][1] is second  # still pending: the newer batch owns it
    assert second.commit(table) == 1 and table["r"] == {"count": 2}
    assert pending == {}


def test_unchanged_relative_to_previous_batch_is_not_rewritten():
    table = TableDouble()
    pending: dict = {}
    first = BatchState(table, pending)
    first.get("r", 0)["x"] = 1
    second = BatchState(table, pending)
    second.get("r", 0)  # read only
    first.commit(table)
    assert second.commit(table) == 0
    assert [w[1] for w in table.writes] == ["r"]


class ProducerDouble:
    """confluent_kafka.Producer stand-in: records produce calls, fails the keys it is told to."""

    def __init__(self, fail=(), stuck=0):
        self.produced, self.fail, self.stuck, self.callbacks = [], set(fail), stuck, []

    def produce(self, topic, value, key, partition=None, on_delivery=None, headers=None):
        self.produced.append((topic, partition, key, value))
        self.headers = getattr(self, "headers", []) + [headers]
        self.callbacks.append((on_delivery, key))

    def poll(self, timeout):
        return 0

    def flush(self, timeout):
        for cb, key in self.callbacks:
            cb("broker said no" if key in self.fail else None, type("Msg", (), {"key": lambda s, k=key: k})())
        self.callbacks = []
        return self.stuck


def test_changelog_records_are_what_faust_recovery_reads():
    producer = ProducerDouble()
    writer = ChangelogWriter(None, "app-resource-state-changelog", producer=producer)
    writer.send(3, "host-1", {"rate": {"v": 1.5}, "_watermark": 10})
    writer.flush()
    (topic, partition, key, value), = producer.produced
    assert (topic, partition) == ("app-resource-state-changelog", 3)
    # Faust's table codec is "json" for keys and values (faust.Table defaults).
    assert json.loads(key) == "host-1" and json.loads(value) == {"rate": {"v": 1.5}, "_watermark": 10}


@pytest.mark.parametrize("producer", [ProducerDouble(fail={b'"r"'}), ProducerDouble(stuck=2)])
def test_changelog_flush_raises_unless_every_write_is_acknowledged(producer):
    writer = ChangelogWriter(None, "t", producer=producer)
    writer.send(0, "r", {})
    with pytest.raises(StateWriteError, match="changelog t"):
        writer.flush(timeout=0.1)
