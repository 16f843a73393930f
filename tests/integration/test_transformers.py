"""Stateful transformers across a worker crash: two processors, one consumer group, kill -9 one mid-stream."""

from __future__ import annotations

import signal
import textwrap
import time

from confluent_kafka import Producer

from tests.conftest import make_test_sample
from tests.integration.conftest import wait_for

PIPELINE = """
sources:
  - name: everything
    meters: ["*"]
    sinks: [raw]
  - name: cpu
    meters: ["cpu"]
    sinks: [cpu_util]
sinks:
  - name: raw
    publishers: ["clickhouse://"]
  - name: cpu_util
    transformers:
      - name: rate_of_change
        parameters:
          target: {name: cpu_util, unit: "%", type: gauge, max: 100,
                   scale: "100.0 / (1e9 * cpu_number)"}
    publishers: ["clickhouse://"]
"""

RESOURCES = 24
STEPS = 120
KILL_AT = 60
RESET = (3, 80)  # resource 3's counter resets at step 80


def cpu_record(codec, r: int, step: int, base_us: int) -> tuple[bytes, bytes]:
    """Resource r burns (r % 5 + 1) * 0.1 cores-seconds per second on 2 cores: cpu_util = (r % 5 + 1) * 5 %."""
    per_s = (r % 5 + 1) * 1e8
    volume = per_s * step
    if (r, step) >= RESET and r == RESET[0]:
        volume = per_s * (step - RESET[1] + 1)  # restarted: counts from zero again
    s = make_test_sample(name="cpu", type="cumulative", unit="ns", volume=volume,
                         resource_id=f"vm-{r}", timestamp=base_us + step * 1_000_000,
                         monotonic_time=float(step), resource_metadata={"cpu_number": "2"})
    return f"vm-{r}".encode(), codec.encode([s])


def test_rates_survive_a_worker_crash_without_gaps_negatives_or_duplicates(pipeline, tmp_path):
    (tmp_path / "pipeline.yaml").write_text(textwrap.dedent(PIPELINE))
    env = {"STREAMS_PROCESSOR__PIPELINE": str(tmp_path / "pipeline.yaml")}
    a = pipeline.spawn("process", STREAMS_PROCESSOR__DATA_DIR=str(tmp_path / "a"), **env)
    b = pipeline.spawn("process", STREAMS_PROCESSOR__DATA_DIR=str(tmp_path / "b"), **env)
    a.wait_ready()
    b.wait_ready()
    time.sleep(3)  # let the second join's rebalance settle: partitions split between a and b

    codec = pipeline.codec()
    producer = Producer({"bootstrap.servers": pipeline.settings.kafka.bootstrap_servers})
    base_us = (time.time_ns() // 1000) - STEPS * 1_000_000
    for step in range(STEPS):
        for r in range(RESOURCES):
            key, value = cpu_record(codec, r, step, base_us)
            producer.produce(pipeline.settings.kafka.samples_topic, key=key, value=value)
        producer.poll(0)
        if step == KILL_AT:
            producer.flush(30)
            time.sleep(1.5)  # a has processed part of its share
            assert a.kill(signal.SIGKILL) == -signal.SIGKILL
        time.sleep(0.05)
    assert producer.flush(30) == 0

    raw_expected = RESOURCES * STEPS
    wait_for(lambda: pipeline.rows("SELECT uniqExact(message_id) FROM {db}.samples WHERE name = 'cpu'")[0][0]
             >= raw_expected, 120, f"{raw_expected} raw cpu rows")
    util_expected = RESOURCES * (STEPS - 1)
    wait_for(lambda: pipeline.rows("SELECT uniqExact(message_id) FROM {db}.samples WHERE name = 'cpu_util'")[0][0]
             >= util_expected, 60, f"{util_expected} cpu_util rows")
    time.sleep(2)

    rows = pipeline.rows(
        "SELECT resource_id, timestamp_us, volume FROM {db}.samples FINAL WHERE name = 'cpu_util' "
        "ORDER BY resource_id, timestamp_us")
    assert len(rows) == util_expected, "duplicates or missing cpu_util rows"
    [(unique,)] = pipeline.rows("SELECT uniqExact(message_id) FROM {db}.samples WHERE name = 'cpu_util'")
    assert unique == util_expected
    by_resource: dict[str, list[tuple[int, float]]] = {}
    for rid, ts, vol in rows:
        by_resource.setdefault(rid, []).append((ts, vol))
    assert len(by_resource) == RESOURCES
    for r in range(RESOURCES):
        series = by_resource[f"vm-{r}"]
        # No gaps: one rate per step after the first, including across the crash.
        assert [ts for ts, _ in series] == [base_us + s * 1_000_000 for s in range(1, STEPS)], f"vm-{r}"
        want = (r % 5 + 1) * 5.0
        for step, (_, vol) in enumerate(series, start=1):
            assert vol >= 0, f"negative rate for vm-{r} at step {step}"
            if (r, step) == RESET:
                assert vol == 5.0 * (r % 5 + 1), "a reset counts from zero"
            else:
                assert abs(vol - want) < 1e-6, f"vm-{r} step {step}: {vol} != {want}"
    assert b.proc.poll() is None
