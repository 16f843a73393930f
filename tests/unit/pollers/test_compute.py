import os

import psutil
import pytest

from streams.pollers.base import Resource
from streams.pollers.compute import (
    HostPollster,
    LocalHostDiscovery,
    LocalProcessDiscovery,
    ProcessPollster,
    _Utilisation,
    hostname,
)

EXPECTED_HOST_UNITS = {
    "cpu": ("cumulative", "ns"),
    "memory.usage": ("gauge", "B"),
    "disk.read.bytes": ("cumulative", "B"),
    "disk.write.bytes": ("cumulative", "B"),
    "network.incoming.bytes": ("cumulative", "B"),
    "network.outgoing.bytes": ("cumulative", "B"),
}


def test_host_meters_have_declared_types_units_and_real_values():
    pollster = HostPollster(source="t")
    [host] = LocalHostDiscovery().discover()
    assert host.id == hostname()
    samples = pollster.get_samples([host])
    by_name = {s["name"]: s for s in samples}
    assert {n: (s["type"], s["unit"]) for n, s in by_name.items()} == EXPECTED_HOST_UNITS  # no cpu_util yet
    vm = psutil.virtual_memory()
    assert 0 < by_name["memory.usage"]["volume"] <= vm.total
    assert by_name["cpu"]["volume"] > 0
    assert all(s["resource_id"] == host.id and s["source"] == "t" for s in samples)
    assert by_name["cpu"]["resource_metadata"]["cpu_number"] == str(psutil.cpu_count())


def test_host_cpu_util_appears_on_second_poll_within_0_100():
    pollster = HostPollster()
    [host] = LocalHostDiscovery().discover()
    pollster.get_samples([host])
    sum(i * i for i in range(200_000))  # burn a little CPU
    util = [s for s in pollster.get_samples([host]) if s["name"] == "cpu_util"]
    assert len(util) == 1 and util[0]["unit"] == "%" and 0.0 <= util[0]["volume"] <= 100.0


def test_processes_include_this_one_with_real_rss():
    resources = LocalProcessDiscovery(limit=10_000).discover()
    me = [r for r in resources if r.metadata["pid"] == os.getpid()]
    assert len(me) == 1
    assert me[0].id.startswith(f"{hostname()}/process/{os.getpid()}-")
    samples = ProcessPollster().get_samples(me)
    rss = next(s["volume"] for s in samples if s["name"] == "memory.usage")
    assert rss == pytest.approx(psutil.Process().memory_info().rss, rel=0.2)
    assert {s["name"] for s in samples} >= {"cpu", "memory.usage"}


def test_process_discovery_limit_keeps_the_busiest():
    all_procs = LocalProcessDiscovery(limit=10_000).discover()
    top = LocalProcessDiscovery(limit=3).discover()
    assert len(top) == min(3, len(all_procs))
    cpu = lambda r: r.handle["cpu_times"].user + r.handle["cpu_times"].system  # noqa: E731
    assert [cpu(r) for r in top] == sorted((cpu(r) for r in top), reverse=True)


def test_utilisation_first_reading_reset_and_scaling():
    u = _Utilisation()
    assert u.update("r", cpu_s=10.0, mono_s=100.0, cores=2) is None  # first reading
    assert u.update("r", cpu_s=11.0, mono_s=101.0, cores=2) == pytest.approx(50.0)  # 1 core-second of 2
    assert u.update("r", cpu_s=1.0, mono_s=102.0, cores=2) is None  # counter went back: reset
    assert u.update("r", cpu_s=3.0, mono_s=103.0, cores=2) == 100.0  # clamped to 100
    u.retain(set())
    assert u.update("r", cpu_s=4.0, mono_s=104.0, cores=2) is None  # forgotten


def test_process_pollster_skips_resources_without_snapshot():
    assert ProcessPollster().get_samples([Resource(id="x")]) == []


def test_process_cmdline_is_the_executable_name_unless_full_is_asked_for():
    me = [r for r in LocalProcessDiscovery(limit=10_000).discover() if r.metadata["pid"] == os.getpid()]
    assert me[0].metadata["cmdline"] == psutil.Process().name()
    full = [r for r in LocalProcessDiscovery(limit=10_000, cmdline="full").discover()
            if r.metadata["pid"] == os.getpid()]
    assert full[0].metadata["cmdline"].startswith(psutil.Process().cmdline()[0])
    with pytest.raises(ValueError, match="cmdline must be one of name, full"):
        LocalProcessDiscovery(cmdline="everything")
