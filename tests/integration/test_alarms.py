"""Alarms end to end: a CLI-made definition fires on real samples; the transition reaches the alarms topic,
ClickHouse alarm_history and a loopback webhook; a threshold update in ZooKeeper applies without a restart;
a resource that stops reporting reaches insufficient data."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
import uuid

from aiohttp import web
from confluent_kafka import Producer

from streams.alarms.records import AlarmRecordCodec
from streams.topics import create_topics
from tests.conftest import make_test_sample
from tests.integration.conftest import free_port, http_get, wait_for


class Webhook:
    """An aiohttp server on loopback, in its own thread, recording POSTed JSON bodies."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[dict] = []
        self.headers: list[dict] = []
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        assert self._ready.wait(10)

    async def _hook(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        self.headers.append(dict(request.headers))
        return web.Response(text="ok")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self.loop.run_forever()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def states(self, resource_id: str) -> list[str]:
        return [b["current"] for b in list(self.received) if b["resource_id"] == resource_id]


def cli(env: dict, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@contextlib.contextmanager
def reporting_load(pipeline, resource_id: str = "vm-1", volume: float = 80.0, samples=None):
    """While the block runs, every 0.2 s (real time) the samples ``samples(now_us)`` returns are produced,
    keyed by their resource id, whatever happens to the processor (default: ``resource_id`` reports gauge
    ``load`` = ``volume`` %); on exit the reports stop and are flushed."""
    codec = pipeline.codec()
    producer = Producer({"bootstrap.servers": pipeline.settings.kafka.bootstrap_servers})
    stop = threading.Event()
    if samples is None:
        def samples(now_us: int) -> list[dict]:
            return [make_test_sample(name="load", type="gauge", unit="%", volume=volume, resource_id=resource_id,
                                     timestamp=now_us)]

    def report() -> None:
        while not stop.is_set():
            for s in samples(time.time_ns() // 1000):
                producer.produce(pipeline.settings.kafka.samples_topic, key=s["resource_id"].encode(),
                                 value=codec.encode([s]))
            producer.poll(0)
            time.sleep(0.2)
        producer.flush(10)

    t = threading.Thread(target=report, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(15)


def test_alarm_lifecycle_through_cli_zookeeper_topic_history_and_webhook(pipeline, services):
    name = pipeline.name
    alarms_topic, alarms_dlq = f"{name}.alarms", f"{name}.alarms.dlq"
    create_topics(pipeline.settings.kafka, [alarms_topic, alarms_dlq])
    env = {**pipeline.env,
           "STREAMS_COORDINATION__HOSTS": services["zookeeper"],
           "STREAMS_COORDINATION__ROOT": f"/t{uuid.uuid4().hex}",
           "STREAMS_KAFKA__ALARMS_TOPIC": alarms_topic,
           "STREAMS_KAFKA__ALARMS_DLQ_TOPIC": alarms_dlq,
           "STREAMS_ALARMS__GRACE": "0.5",
           "STREAMS_ALARMS__TIMER_INTERVAL": "0.25",
           "STREAMS_NOTIFIER__GROUP_ID": f"{name}-notifier",
           "STREAMS_NOTIFIER__BACKOFF": "0.1"}
    pipeline.env = env
    hook = Webhook()
    out = cli(env, "alarm", "create", "--id", "load-high", "--name", "load high", "--meter", "load",
              "--operator", "gt", "--threshold", "50", "--statistic", "max", "--period", "1",
              "--evaluation-periods", "2", "--resource-id", "vm-*", "--severity", "critical",
              "--alarm-action", hook.url(), "--ok-action", hook.url(), "--insufficient-data-action", hook.url(),
              "--alarm-action", "log://")
    assert json.loads(out)["threshold_rule"]["threshold"] == 50
    assert "load-high" in cli(env, "alarm", "list")

    processor = pipeline.spawn("process")
    notifier_port = free_port()
    notifier = pipeline.spawn("notify", "--metrics-port", str(notifier_port))
    processor.wait_ready()
    wait_for(lambda: http_get(f"http://127.0.0.1:{notifier_port}/readyz")[0] == 200, 60, "notifier /readyz")

    with reporting_load(pipeline):
        # 1. fires: insufficient data -> alarm, at the webhook
        wait_for(lambda: "alarm" in hook.states("vm-1"), 60, "an alarm notification at the webhook")
        body = next(b for b in hook.received if b["current"] == "alarm")
        assert body["alarm_id"] == "load-high" and body["severity"] == "critical"
        assert body["previous"] == "insufficient data"
        assert body["reason_data"]["statistics"] == [80.0, 80.0]
        assert body["reason"].startswith("Transition to alarm due to 2 samples outside threshold")
        assert hook.headers[0]["X-Streams-Event-Id"] == hook.received[0]["id"]

        # 2. threshold raised in ZooKeeper: the running processor evaluates 80 against 90 -> ok
        cli(env, "alarm", "update", "load-high", "--threshold", "90")
        wait_for(lambda: "ok" in hook.states("vm-1"), 30, "an ok notification after the threshold update")

    # 3. vm-1 stops reporting: the timer closes empty windows -> insufficient data
    wait_for(lambda: hook.states("vm-1")[-1:] == ["insufficient data"], 30, "insufficient data after silence")
    assert hook.states("vm-1") == ["alarm", "ok", "insufficient data"]
    assert processor.proc.poll() is None, "the processor was not restarted"

    # The alarms topic: one Avro record per transition, key = alarm_id.
    records = pipeline.consume(alarms_topic, expected=3, timeout=30)
    verifier = AlarmRecordCodec(pipeline.settings.signing.keyring())  # signed by the processor's key
    events = [verifier.decode(m.value()) for m in records]
    assert {m.key() for m in records} == {b"load-high"}
    assert [(e["previous"], e["current"]) for e in events] == [
        ("insufficient data", "alarm"), ("alarm", "ok"), ("ok", "insufficient data")]
    assert all(e["transition"] for e in events)
    assert [e["event_id"] for e in events] == [b["id"] for b in hook.received]

    # ClickHouse alarm_history, and the CLI reading it.
    rows = pipeline.rows("SELECT previous_state, state, resource_id FROM {db}.alarm_history FINAL "
                         "WHERE alarm_id = 'load-high' ORDER BY timestamp_us")
    assert rows == [("insufficient data", "alarm", "vm-1"), ("alarm", "ok", "vm-1"),
                    ("ok", "insufficient data", "vm-1")]
    history = cli(env, "alarm", "history", "load-high")
    assert history.count("vm-1") == 3 and "Transition to ok" in history

    cli(env, "alarm", "delete", "load-high")
    assert "load-high" not in cli(env, "alarm", "list")
    assert notifier.proc.poll() is None
