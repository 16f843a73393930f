"""Configuration: one pydantic-settings model, from a YAML file plus ``STREAMS_*`` env vars.

Precedence, highest first: keyword arguments, environment variables
(``STREAMS_<SECTION>__<KEY>``, e.g. ``STREAMS_KAFKA__BOOTSTRAP_SERVERS``),
the YAML file (``--config PATH`` or ``$STREAMS_CONFIG``), then defaults.

Every problem is reported at load time as :class:`ConfigError`, naming the
file, the key and the problem, e.g.::

    etc/streams.yaml: poller.interval: Input should be greater than 0
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from streams.signing import Keyring, SigningError

if TYPE_CHECKING:
    from streams.codec import RecordLimits

CONFIG_ENV = "STREAMS_CONFIG"
"""Environment variable naming the YAML config file."""


class ConfigError(ValueError):
    """Configuration rejected at load time; the message names file, key and problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaSettings(_Section):
    """Kafka connection and topic names."""

    bootstrap_servers: str = Field("127.0.0.1:19092", description="host:port[,host:port...]")
    samples_topic: str = Field("samples", description="Topic of signed SampleBatch records.")
    dlq_topic: str = Field("samples.dlq", description="Dead-letter topic: rejected records with stage/reason headers.")
    alarms_topic: str = Field("alarms", description="Topic of AlarmEvent records (schemas/alarm.avsc), key = alarm_id.")
    alarms_dlq_topic: str = Field(
        "alarms.dlq", description="Notifier dead-letter topic: alarm records whose action kept failing.")
    dlq_max_bytes: int = Field(
        1_000_000, ge=100_000, description="Largest record the dead-letter topics take (the brokers' and topics' "
        "message.max.bytes); a larger bad record is dead-lettered with its first 64 KiB and header "
        "streams.dlq.truncated (the whole record stays in its source topic, at the offset named).")
    partitions: int = Field(4, gt=0, description="Partitions of topics created by `streams topics create`.")
    replication_factor: int = Field(1, gt=0, description="Replication factor of created topics.")
    session_timeout_ms: int = Field(
        6000, ge=1000, description="Consumer-group session timeout (ms); a join takes about half of it."
    )
    security_protocol: str = Field("PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism (needs security_protocol SASL_PLAINTEXT or SASL_SSL); None = no SASL.")
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr = Field(SecretStr(""), description="SASL password (from a Secret in Kubernetes).")
    ssl_ca_location: str | None = Field(
        None, description="PEM CA bundle that signed the brokers' certificates; None = system CAs.")
    ssl_certificate_location: str | None = Field(None, description="PEM client certificate (mutual TLS).")
    ssl_key_location: str | None = Field(None, description="PEM private key of the client certificate.")
    extra: dict[str, str] = Field(
        default_factory=dict, description="Extra librdkafka settings for producers (e.g. compression.type)."
    )

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSettings:
        # Caught at load time: librdkafka would only fail at the first connection, and aiokafka silently.
        if self.sasl_mechanism and not self.security_protocol.startswith("SASL_"):
            raise ValueError(f"sasl_mechanism needs security_protocol SASL_PLAINTEXT or SASL_SSL, "
                             f"not {self.security_protocol}")
        tls = self.ssl_ca_location or self.ssl_certificate_location or self.ssl_key_location
        if tls and self.security_protocol not in ("SSL", "SASL_SSL"):
            raise ValueError(f"ssl_* locations need security_protocol SSL or SASL_SSL, not {self.security_protocol}")
        if bool(self.ssl_certificate_location) != bool(self.ssl_key_location):
            raise ValueError("ssl_certificate_location and ssl_key_location go together")
        return self

    def client_config(self) -> dict[str, str]:
        """librdkafka connection settings shared by every producer, consumer and admin client:
        bootstrap servers, security protocol and, when set, SASL credentials and TLS files."""
        conf = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username or ""
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        for key, value in (("ssl.ca.location", self.ssl_ca_location),
                           ("ssl.certificate.location", self.ssl_certificate_location),
                           ("ssl.key.location", self.ssl_key_location)):
            if value:
                conf[key] = value
        return conf


class ClickHouseSettings(_Section):
    """Where rows go, by URL scheme (streams.storage.backend):
    ``clickhouse://user:password@host:port/database`` (a server, native protocol),
    ``clickhouses://...`` or ``?secure=true`` (the same over verified TLS), or
    ``chdb:///path/to/dir[?database=NAME]`` (ClickHouse in-process, no server; needs PyPI ``chdb``)."""

    url: str = Field("clickhouse://default@127.0.0.1:19000/streams", description="Sink URL.")
    insert_block_size: int = Field(100_000, gt=0, description="Rows per INSERT block sent by the driver.")
    retention_days: int = Field(
        0, ge=0, description="Days to keep raw samples and 1-minute rollups (TTL, ClickHouse >= 19.6); 0 = forever."
    )
    deduplicate: bool = Field(
        True, description="Skip samples already stored (one primary-key lookup per flush), so rollup views "
        "never count a redelivered sample twice. See docs/storage.md."
    )
    readonly_password: SecretStr = Field(
        SecretStr(""), description="Password of the read-only `grafana` user, set by every `schema migrate` "
        "(>= 20.4); without one the user is not created."
    )
    readonly_networks: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="Networks (IP or CIDR) the `grafana` user may connect from, set by every `schema migrate`.",
    )
    ca_file: str | None = Field(
        None, description="PEM CA bundle that verifies the server's TLS certificate (clickhouses://); "
        "None = the system's CAs."
    )
    cluster: str | None = Field(
        None, description="Cluster name in the servers' remote_servers: Replicated tables, Distributed reads, "
        "the sink writes each shard (docs/storage.md). None = one server."
    )
    zookeeper_path: str | None = Field(
        None, description="ZooKeeper path of the Replicated tables in cluster mode; None = "
        "<coordination.root>/clickhouse."
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme == "chdb":
            if not (parts.netloc + parts.path).strip("/"):
                raise ValueError("chdb URL names no directory, e.g. chdb:///var/lib/streams")
            return v
        if parts.scheme not in ("clickhouse", "clickhouses"):
            raise ValueError(f"unsupported sink scheme {parts.scheme!r}; expected clickhouse://, clickhouses:// "
                             "or chdb://")
        if not parts.hostname:
            raise ValueError("sink URL has no host")
        return v

    @property
    def database(self) -> str:
        """Database: the URL path (``clickhouse://``) or ``?database=`` (``chdb://``); default ``streams``."""
        parts = urlsplit(self.url)
        if parts.scheme == "chdb":
            return (parse_qs(parts.query).get("database") or ["streams"])[0]
        return parts.path.strip("/") or "streams"

    @field_validator("readonly_networks")
    @classmethod
    def _check_networks(cls, v: list[str]) -> list[str]:
        from streams.storage.access import check_networks

        return check_networks(v)

    @field_validator("cluster")
    @classmethod
    def _check_cluster(cls, v: str | None) -> str | None:
        import re

        if not v:
            return None  # '' (e.g. STREAMS_CLICKHOUSE__CLUSTER=) means one server
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", v):
            raise ValueError(f"cluster name {v!r} is not a plain identifier")
        return v

    @model_validator(mode="after")
    def _cluster_needs_a_server(self) -> ClickHouseSettings:
        if self.cluster and urlsplit(self.url).scheme == "chdb":
            raise ValueError("clickhouse.cluster needs a server URL (clickhouse:// or clickhouses://), not chdb://")
        return self

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`clickhouse_driver.Client` (database not selected; TLS per the URL,
        verified against ``ca_file``)."""
        from streams.storage.backend import client_kwargs

        return client_kwargs(self.url, self.ca_file)


class SigningSettings(_Section):
    """HMAC-SHA256 signing keys by id; ``active`` signs, all verify (for rotation)."""

    keys: dict[str, SecretStr] = Field(default_factory=dict, description="key id -> secret")
    active: str | None = Field(None, description="Key id used to sign; defaults to the only key.")
    alarm_active: str | None = Field(
        None, description="Key id processors sign alarm records with (default: active). Give subscribers of the "
        "alarms topic this key alone: it verifies alarms and cannot sign samples.")

    def keyring(self) -> Keyring:
        """The keyring of sample batches: ``active`` signs, every key verifies except ``alarm_active``
        when that is a key of its own (a subscriber given the alarm key must not sign samples).

        Raises:
            ConfigError: no keys, empty secret, or unknown active key.
        """
        keys = {k: v.get_secret_value().encode() for k, v in self.keys.items()}
        active = self.active or (next(iter(keys)) if len(keys) == 1 else "")
        if self.alarm_active and self.alarm_active != active:
            keys.pop(self.alarm_active, None)
        try:
            return Keyring(keys, active)
        except SigningError as exc:
            raise ConfigError(f"signing: {exc} (set signing.keys in the config file or STREAMS_SIGNING__KEYS)") from exc

    def alarm_keyring(self) -> Keyring:
        """The keyring of alarm records: ``alarm_active`` alone signs and verifies them; without
        ``alarm_active``, the sample keyring (then the alarm key is a sample key too).

        Raises:
            ConfigError: as :meth:`keyring`, or ``alarm_active`` is not a key id.
        """
        if not self.alarm_active:
            return self.keyring()
        secret = self.keys.get(self.alarm_active)
        if secret is None:
            raise ConfigError(f"signing.alarm_active: {self.alarm_active!r} is not one of {sorted(self.keys)}")
        try:
            return Keyring({self.alarm_active: secret.get_secret_value().encode()}, self.alarm_active)
        except SigningError as exc:
            raise ConfigError(f"signing.alarm_active: {exc}") from exc


class PollerSettings(_Section):
    """Polling agents (compute and central); ``interval``, ``processes`` and
    ``max_processes`` shape the compute defaults used without a polling.yaml."""

    interval: float = Field(10.0, gt=0, description="Seconds between polls.")
    processes: bool = Field(True, description="Poll per-process meters as well as host meters.")
    max_processes: int = Field(500, ge=0, description="At most this many processes per poll (busiest first).")
    source: str = Field("streams", description="Value of the samples' source field.")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics and /healthz port; 0 = off.")
    agent: Literal["compute", "central"] = Field(
        "compute", description="compute: this host (one per host); central: remote endpoints, partitioned.")
    polling: str | None = Field(
        None, description="polling.yaml path; None = compute defaults (host, processes, cgroups every interval).")
    report_interval: float = Field(
        10.0, gt=0, description="Seconds between live-service registry reports (with coordination.hosts set).")
    process_cmdline: Literal["name", "full"] = Field(
        "name", description="What process samples carry as metadata `cmdline`: the executable's name (name), "
        "or the command line with secret-looking options, key=value pairs and URL passwords redacted (full).")


class ProcessorSettings(_Section):
    """Faust processor."""

    app_id: str = Field("streams-processor", description="Faust app id = Kafka consumer group.")
    batch_size: int = Field(
        4_000, gt=0, description="Max Kafka records per sink batch. 4,000 keeps the processor under 300 MiB in "
        "`make bench` (10,000: 362-372 MiB, 5,000: 312-313, 4,000: 296, 3,000: 276; samples/s within the noise, "
        "about 5% lower at 4,000).")
    batch_timeout: float = Field(
        0.3, gt=0, description="Seconds the oldest record of a batch may wait for the batch to fill; the batch "
        "is handed over at batch_size records, batch_max_bytes, or this age, whichever comes first.")
    fetch_max_wait: float = Field(
        0.1, gt=0, le=30, description="Longest a fetch request waits at the broker for records (s; Faust's own is "
        "1.5): brokers that hold the long poll while records arrive add up to this to produce -> row latency.")
    data_dir: str = Field(".dev/faust", description="Faust data directory (tables' local state).")
    metrics_port: int = Field(9465, ge=0, le=65535, description="Prometheus /metrics and /healthz port; 0 = off.")
    pipeline: str | None = Field(
        None, description="pipeline.yaml path (sources, sinks, transformers, publishers); None = store all."
    )
    commit_interval: float = Field(
        1.0, gt=0, description="Seconds between Kafka offset commits of acknowledged records."
    )
    max_future_skew: float = Field(
        3600.0, ge=0, description="Samples stamped further than this (s) in the future are rejected."
    )
    max_sample_age: float | None = Field(
        None, ge=0,
        description="Samples older than this (s) are dead-lettered with reason too_old; None = the storage "
                    "retention (clickhouse.retention_days; 0 there = no limit), so nothing is accepted only "
                    "to vanish by TTL.")
    max_record_bytes: int = Field(
        1 << 20, gt=0, description="Largest record value accepted (bytes), checked before the HMAC and the decode; "
        "decoding costs up to ~18x a record's size in memory.")
    max_samples_per_record: int = Field(
        1000, gt=0, description="Most samples in one record (read off the raw Avro block count).")
    max_metadata_entries: int = Field(256, gt=0, description="Most resource_metadata entries in one sample.")
    max_string_chars: int = Field(
        64 << 10, gt=0, description="Longest string field of a sample (characters), metadata included.")
    batch_max_bytes: int = Field(
        8 << 20, gt=0, description="A batch is flushed once its records' values reach this many bytes "
        "(as well as at batch_size records or batch_timeout seconds): bounds a worker's memory per batch.")
    state_ttl: float | None = Field(
        None, gt=0,
        description="Per-resource state idle for longer than this (s) is evicted, with a changelog tombstone; "
                    "None = max(3600, 2 x the pipeline's longest aggregator retention_time). Resources that "
                    "hold alarm windows are kept until the evaluator releases them.")
    gc_threshold: int = Field(
        50_000, ge=0,
        description="Allocations between young-generation garbage collections (Python's default is 700); "
                    "0 keeps Python's defaults. Batches hold many short-lived dicts, freed by reference "
                    "counting; frequent cyclic collections cost a fifth of the processor's time.",
    )


    def limits(self) -> RecordLimits:
        """The input limits as a :class:`~streams.codec.RecordLimits`."""
        from streams.codec import RecordLimits

        return RecordLimits(self.max_record_bytes, self.max_samples_per_record, self.max_metadata_entries,
                            self.max_string_chars)


class CoordinationSettings(_Section):
    """ZooKeeper coordination (kazoo). Without ``hosts`` every service runs alone:
    pollers poll everything, singleton jobs need no lock (Ceilometer's empty backend_url)."""

    hosts: str | None = Field(None, description="ZooKeeper connect string host:port[,host:port...]; None = off.")
    root: str = Field("/streams", description="Root znode of this deployment.")
    session_timeout: float = Field(10.0, gt=0, description="ZooKeeper session timeout (s): liveness of members.")
    connect_timeout: float = Field(10.0, gt=0, description="Seconds to wait for the first connection.")
    username: str | None = Field(
        None, description="ZooKeeper digest user (env STREAMS_COORDINATION__USERNAME). When set, every client "
        "authenticates and every znode the project creates gets a digest ACL for this identity alone.")
    password: SecretStr = Field(
        SecretStr(""), description="Password of `username` (env STREAMS_COORDINATION__PASSWORD; a Secret in "
        "Kubernetes).")
    use_ssl: bool = Field(
        False, description="TLS to ZooKeeper's secureClientPort; the server certificate and host name are "
        "always verified.")
    ca_file: str | None = Field(None, description="PEM CA bundle that signed ZooKeeper's certificate; None = "
                                "system CAs.")
    cert_file: str | None = Field(None, description="PEM client certificate (ssl.clientAuth=need on the server).")
    key_file: str | None = Field(None, description="PEM private key of cert_file.")

    @field_validator("root")
    @classmethod
    def _check_root(cls, v: str) -> str:
        if not v.startswith("/") or v.endswith("/") and v != "/":
            raise ValueError("must be an absolute znode path without a trailing slash, e.g. /streams")
        return v

    @model_validator(mode="after")
    def _check_security(self) -> CoordinationSettings:
        if self.username is not None and (not self.username or ":" in self.username):
            raise ValueError("username must be non-empty and hold no ':' (ZooKeeper digest is user:password)")
        if bool(self.username) != bool(self.password.get_secret_value()):
            raise ValueError("username and password go together (digest authentication needs both)")
        if (self.ca_file or self.cert_file or self.key_file) and not self.use_ssl:
            raise ValueError("ca_file, cert_file and key_file need use_ssl: true")
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together")
        return self


class AlarmSettings(_Section):
    """Alarm evaluation in the processor (definitions in ZooKeeper under ``<coordination.root>/alarms``;
    evaluation needs ``coordination.hosts``)."""

    enabled: bool = Field(True, description="Evaluate alarms (when coordination.hosts is set).")
    grace: float = Field(
        2.0, ge=0, description="Seconds a window stays open for late samples after it ends (an alarm's "
        "own `grace` overrides it).")
    timer_interval: float = Field(
        1.0, gt=0, description="Seconds between timer runs that close windows of resources that stopped reporting.")
    idle_after: float = Field(
        2.0, ge=0, description="Seconds of fetches that bring nothing from a partition (every fetched record "
        "prepared) before the timer closes its windows by wall-clock time; until then it keeps the partition's "
        "event time (Flink's source idleness). Longer tolerates slower fetches; shorter reports resources that "
        "stopped reporting sooner.")


class NotifierSettings(_Section):
    """``streams notify``: calls alarm actions (webhooks, log)."""

    group_id: str = Field("streams-notifier", description="Kafka consumer group of the notifier.")
    timeout: float = Field(10.0, gt=0, description="Seconds per webhook attempt.")
    max_retries: int = Field(3, ge=0, description="Retries of a failing webhook before it is dead-lettered.")
    backoff: float = Field(0.5, ge=0, description="First retry delay (s); doubles per retry (exponential).")
    backoff_max: float = Field(10.0, ge=0, description="Longest retry delay (s).")
    verify_tls: bool = Field(True, description="Verify webhook TLS certificates (per URL: ?streams-ssl-verify=0).")
    ca_file: str | None = Field(None, description="CA bundle for webhook TLS; None = system CAs.")
    batch_size: int = Field(100, gt=0, description="Alarm records read from Kafka per fetch.")
    metrics_port: int = Field(9466, ge=0, le=65535, description="Prometheus /metrics and /healthz port; 0 = off.")
    delivery_timeout: float = Field(
        30.0, gt=0, description="Seconds one action may take in all, retries and backoff included; then it is "
        "dead-lettered (reason delivery_timeout).")
    max_in_flight: int = Field(
        1000, gt=0, description="Alarm records being delivered at once; reading pauses above it. Deliveries "
        "of different alarms run concurrently; one alarm's records are delivered in order.")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Webhook hosts allowed: names, '*.example.com' wildcards or networks "
        "(10.0.0.0/8); empty = any host not in denied_networks.")
    denied_networks: list[str] = Field(
        default_factory=lambda: ["169.254.0.0/16", "fd00:ec2::254/128"],
        description="Addresses webhooks may never reach, even through a host name: by default link-local "
        "(cloud metadata 169.254.169.254) and AWS's IPv6 metadata address.")
    accept_unsigned: bool = Field(
        False, description="Also accept unsigned alarm records (from processors older than signed alarm records).")

    @field_validator("allowed_hosts", "denied_networks")
    @classmethod
    def _hosts(cls, v: list[str], info) -> list[str]:
        import ipaddress

        for entry in v:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                what = "network" if info.field_name == "denied_networks" else "host name or network"
                if what == "network" or not entry or "/" in entry or " " in entry:
                    raise ValueError(f"{entry!r} is not a {what}") from None
        return v


class ApiToken(_Section):
    """One static token of ``api.auth: token``: the identity a request presenting it acts as."""

    token: SecretStr = Field(description="The secret a client sends as X-Auth-Token (from a Secret in Kubernetes).")
    user_id: str = Field(min_length=1, description="User the token acts as.")
    project_id: str = Field(min_length=1, description="Project the token acts as; non-admins see only its alarms.")
    roles: list[str] = Field(default_factory=list, description="Roles; 'admin' sees and manages every project.")

    @field_validator("token")
    @classmethod
    def _not_empty(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return v


class ApiSettings(_Section):
    """``streams api``: Aodh's v2 REST API over the alarm definitions in ZooKeeper and ``alarm_history``."""

    host: str = Field("127.0.0.1", description="Listen address (0.0.0.0 in a pod).")
    port: int = Field(8042, ge=1, le=65535, description="Listen port (Aodh's).")
    metrics_port: int = Field(9467, ge=0, le=65535, description="Prometheus /metrics, /healthz, /readyz port; 0 = off.")
    auth: Literal["noauth", "token", "keystone"] = Field(
        "token", description="token: static tokens (api.tokens); keystone: keystonemiddleware validates "
        "X-Auth-Token (api.keystone); noauth: trust the X-User-Id / X-Project-Id / X-Roles headers (Aodh's "
        "noauth: for loopback and tests only).")
    tokens: list[ApiToken] = Field(
        default_factory=list, description="Static tokens of api.auth token, e.g. STREAMS_API__TOKENS="
        "'[{\"token\": \"...\", \"user_id\": \"u\", \"project_id\": \"p\", \"roles\": [\"admin\"]}]'.")
    keystone: dict[str, SecretStr] = Field(
        default_factory=dict, description="keystonemiddleware auth_token options for api.auth keystone "
        "(www_authenticate_uri, auth_url, auth_type, username, password, project_name, ...); kept secret: "
        "it holds a password.")
    rate_meters: dict[str, str] = Field(
        default_factory=dict, description="Gnocchi 'rate:<agg>' aggregation: cumulative meter -> the meter "
        "carrying its per-second rate in the samples topic (e.g. from a rate_of_change transformer), "
        "e.g. {\"disk.read.bytes\": \"disk.read.bytes.rate\"}.")
    max_body_bytes: int = Field(65536, ge=1024, description="Largest request body accepted (413 beyond).")
    max_results: int = Field(1000, ge=1, description="Most alarms or history entries one request returns.")

    @field_validator("tokens")
    @classmethod
    def _unique_tokens(cls, v: list[ApiToken]) -> list[ApiToken]:
        secrets = [t.token.get_secret_value() for t in v]
        if len(secrets) != len(set(secrets)):
            raise ValueError("two entries have the same token")
        return v
class CeilometerSettings(_Section):
    """``streams bridge ceilometer``: what Ceilometer's ``notifier://...?driver=kafka`` publisher writes,
    verified and republished to ``kafka.samples_topic`` (events also stored in ClickHouse)."""

    topics: list[str] = Field(
        ["metering.sample", "event.sample"],
        description="Topics Ceilometer writes: <topic>.sample[.<virtual host>] (samples and events may share one).")
    group_id: str = Field("streams-ceilometer-bridge", description="Kafka consumer group of the bridge.")
    telemetry_secret: SecretStr = Field(
        SecretStr(""), description="Ceilometer's [publisher] telemetry_secret; verifies every sample and event.")
    allow_empty_secret: bool = Field(
        False, description="Accept an empty telemetry_secret (Ceilometer then signs with ''): unsigned data.")
    dlq_topic: str = Field("ceilometer.dlq", description="Dead-letter topic: refused records, original bytes, "
                           "streams.dlq.* headers.")
    meters: str | None = Field(
        None, description="meters.yaml deriving samples from events; None = the shipped "
        "etc/ceilometer/meters.yaml (compute instance meters).")
    store_events: bool = Field(True, description="Insert events into <db>.events before committing offsets.")
    source: str = Field("openstack", description="source of samples derived from events.")
    batch_size: int = Field(2000, gt=0, description="Max Kafka records per batch (consume, republish, commit).")
    batch_timeout: float = Field(0.5, gt=0, description="Seconds to wait to fill a batch.")
    max_record_bytes: int = Field(4 * 1024 * 1024, gt=0, description="Largest record value accepted (bytes).")
    max_depth: int = Field(32, gt=2, description="Deepest bracket nesting of a record accepted.")
    max_payload_entries: int = Field(10_000, gt=0, description="Most samples or events in one record.")
    metrics_port: int = Field(9468, ge=0, le=65535, description="Prometheus /metrics and /healthz port; 0 = off.")

    def secret(self) -> str:
        """The telemetry secret to verify with.

        Raises:
            ConfigError: empty without ``allow_empty_secret``, or Ceilometer's public default.
        """
        from streams.bridge.signing import CEILOMETER_DEFAULT_SECRET

        value = self.telemetry_secret.get_secret_value()
        if not value and not self.allow_empty_secret:
            raise ConfigError("ceilometer.telemetry_secret: empty; set Ceilometer's [publisher] telemetry_secret "
                              "(STREAMS_CEILOMETER__TELEMETRY_SECRET), or ceilometer.allow_empty_secret: true "
                              "to accept unsigned data")
        if value == CEILOMETER_DEFAULT_SECRET:
            raise ConfigError("ceilometer.telemetry_secret: is Ceilometer's built-in default, which everyone "
                              "knows; set a real secret in ceilometer.conf and here")
        return value


class Settings(BaseSettings):
    """All settings of every service."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMS_", env_nested_delimiter="__", extra="forbid", yaml_file=None
    )

    kafka: KafkaSettings = KafkaSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    signing: SigningSettings = SigningSettings()
    poller: PollerSettings = PollerSettings()
    processor: ProcessorSettings = ProcessorSettings()
    coordination: CoordinationSettings = CoordinationSettings()
    alarms: AlarmSettings = AlarmSettings()
    notifier: NotifierSettings = NotifierSettings()
    api: ApiSettings = ApiSettings()
    ceilometer: CeilometerSettings = CeilometerSettings()
    log_level: str = Field("INFO", description="Python logging level name.")
    metrics_host: str = Field(
        "127.0.0.1", description="Listen address of every service's /metrics, /healthz and /readyz server; "
        "0.0.0.0 in a pod, so that probes and Prometheus reach it.")

    @property
    def max_sample_age(self) -> float:
        """``processor.max_sample_age`` in seconds, defaulting to the storage retention; 0 = no limit."""
        if self.processor.max_sample_age is not None:
            return self.processor.max_sample_age
        return self.clickhouse.retention_days * 86400.0

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file (set per load by load_settings) ranks below the environment.
        return init_settings, env_settings, YamlConfigSettingsSource(settings_cls)


def read_yaml_file(path: str | os.PathLike[str], what: str, error: type[ConfigError] = ConfigError) -> Any:
    """Parse the YAML file at ``path`` (``what`` names it in errors: "config", "pipeline"...).

    Raises:
        error: the file is missing or is not valid YAML; the message starts with the path.
    """
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: {what} file not found")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise error(f"{p}: not valid YAML: {exc}") from None


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Load settings from ``path`` (or ``$STREAMS_CONFIG``) and the environment.

    Raises:
        ConfigError: file missing or not a YAML mapping, or any key invalid;
            the message names the file, the dotted key and the problem.
    """
    path = path or os.environ.get(CONFIG_ENV) or None
    label = str(path) if path else "environment"
    if path:
        content = read_yaml_file(path, "config")
        if content is not None and not isinstance(content, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(content).__name__}")
    cls = Settings
    if path:
        cls = type("Settings", (Settings,), {"model_config": {**Settings.model_config, "yaml_file": str(path)}})
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{label}: {problems}") from None
