import textwrap

import pytest

from streams.codec import RejectedMessage
from streams.config import ConfigError
from streams.pipeline import STATE_KEY_WATERMARK, Pipeline, load_pipeline
from tests.conftest import make_test_sample

GOOD = """
sources:
  - name: meter_source
    meters: ["*", "!disk.*"]
    sinks: [meter_sink]
  - name: cpu_source
    meters: ["cpu"]
    sinks: [cpu_sink]
sinks:
  - name: meter_sink
    publishers: ["clickhouse://"]
  - name: cpu_sink
    transformers:
      - name: rate_of_change
        parameters:
          target: {name: cpu_util, unit: "%", type: gauge, max: 100, scale: "100.0 / (1e9 * cpu_number)"}
    publishers: ["clickhouse://", "kafka://samples.derived", "log://"]
"""


def write(tmp_path, text):
    p = tmp_path / "pipeline.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_routes_raw_and_derived_samples(tmp_path):
    pipeline = load_pipeline(write(tmp_path, GOOD))
    states: dict = {}
    out: dict = {}
    md = {"cpu_number": "1"}
    batch1 = [make_test_sample(name="cpu", volume=0.0, timestamp=1_000_000, resource_metadata=md),
              make_test_sample(name="disk.read.bytes", timestamp=1_000_000),
              make_test_sample(name="memory.usage", unit="B", type="gauge", timestamp=1_000_000)]
    pipeline.route(batch1, lambda rid: states.setdefault(rid, {}), out)
    assert [s["name"] for s in out["clickhouse://"]] == ["cpu", "memory.usage"]  # disk excluded, no rate yet
    pipeline.route([make_test_sample(name="cpu", volume=0.5e9, timestamp=2_000_000, resource_metadata=md)],
                   lambda rid: states.setdefault(rid, {}), out)
    derived = [s for s in out["clickhouse://"] if s["name"] == "cpu_util"]
    assert len(derived) == 1 and derived[0]["volume"] == pytest.approx(50.0)
    assert out["kafka://samples.derived"] == derived and out["log://"] == derived
    assert pipeline.stateful and set(pipeline.publishers) == {"clickhouse://", "kafka://samples.derived", "log://"}
    assert "cpu_sink/0" in states["host-a"]


def test_default_pipeline_stores_everything_unchanged():
    out: dict = {}
    s = make_test_sample()
    Pipeline().route([s], lambda rid: pytest.fail("no state needed"), out)
    assert out == {"clickhouse://": [s]}
    assert not Pipeline().stateful


def test_lateness_watermark_per_resource():
    p = Pipeline()
    state: dict = {}
    p.check_lateness([make_test_sample(timestamp=1000 * 1_000_000)], state)
    assert state[STATE_KEY_WATERMARK] == 1000 * 1_000_000
    p.check_lateness([make_test_sample(timestamp=900 * 1_000_000)], state)  # 100 s late: allowed (300 s)
    with pytest.raises(RejectedMessage) as err:
        p.check_lateness([make_test_sample(timestamp=600 * 1_000_000)], state)
    assert (err.value.stage, err.value.reason) == ("transform", "late")
    assert state[STATE_KEY_WATERMARK] == 1000 * 1_000_000


def test_transform_error_drops_only_that_sample(tmp_path):
    pipeline = load_pipeline(write(tmp_path, GOOD))
    out: dict = {}
    states: dict = {}
    pipeline.route([make_test_sample(name="cpu", volume=0.0, timestamp=1, resource_metadata={})],
                   lambda rid: states.setdefault(rid, {}), out)
    pipeline.route([make_test_sample(name="cpu", volume=1.0, timestamp=2, resource_metadata={}),
                    make_test_sample(name="memory.usage", timestamp=2)],
                   lambda rid: states.setdefault(rid, {}), out)
    assert pipeline.transform_errors["cpu_sink/0"] == 1
    assert [s["name"] for s in out["clickhouse://"]] == ["cpu", "cpu", "memory.usage"]


@pytest.mark.parametrize(
    "text, problem",
    [
        (GOOD.replace("rate_of_change", "rate_of_chaos"), "sinks[1] (cpu_sink).transformers[0] (rate_of_chaos).name: Value error, unknown transformer 'rate_of_chaos'"),
        (GOOD.replace("sinks: [cpu_sink]", "sinks: [nope]"), "source 'cpu_source' feeds unknown sink(s) nope"),
        (GOOD.replace('"kafka://samples.derived"', '"mysql://x"'), "sinks[1] (cpu_sink).publishers: Value error, publisher 'mysql://x'"),
        (GOOD.replace('"kafka://samples.derived"', '"kafka://"'), "kafka:// needs a topic"),
        (GOOD.replace('"!disk.*"', '"!"'), "sources[0] (meter_source).meters: Value error, meter pattern '!' is empty"),
        (GOOD.replace("scale: \"100.0 / (1e9 * cpu_number)\"", "scale: \"__import__('os')\""), "sink 'cpu_sink', transformer 0 (rate_of_change)"),
        (GOOD.replace("meters: [\"cpu\"]", "meters: []"), "sources[1] (cpu_source).meters: List should have at least 1 item"),
        (GOOD + "extra: 1\n", "extra: Extra inputs are not permitted"),
        ("sources: [\n", "not valid YAML"),
    ],
)
def test_bad_pipelines_are_rejected_with_file_and_place(tmp_path, text, problem):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    assert str(path) in str(err.value)
    assert problem in str(err.value), str(err.value)


def test_missing_pipeline_file(tmp_path):
    with pytest.raises(ConfigError, match="pipeline file not found"):
        load_pipeline(tmp_path / "none.yaml")
