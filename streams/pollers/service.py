"""The polling service: runs pollsters every ``interval`` and publishes their samples.

Built on ``mode`` (the service library Faust runs on): the poll loop is a
supervised task on a drift-corrected timer, delivery reports are served by a
timer, and stopping (SIGTERM/SIGINT via ``mode.Worker``) flushes every queued
record to the broker before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from mode import Service

from streams.codec import Sample
from streams.observability import POLL_ERRORS, POLL_SECONDS, SAMPLES_POLLED, MetricsServer
from streams.pollers.base import Discovery, Pollster
from streams.publisher import KafkaPublisher

log = logging.getLogger(__name__)


class PollingService(Service):
    """Polls ``pollsters`` every ``interval`` seconds and publishes to Kafka.

    Args:
        publisher: where samples go.
        pollsters: (discovery, pollster) pairs, run in order in a worker thread.
        interval: seconds between polls (the first poll runs at start).
        metrics_port: port of ``/metrics`` and ``/healthz``; 0 = none.
    """

    def __init__(
        self,
        publisher: KafkaPublisher,
        pollsters: Sequence[tuple[Discovery, Pollster]],
        interval: float,
        metrics_port: int = 0,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.publisher = publisher
        self.pollsters = list(pollsters)
        self.interval = interval
        self.polls = 0
        self.metrics = MetricsServer(metrics_port, healthy=lambda: not self.should_stop,
                                     ready=lambda: self.polls > 0)

    def on_init_dependencies(self) -> list[Service]:
        return [self.metrics]

    def collect(self) -> list[Sample]:
        """Run every pollster once (blocking); a failing pollster is logged and skipped."""
        samples: list[Sample] = []
        for discovery, pollster in self.pollsters:
            name = type(pollster).__name__
            try:
                got = list(pollster.get_samples(discovery.discover()))
            except Exception:  # noqa: BLE001 - one broken pollster must not stop the others
                POLL_ERRORS.labels(pollster=name).inc()
                log.exception("pollster %s failed", name)
                continue
            SAMPLES_POLLED.labels(pollster=name).inc(len(got))
            samples.extend(got)
        return samples

    async def poll_once(self) -> int:
        """Collect and publish one round; returns the number of samples published."""
        start = time.perf_counter()
        samples = await asyncio.to_thread(self.collect)
        records = self.publisher.publish(samples)
        POLL_SECONDS.observe(time.perf_counter() - start)
        self.polls += 1
        log.info("poll %d: %d samples in %d records (%.0f ms)", self.polls, len(samples), records,
                 (time.perf_counter() - start) * 1000)
        return len(samples)

    @Service.task
    async def _poll_loop(self) -> None:
        await self.poll_once()
        async for _ in self.itertimer(self.interval, name="poll"):
            await self.poll_once()

    @Service.timer(0.2)
    async def _serve_delivery_reports(self) -> None:
        self.publisher.poll(0)

    async def on_stop(self) -> None:
        await asyncio.to_thread(self.publisher.flush)
        log.info("poller stopped: %d samples delivered, %d failed", self.publisher.delivered,
                 self.publisher.failed)
