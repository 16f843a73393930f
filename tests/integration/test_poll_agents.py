"""``streams poll --agent compute --polling FILE``: sources, meter patterns and start-up validation."""

from __future__ import annotations

import subprocess
import sys
import time

from streams.pollers.compute import hostname
from tests.integration.conftest import wait_for
from tests.integration.test_central_partitioning import collector  # noqa: F401  (fixture)


def test_compute_agent_polls_its_sources_with_meter_patterns(pipeline, collector):  # noqa: F811
    polling = pipeline.tmp / "polling.yaml"
    polling.write_text("""
sources:
  - name: host
    interval: 0.5
    meters: ["*", "!network.*", "!disk.*"]
    pollsters: {host: {}}
  - name: procs
    interval: 1
    meters: ["memory.usage"]
    pollsters: {processes: {}}
    discovery_params: {local_processes: {limit: 3}}
""")
    agent = pipeline.spawn("poll", "--agent", "compute", "--polling", str(polling))
    agent.wait_ready()
    started = time.time()
    host = hostname()
    wait_for(lambda: len([s for s in collector.since(started, meter="cpu_util") if s["resource_id"] == host]) >= 2,
             30, "two host cpu_util samples at 0.5 s")
    got = collector.since(0)
    assert {s["name"] for s in got if s["resource_id"] == host} == {"cpu", "cpu_util", "memory.usage"}
    procs = {s["resource_id"] for s in got if "/process/" in s["resource_id"]}
    assert procs and {s["name"] for s in got if "/process/" in s["resource_id"]} == {"memory.usage"}
    assert agent.metric("streams_poll_resources") >= 2


def test_bad_polling_file_stops_the_agent_naming_file_source_and_problem(pipeline):
    bad = pipeline.tmp / "bad.yaml"
    bad.write_text("sources:\n  - {name: web, interval: 5, meters: ['cpu_utill']}\n")
    out = subprocess.run([sys.executable, "-m", "streams.cli", "poll", "--polling", str(bad)], env=pipeline.env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert f"{bad}: source 'web': meters: unknown meter 'cpu_utill'" in out.stderr
