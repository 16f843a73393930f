"""BatchState: copy-on-read overlay, chaining through uncommitted batches, ordered commits."""

import collections
import json
import time

import pytest

from streams.processor.state import (
    VERSION_KEY,
    BatchState,
    ChangelogWriter,
    StateWriteError,
    changelog_topic,
    copy_json,
    copy_json_py,
    next_version,
    state_json,
    supersedes,
)


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
        value = None if value is None else {k: v for k, v in value.items() if k not in ("_seen", "_partition", "_v")}
        self.writes.append((partition, key, value))

    def __getitem__(self, key):  # states without the commit's stamps (_seen, _partition, _v)
        return {k: v for k, v in dict.__getitem__(self, key).items() if k not in ("_seen", "_partition", "_v")}


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


def _compact(value):
    return json.dumps(value, separators=(",", ":")).encode()


@pytest.mark.parametrize("value, same_bytes", [
    ({"_watermark": 1, "rate_sink/0": {"series": {"disk.read.bytes": [1795856345856839, None, 68.0]}}}, True),
    ({"alarms": {"a": {"fp": '[["cpu_util", {"x": null}]]', "rules": [{"1": [7, 287.0, -0.0, 5e-324]}]}}}, True),
    ({"quote": '"\\\n\t', "t": True, "f": False, "n": None, "big": 2**63 - 1, "small": -(2**63)}, True),
    ({"float": 1.5e-7}, False),  # orjson: 1.5e-7, json: 1.5e-07
    ({"unicode": "h\u00f4te \U0001f600"}, False),  # orjson: UTF-8, json: \u escapes
])
def test_state_json_is_json_read_back_the_same(value, same_bytes):
    out = state_json(value)
    assert json.loads(out) == value
    assert (out == _compact(value)) is same_bytes


@pytest.mark.parametrize("value", [
    {"nan": float("nan")}, {"inf": [float("inf")]}, {"ninf": {"x": -float("inf")}},  # orjson: null
    {"big": 2**64}, {"neg": -(2**63) - 1},  # orjson refuses integers beyond 64 bits
    {"keys": {1: "a", 2.5: "b", None: "c"}},  # json turns keys into strings; orjson refuses them
    {"tuple": (1, 2)},  # json writes a list; read back it is a list, not the tuple
    {"surrogate": "\udc80"},
])
def test_state_json_writes_what_orjson_would_change_with_json(value):
    assert state_json(value) == _compact(value)


def test_state_json_raises_what_json_raises():
    with pytest.raises(TypeError):
        state_json({"x": object()})


@pytest.mark.parametrize("producer", [ProducerDouble(fail={b'"r"'}), ProducerDouble(stuck=2)])
def test_changelog_flush_raises_unless_every_write_is_acknowledged(producer):
    writer = ChangelogWriter(None, "t", producer=producer)
    writer.send(0, "r", {})
    with pytest.raises(StateWriteError, match="changelog t"):
        writer.flush(timeout=0.1)


# -- versions: a changelog record never replaces a newer state (Faust's recovery re-reads our own writes) --


def _versions(table, key):
    return dict.__getitem__(table, key)[VERSION_KEY]


def test_every_commit_gives_a_higher_version_than_the_state_it_replaces():
    table = TableDouble()
    pending: dict = {}
    first = BatchState(table, pending)
    first.get("r", 0)["n"] = 1
    second = BatchState(table, pending)  # built on first's uncommitted copy
    second.get("r", 0)["n"] = 2
    first.commit(table)
    v1 = _versions(table, "r")
    second.commit(table)
    v2 = _versions(table, "r")
    assert v2 > v1 > 0
    # A state recovered from another worker whose clock runs ahead: the next version is still above it.
    dict.__setitem__(table, "r", {"n": 2, VERSION_KEY: v2 + 10**12})
    third = BatchState(table)
    third.get("r", 0)["n"] = 3
    third.commit(table)
    assert _versions(table, "r") == v2 + 10**12 + 1


def test_supersedes():
    held = {"n": 2, VERSION_KEY: 2_000}
    assert supersedes(held, {"n": 1, VERSION_KEY: 1_000}, 0.0)  # our own older write, read back
    assert supersedes(held, {"n": 2, VERSION_KEY: 2_000}, 0.0)  # the same write
    assert not supersedes(held, {"n": 3, VERSION_KEY: 3_000}, 0.0)  # a newer one (another worker's)
    assert supersedes(held, {"n": 0}, 0.0)  # an unversioned record (an earlier release): older than any versioned state
    assert not supersedes({"n": 1}, {"n": 0, VERSION_KEY: 5}, 0.0)  # unversioned state: the record applies
    assert not supersedes(None, {"n": 0, VERSION_KEY: 5}, 0.0)
    # Tombstones carry no value: compared by the record's timestamp (seconds).
    assert supersedes(held, None, 0.001)  # deleted at 1,000 µs, held since 2,000 µs
    assert not supersedes(held, None, 0.003)
    assert not supersedes(held, None, None)


def test_the_table_keeps_its_newer_states_when_recovery_replays_the_changelog(tmp_path):
    """Faust's recovery at a rebalance re-applies the processor's own changelog records; the last one it
    reads may be older than the state in the store (a batch whose record was not yet on the broker)."""
    import faust
    from faust.types import TP

    from streams.processor.state import create_state_table

    app = faust.App("state-test", store="memory://", datadir=str(tmp_path))
    table = create_state_table(app, 4)
    tp = TP(changelog_topic("state-test"), 2)

    def record(offset: int, key: str, value: dict | None, timestamp_s: float = 1.0):
        message = faust.types.Message(tp.topic, tp.partition, offset, timestamp_s, 0, [], json.dumps(key).encode(),
                                      None if value is None else json.dumps(value).encode(), None)
        return faust.Event(app, key, value, {}, message)

    store = table.data
    old, new = {"n": 1, VERSION_KEY: next_version(0)}, None
    new = {"n": 2, VERSION_KEY: next_version(old[VERSION_KEY])}
    store["kept"] = new  # committed by a batch; its changelog record is not read back yet
    store["gone"] = {"n": 9, VERSION_KEY: next_version(0)}
    table.apply_changelog_batch([
        record(0, "kept", old),  # the previous state: must not roll "kept" back
        record(1, "other", {"n": 5, VERSION_KEY: 7}),  # unknown here: recovered
        record(2, "gone", None, timestamp_s=time.time() + 60),  # deleted later by another worker: applied
    ])
    assert store["kept"] == new and store["other"]["n"] == 5 and "gone" not in store
    assert table.skipped == 1
    # The record of a newer state (another worker's, after it took the partition over) applies.
    newer = {"n": 3, VERSION_KEY: new[VERSION_KEY] + 1}
    table.apply_changelog_batch([record(3, "kept", newer)])
    assert store["kept"] == newer


def _json_shaped(rnd, depth: int = 0):
    """A random JSON-shaped value: dicts, lists, str, int (beyond 64 bits too), float (NaN and
    infinities too), bool, None; and, inside, tuples and a dict subclass (shared, not copied)."""
    kind = rnd.randrange(9 if depth < 4 else 5)
    if kind == 0:
        return rnd.choice(["", "x", "é漢", "\ud800"])
    if kind == 1:
        return rnd.choice([0, -1, 2**70, True, False])
    if kind == 2:
        return rnd.choice([0.5, -1e300, float("nan"), float("inf")])
    if kind == 3:
        return None
    if kind == 4:
        return (1, "t")
    if kind in (5, 6):
        return {rnd.choice(["a", "b", "_v", "é"]) + str(i): _json_shaped(rnd, depth + 1) for i in range(rnd.randrange(4))}
    if kind == 7:
        return [_json_shaped(rnd, depth + 1) for _ in range(rnd.randrange(4))]
    return collections.OrderedDict(k=[1])


def _same_shape(a, b) -> None:
    """``b`` is a copy of ``a`` by copy_json's rule: exact dicts and lists new, all else the same object."""
    assert type(a) is type(b)
    if type(a) is dict:
        assert a is not b and list(a) == list(b)
        for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True):
            assert ka is kb
            _same_shape(va, vb)
    elif type(a) is list:
        assert a is not b and len(a) == len(b)
        for va, vb in zip(a, b, strict=True):
            _same_shape(va, vb)
    else:
        assert a is b


def test_copy_json_in_c_copies_as_the_python_twin_does():
    import random

    from streams._columns import copy_json as copy_c

    assert copy_json is copy_c  # the processor uses the C version when the extension is built
    rnd = random.Random(11)
    for _ in range(2000):
        value = _json_shaped(rnd)
        _same_shape(value, copy_json_py(value))
        _same_shape(value, copy_c(value))
    shared = [1]
    state = {"a": shared, "b": shared}  # one list twice: two independent copies, as the Python twin makes
    for copy in (copy_c(state), copy_json_py(state)):
        assert copy["a"] is not copy["b"]
        copy["a"].append(2)
        assert copy["b"] == [1] and state == {"a": [1], "b": [1]}


def test_copy_json_in_c_raises_what_the_python_twin_raises_on_a_cycle():
    from streams._columns import copy_json as copy_c

    cycle: list = []
    cycle.append(cycle)
    loop: dict = {}
    loop["self"] = loop
    for value in (cycle, loop):
        with pytest.raises(RecursionError):
            copy_json_py(value)
        with pytest.raises(RecursionError):
            copy_c(value)
