"""Central pollsters: remote endpoints, polled by the central agent (partitioned by ZooKeeper).

Each resource names an endpoint in its metadata (static resources of
polling.yaml); a pollster measures every resource it is given, which on a
coordinated agent is only this member's share (see
:mod:`streams.coordination.ring`).

* ``prometheus``: scrapes a Prometheus text exposition (``metadata.url``)
  with prometheus-client's parser; series become samples under meter names
  and units mapped by config.
* ``zookeeper``: a ZooKeeper server's ``mntr`` (``metadata.address``, host:port).
* ``clickhouse``: ``system.metrics`` (gauges) and ``system.events``
  (cumulative counters) of a ClickHouse server (``metadata.url``, clickhouse:// or
  clickhouses://; ``metadata.ca_file`` verifies its TLS).
* ``kafka_lag``: lag of a Kafka consumer group (``metadata.group``, default the
  resource id; ``metadata.bootstrap_servers``) through the confluent-kafka admin API.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streams.codec import Sample, metadata_to_strings
from streams.config import KafkaSettings
from streams.pollers.base import Meter, Pollster, Resource, make_sample


def _now() -> tuple[int, float]:
    return time.time_ns() // 1000, time.monotonic()


# --------------------------------------------------------------------------- Prometheus


class SeriesMapping(BaseModel):
    """One exposed series -> one meter. ``series`` is the sample name as exposed
    (e.g. ``process_cpu_seconds_total``); ``type`` defaults from the family
    type (counter -> cumulative, anything else -> gauge)."""

    model_config = ConfigDict(extra="forbid")

    series: str
    meter: str
    unit: str
    type: Literal["gauge", "cumulative", "delta"] | None = None


class PrometheusParams(BaseModel):
    """The ``prometheus`` pollster's section of a polling.yaml source."""

    model_config = ConfigDict(extra="forbid")

    series: list[SeriesMapping] = Field(min_length=1)
    timeout: float = Field(5.0, gt=0, description="HTTP timeout per scrape (s).")


def series_resource_id(target: str, labels: dict[str, str]) -> str:
    """``target`` for an unlabelled series, else ``target{k="v",...}`` (labels sorted)."""
    if not labels:
        return target
    return target + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


class PrometheusPollster(Pollster):
    """Scrapes ``metadata.url`` (or the resource id when it is a URL) and maps series to meters.

    Parsing is prometheus-client's ``text_string_to_metric_families``; series
    that no mapping names are ignored. Each series' labels go to the sample's
    metadata (``label.<name>``) and into its resource id
    (:func:`series_resource_id`), so two series of one family stay apart.

    Raises:
        pydantic.ValidationError: bad params (at construction, i.e. when polling.yaml loads).
        OSError: a target did not answer (the service counts it as a pollster error).
    """

    requires_params = True

    def __init__(self, source: str = "streams", **params: Any) -> None:
        super().__init__(source, **params)
        self.config = PrometheusParams(**params)
        self._by_series = {m.series: m for m in self.config.series}
        self.meters = tuple(
            {m.meter: Meter(m.meter, m.type or "gauge", m.unit) for m in self.config.series}.values()
        )

    def scrape(self, url: str) -> str:
        with urllib.request.urlopen(url, timeout=self.config.timeout) as r:
            return r.read().decode("utf-8", errors="replace")

    def samples_from_text(self, text: str, resource: Resource) -> list[Sample]:
        """Samples of the mapped series in one exposition ``text`` (pure; no I/O)."""
        from prometheus_client.parser import text_string_to_metric_families

        ts, mono = _now()
        base_md = metadata_to_strings(resource.metadata)
        out: list[Sample] = []
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                m = self._by_series.get(s.name)
                if m is None:
                    continue
                typ = m.type or ("cumulative" if family.type == "counter" else "gauge")
                md = {**base_md, **{f"label.{k}": v for k, v in s.labels.items()}, "series": s.name}
                res = Resource(series_resource_id(resource.id, s.labels), user_id=resource.user_id,
                               project_id=resource.project_id)
                out.append(make_sample(Meter(m.meter, typ, m.unit), s.value, res, timestamp_us=ts,
                                       monotonic_time=mono, source=self.source, metadata=md))
        return out

    def get_samples(self, resources: Iterable[Resource]) -> list[Sample]:
        out: list[Sample] = []
        for res in resources:
            url = str(res.metadata.get("url") or res.id)
            out += self.samples_from_text(self.scrape(url), res)
        return out


# --------------------------------------------------------------------------- ZooKeeper

ZK_METERS: dict[str, Meter] = {
    "zk_avg_latency": Meter("zookeeper.latency.avg", "gauge", "ms"),
    "zk_max_latency": Meter("zookeeper.latency.max", "gauge", "ms"),
    "zk_packets_received": Meter("zookeeper.packets.received", "cumulative", "packet"),
    "zk_packets_sent": Meter("zookeeper.packets.sent", "cumulative", "packet"),
    "zk_num_alive_connections": Meter("zookeeper.connections", "gauge", "connection"),
    "zk_outstanding_requests": Meter("zookeeper.requests.outstanding", "gauge", "request"),
    "zk_znode_count": Meter("zookeeper.znodes", "gauge", "znode"),
    "zk_watch_count": Meter("zookeeper.watches", "gauge", "watch"),
    "zk_ephemerals_count": Meter("zookeeper.ephemerals", "gauge", "znode"),
    "zk_approximate_data_size": Meter("zookeeper.data.size", "gauge", "B"),
}


def four_letter_word(address: str, word: bytes = b"mntr", timeout: float = 5.0) -> str:
    """Send a ZooKeeper four-letter word to ``host:port`` and return the whole answer.

    Raises:
        OSError: not reachable. The server must whitelist the word (``4lw.commands.whitelist``).
    """
    host, _, port = address.rpartition(":")
    with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout) as s:
        s.sendall(word)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def parse_mntr(text: str) -> dict[str, float]:
    """``key<TAB>value`` lines of ``mntr`` -> numeric values (non-numeric ones dropped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        k, _, v = line.partition("\t")
        try:
            out[k.strip()] = float(v)
        except ValueError:
            continue
    return out


class ZooKeeperPollster(Pollster):
    """ZooKeeper self-metrics from ``mntr`` (meters in :data:`ZK_METERS`).

    Raises:
        OSError: the server is unreachable or answered nothing.
    """

    meters = tuple(ZK_METERS.values())

    def get_samples(self, resources: Iterable[Resource]) -> list[Sample]:
        out: list[Sample] = []
        for res in resources:
            values = parse_mntr(four_letter_word(str(res.metadata.get("address") or res.id)))
            if not values:
                raise OSError(f"{res.id}: empty mntr answer (is mntr whitelisted?)")
            ts, mono = _now()
            md = metadata_to_strings(res.metadata)
            out += [make_sample(m, values[k], res, timestamp_us=ts, monotonic_time=mono, source=self.source,
                                metadata=md) for k, m in ZK_METERS.items() if k in values]
        return out


# --------------------------------------------------------------------------- ClickHouse

CH_METRICS: dict[str, Meter] = {  # system.metrics: current values
    "Query": Meter("clickhouse.queries.running", "gauge", "query"),
    "Merge": Meter("clickhouse.merges.running", "gauge", "merge"),
    "TCPConnection": Meter("clickhouse.connections.tcp", "gauge", "connection"),
    "HTTPConnection": Meter("clickhouse.connections.http", "gauge", "connection"),
    "MemoryTracking": Meter("clickhouse.memory.tracked", "gauge", "B"),
}
CH_EVENTS: dict[str, Meter] = {  # system.events: counters since server start
    "Query": Meter("clickhouse.queries", "cumulative", "query"),
    "FailedQuery": Meter("clickhouse.queries.failed", "cumulative", "query"),
    "InsertedRows": Meter("clickhouse.inserted.rows", "cumulative", "row"),
    "InsertedBytes": Meter("clickhouse.inserted.bytes", "cumulative", "B"),
    "SelectedRows": Meter("clickhouse.selected.rows", "cumulative", "row"),
}


class ClickHousePollster(Pollster):
    """ClickHouse self-metrics from ``system.metrics`` and ``system.events`` (native protocol).

    An event that never happened since the server started has no row, and so
    no sample. Raises clickhouse_driver errors when the server is unreachable.
    """

    meters = (*CH_METRICS.values(), *CH_EVENTS.values())

    def get_samples(self, resources: Iterable[Resource]) -> list[Sample]:
        from clickhouse_driver import Client

        from streams.config import ClickHouseSettings

        out: list[Sample] = []
        for res in resources:
            kw = ClickHouseSettings(url=str(res.metadata.get("url") or res.id),
                                    ca_file=res.metadata.get("ca_file")).client_kwargs()
            client = Client(**kw, connect_timeout=5, send_receive_timeout=10)
            try:
                metrics = dict(client.execute("SELECT metric, toFloat64(value) FROM system.metrics"))
                events = dict(client.execute("SELECT event, toFloat64(value) FROM system.events"))
            finally:
                client.disconnect()
            ts, mono = _now()
            md = metadata_to_strings(res.metadata)
            for table, meters in ((metrics, CH_METRICS), (events, CH_EVENTS)):
                out += [make_sample(m, table[k], res, timestamp_us=ts, monotonic_time=mono, source=self.source,
                                    metadata=md) for k, m in meters.items() if k in table]
        return out


# --------------------------------------------------------------------------- Kafka

KAFKA_LAG = Meter("kafka.consumer_group.lag", "gauge", "message")


class KafkaLagPollster(Pollster):
    """Total lag of a consumer group: sum over its committed partitions of (high watermark - committed).

    Uses ``AdminClient.list_consumer_group_offsets`` and ``list_offsets``
    (latest). Partitions without a committed offset are not counted. Params:
    ``bootstrap_servers`` (default for resources without ``metadata.bootstrap_servers``;
    without either, ``kafka.bootstrap_servers``), ``timeout`` (s, default 10).

    The admin client connects like every other client of the project, with
    :meth:`~streams.config.KafkaSettings.client_config` of ``kafka`` (security
    protocol, SASL credentials, TLS files; given by the agent from its
    settings, see :func:`streams.pollers.polling.plugin_defaults`).

    Raises (at construction): ValueError when ``kafka`` is not valid Kafka settings.
    """

    meters = (KAFKA_LAG,)

    def __init__(self, source: str = "streams", kafka: KafkaSettings | dict | None = None, **params: Any) -> None:
        super().__init__(source, **params)
        try:
            self.kafka = KafkaSettings.model_validate(kafka or {})
        except ValidationError as exc:
            raise ValueError(f"kafka: {exc}") from None

    def admin_config(self, resource: Resource) -> dict[str, str]:
        """librdkafka settings of the admin client for ``resource``: the Kafka client settings, with the
        resource's (or the pollster's) ``bootstrap_servers`` when it names one."""
        conf = self.kafka.client_config()
        servers = resource.metadata.get("bootstrap_servers") or self.params.get("bootstrap_servers")
        if servers:
            conf["bootstrap.servers"] = str(servers)
        return conf

    def get_samples(self, resources: Iterable[Resource]) -> list[Sample]:
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
        from confluent_kafka.admin import AdminClient, OffsetSpec

        timeout = float(self.params.get("timeout", 10.0))
        out: list[Sample] = []
        for res in resources:
            group = str(res.metadata.get("group") or res.id)
            admin = AdminClient(self.admin_config(res))
            fut = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
            committed = [tp for tp in fut.result(timeout).topic_partitions if tp.offset >= 0]
            lag = 0
            if committed:
                req = {TopicPartition(tp.topic, tp.partition): OffsetSpec.latest() for tp in committed}
                ends = {(tp.topic, tp.partition): f.result(timeout).offset
                        for tp, f in admin.list_offsets(req, request_timeout=timeout).items()}
                lag = sum(max(ends[(tp.topic, tp.partition)] - tp.offset, 0) for tp in committed)
            ts, mono = _now()
            md = metadata_to_strings({**res.metadata, "group": group, "partitions": len(committed)})
            out.append(make_sample(KAFKA_LAG, lag, res, timestamp_us=ts, monotonic_time=mono, source=self.source,
                                   metadata=md))
        return out
