"""A ZooKeeper restart does not stop polling: a private ZooKeeper, stopped and started under two agents."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest
from kazoo.client import KazooClient

from streams import devenv
from tests.integration.conftest import free_port, wait_for
from tests.integration.test_central_partitioning import (  # noqa: F401  (fixtures)
    RESOURCES,
    collector,
    exposition,
    polling_file,
    settled,
    spawn_central,
)


class PrivateZooKeeper(devenv.ZooKeeper):
    """The dev ZooKeeper's config and command, on its own port and directory (never the shared one)."""

    def __init__(self, root, port: int) -> None:
        super().__init__(root)
        self._port = port
        self.proc: subprocess.Popen | None = None

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> None:
        self.prepare()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.command(), cwd=self.workdir, stdout=self.log_path.open("a"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self.ready(1.0), 60, f"private ZooKeeper on {self.address}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)


@pytest.fixture
def private_zk(services, tmp_path):
    zk = PrivateZooKeeper(tmp_path / "zk", free_port())
    zk.start()
    yield zk
    zk.stop()


def test_polling_survives_a_zookeeper_restart(pipeline, private_zk, exposition, collector):  # noqa: F811
    root = f"/t{uuid.uuid4().hex[:10]}"
    polling = polling_file(pipeline.tmp, exposition.url)
    agents = [spawn_central(pipeline, polling, private_zk.address, root, n) for n in ("a", "b")]
    for a in agents:
        a.wait_ready()
    before = wait_for(lambda: settled(collector, {"a", "b"}), 40, "two disjoint shares")

    private_zk.stop()
    down_at = time.time()
    wait_for(lambda: all(a.metric("streams_coordination_outages_total") >= 1 for a in agents), 15,
             "both agents counting the outage")
    assert all(a.metric("streams_coordination_connected") == 0 for a in agents)
    time.sleep(SESSION_OUTAGE := 6.0)  # longer than the session timeout
    # Polling went on with the last known shares: everything, each resource by its owner.
    during = collector.owners(down_at + 1, down_at + SESSION_OUTAGE)
    assert set(during) == set(RESOURCES)
    assert all(len(o) == 1 for o in during.values())
    assert {r for r, o in during.items() if o == {"a"}} == before["a"]

    private_zk.start()
    up_at = time.time()
    wait_for(lambda: all(a.metric("streams_coordination_connected") == 1 for a in agents), 30,
             "both agents reconnected")
    client = KazooClient(hosts=private_zk.address)
    client.start(10)
    try:
        wait_for(lambda: len(client.get_children(f"{root}/groups/poll-central")) == 2, 15,
                 "both agents back in the group")
        services_registered = client.get_children(f"{root}/services/streams-poll-central")
        assert len(services_registered) == 2
    finally:
        client.stop()
        client.close()
    after = wait_for(lambda: settled(collector, {"a", "b"}), 30, "shares settled after the restart")
    assert after == before  # same members, same ring
    print(f"reconnected {time.time() - up_at:.1f}s after ZooKeeper came back")
    for a in agents:
        assert a.proc.poll() is None
