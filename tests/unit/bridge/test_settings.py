"""The ceilometer settings section and what the bridge refuses at start."""

from __future__ import annotations

import json

import pytest

from streams.bridge.service import build_translator
from streams.config import ConfigError, Settings, load_settings
from tests.conftest import TEST_KEYS

KEYS = {"signing": {"keys": {k: v.decode() for k, v in TEST_KEYS.items()}, "active": "k-new"}}


def test_defaults():
    c = Settings().ceilometer
    assert c.topics == ["metering.sample", "event.sample"] and c.dlq_topic == "ceilometer.dlq"
    assert c.metrics_port == 9468 and not c.allow_empty_secret


def test_the_secret_is_required_and_not_ceilometers_default():
    with pytest.raises(ConfigError, match="telemetry_secret: empty"):
        Settings(**KEYS).ceilometer.secret()
    with pytest.raises(ConfigError, match="built-in default"):
        Settings(**KEYS, ceilometer={"telemetry_secret": "change this for valid signing"}).ceilometer.secret()
    assert Settings(ceilometer={"allow_empty_secret": True}).ceilometer.secret() == ""
    translator = build_translator(Settings(**KEYS, ceilometer={"telemetry_secret": "s3cret"}))
    assert translator.reader.fast and len(translator.meters) == 4


def test_a_bad_meters_file_stops_the_bridge_naming_file_and_entry(tmp_path):
    bad = tmp_path / "meters.yaml"
    bad.write_text("metric:\n  - name: m\n    event_type: x\n    type: rate\n    unit: u\n    volume: 1\n"
                   "    resource_id: $.a\n")
    with pytest.raises(ConfigError, match=r"meters.yaml: metric\[0\] \(m\): type 'rate'"):
        build_translator(Settings(**KEYS, ceilometer={"telemetry_secret": "s", "meters": str(bad)}))


def test_environment_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMS_CEILOMETER__TOPICS", json.dumps(["metering.sample.tenant-a"]))
    monkeypatch.setenv("STREAMS_CEILOMETER__TELEMETRY_SECRET", "from-env")
    cfg = tmp_path / "streams.yaml"
    cfg.write_text("ceilometer:\n  max_depth: 2\n")
    with pytest.raises(ConfigError, match="ceilometer.max_depth"):
        load_settings(cfg)
    cfg.write_text("ceilometer:\n  max_depth: 40\n  colour: red\n")
    with pytest.raises(ConfigError, match="ceilometer.colour"):
        load_settings(cfg)
    cfg.write_text("ceilometer:\n  max_depth: 40\n")
    c = load_settings(cfg).ceilometer
    assert c.topics == ["metering.sample.tenant-a"] and c.secret() == "from-env" and c.max_depth == 40
    assert "from-env" not in repr(c)  # SecretStr
