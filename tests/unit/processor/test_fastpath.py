"""streams.processor.fastpath: the record hand-off and the lean monitor keep Faust's semantics."""

import asyncio

from faust.types import TP
from mode.utils.locks import Event

from streams.processor.fastpath import Consumer, LeanMonitor, RawSchema


def bare_consumer() -> Consumer:
    """A Consumer with only what wait_first touches (no broker, no app)."""
    consumer = object.__new__(Consumer)
    consumer.suspend_flow = Event()
    consumer._stopped = Event()
    consumer._crashed = Event()
    consumer._loop = asyncio.get_running_loop()
    return consumer


def test_handoff_awaits_the_callback_directly_while_the_flow_runs():
    async def main():
        consumer = bare_consumer()
        delivered = []

        async def callback(message):
            delivered.append(message)
            return "ok"

        suspended = consumer.suspend_flow.wait()
        results = await consumer.wait_first(callback("m1"), suspended)
        assert delivered == ["m1"] and results.results == ["ok"] and not results.stopped
        assert suspended.cr_frame is None  # closed, never scheduled: no "never awaited" warning

    asyncio.run(main())


def test_handoff_falls_back_to_wait_first_when_the_flow_is_suspended():
    async def main():
        consumer = bare_consumer()
        consumer.suspend_flow.set()
        started = asyncio.Event()

        async def blocked_callback():
            started.set()
            await asyncio.sleep(3600)

        callback = blocked_callback()
        results = await asyncio.wait_for(consumer.wait_first(callback, consumer.suspend_flow.wait()), timeout=5)
        # Faust's semantics: the suspended flow wins and the blocked callback is abandoned.
        assert [c.__qualname__ for c in results.done] == ["Event.wait"]

    asyncio.run(main())


def test_other_waits_keep_modes_wait_first():
    async def main():
        consumer = bare_consumer()
        other = Event()
        other.set()
        results = await consumer.wait_first(other.wait(), consumer.suspend_flow.wait())
        assert results.done  # went through mode's wait_first (a different event), not the fast path

    asyncio.run(main())


def test_lean_monitor_keeps_the_inbound_time_faust_checks_for_stalls():
    monitor = LeanMonitor()
    tp = TP("samples", 3)
    assert monitor.on_stream_event_in(tp, 10, stream=None, event=None) is None
    assert tp in monitor.stream_inbound_time
    monitor.on_message_in(tp, 10, message=None)
    monitor.on_stream_event_out(tp, 10, stream=None, event=None, state=None)
    monitor.on_message_out(tp, 10, message=None)
    assert monitor.messages_received_total == 0 and monitor.events_total == 0


def test_raw_schema_hands_over_the_record_bytes_unchanged():
    class App:
        @staticmethod
        def create_event(key, value, headers, message):
            return (key, value, headers, message)

    class Message:
        key, value, headers = b"host-1", b"\xc3\x01...", [("h", b"v")]

    decode = RawSchema().compile(App())
    message = Message()
    assert asyncio.run(decode(message)) == (b"host-1", b"\xc3\x01...", [("h", b"v")], message)
    message.key = message.value = None  # tombstones and keyless records are the processor's to reject
    assert asyncio.run(decode(message))[:2] == (None, None)


def test_handoff_that_would_block_completes_when_the_flow_keeps_running():
    async def main():
        consumer = bare_consumer()
        lock = asyncio.Lock()
        await lock.acquire()  # Faust's conductor lock, held during a rebalance

        async def callback(message):
            async with lock:
                return message

        asyncio.get_running_loop().call_later(0.05, lock.release)
        results = await asyncio.wait_for(consumer.wait_first(callback("m1"), consumer.suspend_flow.wait()), 5)
        assert results.results == ["m1"] and not results.stopped

    asyncio.run(main())


def test_handoff_that_would_block_is_abandoned_when_the_flow_is_suspended_meanwhile():
    async def main():
        consumer = bare_consumer()
        lock = asyncio.Lock()
        await lock.acquire()
        delivered = []

        async def callback(message):
            async with lock:
                delivered.append(message)

        loop = asyncio.get_running_loop()
        loop.call_later(0.05, consumer.suspend_flow.set)  # a rebalance starts while the callback waits
        results = await asyncio.wait_for(consumer.wait_first(callback("m1"), consumer.suspend_flow.wait()), 5)
        assert [c.__qualname__ for c in results.done] == ["Event.wait"]
        lock.release()
        await asyncio.sleep(0.05)
        assert delivered == [] and not lock.locked()  # cancelled: never delivered, lock not leaked

    asyncio.run(main())



# -- fetching: a copy of the active partitions; uncommitted samples partitions seek to the beginning --


class _App:
    client_only = False


def fetching_consumer(active: set) -> Consumer:
    consumer = bare_consumer()
    consumer.app = _App()
    consumer.flow_active = True
    consumer.not_waiting_next_records = Event()
    consumer._active_partitions = active
    return consumer


def test_aiokafka_is_asked_for_the_partitions_active_when_the_fetch_starts():
    """Table recovery pauses the changelog partitions while a fetch waits, leaving Faust's live set empty;
    aiokafka reads an empty set as every partition (its prefetched samples records came back and were
    dropped). The fetch keeps the partitions it was started with."""
    changelog = TP("app-resource-state-changelog", 2)

    async def main():
        live = {changelog}
        consumer = fetching_consumer(live)
        asked = []

        async def getmany(active_partitions, timeout):
            asked.append(active_partitions)
            live.discard(changelog)  # recovery is done meanwhile: the changelog partition is paused
            return {changelog: ["r"]}

        consumer._getmany = getmany
        records, active = await consumer._wait_next_records(0.1)
        assert asked == [{changelog}] and asked[0] is not live  # a copy: still names the partition
        assert records == {changelog: ["r"]} and active is live  # Faust's filter reads the live set

        asked.clear()
        consumer.sleep = lambda s: asyncio.sleep(0)
        assert await consumer._wait_next_records(0.1) == ({}, live) and asked == []  # nothing active: no fetch

    asyncio.run(main())


def test_samples_partitions_without_a_committed_offset_seek_to_the_beginning():
    from aiokafka.structs import TopicPartition

    samples0, samples1, changelog = (TopicPartition("s", 0), TopicPartition("s", 1),
                                     TopicPartition("app-resource-state-changelog", 0))

    class Thread:
        sought = []

        async def seek_to_committed(self):
            return {samples0: None, samples1: 12, changelog: None}

        def _ensure_consumer(self):
            return self

        async def seek_to_beginning(self, *tps):
            self.sought.extend(tps)

        async def call_thread(self, fun, *args):
            return await fun(*args)

    async def main():
        consumer = bare_consumer()
        consumer._thread = Thread()
        consumer.intake_topics = frozenset({"s"})
        assert await consumer.seek_to_committed() == {samples0: None, samples1: 12, changelog: None}
        assert Thread.sought == [samples0]  # not the committed one; changelogs are recovery's business

    asyncio.run(main())
