"""The local dev services come up and really answer: broker, ZooKeeper, ClickHouse.

Runs against real servers started by :func:`streams.devenv.up` (idempotent:
reuses services already running). Never skips: a service that does not come up
fails the test.
"""

from __future__ import annotations

import uuid

import pytest

from streams import devenv

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def addrs() -> dict[str, str]:
    """``{service: "127.0.0.1:PORT"}`` of running services; raises (fails) if one does not come up."""
    result = devenv.up()
    assert set(result) == {"kafka", "zookeeper", "clickhouse"}
    return result


def test_up_is_idempotent_and_matches_addresses(addrs):
    assert devenv.up() == addrs
    assert devenv.addresses() == addrs


def test_kafka_produce_consume_roundtrip(addrs):
    from confluent_kafka import Consumer, KafkaError, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    bootstrap = addrs["kafka"]
    topic = f"devenv-test-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)], operation_timeout=10)
    futures[topic].result(timeout=15)
    assert topic in admin.list_topics(timeout=10).topics

    payload = uuid.uuid4().bytes
    delivered = []
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce(topic, key=b"k", value=payload, on_delivery=lambda err, msg: delivered.append((err, msg)))
    assert producer.flush(15) == 0, "message not delivered within 15s"
    assert delivered and delivered[0][0] is None, f"delivery failed: {delivered}"

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"devenv-test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            # Tansu holds the first JoinGroup for about session.timeout.ms / 2
            # (librdkafka default 45s -> 23s join); 6s makes it about 3s.
            "session.timeout.ms": 6000,
        }
    )
    try:
        consumer.subscribe([topic])
        got = None
        for _ in range(60):  # up to ~30s: group join + fetch
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                continue
            got = msg
            break
        assert got is not None, f"no message consumed from {topic} within 30s"
        assert got.value() == payload and got.key() == b"k"
    finally:
        consumer.close()
        admin.delete_topics([topic], operation_timeout=10)


def test_zookeeper_znode_roundtrip(addrs):
    from kazoo.client import KazooClient

    zk = KazooClient(hosts=addrs["zookeeper"], timeout=10)
    zk.start(timeout=15)
    path = f"/devenv-test/{uuid.uuid4().hex}"
    try:
        zk.create(path, b"hello", makepath=True)
        data, stat = zk.get(path)
        assert data == b"hello" and stat.version == 0
        zk.set(path, b"world")
        assert zk.get(path)[0] == b"world"
    finally:
        zk.delete(path)
        zk.stop()
        zk.close()


def test_clickhouse_select(addrs):
    from clickhouse_driver import Client

    host, port = addrs["clickhouse"].rsplit(":", 1)
    client = Client(host, int(port), connect_timeout=5)
    try:
        assert client.execute("SELECT 1") == [(1,)]
        (version,) = client.execute("SELECT version()")[0]
        assert version.startswith("18.")
    finally:
        client.disconnect()


def test_status_reports_all_answering(addrs):
    report = devenv.status()
    assert set(report) == set(addrs)
    for name, st in report.items():
        assert st["answering"], f"{name} not answering: {st}"
        assert st["running"], f"{name} not running: {st}"
        assert st["address"] == addrs[name]


class _Sleeper(devenv.Service):
    """A fake service: a Python process that never listens (or exits at once with code 3)."""

    name = "sleeper"
    port_env = ""

    def __init__(self, root, port: int, exit_at_once: bool = False):
        super().__init__(root)
        self._port, self.exit_at_once = port, exit_at_once

    @property
    def port(self) -> int:
        return self._port

    def command(self) -> list[str]:
        import sys

        code = "import sys; sys.exit(3)" if self.exit_at_once else "import time; time.sleep(600)"
        return [sys.executable, "-c", code, f"{self.workdir}/marker"]

    def ready(self, timeout: float = 2.0) -> bool:
        return False


def test_a_server_that_exits_or_never_answers_fails_the_start_naming_its_log(tmp_path):
    from tests.integration.conftest import free_port

    with pytest.raises(devenv.ServiceStartError, match=r"exited \(code 3\).*sleeper.log"):
        devenv.start([_Sleeper(tmp_path, free_port(), exit_at_once=True)], timeout=20)
    svc = _Sleeper(tmp_path, free_port())
    with pytest.raises(devenv.ServiceStartError, match="did not answer .* within 2s"):
        devenv.start([svc], timeout=2)
    assert not svc.pid_path.exists()
    import psutil

    assert not [p for p in psutil.process_iter(["cmdline"]) if f"{svc.workdir}/marker" in (p.info["cmdline"] or [])]


def test_topics_are_created_and_deleted(addrs):
    from streams.config import KafkaSettings
    from streams.topics import create_topics, delete_topics, describe_topics

    kafka = KafkaSettings(bootstrap_servers=addrs["kafka"])
    name = f"del-{uuid.uuid4().hex[:8]}"
    create_topics(kafka, [name], partitions=2)
    assert describe_topics(kafka)[name] == 2
    assert delete_topics(kafka, [name]) == []
    assert name not in describe_topics(kafka)
    [failure] = delete_topics(kafka, [name])  # gone: reported, not raised
    assert failure.startswith(f"{name}: ")
