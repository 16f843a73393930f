import pytest

from streams.pollers.central import PrometheusPollster
from streams.pollers.compute import HostPollster
from streams.pollers.polling import (
    MeterSelector,
    PollingConfigError,
    build_tasks,
    default_compute_definition,
    load_plugin,
    load_polling,
    parse_polling,
)


def write(tmp_path, text):
    p = tmp_path / "polling.yaml"
    p.write_text(text)
    return p


def test_entry_points_load_by_name():
    assert load_plugin("streams.pollsters.compute", "host") is HostPollster
    assert load_plugin("streams.pollsters.central", "prometheus") is PrometheusPollster
    with pytest.raises(LookupError, match="known: .*host"):
        load_plugin("streams.pollsters.compute", "nope")


def test_selector_wildcards_and_exclusions():
    s = MeterSelector(("disk.*", "cpu", "!disk.write.*"))
    assert s("disk.read.bytes") and s("cpu")
    assert not s("disk.write.bytes") and not s("cpu_util")
    only_excl = MeterSelector(("!cpu*",))
    assert only_excl("memory.usage") and not only_excl("cpu_util")


def test_example_files_load():
    assert [t.source for t in load_polling("etc/polling.yaml", "compute")] == ["host", "processes", "containers"]
    central = load_polling("etc/polling.central.yaml", "central")
    assert {n for t in central for n, _, _ in t.pollsters} == {"zookeeper", "clickhouse", "kafka_lag", "prometheus"}


def test_source_selects_pollsters_by_meter_and_static_resources(tmp_path):
    p = write(tmp_path, """
sources:
  - name: web
    interval: 2.5
    meters: ["web.*"]
    pollsters:
      prometheus: {series: [{series: http_requests_total, meter: web.requests, unit: request}]}
    resources: [{id: a, metadata: {url: "http://x/metrics"}}, b]
""")
    [task] = load_polling(p, "central", interval=0.5)
    assert task.interval == 0.5
    [(name, pollster, [disc])] = task.pollsters
    assert name == "prometheus" and [m.name for m in pollster.meters] == ["web.requests"]
    assert [r.id for r in disc.discover()] == ["a", "b"]


@pytest.mark.parametrize("body, problem", [
    ("  - {name: s1, interval: 10, meters: [cpu_utl]}", "source 's1': meters: unknown meter 'cpu_utl'"),
    ("  - {name: s1, interval: 0, meters: [cpu]}", "source 's1': interval: Input should be greater than 0"),
    ("  - {name: s1, interval: -3, meters: [cpu]}", "source 's1': interval"),
    ("  - {name: s1, interval: 10, meters: ['cpu util']}", "source 's1': meters: Value error, bad pattern 'cpu util'"),
    ("  - {name: s1, interval: 10, meters: ['cp[u']}", "bad pattern 'cp[u': unbalanced"),
    ("  - {name: s1, interval: 10, meters: ['cpu!']}", "bad pattern 'cpu!'"),
    ("  - {name: s1, interval: 10, meters: ['!nothing.*']}", "unknown meter '!nothing.*'"),
    ("  - {name: s1, interval: 10, meters: [cpu], discovery: [nope]}", "source 's1': discovery: no streams.discovery plugin 'nope'"),
    ("  - {name: s1, interval: 10, meters: [cpu], pollsters: {nope: {}}}", "source 's1': pollsters: no streams.pollsters.compute plugin"),
    ("  - {name: s1, interval: 10, meters: [cpu], colour: red}", "source 's1': colour: Extra inputs are not permitted"),
])
def test_bad_sources_are_rejected_naming_file_source_and_problem(tmp_path, body, problem):
    p = write(tmp_path, "sources:\n" + body + "\n")
    with pytest.raises(PollingConfigError) as exc:
        load_polling(p, "compute")
    assert str(exc.value).startswith(f"{p}: ")
    assert problem in str(exc.value)


def test_bad_pollster_parameters_and_missing_file(tmp_path):
    p = write(tmp_path, "sources:\n  - {name: w, interval: 1, meters: [x], pollsters: {prometheus: {series: []}}}\n")
    with pytest.raises(PollingConfigError, match=r"source 'w': pollsters.prometheus: bad parameters: series"):
        load_polling(p, "central")
    with pytest.raises(PollingConfigError, match="not found"):
        load_polling(tmp_path / "missing.yaml", "central")
    with pytest.raises(PollingConfigError, match="duplicate source names: a"):
        parse_polling({"sources": [{"name": "a", "interval": 1, "meters": ["cpu"]}] * 2})


def test_compute_defaults_cover_host_processes_and_cgroups():
    [task] = build_tasks(default_compute_definition(5, processes=True, max_processes=7), "compute")
    names = [n for n, _, _ in task.pollsters]
    assert names == ["host", "cgroups", "processes"]
    assert task.pollsters[2][2][0].limit == 7
    [task] = build_tasks(default_compute_definition(5, processes=False, max_processes=7), "compute")
    assert "processes" not in [n for n, _, _ in task.pollsters]


def test_service_settings_reach_the_process_discovery_and_the_kafka_lag_pollster(tmp_path):
    from streams.config import KafkaSettings, PollerSettings, Settings

    settings = Settings(poller=PollerSettings(process_cmdline="full"),
                        kafka=KafkaSettings(bootstrap_servers="k:9093", security_protocol="SASL_SSL",
                                            sasl_mechanism="SCRAM-SHA-512", sasl_username="lag",
                                            sasl_password="pw", ssl_ca_location="/ca.pem"))
    [task] = build_tasks(default_compute_definition(10, True, 5), "compute", settings=settings)
    [discovery] = [d for n, _, ds in task.pollsters if n == "processes" for d in ds]
    assert discovery.cmdline == "full" and discovery.limit == 5
    [default] = [d for n, _, ds in build_tasks(default_compute_definition(10, True, 5), "compute")[0].pollsters
                 if n == "processes" for d in ds]
    assert default.cmdline == "name"  # executable names only unless asked

    central = load_polling("etc/polling.central.yaml", "central", settings=settings)
    [lag] = [p for t in central for n, p, _ in t.pollsters if n == "kafka_lag"]
    assert lag.kafka == settings.kafka


def test_bad_process_cmdline_names_file_source_and_problem(tmp_path):
    p = write(tmp_path, "sources:\n  - name: procs\n    interval: 5\n    meters: [cpu]\n"
                        "    pollsters: {processes: {}}\n    discovery_params: {local_processes: {cmdline: all}}\n")
    with pytest.raises(PollingConfigError, match="source 'procs': discovery_params.local_processes: cmdline must be"):
        load_polling(p, "compute")
