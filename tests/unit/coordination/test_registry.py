import json

from kazoo.exceptions import NoNodeError

from streams.config import CoordinationSettings
from streams.coordination.registry import list_services, registration


class FakeZooKeeper:
    """In-memory stand-in for the two kazoo reads list_services makes."""

    def __init__(self, nodes: dict[str, bytes]) -> None:
        self.nodes = nodes

    def get_children(self, path):
        kids = {p[len(path) + 1:].split("/")[0] for p in self.nodes if p.startswith(path + "/")}
        if not kids:
            raise NoNodeError(path)
        return sorted(kids)

    def get(self, path):
        if path not in self.nodes:
            raise NoNodeError(path)
        return self.nodes[path], None


def rec(binary, host, last, interval=10.0):
    return json.dumps({"binary": binary, "host": host, "pid": 1, "started_at": 0.0,
                       "report_interval": interval, "last_report": last}).encode()


def test_alive_means_reported_within_two_intervals():
    zk = FakeZooKeeper({"/r/services/streams-poll-central/m1": rec("streams-poll-central", "b", 95.0),
                        "/r/services/streams-poll-central/m2": rec("streams-poll-central", "a", 70.0),
                        "/r/services/streams-process/m3": b"not json"})
    rows = list_services(zk, "/r", now=100.0)
    assert [(r["host"], r["alive"], r["age"]) for r in rows] == [("a", False, 30.0), ("b", True, 5.0)]
    assert list_services(FakeZooKeeper({}), "/r") == []


def test_no_registry_without_zookeeper():
    assert registration(CoordinationSettings(hosts=None), "streams-process") is None
