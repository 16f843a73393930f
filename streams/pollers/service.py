"""The polling service: runs each polling.yaml source on its interval and publishes its samples.

Built on ``mode`` (the service library Faust runs on): one supervised loop per
source on a drift-corrected timer, delivery reports served by a timer, and
stopping (SIGTERM/SIGINT via ``mode.Worker``) flushes every queued record to
the broker before the process exits.

One poll of a source: discover resources (each pollster's discoveries, in a
worker thread), keep this member's share when a
:class:`~streams.coordination.membership.PartitionCoordinator` is given
(central agents), measure, keep the meters the source selects, run the edge
hooks, then sign, encode and produce one record per resource.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from mode import Service

from streams.codec import Sample
from streams.coordination.membership import PartitionCoordinator
from streams.observability import POLL_ERRORS, POLL_SECONDS, POLL_SHARE, SAMPLES_POLLED, MetricsServer
from streams.pollers.base import Resource
from streams.pollers.hooks import HookChain
from streams.pollers.polling import PollingTask
from streams.publisher import KafkaPublisher

log = logging.getLogger(__name__)


class PollingService(Service):
    """Polls every task (source) on its interval and publishes to Kafka.

    Args:
        publisher: where samples go.
        tasks: the sources of polling.yaml, built (see :func:`~streams.pollers.polling.load_polling`).
        metrics_port: port of ``/metrics``, ``/healthz`` and ``/readyz``; 0 = none.
        coordinator: when set, each poll keeps only this member's share of the
            discovered resources (Ceilometer's ``extract_my_subset``); None = all.
        hooks: edge hooks applied to every poll's samples (None = none).
        services: more mode services to run alongside (ZooKeeper session,
            registry, watched config); started before the first poll.
        metrics_host: listen address of the metrics server (``metrics_host`` setting).
    """

    def __init__(
        self,
        publisher: KafkaPublisher,
        tasks: Sequence[PollingTask],
        metrics_port: int = 0,
        coordinator: PartitionCoordinator | None = None,
        hooks: HookChain | None = None,
        services: Sequence[Service] = (),
        metrics_host: str = "127.0.0.1",
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.publisher = publisher
        self.tasks = list(tasks)
        self.coordinator = coordinator
        self.hooks = hooks or HookChain()
        self.polls = 0
        self.metrics = MetricsServer(metrics_port, metrics_host, healthy=lambda: not self.should_stop,
                                     ready=lambda: self.polls > 0)
        self._extra = [s for s in (coordinator, *services) if s is not None]

    def on_init_dependencies(self) -> list[Service]:
        return [self.metrics, *self._extra]

    def resources(self, task: PollingTask, discoveries) -> list[Resource]:
        """Discovered resources (first discovery wins on duplicate ids), cut to this member's share."""
        seen: dict[str, Resource] = {}
        for d in discoveries:
            for r in d.discover():
                seen.setdefault(r.id, r)
        found = list(seen.values())
        if self.coordinator is not None:
            found = self.coordinator.extract_my_subset(found, key=lambda r: r.id)
        return found

    def collect(self, task: PollingTask) -> list[Sample]:
        """Run ``task``'s pollsters once (blocking); a failing pollster is logged, counted and skipped."""
        samples: list[Sample] = []
        polled: set[str] = set()
        for name, pollster, discoveries in task.pollsters:
            try:
                resources = self.resources(task, discoveries)
                polled.update(r.id for r in resources)
                got = [s for s in pollster.get_samples(resources) if task.selector(s["name"])]
            except Exception:  # noqa: BLE001 - one broken pollster must not stop the others
                POLL_ERRORS.labels(pollster=name).inc()
                log.exception("source %s: pollster %s failed", task.source, name)
                continue
            SAMPLES_POLLED.labels(pollster=name).inc(len(got))
            samples.extend(got)
        POLL_SHARE.labels(source=task.source).set(len(polled))
        return samples

    def collect_all(self) -> list[Sample]:
        """Every task once (blocking), edge hooks applied: what ``streams poll --once`` publishes."""
        return self.hooks.apply([s for t in self.tasks for s in self.collect(t)])

    async def poll_once(self, task: PollingTask) -> int:
        """Collect and publish one round of ``task``; returns the number of samples published."""
        start = time.perf_counter()
        samples = self.hooks.apply(await asyncio.to_thread(self.collect, task))
        records = self.publisher.publish(samples)
        POLL_SECONDS.observe(time.perf_counter() - start)
        self.polls += 1
        log.info("poll %d (%s): %d samples in %d records (%.0f ms)", self.polls, task.source, len(samples),
                 records, (time.perf_counter() - start) * 1000)
        return len(samples)

    async def _task_loop(self, task: PollingTask) -> None:
        await self.poll_once(task)
        async for _ in self.itertimer(task.interval, name=f"poll-{task.source}"):
            await self.poll_once(task)

    async def on_started(self) -> None:
        for task in self.tasks:
            self.add_future(self._task_loop(task))

    @Service.timer(0.2)
    async def _serve_delivery_reports(self) -> None:
        self.publisher.poll(0)

    async def on_stop(self) -> None:
        await asyncio.to_thread(self.publisher.flush)
        log.info("poller stopped: %d samples delivered, %d failed", self.publisher.delivered,
                 self.publisher.failed)
