"""The intake without a broker: batches bounded by records, bytes and age; a rebalance drops what is queued."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from streams.processor.intake import Intake


@dataclass
class M:
    value: bytes
    offset: int = 0


def test_batches_are_bounded_by_records_and_split_chunks():
    async def main():
        intake = Intake(max_records=3, max_bytes=1 << 20, within=0.05)
        await intake.put([M(b"x", i) for i in range(5)])
        got = []
        async for batch in intake.batches():
            got.append([m.offset for m in batch])
            if len(got) == 2:
                break
        return got

    assert asyncio.run(main()) == [[0, 1, 2], [3, 4]]


def test_a_batch_is_handed_over_by_bytes_or_by_age():
    async def main():
        intake = Intake(max_records=1000, max_bytes=100, within=0.2)
        await intake.put([M(b"x" * 60)])
        await intake.put([M(b"x" * 60)])  # 120 bytes >= 100: handed over without waiting
        await intake.put([M(b"y")])
        loop = asyncio.get_running_loop()
        got = []
        async for batch in intake.batches():
            got.append((len(batch), loop.time()))
            if len(got) == 2:
                break
        return got

    (n1, t1), (n2, t2) = asyncio.run(main())
    assert (n1, n2) == (2, 1)  # the third record waited for its own batch's age limit


def test_put_waits_while_twice_max_bytes_are_queued():
    async def main():
        intake = Intake(max_records=10, max_bytes=100, within=0.01)
        await intake.put([M(b"x" * 200)])
        blocked = asyncio.ensure_future(intake.put([M(b"z")]))
        await asyncio.sleep(0.05)
        assert not blocked.done()  # back-pressure on the fetcher
        async for _ in intake.batches():
            break
        await asyncio.wait_for(blocked, 1)
        return len(intake)

    assert asyncio.run(main()) == 1


def test_put_waits_while_twice_max_records_are_queued():
    async def main():
        intake = Intake(max_records=2, max_bytes=1 << 20, within=0.01)
        await intake.put([M(b"a"), M(b"b"), M(b"c"), M(b"d")])
        blocked = asyncio.ensure_future(intake.put([M(b"e")]))
        await asyncio.sleep(0.05)
        assert not blocked.done()  # small records: bounded by count, not only by bytes
        async for batch in intake.batches():
            assert len(batch) == 2
            break
        await asyncio.wait_for(blocked, 1)
        return len(intake)

    assert asyncio.run(main()) == 3


def test_a_rebalance_drops_what_is_queued():
    async def main():
        intake = Intake(max_records=10, max_bytes=1 << 20, within=0.01)
        await intake.put([M(b"x", 1)])
        intake.clear()
        await intake.put([M(b"x", 7)])
        async for batch in intake.batches():
            return [m.offset for m in batch]

    assert asyncio.run(main()) == [7]
