"""Per-record costs of faust-streaming the processor does without.

They were found by profiling ``streams process`` under ``make bench``
(``py-spy record --gil``); together they were about a fifth of all Python
time. Removing them took the bench's stateful run from 13.3-13.9k to
16.9-20.9k samples/s (420k-sample subset, same machine and topic, runs
interleaved).

**Record hand-off.** faust-streaming's consumer hands every fetched record to the stream with
``await self.wait_first(callback(message), self.suspend_flow.wait())``
(``faust.transport.consumer.Consumer._drain_messages``): four asyncio tasks
and an ``asyncio.wait`` per record, so that a callback still blocked when a
rebalance suspends the flow can be abandoned. Profiled on the processor
(``make bench``), that was about 12% of all Python time, more than the
ClickHouse insert.

:class:`Consumer` starts the callback eagerly, the way Python 3.12's
``asyncio.eager_task_factory`` does: it runs the coroutine in the draining
task until its first suspension. Nearly always the callback (Faust's
conductor: a lock, then the stream's non-blocking queue put) finishes right
there, and no task or wait is needed; the drain then yields to the event
loop once, as ``wait_first`` did, so rebalance callbacks (``stop_flow``,
seeks to committed offsets) still run between any two records. If the
callback does suspend (the conductor's lock is held during a rebalance;
Faust's producer buffer is full), the started coroutine goes to Faust's own
``wait_first`` unchanged, and a rebalance abandons it exactly as before.

Both halves matter. A first version awaited the callback directly and
handed a whole fetch to the stream without yielding; in the worker-kill
test (``tests/integration/test_transformers.py``) the survivor then lost
the first records of the partitions it took over in about one run in five:
they were delivered around the rebalance, and Faust committed past them.
With the per-record yield and the abandon path, 20 runs in a row passed.

**Per-event statistics.** Faust's default :class:`~faust.sensors.Monitor`
updates counters, deques and timestamps for every message and stream event
(``on_message_in``, ``on_stream_event_in/out``, ``on_message_out``), for
Faust's web views, which the processor disables. :class:`LeanMonitor` keeps
the Monitor (its other hooks: commits, rebalances, producer buffer) and
skips those four and ``on_table_get`` (keeping only the per-partition
inbound time Faust's stalled-stream warning reads); the processor's own Prometheus
metrics count records, samples and rejects per batch.

**Raw records.** The samples topic is read with :class:`RawSchema`: key and
value stay the bytes Kafka delivered (the processor verifies and decodes
them itself, :mod:`streams.codec`), without a trip through Faust's codec
registry per record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from time import monotonic
from typing import Any

import faust
from aiokafka.structs import TopicPartition
from faust.sensors.monitor import Monitor
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as _aiokafka
from mode.services import WaitResults


class _Started:
    """Awaitable rest of a coroutine that was stepped by hand and yielded ``pending``.

    Awaiting it hands ``pending`` (a future, or None for a bare yield) to the
    awaiting task, then forwards sends and throws (cancellation) to the
    coroutine: what ``yield from coro`` would do had it not been started.
    """

    def __init__(self, coro: Any, pending: Any) -> None:
        self.coro = coro
        self.pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        return _resume(self.coro, self.pending)


def _resume(coro: Any, pending: Any) -> Generator[Any, Any, Any]:
    while True:
        try:
            value = yield pending
        except BaseException as exc:  # noqa: BLE001 - forwarded, e.g. CancelledError
            try:
                pending = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                pending = coro.send(value)
            except StopIteration as stop:
                return stop.value


class ConsumerThread(_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread, with the fetch long-poll bounded by :attr:`fetch_max_wait_ms`."""

    fetch_max_wait_ms: int = 1500

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust hard-codes 1,500 ms. A broker answers a fetch once fetch_min_bytes (1) are there, but one
        # that holds the long poll for its full length while records arrive (the local Kafka-protocol
        # broker does) adds up to that much to every record's produce -> row latency. aiokafka reads the
        # attribute when it starts its fetcher, after this.
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


class Consumer(_aiokafka.Consumer):
    """aiokafka consumer whose record hand-off starts the callback eagerly (module docstring), and
    whose records of ``intake_topics`` go to ``intake`` a fetch at a time (:mod:`streams.processor.intake`).
    """

    intake: Any = None  # streams.processor.intake.Intake, set by the processor before the worker starts
    intake_topics: frozenset[str] = frozenset()
    last_round: float = 0.0
    """``time.monotonic()`` when the last ``getmany`` round completed (with records or after its timeout);
    stale while the drain waits for room in the intake. With the intake's per-partition arrival times it
    tells a partition that is fetched and has nothing from one that is not being fetched."""

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        """Faust's ``Consumer._wait_next_records``, except that aiokafka is asked for a copy of the active
        partitions, taken when the fetch starts.

        Faust passes its live set, which the rebalance and recovery code mutate while the fetch waits: when
        table recovery finished reading the changelog it paused those partitions and left the set empty, and
        aiokafka's ``fetched_records`` reads an empty set as "every partition". The fetch then returned the
        samples records aiokafka had prefetched, Faust's ``getmany`` dropped them (their partitions were not
        active yet) after aiokafka had counted them consumed, and with no committed offset nothing seeked
        back: a restarted worker skipped its whole backlog (``tests/integration/test_alarm_restart.py``,
        about 1 run in 20 under load).
        """
        if not self.flow_active:
            await self.wait(self.can_resume_flow)
        try:
            self.not_waiting_next_records.set()
            if self.app.client_only:
                return await self._getmany(active_partitions=None, timeout=timeout), None
            active = self._get_active_partitions()
            requested = set(active)
            if not requested:
                await self.sleep(1)  # nothing to fetch; still yield to the event loop
                return {}, active
            return await self._getmany(active_partitions=requested, timeout=timeout), active
        finally:
            self.not_waiting_next_records.set()

    async def seek_to_committed(self) -> Any:
        """Seek every partition to its committed offset, and the samples partitions without one to the
        beginning (``auto_offset_reset=earliest``, what their position was when assigned).

        aiokafka's ``seek_to_committed`` leaves a partition without a committed offset where it is. Records
        fetched there and dropped at a rebalance (Faust drops what a suspended flow or a paused partition
        gets) were then never read again; with the seek they are, and the sink recognises what was stored.
        """
        committed = await super().seek_to_committed()
        fresh = [TopicPartition(tp.topic, tp.partition) for tp, offset in committed.items()
                 if tp.topic in self.intake_topics and not offset]
        if fresh:
            consumer = self._thread._ensure_consumer()
            await self._thread.call_thread(consumer.seek_to_beginning, *fresh)
        return committed

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def set_fetch_max_wait(self, seconds: float) -> None:
        """Bound the fetch long poll (before the worker starts)."""
        self._thread.fetch_max_wait_ms = max(1, round(seconds * 1000))

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - the fetcher's loop
        """Faust's ``Consumer._drain_messages`` (same read-offset, gap and commit bookkeeping), except
        that records of :attr:`intake_topics` are tracked and handed to :attr:`intake` as one chunk per
        fetch instead of one callback each; a rebalance (the flow suspended) drops the chunk, which Faust's
        seek to the committed offsets fetches again."""
        if self.intake is None:
            return await super()._drain_messages(fetcher)
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        acks_enabled_for = self.app.topics.acks_enabled_for
        track = self.track_message
        intake, intake_topics = self.intake, self.intake_topics
        inbound = self.app.monitor.stream_inbound_time
        commit_every = self._commit_every
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                chunk: list[Any] = []
                if not self.should_stop:
                    async for tp, message in ait:
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is not None and offset < r_offset:
                            continue  # before a seek: Faust drops these too
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if tp.topic in intake_topics:
                            track(message)
                            chunk.append(message)
                        else:
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        set_read_offset(tp, offset)
                    unset_flag(CONSUMER_FETCHING)
                    self.last_round = monotonic()
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
                if chunk and not self.suspend_flow.is_set():
                    now = monotonic()
                    for tp in {m.tp for m in chunk}:
                        inbound[tp] = now  # Faust's stalled-stream check reads it
                    await self.wait_first(intake.put(chunk), self.suspend_flow.wait())
                await asyncio.sleep(0)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        if len(coros) == 2 and timeout is None and not self.suspend_flow.is_set():
            callback, suspended = coros
            frame = getattr(suspended, "cr_frame", None)
            if frame is not None and frame.f_locals.get("self") is self.suspend_flow:
                try:
                    pending = callback.send(None)  # run it up to its first suspension
                except StopIteration as done:
                    suspended.close()  # never started: nothing to cancel
                    # Yield to the loop once per record, as Faust's wait_first does, so rebalance
                    # callbacks (stop_flow, seeks) run between records exactly as before.
                    await asyncio.sleep(0)
                    return WaitResults(done=[callback], results=[done.value], stopped=False)
                except BaseException:
                    suspended.close()
                    raise
                # It would block: let Faust's wait_first race it against the flow being suspended.
                return await super().wait_first(_Started(callback, pending), suspended)
        return await super().wait_first(*coros, timeout=timeout)


class RawSchema(faust.Schema):
    """Events whose key and value are the record's bytes, as delivered (``None`` stays ``None``)."""

    def compile(self, app: Any, **kwargs: Any) -> Any:
        create_event = app.create_event

        async def decode(message: Any, *, propagate: bool = False) -> Any:
            return create_event(message.key, message.value, message.headers, message)

        return decode


class Transport(_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`Consumer`."""

    Consumer = Consumer


class LeanMonitor(Monitor):
    """Faust's Monitor without its per-message and per-event statistics."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        # Kept: Faust's stalled-stream check (aiokafka driver, verify_event_path) reads it.
        self.stream_inbound_time[tp] = monotonic()

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_table_get(self, table: Any, key: Any) -> None:
        return None


def install(app: Any) -> None:
    """Give ``app`` :class:`Transport` and :class:`LeanMonitor`.

    Call right after creating the app, before anything creates its consumer.
    """
    app.transport = Transport(app.conf.broker_consumer, app)
    app.monitor = LeanMonitor()
