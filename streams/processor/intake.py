"""The processor's intake: records of the samples topic handed over in chunks, not one by one.

Faust delivers each fetched record through its conductor, the stream's
channel, the stream's iterator and its processors: about a fifth of the
processor's time in profiles (``py-spy record --gil``, ``make bench``). The
processor needs none of it for the samples topic: it decodes records itself
and acknowledges them per batch. So :class:`~streams.processor.fastpath.Consumer`
hands the samples topic's records, as fetched (one ``getmany`` result), to
an :class:`Intake`, and the agent takes its batches from there
(:meth:`Intake.batches`). Faust keeps everything else: the consumer group,
partition assignment, seeking to committed offsets, table recovery, the
commit of acknowledged offsets, and other topics' delivery.

Bounds: a batch holds at most ``max_records`` records, is handed over once
its records' values reach ``max_bytes`` or its oldest record has waited
``within`` seconds (size or age, whichever first); chunks wait in the intake
only up to ``2 * max_bytes`` bytes or ``2 * max_records`` records, beyond
which the fetcher waits (back-pressure). The record bound matters for small
records: each costs about 1.5 KB in Faust's and aiokafka's objects whatever
its size (memray, ``make bench``'s bounded-state run). At a rebalance the chunks not yet taken are dropped
(:meth:`Intake.clear`): Faust seeks every partition back to its committed
offset, so they are fetched again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any


class Intake:
    """A bytes-bounded queue of record chunks between the fetcher and the agent (event loop only).

    Args:
        max_records: most records in one batch.
        max_bytes: a batch is handed over at this many bytes of record values;
            the queue holds up to twice that (or twice ``max_records`` records) before
            :meth:`put` waits.
        within: seconds the oldest record of a batch may wait.
    """

    def __init__(self, max_records: int, max_bytes: int, within: float) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.within = within
        self._chunks: deque[tuple[float, list[Any], int]] = deque()  # (arrival, records, bytes)
        self._bytes = 0
        self._count = 0
        self._room = asyncio.Event()
        self._room.set()
        self._ready = asyncio.Event()
        self.generation = 0

    def __len__(self) -> int:
        return sum(len(c[1]) for c in self._chunks)

    async def put(self, records: list[Any]) -> None:
        """Queue ``records`` (Faust messages of one fetch); waits while the queue is full."""
        nbytes = sum(len(m.value or b"") for m in records)
        while self._full():
            self._room.clear()
            await self._room.wait()
        self._chunks.append((asyncio.get_running_loop().time(), records, nbytes))
        self._bytes += nbytes
        self._count += len(records)
        self._ready.set()

    def clear(self) -> None:
        """Drop every chunk not yet taken (a rebalance: they will be fetched again)."""
        self._chunks.clear()
        self._bytes = 0
        self._count = 0
        self._ready.clear()
        self._room.set()
        self.generation += 1

    def _pop(self, room: int) -> tuple[float, list[Any], int]:
        arrival, records, nbytes = self._chunks.popleft()
        if len(records) > room:  # split: the rest stays first in line
            rest = records[room:]
            records = records[:room]
            rest_bytes = sum(len(m.value or b"") for m in rest)
            self._chunks.appendleft((arrival, rest, rest_bytes))
            nbytes -= rest_bytes
        self._bytes -= nbytes
        self._count -= len(records)
        if not self._chunks:
            self._ready.clear()
        if not self._full():
            self._room.set()
        return arrival, records, nbytes

    def _full(self) -> bool:
        return self._bytes >= 2 * self.max_bytes or self._count >= 2 * self.max_records

    async def batches(self, stopped: asyncio.Event | None = None) -> AsyncIterator[list[Any]]:
        """Yield batches of records, bounded as the module docstring says, until ``stopped`` is set."""
        loop = asyncio.get_running_loop()
        while stopped is None or not stopped.is_set():
            if not self._chunks:
                await self._wait(self._ready, None, stopped)
                continue
            first, batch, nbytes = self._pop(self.max_records)
            generation = self.generation
            while len(batch) < self.max_records and nbytes < self.max_bytes:
                if not self._chunks:
                    remaining = first + self.within - loop.time()
                    if remaining <= 0 or not await self._wait(self._ready, remaining, stopped):
                        break
                    continue
                _, records, more = self._pop(self.max_records - len(batch))
                batch.extend(records)
                nbytes += more
            if generation == self.generation:  # else a rebalance came: they will be fetched again
                yield batch

    @staticmethod
    async def _wait(event: asyncio.Event, timeout: float | None, stopped: asyncio.Event | None) -> bool:
        """Wait for ``event`` (or ``stopped``) up to ``timeout`` seconds; True if ``event`` is set."""
        waiters = [asyncio.ensure_future(event.wait())]
        if stopped is not None:
            waiters.append(asyncio.ensure_future(stopped.wait()))
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        return event.is_set()
