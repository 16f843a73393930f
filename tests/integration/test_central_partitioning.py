"""Central agents share one resource set through ZooKeeper: real agents, real ZooKeeper and broker.

The helpers here (exposition server, sample collector, agent spawner) are
also used by test_central_zookeeper_restart.py and test_edge_hooks.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from tests.integration.conftest import http_get, wait_for

SESSION_TIMEOUT = 4.0
INTERVAL = 0.5
RESOURCES = [f"r{i:02d}" for i in range(30)]


class Exposition:
    """A real Prometheus text exposition served by prometheus-client on loopback."""

    def __init__(self, **gauges: float) -> None:
        self.registry = CollectorRegistry()
        self.gauges = {n: Gauge(n, n, registry=self.registry) for n in gauges}
        for n, v in gauges.items():
            self.gauges[n].set(v)
        self.server, self.thread = start_http_server(0, addr="127.0.0.1", registry=self.registry)
        self.url = f"http://127.0.0.1:{self.server.server_port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SampleCollector:
    """Reads every record of the samples topic (assigned partitions, no group join) in a thread."""

    def __init__(self, pipeline) -> None:
        self.codec = pipeline.codec()
        k = pipeline.settings.kafka
        self.consumer = Consumer({"bootstrap.servers": k.bootstrap_servers, "group.id": f"{pipeline.name}-collector",
                                  "enable.auto.commit": False, "session.timeout.ms": 6000})
        self.consumer.assign([TopicPartition(k.samples_topic, p, OFFSET_BEGINNING) for p in range(k.partitions)])
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            m = self.consumer.poll(0.2)
            if m is not None and m.error() is None:
                got = self.codec.decode(m.value())
                with self._lock:
                    self.samples.extend(got)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.consumer.close()

    def since(self, t0: float, until: float | None = None, meter: str | None = None) -> list[dict]:
        lo, hi = int(t0 * 1e6), int((until or 1e12) * 1e6)
        with self._lock:
            return [s for s in self.samples if lo <= s["timestamp"] <= hi and (meter is None or s["name"] == meter)]

    def owners(self, t0: float, t1: float | None = None) -> dict[str, set[str]]:
        """resource id -> agents (sample ``source``) that polled it in [t0, t1]."""
        out: dict[str, set[str]] = defaultdict(set)
        for s in self.since(t0, t1):
            out[s["resource_id"]].add(s["source"])
        return out


def polling_file(tmp: Path, url: str, resources=RESOURCES, extra_series=()) -> Path:
    series = [{"series": "central_test_value", "meter": "test.value", "unit": "%"}, *extra_series]
    doc = {"sources": [{
        "name": "prom", "interval": INTERVAL, "meters": ["test.*"],
        "pollsters": {"prometheus": {"series": series, "timeout": 2}},
        "resources": [{"id": r, "metadata": {"url": url}} for r in resources],
    }]}
    p = tmp / f"polling-{uuid.uuid4().hex[:6]}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def spawn_central(pipeline, polling: Path, zk: str, root: str, name: str):
    return pipeline.spawn(
        "poll", "--agent", "central", "--polling", str(polling),
        STREAMS_COORDINATION__HOSTS=zk, STREAMS_COORDINATION__ROOT=root,
        STREAMS_COORDINATION__SESSION_TIMEOUT=str(SESSION_TIMEOUT), STREAMS_COORDINATION__CONNECT_TIMEOUT="5",
        STREAMS_POLLER__SOURCE=name, STREAMS_POLLER__REPORT_INTERVAL="1")


def settled(collector: SampleCollector, agents: set[str], window: float = 2.0, resources=RESOURCES):
    """The shares of the last ``window`` s if every resource was polled by exactly one of
    ``agents`` and every agent polled something; else None."""
    now = time.time()
    owners = collector.owners(now - window, now)
    if set(owners) != set(resources) or any(len(o) != 1 or not o <= agents for o in owners.values()):
        return None
    shares: dict[str, set[str]] = defaultdict(set)
    for rid, o in owners.items():
        shares[next(iter(o))].add(rid)
    return dict(shares) if set(shares) == agents else None


@pytest.fixture
def exposition():
    e = Exposition(central_test_value=50.0, central_test_other=7.0, central_test_dropped=1.0)
    yield e
    e.close()


@pytest.fixture
def collector(pipeline):
    c = SampleCollector(pipeline)
    yield c
    c.close()


def test_three_agents_share_kill9_takeover_and_rebalance(pipeline, services, exposition, collector):
    root = f"/t{uuid.uuid4().hex[:10]}"
    polling = polling_file(pipeline.tmp, exposition.url)
    agents = {n: spawn_central(pipeline, polling, services["zookeeper"], root, n) for n in ("a", "b", "c")}
    for a in agents.values():
        a.wait_ready()

    # Disjoint shares whose union is the whole set.
    shares = wait_for(lambda: settled(collector, {"a", "b", "c"}), 40, "three disjoint shares covering all")
    assert sum(map(len, shares.values())) == len(RESOURCES)
    assert agents["a"].metric("streams_coordination_members") == 3
    assert agents["a"].metric("streams_poll_resources") == len(shares["a"])

    # kill -9 one agent: once its session expires, the others poll its resources.
    killed_at = time.time()
    agents["c"].kill()
    orphans = shares["c"]

    def taken_over():
        after = collector.owners(killed_at)
        return all(after.get(r, set()) & {"a", "b"} for r in orphans)

    wait_for(taken_over, SESSION_TIMEOUT + 10, "the killed agent's resources polled by the others")
    first = min(s["timestamp"] for s in collector.since(killed_at) if s["resource_id"] in orphans
                and s["source"] in {"a", "b"}) / 1e6
    takeover = max(min(s["timestamp"] for s in collector.since(killed_at) if s["resource_id"] == r
                       and s["source"] in {"a", "b"}) / 1e6 for r in orphans) - killed_at
    print(f"takeover of {len(orphans)} resources: first {first - killed_at:.2f}s, all {takeover:.2f}s "
          f"(session timeout {SESSION_TIMEOUT}s)")
    # The server checks expiry on its 2-s tick, so allow one tick plus one poll interval.
    assert takeover < SESSION_TIMEOUT + 2 + 2 * INTERVAL + 0.5
    two = wait_for(lambda: settled(collector, {"a", "b"}), 20, "two agents sharing everything")
    for n in "ab":  # minimal churn: survivors keep what they had and only gain the orphans
        assert shares[n] <= two[n] and two[n] - shares[n] <= orphans

    # Restart it: it joins under a new member id and shares rebalance.
    agents["c2"] = spawn_central(pipeline, polling, services["zookeeper"], root, "c")
    agents["c2"].wait_ready()
    three = wait_for(lambda: settled(collector, {"a", "b", "c"}), 30, "rebalanced shares after the restart")
    assert three["c"]
    for n in "ab":  # survivors only hand items over to the newcomer
        assert three[n] <= two[n]
    for a in (agents["a"], agents["b"], agents["c2"]):
        assert a.proc.poll() is None
        assert http_get(a.url("/readyz"))[0] == 200
