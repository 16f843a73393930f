"""``streams notify``: consume the ``alarms`` topic and call each action of the new state.

Why a ``mode`` Service around a confluent-kafka consumer rather than a Faust
app: the notifier keeps no state (every record carries its actions, so it
needs neither tables nor ZooKeeper), and its one delivery rule, "commit an
offset only after its record's every action was delivered or
dead-lettered", is plain offset bookkeeping.

Per record:

1. verify and decode it (a signed ``streams.AlarmRecord``,
   :class:`~streams.alarms.records.AlarmRecordCodec`) and build the payload;
2. call every action of the record concurrently, each with its own retries
   (``notifier.max_retries``, exponential backoff from ``notifier.backoff``
   up to ``notifier.backoff_max``, tenacity) and a bound on its total time
   (``notifier.delivery_timeout``);
3. an action that still fails is dead-lettered: the original key and value,
   plus headers ``streams.dlq.stage=notify``, ``streams.dlq.reason``
   (``action_failed``, ``delivery_timeout``, ``unknown_scheme``),
   ``streams.dlq.detail`` and ``streams.dlq.action`` (the URL, credentials
   redacted); the producer waits for the broker.

Records are not handled batch by batch: reading goes on while deliveries run
(up to ``notifier.max_in_flight`` records), records of different alarms are
delivered concurrently, and records of one alarm (one Kafka key) in order.
So a webhook that hangs delays only its own alarm's later records, and no
other alarm's beyond one timeout. Offsets are committed per partition up to
the first record not yet done.

Failure policy: a record that cannot be verified, decoded or turned into a
payload (``unsigned``, ``bad_signature``, ``undecodable``, ``bad_event``...)
is dead-lettered at once with its reason, and counted; an action that fails
for good is dead-lettered; only a dead-letter topic that refuses writes stops
the service (nothing is committed, and the restarted notifier re-reads).

A crash redelivers what was not committed: delivery is at-least-once, and
each payload carries ``id`` (the event id, also header ``X-Streams-Event-Id``)
so receivers can de-duplicate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from mode import Service
from prometheus_client import Counter, Gauge
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential

from streams.alarms.records import AlarmRecordCodec
from streams.codec import RejectedMessage, clip
from streams.config import Settings
from streams.notifiers import available_notifiers
from streams.notifiers.base import NotificationError, Notifier
from streams.observability import MetricsServer
from streams.processor.stages import fit_dead_letter
from streams.publisher import producer_config
from streams.redact import redact_url

log = logging.getLogger(__name__)

NOTIFICATIONS = Counter("streams_notifications_total", "Alarm action calls by outcome.", ["scheme", "outcome"])
NOTIFIER_DEAD_LETTERS = Counter("streams_notifier_dead_letters_total",
                                "Alarm records or actions sent to the alarms dead-letter topic.", ["reason"])
IN_FLIGHT = Gauge("streams_notifier_in_flight", "Alarm records being delivered.")


class DeadLetterError(RuntimeError):
    """The dead-letter topic did not acknowledge a record: stop without committing."""


def payload_for(event: dict[str, Any]) -> dict[str, Any]:
    """The notification body for a decoded ``streams.AlarmEvent``: Aodh's keys plus id, resource, time.

    Raises:
        ValueError / OverflowError / KeyError / TypeError: the event cannot be rendered
        (e.g. a timestamp out of range); the caller dead-letters the record.
    """
    try:
        reason_data = json.loads(event["reason_data"])
    except (TypeError, ValueError):
        reason_data = {}
    ts = datetime.fromtimestamp(event["timestamp"] / 1e6, tz=UTC).isoformat()
    return {"alarm_name": event["alarm_name"], "alarm_id": event["alarm_id"], "severity": event["severity"],
            "previous": event["previous"], "current": event["current"], "reason": event["reason"],
            "reason_data": reason_data, "id": event["event_id"], "resource_id": event["resource_id"],
            "project_id": event.get("project_id"), "transition": event["transition"], "timestamp": ts}


class _Partition:
    """Offsets of one partition: which records are in flight, and what may be committed."""

    __slots__ = ("in_flight", "next_offset", "committed")

    def __init__(self) -> None:
        self.in_flight: set[int] = set()
        self.next_offset = -1  # one past the highest offset read
        self.committed = -1

    def committable(self) -> int:
        """The offset to commit: the first record not done (or one past the last read)."""
        return min(self.in_flight) if self.in_flight else self.next_offset


class NotifierService(Service):
    """Runs the consume / notify / commit loop until stopped.

    Args:
        settings: ``kafka`` (topics, connection), ``notifier`` and ``signing`` sections.
        metrics_port: overrides ``notifier.metrics_port``.

    Raises:
        ConfigError: no signing key (alarm records are verified).
    """

    def __init__(self, settings: Settings, metrics_port: int | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        k, n = settings.kafka, settings.notifier
        self.codec = AlarmRecordCodec(settings.signing.alarm_keyring())
        self.consumer = Consumer({
            **k.client_config(),
            "group.id": n.group_id, "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "session.timeout.ms": k.session_timeout_ms,
            "heartbeat.interval.ms": max(500, k.session_timeout_ms // 6),
        })
        self.producer = Producer(producer_config(k, **{"linger.ms": 5,
                                                       "message.max.bytes": k.dlq_max_bytes + (1 << 20)}))
        self.notifiers: dict[str, Notifier] = {}
        self.classes = available_notifiers()
        self.assigned = False
        self.delivered = 0
        self.dead_lettered = 0
        self._partitions: dict[tuple[str, int], _Partition] = {}
        self._lock = threading.Lock()  # _partitions: the loop and librdkafka's rebalance callbacks
        self._chains: dict[bytes | None, asyncio.Future] = {}  # alarm key -> its last record's task
        self._tasks: set[asyncio.Task] = set()
        self._room = asyncio.Event()
        self._room.set()
        self.metrics = MetricsServer(n.metrics_port if metrics_port is None else metrics_port, settings.metrics_host,
                                     healthy=lambda: not self.should_stop, ready=lambda: self.assigned)

    def on_init_dependencies(self) -> list[Service]:
        return [self.metrics]

    async def on_start(self) -> None:
        def on_assign(consumer, partitions):
            self.assigned = True
            log.info("notifier assigned %d partitions of %s", len(partitions), self.settings.kafka.alarms_topic)

        def on_revoke(consumer, partitions):
            # Commit what is done of the partitions leaving; records still in flight are
            # redelivered to their next owner (at-least-once).
            self._commit([(p.topic, p.partition) for p in partitions], consumer)
            with self._lock:
                for p in partitions:
                    self._partitions.pop((p.topic, p.partition), None)

        self.consumer.subscribe([self.settings.kafka.alarms_topic], on_assign=on_assign, on_revoke=on_revoke)

    async def on_stop(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.settings.notifier.delivery_timeout + 5)
        try:
            await asyncio.to_thread(self._commit, self._tracked())
        except Exception:  # noqa: BLE001 - redelivered on restart
            log.warning("final commit failed; those records will be redelivered", exc_info=True)
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

    # -- the loop ------------------------------------------------------------------------------

    @Service.task
    async def _consume(self) -> None:
        n = self.settings.notifier
        while not self.should_stop:
            if len(self._tasks) >= n.max_in_flight:
                self._room.clear()
                await self.wait(self._room)
                continue
            msgs = await asyncio.to_thread(self.consumer.consume, min(n.batch_size, n.max_in_flight), 0.5)
            for m in msgs:
                if m.error() is not None:
                    log.warning("consume error: %s", m.error())
                    continue
                self._start(m)
            await asyncio.to_thread(self._commit, self._tracked())

    def _start(self, msg) -> None:
        """Track ``msg`` and deliver it after the previous record of its alarm (same key)."""
        tp = (msg.topic(), msg.partition())
        with self._lock:
            part = self._partitions.setdefault(tp, _Partition())
            part.in_flight.add(msg.offset())
            part.next_offset = max(part.next_offset, msg.offset() + 1)
        key = msg.key()
        task = asyncio.ensure_future(self._handle_after(self._chains.get(key), msg))
        self._chains[key] = task
        self._tasks.add(task)
        IN_FLIGHT.set(len(self._tasks))

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            IN_FLIGHT.set(len(self._tasks))
            if self._chains.get(key) is t:
                del self._chains[key]
            if t.cancelled():
                return
            exc = t.exception()
            if exc is not None:  # only a dead-letter topic that refuses writes gets here
                log.critical("stopping without committing: %s", exc)
                self._crash_soon(exc)
                return
            with self._lock:
                part.in_flight.discard(msg.offset())
            self._room.set()

        task.add_done_callback(done)

    def _tracked(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._partitions)

    def _crash_soon(self, exc: BaseException) -> None:
        asyncio.ensure_future(self.crash(exc))

    def _commit(self, partitions: list[tuple[str, int]], consumer: Consumer | None = None) -> None:
        """Commit, for each of ``partitions``, up to its first record not yet done (blocking)."""
        offsets = []
        with self._lock:
            for tp in partitions:
                part = self._partitions.get(tp)
                if part is None:
                    continue
                offset = part.committable()
                if offset > part.committed:
                    offsets.append(TopicPartition(tp[0], tp[1], offset))
                    part.committed = offset
        if not offsets:
            return
        try:
            (consumer or self.consumer).commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # e.g. a rebalance: those records are redelivered (at-least-once)
            log.warning("commit failed, records will be redelivered: %s", exc)
            with self._lock:
                for tp in partitions:
                    if tp in self._partitions:
                        self._partitions[tp].committed = -1

    # -- one record ----------------------------------------------------------------------------

    async def _handle_after(self, previous: asyncio.Future | None, msg) -> None:
        if previous is not None:
            try:
                await asyncio.shield(previous)
            except Exception:  # noqa: BLE001 - the previous record's failure is handled by its own task
                pass
        await self.handle(msg)

    async def handle(self, msg) -> None:
        """Deliver every action of one record, or dead-letter it; raises only :class:`DeadLetterError`."""
        try:
            event = self.codec.decode(msg.value() or b"", accept_unsigned=self.settings.notifier.accept_unsigned)
            payload = payload_for(event)
            actions = list(event["actions"])
        except RejectedMessage as exc:
            await self._dead_letter(msg, exc.reason, exc.detail, "")
            return
        except Exception as exc:  # noqa: BLE001 - e.g. a timestamp out of range: one record, not the service
            await self._dead_letter(msg, "bad_event", f"{type(exc).__name__}: {exc}", "")
            return
        await asyncio.gather(*(self._deliver(msg, url, payload) for url in actions))

    async def _deliver(self, msg, url: str, payload: dict[str, Any]) -> None:
        scheme = urlsplit(url).scheme
        shown = redact_url(url)
        notifier = self._notifier(scheme)
        if notifier is None:
            NOTIFICATIONS.labels(scheme=scheme, outcome="dead_letter").inc()
            await self._dead_letter(msg, "unknown_scheme", f"no notifier for {scheme!r}", url)
            return
        n = self.settings.notifier
        try:
            await asyncio.wait_for(self._attempts(notifier, url, payload), n.delivery_timeout)
        except TimeoutError:
            log.warning("action %s for alarm %s took over %.0f s; dead-lettered", shown, payload["alarm_id"],
                        n.delivery_timeout)
            NOTIFICATIONS.labels(scheme=scheme, outcome="dead_letter").inc()
            await self._dead_letter(msg, "delivery_timeout", f"no success within {n.delivery_timeout:g} s", url)
            return
        except Exception as exc:  # noqa: BLE001 - any failure of a plugin is dead-lettered, not fatal
            log.warning("action %s for alarm %s failed for good: %s", shown, payload["alarm_id"], clip(str(exc)))
            NOTIFICATIONS.labels(scheme=scheme, outcome="dead_letter").inc()
            await self._dead_letter(msg, "action_failed", str(exc), url)
            return
        self.delivered += 1
        NOTIFICATIONS.labels(scheme=scheme, outcome="delivered").inc()

    async def _attempts(self, notifier: Notifier, url: str, payload: dict[str, Any]) -> None:
        n = self.settings.notifier
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(n.max_retries + 1) | stop_after_delay(n.delivery_timeout),
            wait=wait_exponential(multiplier=n.backoff, max=n.backoff_max),
            retry=retry_if_exception(lambda e: isinstance(e, NotificationError) and e.retryable),
            reraise=True,
        ):
            with attempt:
                await notifier.notify(url, payload)

    async def _dead_letter(self, msg, reason: str, detail: str, url: str) -> None:
        """Produce ``msg`` to the alarms dead-letter topic and wait for the broker.

        Raises:
            DeadLetterError: not acknowledged within 30 s.
        """
        headers = list(msg.headers() or []) + [
            ("streams.dlq.stage", b"notify"), ("streams.dlq.reason", reason.encode()),
            ("streams.dlq.detail", redact_url(clip(detail)).encode()[:1024]),
            ("streams.dlq.action", redact_url(url).encode()[:1024]),
            ("streams.dlq.source", f"{msg.topic()}[{msg.partition()}]@{msg.offset()}".encode())]
        key = msg.key() if msg.key() is None or len(msg.key()) <= 4096 else msg.key()[:4096]
        room = self.settings.kafka.dlq_max_bytes - len(key or b"") - sum(len(k) + len(v or b"") for k, v in headers)
        value, extra = fit_dead_letter(msg.value(), room - 512)
        loop = asyncio.get_running_loop()
        acked: asyncio.Future = loop.create_future()

        def on_delivery(err, _msg) -> None:
            loop.call_soon_threadsafe(lambda: acked.done() or acked.set_result(err))

        self.producer.produce(self.settings.kafka.alarms_dlq_topic, key=key, value=value,
                              headers=headers + extra, on_delivery=on_delivery)
        remaining = await asyncio.to_thread(self.producer.flush, 30)
        err = await asyncio.wait_for(acked, 5) if not remaining else "not acknowledged within 30 s"
        if err is not None:
            raise DeadLetterError(f"dead-letter topic {self.settings.kafka.alarms_dlq_topic} refused a record: {err}")
        self.dead_lettered += 1
        NOTIFIER_DEAD_LETTERS.labels(reason=reason).inc()
        log.warning("alarm record %s[%d]@%d dead-lettered: %s %s", msg.topic(), msg.partition(), msg.offset(),
                    reason, redact_url(url))
