"""Leader election on the real ZooKeeper."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from kazoo.exceptions import LockTimeout

from streams.config import CoordinationSettings
from streams.coordination import leader


def test_leader_lock_is_exclusive_and_released(services):
    s = CoordinationSettings(hosts=services["zookeeper"], root=f"/t{uuid.uuid4().hex[:8]}", session_timeout=4)
    held = threading.Event()
    release = threading.Event()

    def first():
        with leader(s, "migrate", "first"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=first)
    t.start()
    assert held.wait(10)
    with pytest.raises(LockTimeout):
        with leader(s, "migrate", "second", timeout=1):
            pass
    release.set()
    t.join(10)
    start = time.monotonic()
    with leader(s, "migrate", "second", timeout=5) as ok:
        assert ok
    assert time.monotonic() - start < 5


def test_without_zookeeper_every_caller_is_leader():
    with leader(CoordinationSettings(hosts=None), "x") as ok:
        assert ok
