"""BatchProcessor without a broker: one error policy per stage, in-memory doubles for the table,
the producer and the publishers (the live versions are in tests/integration/test_poison.py)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest

from streams.alarms.evaluator import AlarmSet
from streams.alarms.model import parse_alarm
from streams.alarms.stage import AlarmStage
from streams.codec import BatchCodec, RecordLimits
from streams.config import Settings
from streams.pipeline import Pipeline, load_pipeline
from streams.processor import batch as batch_module
from streams.processor.batch import BatchProcessor, StoreUnavailable, quiet_partitions
from streams.processor.normalize import Normalizer
from streams.processor.stages import MAYBE_STORED_HEADER, RecordProcessor
from streams.processor.state import ChangelogWriter
from streams.storage.clickhouse import RecordsRejected
from tests.conftest import TEST_KEYS, make_test_sample
from tests.unit.processor.test_state import ProducerDouble, TableDouble


@dataclass
class Msg:
    key: bytes | None
    value: bytes | None
    offset: int = 0
    partition: int = 0
    topic: str = "samples"
    headers: list = field(default_factory=list)


class PublisherDouble:
    """Records what it is given; can refuse some records (by origin) or fail outright."""

    def __init__(self, refuse=(), fail=None):
        self.rows, self.origins, self.checked = [], [], []
        self.refuse, self.fail = set(refuse), fail

    def add(self, samples, maybe_stored=True, origins=None):
        self.rows += samples
        self.origins += list(origins or [])
        self.checked += [maybe_stored] * len(samples)

    def flush(self):
        if self.fail:
            raise self.fail
        if self.refuse & set(self.origins):
            refused = {o: "Code: 252. DB::Exception: Too many partitions for single INSERT block"
                       for o in self.refuse & set(self.origins)}
            self.rows = [r for r, o in zip(self.rows, self.origins, strict=True) if o not in refused]
            raise RecordsRejected(refused, len(self.rows), 0)
        return 0


def processor(codec, publisher=None, pipeline: Pipeline | None = None, alarm_stage=None, producer=None,
              max_age=0.0):
    stages = RecordProcessor(codec, Normalizer(max_sample_age=max_age, limits=codec.limits))
    producer = producer or ProducerDouble()
    writer = ChangelogWriter(None, "app-resource-state-changelog", producer=producer)
    bp = BatchProcessor(stages, pipeline or Pipeline(), {"clickhouse://": publisher or PublisherDouble()},
                        TableDouble(), writer, "samples.dlq", alarm_stage=alarm_stage, partitions=4)
    return bp, producer


def record(codec, offset, samples, key=None):
    return Msg(key if key is not None else samples[0]["resource_id"].encode(), codec.encode(samples), offset)


def dlq(producer):
    return {dict(h)["streams.dlq.offset"].decode(): dict(h)["streams.dlq.reason"].decode()
            for (topic, _, _, _), h in zip(producer.produced, producer.headers, strict=True) if topic == "samples.dlq"}


def test_every_record_is_routed_or_dead_lettered_with_its_reason(codec):
    pub = PublisherDouble()
    bp, producer = processor(codec, pub, max_age=86400)
    now = time.time_ns() // 1000
    records = [
        record(codec, 0, [make_test_sample(resource_id="a")]),
        record(codec, 1, [make_test_sample(resource_id="a"), make_test_sample(resource_id="b")]),  # mixed
        record(codec, 2, [make_test_sample(resource_id="c")], key=b"d"),  # key is not the resource
        Msg(None, codec.encode([make_test_sample(resource_id="e")]), 3),  # no key
        record(codec, 4, [make_test_sample(resource_id="f", unit="TiB", volume=1e300)]),  # inf B after conversion
        record(codec, 5, [make_test_sample(resource_id="g", timestamp=now - 3 * 86_400_000_000)]),  # older than 1 day
        Msg(b"h", b"\xc3\x01" + bytes(2 << 20), 6),  # 2 MiB: over the 1 MiB default
        Msg(b"i", None, 7),
        record(codec, 8, [make_test_sample(resource_id="j")]),
    ]
    batch = bp.prepare(records)
    asyncio.run(bp.store(batch))
    assert dlq(producer) == {"1": "mixed_resources", "2": "key_mismatch", "3": "key_mismatch",
                             "4": "non_finite_volume", "5": "too_old", "6": "too_large", "7": "empty"}
    assert [r["resource_id"] for r in pub.rows] == ["a", "j"]
    assert pub.origins == [0, 8]
    # The dead letters carry the original bytes and key.
    dead = [(k, v) for (t, _, k, v) in producer.produced if t == "samples.dlq"]
    assert (b"d", records[2].value) in dead and (None, records[3].value) in dead


def test_limits_on_metadata_and_strings(codec):
    small = BatchCodec(codec.keyring, limits=RecordLimits(metadata_entries=2, string_chars=100))
    bp, producer = processor(small)
    records = [
        record(small, 0, [make_test_sample(resource_metadata={"a": "1", "b": "2", "c": "3"})]),
        record(small, 1, [make_test_sample(resource_metadata={"a": "x" * 500})]),
        record(small, 2, [make_test_sample()]),
    ]
    asyncio.run(bp.store(bp.prepare(records)))
    assert dlq(producer) == {"0": "too_many_metadata", "1": "string_too_long"}


def test_records_the_store_refuses_are_dead_lettered_and_the_rest_acknowledged(codec):
    pub = PublisherDouble(refuse={1})
    bp, producer = processor(codec, pub)
    records = [record(codec, i, [make_test_sample(resource_id=f"r{i}")]) for i in range(3)]
    batch = bp.prepare(records)
    asyncio.run(bp.store(batch))
    assert dlq(producer) == {"1": "storage_rejected"}
    [(msg, error)] = batch.rejected
    assert msg is records[1] and error.stage == "store" and "Code: 252" in error.detail
    assert [r["resource_id"] for r in pub.rows] == ["r0", "r2"]


def test_a_store_failure_acknowledges_nothing(codec):
    producer = ProducerDouble()
    bp, _ = processor(codec, PublisherDouble(fail=ConnectionRefusedError("down")), producer=producer)
    batch = bp.prepare([record(codec, 0, [make_test_sample()]), Msg(b"x", b"junk", 1)])
    with pytest.raises(StoreUnavailable, match="down"):
        asyncio.run(bp.store(batch))
    # The dead letter was queued but never flushed: the caller exits and the batch is re-read.
    assert producer.callbacks and all(cb is not None for cb, _ in producer.callbacks)


def test_a_broker_that_does_not_acknowledge_fails_the_batch(codec):
    bp, _ = processor(codec, producer=ProducerDouble(stuck=1))
    with pytest.raises(StoreUnavailable, match="unacknowledged"):
        asyncio.run(bp.store(bp.prepare([Msg(b"x", b"junk", 0)])))


def test_a_transformer_bug_costs_one_record(codec, tmp_path, monkeypatch):
    path = tmp_path / "pipeline.yaml"
    path.write_text("sources: [{name: s, meters: ['*'], sinks: [k]}]\n"
                    "sinks: [{name: k, transformers: [{name: delta}], publishers: ['clickhouse://']}]\n")
    pipeline = load_pipeline(path)
    transformer = pipeline.sinks["k"].transformers[0]
    original = transformer.handle

    def handle(sample, state):
        if sample["resource_id"] == "bug":
            raise KeyError("a bug")
        return original(sample, state)

    monkeypatch.setattr(transformer, "handle", handle)
    pub = PublisherDouble()
    bp, producer = processor(codec, pub, pipeline)
    records = [record(codec, 0, [make_test_sample(resource_id="bug")]), record(codec, 1, [make_test_sample()])]
    asyncio.run(bp.store(bp.prepare(records)))
    assert dlq(producer) == {"0": "internal_error"}


def test_maybe_stored_header_asks_for_the_duplicate_lookup(codec):
    pub = PublisherDouble()
    bp, _ = processor(codec, pub)
    bp.past_replay.add(0)  # partition 0 is past its replay: no lookup for its records ...
    fresh = record(codec, 0, [make_test_sample(resource_id="a")])
    bridged = record(codec, 1, [make_test_sample(resource_id="b")])
    bridged.headers = [(MAYBE_STORED_HEADER, b"1")]  # ... except those a producer says may be stored
    asyncio.run(bp.store(bp.prepare([fresh, bridged])))
    assert pub.checked == [False, True]


def alarm_stage(*alarms, persisted=None):
    settings = Settings(signing={"keys": {k: v.decode() for k, v in TEST_KEYS.items()}, "active": "k-new"},
                        alarms={"grace": 0})
    snapshot = AlarmSet(alarms)
    stage = AlarmStage(settings, lambda: snapshot,
                       lambda alarm_id, reason, doc: persisted.append((alarm_id, reason)) if persisted is not None
                       else None)
    stage._conn = HistoryDouble()  # alarm_history rows, in memory
    return stage


class HistoryDouble:
    database = "t"

    def __init__(self):
        self.rows = []

    def insert_columns(self, table, columns, data):
        self.rows += list(zip(*data, strict=True))


def test_an_alarm_that_raises_is_disabled_once_and_the_batch_goes_on(codec, monkeypatch):
    good = parse_alarm({"alarm_id": "good", "name": "good", "threshold_rule": {
        "meter_name": "cpu_util", "threshold": 1, "comparison_operator": "gt", "period": 1}})
    bad = parse_alarm({"alarm_id": "bad", "name": "bad", "threshold_rule": {
        "meter_name": "cpu_util", "threshold": 1, "comparison_operator": "gt", "period": 1},
        "time_constraints": [{"name": "tc", "start": "* * * * *", "duration": 60}]})
    persisted = []
    stage = alarm_stage(good, bad, persisted=persisted)
    from croniter import CroniterBadDateError

    from streams.alarms import model

    def never(self, when_us):  # as a cron that validation let through would at evaluation time
        raise CroniterBadDateError("failed to find next date")

    monkeypatch.setattr(model.TimeConstraint, "contains", never)
    pub = PublisherDouble()
    bp, producer = processor(codec, pub, alarm_stage=stage)
    t0 = (time.time_ns() // 1000) - 10_000_000
    for i in range(4):  # four one-second windows, each closed by the next record
        s = make_test_sample(name="cpu_util", type="gauge", unit="%", volume=50.0, timestamp=t0 + i * 1_000_000)
        asyncio.run(bp.store(bp.prepare([record(codec, i, [s])])))
    assert [a for a, _ in persisted] == ["bad"]  # disabled and persisted once
    assert "CroniterBadDateError" in persisted[0][1]
    assert "bad" not in stage.alarms.by_id and "good" in stage.alarms.by_id
    alarms = [k for (t, _, k, v) in producer.produced if t == "alarms"]
    assert alarms and set(alarms) == {b"good"}, "the good alarm still produced its transition"
    assert {r[1] for r in stage._conn.rows} == {"good"}
    assert len(pub.rows) == 4 and not dlq(producer)


def test_idle_state_is_evicted_with_tombstones_but_alarm_state_is_kept(codec):
    bp, producer = processor(codec)
    old = time.time() - 7200
    dict.__setitem__(bp.table, "gone", {"t": 1, "_seen": old, "_partition": 1})
    dict.__setitem__(bp.table, "fresh", {"t": 1, "_seen": time.time(), "_partition": 1})
    dict.__setitem__(bp.table, "alarmed", {"alarms": {"a": {}}, "_seen": old, "_partition": 1})
    dict.__setitem__(bp.table, "elsewhere", {"t": 1, "_seen": old, "_partition": 2})
    batch = bp.eviction_batch({1}, ttl_s=3600)
    asyncio.run(bp.store(batch))
    assert set(bp.table) == {"fresh", "alarmed", "elsewhere"}
    assert [(t, p, k, v) for (t, p, k, v) in producer.produced] == [
        ("app-resource-state-changelog", 1, b'"gone"', None)]
    assert bp.eviction_batch({1}, ttl_s=3600) is None


def test_eviction_deletes_at_most_a_pass_worth_and_copies_nothing(codec, monkeypatch):
    monkeypatch.setattr(batch_module, "EVICT_PER_PASS", 3)
    bp, producer = processor(codec)
    old = time.time() - 7200
    states = {f"r{i}": {"t": i, "_seen": old, "_partition": 1} for i in range(5)}
    for rid, state in states.items():
        dict.__setitem__(bp.table, rid, state)
    batch = bp.eviction_batch({1}, ttl_s=3600)
    assert len(batch.state._deleted) == 3
    assert not batch.state._copies and not batch.state._originals, "nothing copied"
    assert bp.pending["r0"][0] == {}, "a later batch reads an evicted state as empty"
    assert batch.state.get("r0", 1) == {}, "a deleted state reads as empty"
    asyncio.run(bp.store(batch))
    assert len(bp.table) == 2
    asyncio.run(bp.store(bp.eviction_batch({1}, ttl_s=3600)))
    assert len(bp.table) == 0
    assert sorted(k for (_, _, k, v) in producer.produced if v is None) == sorted(f'"r{i}"'.encode() for i in range(5))


def test_the_alarm_timer_keeps_event_time_on_partitions_with_a_backlog(codec):
    bp, _ = processor(codec)
    ts = time.time_ns() // 1000 - 600_000_000  # a backlog ten minutes old
    bp.prepare([Msg(b"a", codec.encode([make_test_sample(resource_id="a", timestamp=ts)]), offset=5, partition=0),
                Msg(b"b", codec.encode([make_test_sample(resource_id="b", timestamp=ts)]), offset=9, partition=1)])
    now = time.time_ns() // 1000
    clocks = bp.timer_clocks({0: 100, 1: 10, 2: 50, 3: None}, now, positions={2: 50})
    # 0: records 6..99 still to read -> event time; 1: all prepared -> wall clock; 2: nothing prepared, the
    # consumer stands at the end -> wall clock; 3: not fetched yet -> left alone.
    assert clocks == {0: ts, 1: now, 2: now}
    assert bp.timer_clocks({2: 50}, now, positions={2: 20}) == {}  # a backlog, nothing prepared: wait


def test_the_alarm_timer_keeps_event_time_until_a_caught_up_partition_is_quiet(codec):
    """A high watermark is as fresh as the last fetch response: a partition whose records are still being
    fetched may look caught up (every record counted prepared, or nothing beyond the committed offset)
    while its next samples are on their way. It keeps event time, or is left alone with nothing prepared,
    until nothing was fetched from it for ``alarms.idle_after`` (found as a flake of
    tests/integration/test_alarm_restart.py in a clean-clone CI run: the restarted processor declared
    insufficient data for a resource reporting all along)."""
    bp, _ = processor(codec)
    ts = time.time_ns() // 1000 - 5_000_000
    bp.prepare([Msg(b"a", codec.encode([make_test_sample(resource_id="a", timestamp=ts)]), offset=9, partition=1)])
    now = time.time_ns() // 1000
    highwaters, committed = {1: 10, 2: 50}, {2: 50}  # both look caught up
    assert bp.timer_clocks(highwaters, now, committed, quiet=set()) == {1: ts}  # 2: nothing prepared: alone
    assert bp.timer_clocks(highwaters, now, committed, quiet={2}) == {1: ts, 2: now}
    assert bp.timer_clocks(highwaters, now, committed, quiet={1, 2}) == {1: now, 2: now}


def test_a_partition_is_quiet_only_while_it_is_fetched_and_brings_nothing():
    t = 1000.0  # monotonic seconds
    last = {0: t - 5.0, 1: t - 1.0, 2: None}  # 0: records 5 s ago; 1: a second ago; 2: never
    assert quiet_partitions(last, last_round=t - 0.2, assigned_at=t - 60, now=t, idle_after=2.0) == {0, 2}
    # Assigned a second ago: nothing is quiet before idle_after has passed since.
    assert quiet_partitions(last, last_round=t - 0.2, assigned_at=t - 1, now=t, idle_after=2.0) == set()
    # The fetcher has not completed a round for 10 s (it waits for room in the intake): no proof of idleness.
    assert quiet_partitions(last, last_round=t - 10, assigned_at=t - 60, now=t, idle_after=2.0) == set()


def test_a_sample_stamped_ahead_does_not_move_its_partitions_alarm_clock(codec):
    """A poller whose clock runs fast (within max_future_skew) stamps its samples ahead. On a partition
    with a backlog the timer keeps the partition's event time: were it the fast sample's time, every
    other resource's alarm windows on the partition would be closed early, and their samples then
    ignored as late until the wall clock caught up (found by the fault suite, tests/chaos/run.py)."""
    bp, _ = processor(codec)
    ts = time.time_ns() // 1000 - 600_000_000  # a backlog ten minutes old
    ahead = time.time_ns() // 1000 + 1_800_000_000  # half an hour ahead
    bp.prepare([Msg(b"a", codec.encode([make_test_sample(resource_id="a", timestamp=ts)]), offset=5),
                Msg(b"fast", codec.encode([make_test_sample(resource_id="fast", timestamp=ahead)]), offset=6)])
    assert bp.timer_clocks({0: 100}, time.time_ns() // 1000) == {0: ts}


def _agent_with_fake_store(bp, batches, events, fail_at=None):
    """The processor agent's loop over ``batches`` (prepare, submit, wait_turn), with a store that takes
    10 ms off the event loop (the write thread) and fails at batch ``fail_at``; ``events`` gets what
    happened, in order."""

    async def store(batch):
        events.append(("store", batch))
        await asyncio.sleep(0.01)
        if batch == fail_at:
            raise StoreUnavailable("the store is gone")
        events.append(("stored", batch))

    bp.store = store

    async def agent():
        for n in range(batches):
            events.append(("prepare", n))

            async def ack(n=n):
                events.append(("ack", n))

            try:
                await bp.wait_turn(bp.submit(n, ack))
            except StoreUnavailable:
                events.append(("failed", n))
                return
        await bp.drain()

    asyncio.run(agent())


def test_batches_are_stored_and_acknowledged_in_order_while_the_next_is_prepared(codec):
    bp, _ = processor(codec)
    events = []
    _agent_with_fake_store(bp, 6, events)
    assert [n for what, n in events if what == "stored"] == list(range(6))
    assert [n for what, n in events if what == "ack"] == list(range(6))
    for n in range(1, 6):  # never two stores at once, and never an ack before its batch is stored
        assert events.index(("stored", n - 1)) < events.index(("store", n))
        assert events.index(("stored", n)) < events.index(("ack", n))
    for n in range(5):
        # The overlap: batch n's store has begun before the agent prepares n + 1 (the agent waits for
        # n - 1 only, so n + 1 is prepared while n is stored).
        assert events.index(("store", n)) < events.index(("prepare", n + 1)) < events.index(("stored", n))


def test_a_failed_store_reaches_the_agent_and_nothing_after_it_is_stored_or_acknowledged(codec):
    bp, _ = processor(codec)
    events = []
    _agent_with_fake_store(bp, 6, events, fail_at=2)
    assert ("failed", 3) in events  # the agent learns of it while it waits for its turn after batch 3
    assert [n for what, n in events if what == "ack"] == [0, 1]
    assert ("store", 3) not in events
