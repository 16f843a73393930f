from streams.pollers.cgroups import CgroupDiscovery, CgroupPollster, cgroup2_root


def test_cgroup_v2_tree_is_discovered_and_polled(tmp_path):
    root = tmp_path / "cg"
    (root / "system.slice" / "docker-abc.scope").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory io\n")
    (root / "cpu.stat").write_text("usage_usec 999\n")
    (root / "system.slice" / "cpu.stat").write_text("usage_usec 100\n")
    leaf = root / "system.slice" / "docker-abc.scope"
    (leaf / "cpu.stat").write_text("usage_usec 2500\nuser_usec 2000\n")
    (leaf / "memory.current").write_text("4096\n")
    (leaf / "io.stat").write_text("8:0 rbytes=10 wbytes=20 rios=1\n8:16 rbytes=5 wbytes=0\n")
    assert cgroup2_root([str(tmp_path), str(root)]) == root

    found = CgroupDiscovery(root=str(root)).discover()
    assert sorted(r.metadata["cgroup"] for r in found) == ["system.slice", "system.slice/docker-abc.scope"]
    pollster = CgroupPollster(source="t")
    samples = pollster.get_samples(found)
    by = {(x["name"], x["resource_metadata"]["cgroup"]): x["volume"] for x in samples}
    assert by[("cpu", "system.slice/docker-abc.scope")] == 2_500_000
    assert by[("memory.usage", "system.slice/docker-abc.scope")] == 4096
    assert by[("disk.read.bytes", "system.slice/docker-abc.scope")] == 15
    assert by[("disk.write.bytes", "system.slice/docker-abc.scope")] == 20
    assert ("memory.usage", "system.slice") not in by  # controller file absent: meter left out
    (leaf / "cpu.stat").write_text("usage_usec 3500\n")
    again = {x["name"] for x in pollster.get_samples(found) if x["resource_metadata"]["cgroup"].endswith("scope")}
    assert "cpu_util" in again


def test_no_cgroup_v2_means_no_resources(tmp_path):
    assert CgroupDiscovery(root=str(tmp_path)).discover() == []
