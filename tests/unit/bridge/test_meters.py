"""meters.yaml: Ceilometer's format, evaluated with jsonpath-ng on events."""

from __future__ import annotations

import json

import pytest
import yaml

from streams.bridge.ceilometer import Event, normalize_event, parse_timestamp
from streams.bridge.meters import default_meters_file, load_meters, parse_meters
from streams.config import ConfigError
from tests.unit.bridge.conftest import records

ROOT = default_meters_file().parents[2]


def captured_events() -> list[Event]:
    [rec] = records("kafka_events.json")
    return [normalize_event(m) for m in json.loads(json.loads(rec["value"])["oslo.message"])["payload"]]


def test_the_shipped_file_is_the_one_in_etc():
    assert (ROOT / "etc" / "ceilometer" / "meters.yaml").read_text() == default_meters_file().read_text()
    assert {d.name for d in load_meters().definitions} == {"memory", "vcpus", "disk.root.size", "disk.ephemeral.size"}


def test_instance_meters_from_a_captured_event():
    skipped = []
    create, image = captured_events()
    samples = {s["name"]: s for s in load_meters().samples(create, skipped.append)}
    assert set(samples) == {"memory", "vcpus"}  # the capture's traits have no root_gb / ephemeral_gb
    assert sorted(s.meter for s in skipped) == ["disk.ephemeral.size", "disk.root.size"]
    mem = samples["memory"]
    assert (mem["volume"], mem["unit"], mem["type"]) == (2048.0, "MiB", "gauge")
    assert mem["resource_id"] == "3b8f6c2a-1d4e-4f5a-9b6c-7d8e9f0a1b2c"
    assert mem["project_id"] == "8a3c1f2e9b7d4e6fa0c1d2e3f4a5b6c7" and mem["user_id"] == "5f4e3d2c1b0a49e8a7b6c5d4e3f2a1b0"
    assert mem["timestamp"] == parse_timestamp("2025-06-01T12:00:05.678901")
    assert mem["resource_metadata"]["host"] == "compute-01" and mem["resource_metadata"]["flavor_name"] == "m1.small"
    assert mem["resource_metadata"]["event_type"] == "compute.instance.create.end"
    again = {s["name"]: s for s in load_meters().samples(create)}
    assert again["memory"]["message_id"] == mem["message_id"]  # a replayed event derives the same id
    assert samples["vcpus"]["message_id"] != mem["message_id"]
    assert load_meters().samples(image) == []


def test_versioned_and_legacy_raw_notifications():
    flavor = {"nova_object.data": {"memory_mb": 512, "vcpus": 2, "root_gb": 1, "ephemeral_gb": 0, "name": "tiny"}}
    versioned = Event("e1", "instance.delete.end", 1, (), {"payload": {"nova_object.data": {
        "uuid": "vm-1", "tenant_id": "p", "user_id": "u", "host": "cn-2", "flavor": flavor}}})
    got = {s["name"]: s for s in load_meters().samples(versioned)}
    assert {k: v["volume"] for k, v in got.items()} == {"memory": 512.0, "vcpus": 2.0, "disk.root.size": 1.0,
                                                        "disk.ephemeral.size": 0.0}
    assert got["memory"]["resource_id"] == "vm-1" and got["memory"]["resource_metadata"]["host"] == "cn-2"
    legacy = Event("e2", "compute.instance.exists", 1, (), {"payload": {"instance_id": "vm-2", "memory_mb": 64,
                                                                        "tenant_id": "p"}})
    assert [s["volume"] for s in load_meters().samples(legacy) if s["name"] == "memory"] == [64.0]
    # Ceilometer's own exclusions: create.start and update make no samples.
    for etype in ("compute.instance.create.start", "compute.instance.update", "instance.update"):
        assert load_meters().samples(Event("e3", etype, 1, (("memory_mb", 2, 1), ("instance_id", 1, "v")))) == []


def test_ceilometers_own_syntax():
    defs = parse_meters(yaml.safe_load("""
metric:
  - name: compute.node.cpu.percent
    event_type: 'compute.metrics.update'
    type: gauge
    unit: percent
    volume: $.payload.metrics[?(@.name='cpu.percent')].value * 100
    resource_id: $.payload.host + "_" + $.payload.nodename
    timestamp: $.payload.metrics[?(@.name='cpu.percent')].timestamp
    metadata:
      provider: $.payload.name_to_id.`split(#, 0, 1)`
  - name: image.size
    event_type: [image.upload, image.update]
    type: gauge
    unit: B
    volume:
      fields: [$.traits.size, $.payload.size]
    resource_id: $.traits.resource_id
    user_metadata: $.payload.properties
"""), "inline")
    event = Event("e", "compute.metrics.update", 1, (), {"payload": {
        "host": "h", "nodename": "n", "name_to_id": "pool#backend",
        "metrics": [{"name": "cpu.percent", "value": 0.25, "timestamp": "2025-06-01T00:00:00"}]}})
    [s] = defs.samples(event)
    assert (s["volume"], s["resource_id"], s["timestamp"]) == (25.0, "h_n", parse_timestamp("2025-06-01T00:00:00"))
    assert s["resource_metadata"]["provider"] == "pool"
    [img] = defs.samples(Event("i", "image.update", 1, (("size", 2, 10), ("resource_id", 1, "img")),
                               {"payload": {"properties": {"os": "cirros"}}}))
    assert img["volume"] == 10.0 and img["resource_metadata"]["user_metadata.os"] == "cirros"


@pytest.mark.parametrize("entry, problem", [
    ({"name": "m", "event_type": "x", "type": "rate", "unit": "u", "volume": 1, "resource_id": "$.a"}, "type"),
    ({"name": "m", "event_type": "x", "type": "gauge", "unit": "u", "volume": 1}, "missing: resource_id"),
    ({"name": "m", "event_type": "(", "type": "gauge", "unit": "u", "volume": 1, "resource_id": "$.a"},
     "regular expression"),
    ({"name": "m", "event_type": "x", "type": "gauge", "unit": "u", "volume": "$.[[", "resource_id": "$.a"},
     "volume: bad JSONPath"),
    ({"name": "m", "event_type": "x", "type": "gauge", "unit": "u", "volume": 1, "resource_id": "$.a",
      "lookup": ["name"]}, "lookup"),
    ({"name": "m", "event_type": "x", "type": "gauge", "unit": "u", "volume": 1, "resource_id": "$.a",
      "colour": "red"}, "unknown key(s) colour"),
    ({"name": "m", "event_type": "x", "type": "gauge", "unit": "u", "resource_id": "$.a",
      "volume": {"fields": ["$.a", "$.b"], "plugin": "timedelta"}}, "plugin"),
])
def test_bad_definitions_are_refused_naming_file_entry_and_problem(entry, problem):
    with pytest.raises(ConfigError, match=r"^meters\.yaml: metric\[1\] \(m\): .*" + problem.replace("(", r"\(")
                       .replace(")", r"\)").replace("[", r"\[")):
        parse_meters({"metric": [{"name": "ok", "event_type": "x", "type": "gauge", "unit": "u", "volume": 1,
                                  "resource_id": "$.a"}, entry]}, "meters.yaml")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="meters file not found"):
        load_meters(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("metric: {")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_meters(bad)
    bad.write_text("- 1")
    with pytest.raises(ConfigError, match="'metric' list"):
        load_meters(bad)


def test_values_that_make_no_sample_are_reported_not_raised():
    defs = parse_meters({"metric": [{"name": "m", "event_type": "x", "type": "gauge", "unit": "u",
                                     "volume": "$.traits.v", "resource_id": "$.traits.r",
                                     "timestamp": "$.traits.t"}]}, "inline")
    skipped = []
    for traits in ((("v", 1, "lots"), ("r", 1, "a")), (("r", 1, "a"),), (("v", 2, 1),),
                   (("v", 2, 1), ("r", 1, "a"), ("t", 1, "never"))):
        assert defs.samples(Event("e", "x", 1, traits), skipped.append) == []
    assert [s.reason for s in skipped] == ["bad_volume", "no_volume", "no_resource_id", "bad_timestamp"]
