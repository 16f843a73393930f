"""Edge hooks configured in ZooKeeper change what a running agent emits within 2 s, without a restart."""

from __future__ import annotations

import json
import socket
import time
import uuid

from kazoo.client import KazooClient

from tests.integration.conftest import wait_for
from tests.integration.test_central_partitioning import (  # noqa: F401  (fixtures)
    collector,
    exposition,
    polling_file,
    spawn_central,
)


def hooks(threshold: float, statsd_port: int) -> bytes:
    return json.dumps({"hooks": [
        {"meters": ["test.value"], "kind": "watermark", "threshold": threshold, "direction": "above",
         "emit": "beyond"},
        {"meters": ["test.other"], "kind": "statsd", "address": f"127.0.0.1:{statsd_port}", "prefix": "edge"},
        {"meters": ["test.drop*"], "kind": "drop"},
    ]}).encode()


def test_watermark_change_in_zookeeper_applies_within_two_seconds(pipeline, services, exposition,  # noqa: F811
                                                                   collector):  # noqa: F811
    root = f"/t{uuid.uuid4().hex[:10]}"
    statsd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    statsd.bind(("127.0.0.1", 0))
    statsd.settimeout(5)
    port = statsd.getsockname()[1]
    zk = KazooClient(hosts=services["zookeeper"])
    zk.start(10)
    try:
        zk.create(f"{root}/hooks", hooks(90, port), makepath=True)
        polling = polling_file(pipeline.tmp, exposition.url, resources=["app-1"], extra_series=[
            {"series": "central_test_other", "meter": "test.other", "unit": "item"},
            {"series": "central_test_dropped", "meter": "test.dropped", "unit": "item"}])
        agent = spawn_central(pipeline, polling, services["zookeeper"], root, "edge")
        agent.wait_ready()
        started = time.time()
        # The value (50) is below the watermark (90): nothing of test.value; statsd lines for test.other.
        wait_for(lambda: len(collector.since(started, meter="test.other")) >= 4, 20, "test.other samples")
        line = statsd.recv(1000).decode()
        assert line == "edge.test.other.app-1:7|g"
        assert collector.since(0, meter="test.value") == []
        assert collector.since(0, meter="test.dropped") == []
        assert agent.metric("streams_edge_hook_dropped_total") > 0

        # Lower the watermark below the value: the running agent starts emitting.
        zk.set(f"{root}/hooks", hooks(40, port))
        changed = time.time()
        wait_for(lambda: collector.since(changed, meter="test.value"), 10, "test.value after lowering the watermark")
        first = min(s["timestamp"] for s in collector.since(changed, meter="test.value")) / 1e6
        print(f"watermark 90 -> 40: first emitted sample {first - changed:.2f}s after the change")
        assert first - changed < 2.0
        assert collector.since(changed, meter="test.value")[0]["volume"] == 50.0

        # Raise it again: emission stops within 2 s.
        zk.set(f"{root}/hooks", hooks(60, port))
        raised = time.time()
        time.sleep(3)
        late = collector.since(raised + 2.0, meter="test.value")
        assert late == [], f"{len(late)} test.value samples more than 2 s after raising the watermark"
        assert collector.since(raised + 2.0, meter="test.other")  # the agent kept polling
        assert agent.proc.poll() is None
        assert agent.metric("streams_edge_hook_config_errors_total") == 0
    finally:
        zk.stop()
        zk.close()
        statsd.close()
