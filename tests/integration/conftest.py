"""Integration fixtures: real broker, ZooKeeper and ClickHouse, started by ``streams dev up``.

Every test gets its own topics, consumer group and ClickHouse database
(``pipeline`` fixture). A service that is not there fails the run: nothing
here skips.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from clickhouse_driver import Client
from confluent_kafka import Consumer, Producer

from streams import devenv
from streams.codec import BatchCodec
from streams.config import Settings, load_settings
from streams.signing import Keyring
from streams.storage.clickhouse import connect
from streams.storage.migrations import migrate
from streams.topics import create_topics
from tests.conftest import TEST_KEYS

pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def services() -> dict[str, str]:
    """Start (or reuse) the local services; raises, never skips, if one cannot answer."""
    return devenv.up()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.25):
    """Poll ``predicate`` until truthy; fail the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


@dataclass
class StreamsProcess:
    """A real ``streams`` subprocess (poller or processor) with its own log file."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    metrics_port: int
    proc: subprocess.Popen | None = None
    history: list[int] = field(default_factory=list)

    def start(self) -> StreamsProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", *self.args],
            env=self.env, stdout=self.log_path.open("a"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready():
            if self.proc.poll() is not None:
                pytest.fail(f"{self.args[0]} exited with {self.proc.returncode}:\n{self.tail()}")
            return http_get(self.url("/readyz"))[0] == 200
        wait_for(ready, timeout, f"{self.args[0]} /readyz")

    def metric(self, name: str) -> float:
        """Sum of all samples of metric ``name`` on this process's /metrics.

        A scrape that times out on a loaded machine is retried for up to 15 s; the process
        must be alive and answer by then."""
        deadline = time.monotonic() + 15
        while True:
            status, text = http_get(self.url("/metrics"), timeout=5.0)
            if status == 200 or time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                break
            time.sleep(0.5)
        assert status == 200, f"/metrics answered {status}:\n{self.tail()}"
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (line[len(name)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def kill(self, sig: int = signal.SIGKILL) -> int:
        os.killpg(self.proc.pid, sig)
        rc = self.proc.wait(30)
        self.history.append(rc)
        return rc

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            return self.kill(signal.SIGTERM)
        return self.proc.returncode if self.proc else None

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


@dataclass
class Pipeline:
    """One test's isolated slice of the services: topics, group, database, key."""

    name: str
    settings: Settings
    env: dict[str, str]
    ch: Client
    tmp: Path
    processes: list[StreamsProcess] = field(default_factory=list)

    @property
    def db(self) -> str:
        return self.settings.clickhouse.database

    def codec(self) -> BatchCodec:
        return BatchCodec(Keyring(TEST_KEYS, "k-new"))

    def spawn(self, *args: str, **env: str) -> StreamsProcess:
        """Start ``streams <args>`` with this pipeline's settings plus ``STREAMS_*`` overrides."""
        port = free_port()
        full = {**self.env, "STREAMS_PROCESSOR__METRICS_PORT": str(port),
                "STREAMS_POLLER__METRICS_PORT": str(port), **env}
        p = StreamsProcess(list(args), full, self.tmp / f"{args[0]}-{len(self.processes)}.log", port)
        self.processes.append(p)
        return p.start()

    def produce(self, records: list[tuple[bytes | None, bytes]], headers=None) -> None:
        # Records larger than librdkafka's 1 MB default are allowed: the processor's own limit is tested.
        producer = Producer({"bootstrap.servers": self.settings.kafka.bootstrap_servers,
                             "message.max.bytes": 10_000_000})
        for key, value in records:
            producer.produce(self.settings.kafka.samples_topic, key=key, value=value, headers=headers)
        assert producer.flush(30) == 0

    def rows(self, sql: str, params: dict | None = None):
        return self.ch.execute(sql.replace("{db}", self.db), params or {})

    def consume(self, topic: str, expected: int, timeout: float = 30.0) -> list:
        c = Consumer({"bootstrap.servers": self.settings.kafka.bootstrap_servers,
                      "group.id": f"{self.name}-reader-{uuid.uuid4().hex[:6]}",
                      "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                      "enable.auto.commit": False})
        c.subscribe([topic])
        got = []
        deadline = time.monotonic() + timeout
        try:
            while len(got) < expected and time.monotonic() < deadline:
                m = c.poll(0.5)
                if m is not None and m.error() is None:
                    got.append(m)
            # linger briefly to catch anything beyond what was expected
            end = time.monotonic() + 2
            while time.monotonic() < end:
                m = c.poll(0.2)
                if m is not None and m.error() is None:
                    got.append(m)
        finally:
            c.close()
        return got


@pytest.fixture
def pipeline(services, tmp_path, monkeypatch) -> Iterator[Pipeline]:
    name = f"t{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "STREAMS_KAFKA__BOOTSTRAP_SERVERS": services["kafka"],
        "STREAMS_KAFKA__SAMPLES_TOPIC": f"{name}.samples",
        "STREAMS_KAFKA__DLQ_TOPIC": f"{name}.samples.dlq",
        "STREAMS_CLICKHOUSE__URL": f"clickhouse://default@{services['clickhouse']}/{name}",
        "STREAMS_SIGNING__KEYS": json.dumps({k: v.decode() for k, v in TEST_KEYS.items()}),
        "STREAMS_SIGNING__ACTIVE": "k-new",
        "STREAMS_PROCESSOR__APP_ID": f"{name}-processor",
        "STREAMS_PROCESSOR__DATA_DIR": str(tmp_path / "faust"),
        "STREAMS_PROCESSOR__BATCH_TIMEOUT": "0.5",
        "STREAMS_LOG_LEVEL": "INFO",
    }
    env.pop("STREAMS_CONFIG", None)
    for k, v in env.items():
        if k.startswith("STREAMS_"):
            monkeypatch.setenv(k, v)
    monkeypatch.delenv("STREAMS_CONFIG", raising=False)
    settings = load_settings()
    create_topics(settings.kafka)
    ch = connect(settings.clickhouse)
    migrate(ch, settings.clickhouse.database)
    p = Pipeline(name, settings, env, ch, tmp_path)
    try:
        yield p
    finally:
        for proc in p.processes:
            proc.stop()
        ch.execute(f"DROP DATABASE IF EXISTS {settings.clickhouse.database}")
        ch.disconnect()
