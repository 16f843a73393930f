"""Prometheus metrics of every service, and the HTTP endpoint that serves them.

Metric names are the project's public monitoring contract (Grafana's
pipeline-health dashboard reads them); keep them stable.

Each service mounts :class:`MetricsServer` (a ``mode`` service): ``GET /metrics``
in the Prometheus text exposition format, ``GET /healthz`` (liveness: ``200``
while the owning service runs, ``503`` once it stops) and ``GET /readyz``
(readiness: ``200`` once the service does its job, e.g. the processor owns
partitions, the poller has published a poll).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

SAMPLES_POLLED = Counter(
    "streams_samples_polled_total", "Samples produced by pollsters.", ["pollster"]
)
POLL_ERRORS = Counter(
    "streams_poll_errors_total", "Pollster runs that raised.", ["pollster"]
)
POLL_SECONDS = Histogram(
    "streams_poll_duration_seconds", "Wall time of one poll of all pollsters.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SAMPLES_PUBLISHED = Counter(
    "streams_samples_published_total", "Samples acknowledged by the broker."
)
PUBLISH_ERRORS = Counter(
    "streams_publish_errors_total", "Records the broker failed to accept (samples lost at the edge).",
    ["error"],
)
SAMPLES_PROCESSED = Counter(
    "streams_samples_processed_total", "Samples decoded, verified, normalized and stored."
)
RECORDS_REJECTED = Counter(
    "streams_records_rejected_total", "Kafka records sent to the dead-letter topic.",
    ["stage", "reason"],
)
TRANSFORM_ERRORS = Counter(
    "streams_transform_errors_total", "Samples a transformer could not handle (their output is lost).",
    ["transformer"],
)
SAMPLES_DERIVED = Counter(
    "streams_samples_published_by_pipeline_total", "Samples handed to pipeline publishers, by scheme.",
    ["scheme"],
)
SINK_BATCH_ROWS = Histogram(
    "streams_sink_batch_rows", "Rows per ClickHouse insert.",
    buckets=(1, 10, 100, 500, 1000, 5000, 10_000, 50_000, 100_000),
)
SINK_FLUSH_SECONDS = Histogram(
    "streams_sink_flush_seconds", "Latency of one ClickHouse insert, retries included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SINK_RETRIES = Counter(
    "streams_sink_retries_total", "ClickHouse inserts retried after an error."
)

STATE_RESOURCES = Gauge(
    "streams_state_resources", "Resources whose per-resource state this processor worker holds (table entries)."
)
STATE_EVICTED = Counter(
    "streams_state_evicted_total", "Per-resource states evicted after processor.state_ttl idle (changelog tombstones)."
)

COORDINATION_OUTAGES = Counter(
    "streams_coordination_outages_total", "ZooKeeper outages seen (connection or session lost, or none at start)."
)
COORDINATION_CONNECTED = Gauge(
    "streams_coordination_connected", "1 while the ZooKeeper session is connected."
)
COORDINATION_MEMBERS = Gauge(
    "streams_coordination_members", "Live members of a coordination group, as last seen.", ["group"]
)
POLL_SHARE = Gauge(
    "streams_poll_resources", "Resources this agent polled in its last poll of a source (its share).", ["source"]
)
EDGE_HOOK_DROPPED = Counter(
    "streams_edge_hook_dropped_total", "Samples dropped by edge hooks inside the agent.", ["meter"]
)
EDGE_HOOK_CONFIG_ERRORS = Counter(
    "streams_edge_hook_config_errors_total", "Edge-hook documents rejected (the previous hooks stayed)."
)
REGISTRY_LAST_REPORT = Gauge(
    "streams_registry_last_report_timestamp_seconds",
    "Unix time of this process's last successful report to the live-service registry.", ["binary"]
)


class MetricsServer(Service):
    """Serves ``/metrics`` and ``/healthz`` on ``host:port`` while it runs.

    Args:
        port: TCP port; 0 disables the server (the service then does nothing).
        host: listen address (``0.0.0.0`` in a pod, loopback by default).
        healthy: called per ``/healthz`` request; False answers 503.
        ready: called per ``/readyz`` request; False answers 503.
    """

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        healthy: Callable[[], bool] = lambda: True,
        ready: Callable[[], bool] = lambda: True,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.port = port
        self.host = host
        self.healthy = healthy
        self.ready = ready
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @staticmethod
    def _probe(ok: bool) -> web.Response:
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "not ok\n")

    async def _healthz(self, request: web.Request) -> web.Response:
        return self._probe(self.healthy())

    async def _readyz(self, request: web.Request) -> web.Response:
        return self._probe(self.healthy() and self.ready())

    async def on_start(self) -> None:
        if not self.port:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
