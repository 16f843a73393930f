"""The notifier against real webhooks on loopback: a hanging webhook delays no other alarm; redirects are
not followed; denied addresses are refused, by address or by name; credentials in action URLs never reach
logs or dead-letter headers."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

from aiohttp import web
from confluent_kafka import Producer

from streams.alarms.records import AlarmRecordCodec
from streams.topics import create_topics
from tests.integration.conftest import free_port, http_get, wait_for


class Receiver:
    """Loopback webhooks on 127.0.0.2 (so that 127.0.0.1 may be denied by name in the test):
    /hook (200), /hang (never answers), /redirect (307 to /hook), /fail (400)."""

    HOST = "127.0.0.2"

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[dict] = []
        self.hanging = 0  # requests to /hang in progress
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def hook(request: web.Request) -> web.Response:
            self.received.append({"hanging_meanwhile": self.hanging, **await request.json()})
            return web.Response(text="ok")

        async def hang(request: web.Request) -> web.Response:
            self.hanging += 1
            try:
                await asyncio.sleep(3600)
            finally:
                self.hanging -= 1
            return web.Response(text="late")

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(f"http://{self.HOST}:{self.port}/hook")

        async def fail(request: web.Request) -> web.Response:
            return web.Response(status=400, text="no")

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            app = web.Application()
            for path, handler in (("/hook", hook), ("/hang", hang), ("/redirect", redirect), ("/fail", fail)):
                app.router.add_post(path, handler)
            runner = web.AppRunner(app)
            self.loop.run_until_complete(runner.setup())
            self.loop.run_until_complete(web.TCPSite(runner, self.HOST, self.port).start())
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        assert ready.wait(10)

    def url(self, path: str) -> str:
        return f"http://{self.HOST}:{self.port}{path}"


def event(alarm_id: str, actions: list[str]) -> dict:
    return {"event_id": f"{alarm_id}-{uuid.uuid4().hex[:6]}", "alarm_id": alarm_id, "alarm_name": alarm_id,
            "type": "threshold", "severity": "low", "resource_id": "r", "project_id": None, "user_id": None,
            "previous": "ok", "current": "alarm", "transition": True, "reason": "why", "reason_data": "{}",
            "actions": actions, "timestamp": time.time_ns() // 1000}


def test_webhook_safety_and_a_hanging_webhook_delays_no_other_alarm(pipeline):
    name = pipeline.name
    alarms, dlq_topic = f"{name}.alarms", f"{name}.alarms.dlq"
    create_topics(pipeline.settings.kafka, [alarms, dlq_topic])
    rx = Receiver()
    port = free_port()
    notifier = pipeline.spawn("notify", "--metrics-port", str(port), **{
        "STREAMS_KAFKA__ALARMS_TOPIC": alarms, "STREAMS_KAFKA__ALARMS_DLQ_TOPIC": dlq_topic,
        "STREAMS_NOTIFIER__GROUP_ID": f"{name}-notifier", "STREAMS_NOTIFIER__TIMEOUT": "2",
        "STREAMS_NOTIFIER__DELIVERY_TIMEOUT": "6", "STREAMS_NOTIFIER__BACKOFF": "0.1",
        # localhost (127.0.0.1, ::1) is denied here, to show a name that resolves to a denied address refused.
        "STREAMS_NOTIFIER__DENIED_NETWORKS": '["169.254.0.0/16", "fd00:ec2::254/128", "127.0.0.1/32", "::1/128"]',
        "STREAMS_LOG_LEVEL": "INFO"})
    notifier.metrics_port = port
    wait_for(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 60, "notifier /readyz")
    codec = AlarmRecordCodec(pipeline.settings.signing.keyring())
    secret_url = f"http://bot:s3cr3t@{rx.HOST}:{rx.port}/fail?sig=tok_live_123"
    records = [
        ("slow", [rx.url("/hang")]),
        ("fast", [rx.url("/hook")]),
        ("moved", [rx.url("/redirect")]),
        ("metadata", ["http://169.254.169.254/latest/meta-data/"]),
        ("secret", [secret_url]),
    ]
    producer = Producer({"bootstrap.servers": pipeline.settings.kafka.bootstrap_servers})
    (slow, slow_actions), others = records[0], records[1:]
    producer.produce(alarms, key=slow.encode(), value=codec.encode(event(slow, slow_actions)))
    assert producer.flush(30) == 0
    wait_for(lambda: rx.hanging == 1, 30, "the slow webhook's request hanging")
    for alarm_id, actions in others:
        producer.produce(alarms, key=alarm_id.encode(), value=codec.encode(event(alarm_id, actions)))
    assert producer.flush(30) == 0

    # The fast alarm is delivered while the slow one's webhook still hangs: not queued behind it.
    wait_for(lambda: any(b["alarm_id"] == "fast" for b in rx.received), 30, "the fast alarm delivered")
    fast = next(b for b in rx.received if b["alarm_id"] == "fast")
    assert fast["hanging_meanwhile"] == 1
    dead = pipeline.consume(dlq_topic, expected=4, timeout=60)
    by_key = {m.key(): dict(m.headers()) for m in dead}
    assert set(by_key) == {b"slow", b"moved", b"metadata", b"secret"}
    assert by_key[b"slow"]["streams.dlq.reason"] == b"delivery_timeout"
    assert by_key[b"moved"]["streams.dlq.reason"] == b"action_failed"
    assert b"redirect" in by_key[b"moved"]["streams.dlq.detail"]
    assert not any(b["alarm_id"] == "moved" for b in rx.received), "the redirect was followed"
    assert b"denied_networks" in by_key[b"metadata"]["streams.dlq.detail"]
    shown = by_key[b"secret"]["streams.dlq.action"]
    assert shown == f"http://***@{rx.HOST}:{rx.port}/fail?***".encode()
    for headers in by_key.values():
        assert not any(b"s3cr3t" in v or b"tok_live" in v for v in headers.values() if v)
    log = notifier.log_path.read_text(errors="replace")
    assert "s3cr3t" not in log and "tok_live" not in log
    assert notifier.proc.poll() is None

    # A host name that resolves to a denied address is refused too (checked on the resolved address).
    producer.produce(alarms, key=b"by-name", value=codec.encode(event("by-name", [f"http://localhost:{rx.port}/hook"])))
    assert producer.flush(30) == 0
    [named] = [m for m in pipeline.consume(dlq_topic, expected=5, timeout=60) if m.key() == b"by-name"]
    assert b"denied_networks" in dict(named.headers())["streams.dlq.detail"]
    assert not any(b["alarm_id"] == "by-name" for b in rx.received)
