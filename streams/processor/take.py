"""Batches of stream events, bounded by count, bytes and age.

Faust's ``Stream.noack_take(max_, within)`` bounds a batch by count only, and
its timer restarts after every batch: a record that arrives while a batch is
being stored waits for the store *and* a whole ``within`` window. Here:

* a batch is handed over when it holds ``max_records`` events, or its
  events' values reach ``max_bytes`` bytes, or its oldest event has waited
  ``within`` seconds, whichever comes first (size or age);
* events keep filling the next batch while the caller works on the previous
  one (double buffering), so age counts from a record's arrival, not from
  the end of the previous store; when the next batch is full, the stream
  waits (back-pressure), so at most two batches are held at once.

Acknowledgements are the caller's (as with ``noack_take``): nothing is acked here.

Built on the same stream hooks as Faust's own ``noack_take`` (a stream
processor that buffers events, and the stream's passive drainer).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any


class _Buffer:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.nbytes = 0
        self.first_at = 0.0


async def take_batches(stream: Any, max_records: int, max_bytes: int, within: float) -> AsyncIterator[list[Any]]:
    """Yield lists of events (Faust ``EventT``) of ``stream``, bounded as the module docstring says.

    Args:
        stream: a Faust stream (the agent's argument).
        max_records: most events in one batch (> 0).
        max_bytes: a batch is handed over once its values reach this many bytes
            (one event larger than that is a batch of its own).
        within: seconds the oldest event of a batch may wait before it is handed over.
    """
    loop = asyncio.get_running_loop()
    filling = _Buffer()
    ready = asyncio.Event()  # the filling buffer is full: hand it over now
    nonempty = asyncio.Event()  # the filling buffer has at least one event
    room = asyncio.Event()  # the filling buffer may take more events
    room.set()
    enable_acks = stream.enable_acks

    async def add_to_buffer(value: Any) -> Any:
        nonlocal filling
        if not room.is_set():
            await stream.wait(room)  # returns early only when the stream stops
        event = stream.current_event
        if event is None:  # pragma: no cover - Faust always sets it for a processor
            raise RuntimeError("take_batches: stream has no current event")
        buf = filling
        if not buf.events:
            buf.first_at = loop.time()
            nonempty.set()
        buf.events.append(event)
        buf.nbytes += len(event.message.value or b"")
        if len(buf.events) >= max_records or buf.nbytes >= max_bytes:
            ready.set()
            room.clear()
        return value

    stream.enable_acks = False  # the caller acknowledges, once a batch is stored
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))  # noqa: SLF001 - as Faust's own noack_take does
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(nonempty)
            if stream.should_stop:
                break
            remaining = filling.first_at + within - loop.time()
            if remaining > 0 and not ready.is_set():
                await stream.wait_for_stopped(ready, timeout=remaining)
            batch, filling = filling, _Buffer()
            ready.clear()
            nonempty.clear()
            room.set()
            if batch.events:
                yield batch.events
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_buffer)  # noqa: SLF001
