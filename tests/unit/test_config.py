import pytest

from streams.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for k in list(os.environ):
        if k.startswith("STREAMS_"):
            monkeypatch.delenv(k)


def write(tmp_path, text):
    p = tmp_path / "streams.yaml"
    p.write_text(text)
    return p


def test_defaults_load_without_a_file():
    s = load_settings()
    assert s.kafka.samples_topic == "samples" and s.clickhouse.database == "streams"


def test_file_values_and_env_overrides(tmp_path, monkeypatch):
    p = write(tmp_path, "poller:\n  interval: 3\nkafka:\n  samples_topic: m\n")
    monkeypatch.setenv("STREAMS_POLLER__INTERVAL", "7.5")
    s = load_settings(p)
    assert s.poller.interval == 7.5  # env beats file
    assert s.kafka.samples_topic == "m"


def test_bad_value_names_file_key_and_problem(tmp_path):
    p = write(tmp_path, "poller:\n  interval: -1\n")
    with pytest.raises(ConfigError) as err:
        load_settings(p)
    msg = str(err.value)
    assert str(p) in msg and "poller.interval" in msg and "greater than 0" in msg


def test_unknown_key_is_rejected(tmp_path):
    p = write(tmp_path, "kafka:\n  bootstrap: x\n")
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap: Extra inputs are not permitted"):
        load_settings(p)


def test_bad_sink_scheme_is_rejected(tmp_path):
    p = write(tmp_path, "clickhouse:\n  url: mysql://h/db\n")
    with pytest.raises(ConfigError, match="clickhouse.url.*unsupported sink scheme 'mysql'"):
        load_settings(p)


@pytest.mark.parametrize("text, problem", [("- a\n- b\n", "top level must be a mapping"), ("a: [\n", "not valid YAML")])
def test_malformed_file(tmp_path, text, problem):
    with pytest.raises(ConfigError, match=problem):
        load_settings(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml")


def test_signing_keys_from_env_json(monkeypatch):
    monkeypatch.setenv("STREAMS_SIGNING__KEYS", '{"k1": "s1", "k2": "s2"}')
    monkeypatch.setenv("STREAMS_SIGNING__ACTIVE", "k2")
    ring = load_settings().signing.keyring()
    assert ring.active == "k2" and ring.keys["k1"] == b"s1"


def test_no_signing_key_is_a_clear_error():
    with pytest.raises(ConfigError, match="no signing key configured.*STREAMS_SIGNING__KEYS"):
        load_settings().signing.keyring()


def test_secrets_are_not_printed(monkeypatch):
    monkeypatch.setenv("STREAMS_SIGNING__KEYS", '{"k1": "hunter2"}')
    assert "hunter2" not in repr(load_settings())


def test_clickhouse_url_parts():
    s = load_settings(clickhouse={"url": "clickhouse://u%40x:p%2Fw@db.example:9440/metrics"})
    assert s.clickhouse.database == "metrics"
    assert s.clickhouse.client_kwargs() == {"host": "db.example", "port": 9440, "user": "u@x", "password": "p/w"}


def test_the_alarm_key_verifies_alarms_only():
    from streams.alarms.records import AlarmRecordCodec
    from streams.codec import BatchCodec, RejectedMessage
    from streams.config import SigningSettings
    from tests.conftest import make_test_sample

    s = SigningSettings(keys={"poll": "poller-secret", "alarm": "alarm-secret"}, active="poll", alarm_active="alarm")
    assert set(s.keyring().keys) == {"poll"} and s.keyring().active == "poll"
    assert set(s.alarm_keyring().keys) == {"alarm"}
    forged = BatchCodec(s.alarm_keyring()).encode([make_test_sample()])  # a subscriber signing a sample
    with pytest.raises(RejectedMessage, match="unknown_key"):
        BatchCodec(s.keyring()).decode(forged)
    with pytest.raises(RejectedMessage, match="unknown_key"):  # and a poller key cannot sign alarms
        AlarmRecordCodec(s.alarm_keyring()).decode(AlarmRecordCodec(s.keyring()).encode({
            "event_id": "e", "alarm_id": "a", "alarm_name": "n", "type": "threshold", "severity": "low",
            "resource_id": "r", "previous": "ok", "current": "alarm", "transition": True, "reason": "x",
            "reason_data": "{}", "actions": [], "timestamp": 1}))
    unset = SigningSettings(keys={"k": "secret"})
    assert unset.alarm_keyring().keys == unset.keyring().keys
