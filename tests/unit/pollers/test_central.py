import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from pydantic import ValidationError

from streams.pollers.base import Resource
from streams.pollers.central import PrometheusPollster, parse_mntr, series_resource_id

MAPPING = [{"series": "jobs_done_total", "meter": "app.jobs", "unit": "job"},
           {"series": "queue_depth", "meter": "app.queue", "unit": "item"},
           {"series": "temp_celsius", "meter": "app.temp", "unit": "C", "type": "delta"}]


def exposition() -> str:
    reg = CollectorRegistry()
    Counter("jobs_done", "jobs", registry=reg).inc(7)
    g = Gauge("queue_depth", "depth", ["queue"], registry=reg)
    g.labels("a").set(3)
    g.labels("b").set(4.5)
    Gauge("temp_celsius", "t", registry=reg).set(21)
    Gauge("unmapped", "x", registry=reg).set(1)
    return generate_latest(reg).decode()


def test_exposition_series_become_samples_with_mapped_names_units_and_types():
    p = PrometheusPollster(source="t", series=MAPPING)
    got = p.samples_from_text(exposition(), Resource("app-1", {"url": "http://x"}))
    by = {(x["name"], x["resource_id"]): x for x in got}
    assert set(by) == {("app.jobs", "app-1"), ("app.queue", 'app-1{queue="a"}'), ("app.queue", 'app-1{queue="b"}'),
                       ("app.temp", "app-1")}
    jobs = by[("app.jobs", "app-1")]
    assert (jobs["type"], jobs["unit"], jobs["volume"], jobs["source"]) == ("cumulative", "job", 7.0, "t")
    q = by[("app.queue", 'app-1{queue="b"}')]
    assert (q["type"], q["volume"], q["resource_metadata"]["label.queue"]) == ("gauge", 4.5, "b")
    assert by[("app.temp", "app-1")]["type"] == "delta"
    assert {m.name for m in p.meters} == {"app.jobs", "app.queue", "app.temp"}


def test_prometheus_params_are_validated():
    with pytest.raises(ValidationError):
        PrometheusPollster(series=[{"series": "x"}])
    assert series_resource_id("t", {"b": "2", "a": "1"}) == 't{a="1",b="2"}'


def test_parse_mntr():
    text = "zk_version\t3.8.0-x\nzk_avg_latency\t0.5\nzk_znode_count\t42\n"
    assert parse_mntr(text) == {"zk_avg_latency": 0.5, "zk_znode_count": 42.0}


def test_kafka_lag_admin_client_carries_the_kafka_tls_and_sasl_settings():
    from streams.config import KafkaSettings
    from streams.pollers.central import KafkaLagPollster

    kafka = KafkaSettings(bootstrap_servers="k:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                          sasl_username="lag", sasl_password="pw", ssl_ca_location="/ca.pem",
                          ssl_certificate_location="/c.pem", ssl_key_location="/k.pem")
    secured = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "lag",
               "sasl.password": "pw", "ssl.ca.location": "/ca.pem", "ssl.certificate.location": "/c.pem",
               "ssl.key.location": "/k.pem"}
    p = KafkaLagPollster(kafka=kafka, bootstrap_servers="other:9093")
    assert p.admin_config(Resource("g", {"group": "g"})) == {"bootstrap.servers": "other:9093", **secured}
    assert p.admin_config(Resource("g", {"bootstrap_servers": "mine:1"}))["bootstrap.servers"] == "mine:1"
    assert KafkaLagPollster(kafka=kafka).admin_config(Resource("g"))["bootstrap.servers"] == "k:9093"
    plain = KafkaLagPollster(bootstrap_servers="b:1").admin_config(Resource("g"))
    assert plain == {"bootstrap.servers": "b:1", "security.protocol": "PLAINTEXT"}
    with pytest.raises(ValueError, match="kafka"):
        KafkaLagPollster(kafka={"security_protocol": "PLAINTEXT", "sasl_mechanism": "PLAIN"})
