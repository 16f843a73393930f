"""Per-record costs of faust-streaming the processor does without.

Both were found by profiling ``streams process`` under ``make bench``
(``py-spy record --gil``); together they were about a fifth of all Python
time, and removing them took the bench's stateful run from 13.3-13.9k to 16.9-20.9k
samples/s (420k-sample subset, same machine and topic, runs interleaved).

**Record hand-off.** faust-streaming's consumer hands every fetched record to the stream with
``await self.wait_first(callback(message), self.suspend_flow.wait())``
(``faust.transport.consumer.Consumer._drain_messages``): four asyncio tasks
and an ``asyncio.wait`` per record, so that a callback still blocked when a
rebalance suspends the flow can be abandoned. Profiled on the processor
(``make bench``), that was about 12% of all Python time, more than the
ClickHouse insert.

:class:`Consumer` keeps that call for the rare case and awaits the callback
directly when the flow is not suspended. The callback (Faust's conductor:
a lock, then the stream's non-blocking queue put) only ever waits when the
subscription is being changed or Faust's own producer buffer is full; the
processor writes its changelog with librdkafka, so that buffer holds only
dead letters and alarm events. The one difference: a callback that blocks
and is then overtaken by a rebalance completes instead of being dropped,
and its record reaches the stream. That is harmless here: the processor
stores a record at most once per replay (docs/storage.md), and an
acknowledgement of a partition no longer assigned is ignored by Faust.

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

from time import monotonic
from typing import Any

import faust
from faust.sensors.monitor import Monitor
from faust.transport.drivers import aiokafka as _aiokafka
from mode.services import WaitResults


class Consumer(_aiokafka.Consumer):
    """aiokafka consumer whose record hand-off skips ``wait_first`` while the flow runs."""

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        if len(coros) == 2 and timeout is None and not self.suspend_flow.is_set():
            callback, suspended = coros
            frame = getattr(suspended, "cr_frame", None)
            if frame is not None and frame.f_locals.get("self") is self.suspend_flow:
                suspended.close()  # never started: nothing to cancel
                result = await callback
                return WaitResults(done=[callback], results=[result], stopped=False)
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
