"""Central pollsters against real endpoints: a prometheus-client exposition on loopback, and the
pipeline's own ZooKeeper, ClickHouse and Kafka."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from streams.pollers.base import Resource
from streams.pollers.central import ClickHousePollster, KafkaLagPollster, PrometheusPollster, ZooKeeperPollster


def test_prometheus_scraper_reads_a_real_exposition(services):
    reg = CollectorRegistry()
    Counter("app_requests", "requests", ["code"], registry=reg).labels("200").inc(41)
    Gauge("app_temperature_celsius", "temp", registry=reg).set(21.5)
    h = Histogram("app_latency_seconds", "lat", registry=reg, buckets=(0.1, 1))
    for v in (0.05, 0.5, 2):
        h.observe(v)
    server, _ = start_http_server(0, addr="127.0.0.1", registry=reg)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        p = PrometheusPollster(source="t", series=[
            {"series": "app_requests_total", "meter": "app.requests", "unit": "request"},
            {"series": "app_temperature_celsius", "meter": "app.temperature", "unit": "C"},
            {"series": "app_latency_seconds_count", "meter": "app.latency.count", "unit": "request",
             "type": "cumulative"},
            {"series": "app_latency_seconds_sum", "meter": "app.latency.sum", "unit": "s", "type": "cumulative"},
        ])
        got = {s["name"]: s for s in p.get_samples([Resource("app-1", {"url": url})])}
    finally:
        server.shutdown()
        server.server_close()
    assert set(got) == {"app.requests", "app.temperature", "app.latency.count", "app.latency.sum"}
    req = got["app.requests"]
    assert (req["volume"], req["type"], req["unit"], req["resource_id"]) == (41.0, "cumulative", "request",
                                                                             'app-1{code="200"}')
    assert req["resource_metadata"]["label.code"] == "200" and req["resource_metadata"]["url"] == url
    assert (got["app.temperature"]["volume"], got["app.temperature"]["type"]) == (21.5, "gauge")
    assert got["app.latency.count"]["volume"] == 3.0
    assert got["app.latency.sum"]["volume"] == 2.55


def test_zookeeper_clickhouse_and_kafka_self_metrics(services):
    zk = {s["name"]: s for s in ZooKeeperPollster().get_samples(
        [Resource("zk", {"address": services["zookeeper"]})])}
    assert zk["zookeeper.znodes"]["volume"] > 0 and zk["zookeeper.packets.received"]["type"] == "cumulative"
    assert zk["zookeeper.data.size"]["unit"] == "B"

    ch = {s["name"]: s for s in ClickHousePollster().get_samples(
        [Resource("ch", {"url": f"clickhouse://default@{services['clickhouse']}/default"})])}
    assert ch["clickhouse.queries"]["volume"] > 0 and ch["clickhouse.queries"]["type"] == "cumulative"
    assert ch["clickhouse.connections.tcp"]["volume"] >= 1  # our own connection

    # A consumer group that committed offset 4 of 10 records: lag 6.
    topic, group = f"t{uuid.uuid4().hex[:10]}.lag", f"t{uuid.uuid4().hex[:10]}-group"
    bootstrap = services["kafka"]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    prod = Producer({"bootstrap.servers": bootstrap})
    for i in range(10):  # one batch per record: Tansu reports a batch's base offset + 1 as the high watermark
        prod.produce(topic, value=str(i).encode())
        assert prod.flush(30) == 0
    cons = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "session.timeout.ms": 6000,
                     "enable.auto.commit": False})
    try:
        cons.commit(offsets=[TopicPartition(topic, 0, 4)], asynchronous=False)
    finally:
        cons.close()
    [lag] = KafkaLagPollster(bootstrap_servers=bootstrap).get_samples([Resource(f"kafka/{group}", {"group": group})])
    assert (lag["name"], lag["volume"], lag["unit"]) == ("kafka.consumer_group.lag", 6.0, "message")
    assert lag["resource_metadata"]["partitions"] == "1"
