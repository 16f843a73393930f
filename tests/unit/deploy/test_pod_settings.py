"""Settings a pod needs that a laptop does not: metrics on 0.0.0.0, and Kafka TLS/SASL reaching
every Kafka client (librdkafka producers, consumers and admin clients, and Faust's aiokafka)."""

from __future__ import annotations

import pytest

from streams.config import ConfigError, KafkaSettings, Settings, load_settings

SASL_SSL = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "streams",
            "sasl_password": "pw", "ssl_ca_location": "/etc/kafka-tls/ca/ca.crt"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for k in list(os.environ):
        if k.startswith("STREAMS_"):
            monkeypatch.delenv(k)


def test_client_config_carries_sasl_and_tls():
    conf = KafkaSettings(bootstrap_servers="k:9093", **SASL_SSL).client_config()
    assert conf == {"bootstrap.servers": "k:9093", "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                    "sasl.username": "streams", "sasl.password": "pw",
                    "ssl.ca.location": "/etc/kafka-tls/ca/ca.crt"}
    assert KafkaSettings().client_config() == {"bootstrap.servers": "127.0.0.1:19092", "security.protocol": "PLAINTEXT"}


def test_sasl_password_comes_from_the_environment(tmp_path, monkeypatch):
    p = tmp_path / "streams.yaml"
    p.write_text("kafka:\n  security_protocol: SASL_PLAINTEXT\n  sasl_mechanism: PLAIN\n  sasl_username: u\n"
                 "metrics_host: 0.0.0.0\n")
    monkeypatch.setenv("STREAMS_KAFKA__SASL_PASSWORD", "from-secret")
    s = load_settings(p)
    assert s.kafka.client_config()["sasl.password"] == "from-secret" and s.metrics_host == "0.0.0.0"
    assert "from-secret" not in repr(s.kafka)


@pytest.mark.parametrize("kafka, problem", [
    ({"sasl_mechanism": "PLAIN"}, "sasl_mechanism needs security_protocol"),
    ({"ssl_ca_location": "/ca.crt"}, r"ssl_\* locations need security_protocol"),
    ({"security_protocol": "SSL", "ssl_certificate_location": "/c.crt"}, "go together"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
])
def test_inconsistent_security_is_rejected_at_load(kafka, problem):
    with pytest.raises(ConfigError, match=problem):
        load_settings(kafka=kafka)


def test_every_kafka_client_uses_the_security_settings(monkeypatch):
    import streams.notifiers.service as notifier_service
    import streams.topics as topics
    from streams.publisher import producer_config

    k = KafkaSettings(**SASL_SSL)
    expected = k.client_config()
    assert expected.items() <= producer_config(k).items()
    seen = {}
    monkeypatch.setattr(topics, "AdminClient", lambda conf: seen.setdefault("admin", conf))
    topics.admin(k)
    monkeypatch.setattr(notifier_service, "Consumer", lambda conf: seen.setdefault("consumer", conf))
    monkeypatch.setattr(notifier_service, "Producer", lambda conf: seen.setdefault("producer", conf))
    service = notifier_service.NotifierService(Settings(kafka=k, metrics_host="0.0.0.0",
                                                        signing={"keys": {"k": "secret-secret-secret"}}))
    for client in ("admin", "consumer", "producer"):
        assert expected.items() <= seen[client].items(), client
    assert service.metrics.host == "0.0.0.0"


def test_faust_gets_the_same_credentials(tmp_path):
    import faust

    from streams.processor.app import create_app, kafka_credentials

    assert kafka_credentials(KafkaSettings()) is None
    creds = kafka_credentials(KafkaSettings(**{**SASL_SSL, "ssl_ca_location": None}))
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value, creds.protocol.value) == \
        ("streams", "pw", "SCRAM-SHA-512", "SASL_SSL")
    tls = kafka_credentials(KafkaSettings(security_protocol="SSL"))
    assert isinstance(tls, faust.SSLCredentials)
    settings = Settings(kafka=KafkaSettings(security_protocol="SSL"), metrics_host="0.0.0.0",
                        signing={"keys": {"k": "secret-secret-secret"}},
                        processor={"data_dir": str(tmp_path / "faust")}, alarms={"enabled": False})
    app, metrics = create_app(settings)
    assert isinstance(app.conf.broker_credentials, faust.SSLCredentials) and metrics.host == "0.0.0.0"


def test_poller_metrics_listen_where_configured():
    from streams.pollers.service import PollingService

    assert PollingService(publisher=None, tasks=[], metrics_port=9464, metrics_host="0.0.0.0").metrics.host == "0.0.0.0"
    assert PollingService(publisher=None, tasks=[]).metrics.host == "127.0.0.1"
