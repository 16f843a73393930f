"""``streams notify``: consume the ``alarms`` topic and call each action of the new state.

Why a ``mode`` Service around a confluent-kafka consumer rather than a Faust
app: the notifier keeps no state (every record carries its actions, so it
needs neither tables nor ZooKeeper), and its one delivery rule, "commit an
offset only after every action of every record before it has been delivered
or dead-lettered", is a plain consume-batch / notify / commit loop. Faust
would add a changelog-free app, topic declaration and per-event acks for
nothing.

Per batch (at most ``notifier.batch_size`` records):

1. decode each record (``schemas/alarm.avsc``); an undecodable one goes to
   the dead-letter topic (``kafka.alarms_dlq_topic``) with reason ``undecodable``;
2. call every action of every record concurrently, each with its own
   retries (``notifier.max_retries``, exponential backoff from
   ``notifier.backoff`` up to ``notifier.backoff_max``, tenacity), so a dead
   webhook delays its batch by at most its retry budget and never blocks the
   other alarms' deliveries;
3. an action that still fails is dead-lettered: the original key and value,
   plus headers ``streams.dlq.stage=notify``, ``streams.dlq.reason``
   (``action_failed``, ``unknown_scheme``), ``streams.dlq.detail`` and
   ``streams.dlq.action`` (the URL); the producer waits for the broker;
4. commit the batch's offsets.

A crash before 4 redelivers the batch: delivery is at-least-once, and each
payload carries ``id`` (the event id, also header ``X-Streams-Event-Id``) so
receivers can de-duplicate.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from confluent_kafka import Consumer, KafkaException, Producer
from mode import Service
from prometheus_client import Counter
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from streams.alarms.records import RecordCodec
from streams.config import Settings
from streams.notifiers import available_notifiers
from streams.notifiers.base import NotificationError, Notifier
from streams.observability import MetricsServer
from streams.publisher import producer_config

log = logging.getLogger(__name__)

NOTIFICATIONS = Counter("streams_notifications_total", "Alarm action calls by outcome.", ["scheme", "outcome"])


def payload_for(event: dict[str, Any]) -> dict[str, Any]:
    """The notification body for a decoded ``streams.AlarmEvent``: Aodh's keys plus id, resource, time."""
    import json

    try:
        reason_data = json.loads(event["reason_data"])
    except (TypeError, ValueError):
        reason_data = {}
    ts = datetime.fromtimestamp(event["timestamp"] / 1e6, tz=UTC).isoformat()
    return {"alarm_name": event["alarm_name"], "alarm_id": event["alarm_id"], "severity": event["severity"],
            "previous": event["previous"], "current": event["current"], "reason": event["reason"],
            "reason_data": reason_data, "id": event["event_id"], "resource_id": event["resource_id"],
            "project_id": event.get("project_id"), "transition": event["transition"], "timestamp": ts}


class NotifierService(Service):
    """Runs the consume / notify / commit loop until stopped.

    Args:
        settings: ``kafka`` (topics, connection) and ``notifier`` sections.
        metrics_port: overrides ``notifier.metrics_port``.
    """

    def __init__(self, settings: Settings, metrics_port: int | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        k, n = settings.kafka, settings.notifier
        self.codec = RecordCodec()
        self.consumer = Consumer({
            **k.client_config(),
            "group.id": n.group_id, "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "session.timeout.ms": k.session_timeout_ms,
            "heartbeat.interval.ms": max(500, k.session_timeout_ms // 6),
        })
        self.producer = Producer(producer_config(k, **{"linger.ms": 5}))
        self.notifiers: dict[str, Notifier] = {}
        self.classes = available_notifiers()
        self.assigned = False
        self.delivered = 0
        self.dead_lettered = 0
        self.metrics = MetricsServer(n.metrics_port if metrics_port is None else metrics_port, settings.metrics_host,
                                     healthy=lambda: not self.should_stop, ready=lambda: self.assigned)

    def on_init_dependencies(self) -> list[Service]:
        return [self.metrics]

    async def on_start(self) -> None:
        def on_assign(consumer, partitions):
            self.assigned = True
            log.info("notifier assigned %d partitions of %s", len(partitions), self.settings.kafka.alarms_topic)

        self.consumer.subscribe([self.settings.kafka.alarms_topic], on_assign=on_assign)

    async def on_stop(self) -> None:
        for n in self.notifiers.values():
            await n.close()
        await asyncio.to_thread(self.consumer.close)
        await asyncio.to_thread(self.producer.flush, 10)

    def _notifier(self, scheme: str) -> Notifier | None:
        if scheme not in self.notifiers:
            cls = self.classes.get(scheme)
            if cls is None:
                return None
            self.notifiers[scheme] = cls(self.settings.notifier)
        return self.notifiers[scheme]

    @Service.task
    async def _consume(self) -> None:
        n = self.settings.notifier
        while not self.should_stop:
            msgs = await asyncio.to_thread(self.consumer.consume, n.batch_size, 0.5)
            msgs = [m for m in msgs if m.error() is None or log.warning("consume error: %s", m.error())]
            if not msgs:
                continue
            dead = await self.handle(msgs)
            if dead:
                undelivered = await asyncio.to_thread(self.producer.flush, 30)
                if undelivered:
                    raise RuntimeError(f"dead-letter topic refused {undelivered} records; not committing")
            try:
                await asyncio.to_thread(self.consumer.commit, asynchronous=False)
            except KafkaException as exc:  # e.g. a rebalance: the batch is redelivered (at-least-once)
                log.warning("commit failed, records will be redelivered: %s", exc)

    async def handle(self, msgs: list) -> int:
        """Notify every action of ``msgs``; return how many dead-letter records were queued."""
        calls = []
        dead = 0
        for m in msgs:
            try:
                event = self.codec.decode(m.value())
            except ValueError as exc:
                self._dead_letter(m, "undecodable", str(exc), "")
                dead += 1
                continue
            payload = payload_for(event)
            for url in event["actions"]:
                calls.append(self._deliver(m, url, payload))
        results = await asyncio.gather(*calls)
        return dead + sum(1 for ok in results if not ok)

    async def _deliver(self, msg, url: str, payload: dict[str, Any]) -> bool:
        scheme = urlsplit(url).scheme
        notifier = self._notifier(scheme)
        if notifier is None:
            self._dead_letter(msg, "unknown_scheme", f"no notifier for {scheme!r}", url)
            NOTIFICATIONS.labels(scheme=scheme, outcome="dead_letter").inc()
            return False
        n = self.settings.notifier
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(n.max_retries + 1),
                wait=wait_exponential(multiplier=n.backoff, max=n.backoff_max),
                retry=retry_if_exception(lambda e: isinstance(e, NotificationError) and e.retryable),
                reraise=True,
            ):
                with attempt:
                    await notifier.notify(url, payload)
        except Exception as exc:  # noqa: BLE001 - any failure of a plugin is dead-lettered, not fatal
            log.warning("action %s for alarm %s failed for good: %s", url, payload["alarm_id"], exc)
            self._dead_letter(msg, "action_failed", str(exc), url)
            NOTIFICATIONS.labels(scheme=scheme, outcome="dead_letter").inc()
            return False
        self.delivered += 1
        NOTIFICATIONS.labels(scheme=scheme, outcome="delivered").inc()
        return True

    def _dead_letter(self, msg, reason: str, detail: str, url: str) -> None:
        headers = list(msg.headers() or []) + [
            ("streams.dlq.stage", b"notify"), ("streams.dlq.reason", reason.encode()),
            ("streams.dlq.detail", detail.encode()[:1000]), ("streams.dlq.action", url.encode()),
            ("streams.dlq.source", f"{msg.topic()}[{msg.partition()}]@{msg.offset()}".encode())]
        self.producer.produce(self.settings.kafka.alarms_dlq_topic, key=msg.key(), value=msg.value(),
                              headers=headers)
        self.dead_lettered += 1
