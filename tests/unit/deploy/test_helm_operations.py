"""The chart as a cluster operator meets it (issue 17): which edits roll which workloads, offline
renders and the signing key, the compute DaemonSet on the node, the topics and schema Job, the
processor's scaling, the alerts, the escape hatches and the generated values table."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import helm_python as helm
import pytest
import yaml
from markdown_it import MarkdownIt

from tests.unit.deploy.manifests import (
    CHART,
    FULL,
    KEYS,
    NAMESPACE,
    RELEASE,
    WORKLOADS,
    by_kind,
    containers,
    hook,
    objects,
    pod_spec,
    render,
    render_files,
    secret_data,
)

ZK = {"zookeeper": {"hosts": "zk:2181"}}
OPENSTACK = {"api": {"enabled": True, "tokens": [{"token": "a-static-api-token-0123", "user_id": "u",
                                                  "project_id": "p", "roles": ["admin"]}]},
             "ceilometerBridge": {"enabled": True, "telemetrySecret": "the-ceilometer-telemetry-secret"}}
ROLLING = {"compute-poller": "DaemonSet", "central-poller": "Deployment", "processor": "Deployment",
           "notifier": "Deployment", "api": "Deployment", "ceilometer-bridge": "Deployment"}
SIGNING = set(ROLLING) - {"api"}  # every workload that signs or verifies records


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as c:
        yield c


def merged(*parts: dict) -> dict:
    out: dict = {}
    for part in parts:
        stack = [(out, part)]
        while stack:
            dst, src = stack.pop()
            for k, v in src.items():
                if isinstance(v, dict) and isinstance(dst.get(k), dict):
                    stack.append((dst[k], v))
                else:
                    dst[k] = copy.deepcopy(v)
    return out


def workload(docs: list[dict], component: str) -> dict:
    return by_kind(docs, ROLLING[component])[f"{FULL}-{component}"]


def checksums(chart, values: dict) -> dict[str, tuple[str, str]]:
    """Component -> (checksum/config, checksum/secret) of every rolling workload ``values`` render."""
    docs = render(chart, values)
    out = {}
    for component in [c for c in ROLLING if f"{FULL}-{c}" in by_kind(docs, ROLLING[c])]:
        ann = workload(docs, component)["spec"]["template"]["metadata"]["annotations"]
        out[component] = (ann["checksum/config"], ann["checksum/secret"])
    return out


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


# --- 1. rollouts follow config and secrets, per component -------------------------------------

@pytest.mark.parametrize("change, rolls", [
    ({"config": {"notifier": {"timeout": 5}}}, {"notifier"}),
    # The bridge keeps its records within the processor's limits: it reads that section too.
    ({"config": {"processor": {"batch_size": 5000}}}, {"processor", "ceilometer-bridge"}),
    ({"config": {"poller": {"interval": 5}}}, {"compute-poller", "central-poller"}),
    ({"pipeline": None}, {"processor", "ceilometer-bridge"}),  # processor.pipeline is in that section
    ({"computePoller": {"polling": {"sources": [{"name": "host", "interval": 5, "meters": ["*"],
                                                 "pollsters": {"host": {}}}]}}}, {"compute-poller"}),
    ({"config": {"alarms": {"grace": 5}}}, {"processor"}),
    ({"config": {"kafka": {"session_timeout_ms": 10000}}}, SIGNING),  # the API has no Kafka client
    ({"config": {"coordination": {"session_timeout": 20}}}, {"compute-poller", "central-poller", "processor", "api"}),
    ({"config": {"log_level": "DEBUG"}}, set(ROLLING)),
    ({"config": {"api": {"max_results": 50}}}, {"api"}),
    ({"config": {"ceilometer": {"batch_size": 500}}}, {"ceilometer-bridge"}),
    ({"ceilometerBridge": {"meters": {"metric": []}}}, {"ceilometer-bridge"}),
    ({"config": {"future_section": {"x": 1}}}, set(ROLLING)),  # a section the chart does not know: everyone
    ({"signing": {"active": "2026-11"}}, SIGNING),  # the notifier verifies signed alarm records
])
def test_a_config_edit_rolls_only_the_workloads_that_read_it(chart, change, rolls):
    base = merged(KEYS, ZK, OPENSTACK)
    before, after = checksums(chart, base), checksums(chart, merged(base, change))
    assert before.keys() == after.keys() == ROLLING.keys()
    changed = {c for c in ROLLING if before[c][0] != after[c][0]}
    assert changed == rolls
    assert all(before[c][1] == after[c][1] for c in ROLLING), "a config edit changed a secret checksum"


@pytest.mark.parametrize("change, rolls", [
    ({"signing": {"keys": {"2026-12": "fedcba9876543210fedcba9876543210"}}}, SIGNING),
    ({"clickhouse": {"url": "clickhouse://streams:new-password@clickhouse:9000/streams"}},
     {"processor", "api", "ceilometer-bridge"}),
    ({"kafka": {"sasl": {"password": "rotated"}}}, SIGNING),
    ({"api": {"tokens": [{"token": "a-rotated-api-token-89", "user_id": "u", "project_id": "p"}]}}, {"api"}),
    ({"ceilometerBridge": {"telemetrySecret": "a-rotated-telemetry-secret"}}, {"ceilometer-bridge"}),
    # keystone reads another credential: the API's secret checksum follows api.auth.
    ({"config": {"api": {"auth": "keystone"}}, "api": {"keystone": {"auth_url": "https://ks:5000/v3"}}}, {"api"}),
])
def test_a_secret_edit_rolls_the_workloads_that_read_it(chart, change, rolls):
    sasl = {"kafka": {"sasl": {"mechanism": "PLAIN", "username": "u", "password": "p"}}}
    base = merged(KEYS, ZK, sasl, OPENSTACK)
    before, after = checksums(chart, base), checksums(chart, merged(base, change))
    assert {c for c in ROLLING if before[c][1] != after[c][1]} == rolls


def test_key_rotation_step_one_reaches_every_verifier_before_step_two(chart):
    # README "Key rotation": adding a key changes the processors' pod templates (so they roll and
    # know it) while signing.active still names the old key in what the pollers read.
    base = merged(KEYS, ZK)
    added = merged(base, {"signing": {"keys": {"2026-12": "fedcba9876543210fedcba9876543210"}}})
    docs = render(chart, added)
    settings = yaml.safe_load(by_kind(docs, "ConfigMap")[FULL]["data"]["streams.yaml"])
    assert "signing" not in settings  # no active key named: ...
    added["signing"]["active"] = "2026-11"  # ... so the operator pins the old one while adding
    assert checksums(chart, base)["processor"][1] != checksums(chart, added)["processor"][1]
    switched = merged(added, {"signing": {"active": "2026-12"}})
    assert checksums(chart, added)["compute-poller"][0] != checksums(chart, switched)["compute-poller"][0]


# --- 2. offline renders and the signing key ---------------------------------------------------

def test_an_offline_render_without_keys_fails_with_what_to_set(chart):
    with pytest.raises(helm.HelmRenderError) as exc:
        render(chart, {})
    message = str(exc.value)
    assert "cannot be read" in message and "helm template" in message
    assert "signing.keys" in message and "secrets.existingSecret" in message
    render(chart, KEYS)
    render(chart, {"secrets": {"existingSecret": "streams-credentials"}, "clickhouse": {"url": ""}})


@pytest.fixture(scope="module")
def probe_chart(tmp_path_factory):
    """The chart plus one template that calls the key resolution with simulated `lookup` answers
    (values `probe.online` and `probe.installed`), since an offline render cannot reach a cluster."""
    root = tmp_path_factory.mktemp("chart") / "streams"
    shutil.copytree(CHART, root)  # files/grafana is a link: copy what it points at
    (root / "values.schema.json").unlink()
    (root / "templates" / "zz-probe.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: probe}\ndata:\n'
        '  keys: {{ include "streams.resolveSigningKeys" (dict "ctx" $ "online" .Values.probe.online '
        '"installed" .Values.probe.installed) | quote }}\n')
    with helm.Chart.load(root) as c:
        yield c


def resolved_keys(chart, values: dict, online: bool, installed: dict) -> dict:
    out = render_files(chart, merged(values, {"probe": {"online": online, "installed": installed}}))
    (doc,) = yaml.safe_load_all(out["streams/templates/zz-probe.yaml"])
    return json.loads(doc["data"]["keys"])


def test_keys_are_generated_on_a_real_install_and_kept_on_upgrades(probe_chart):
    import base64

    given = {"2026-11": "0123456789abcdef0123456789abcdef"}
    installed = {"signing-keys": base64.b64encode(json.dumps({"generated": "x" * 48}).encode()).decode()}
    # Offline renders of the probe chart still need keys for its own Secret; the probe is separate.
    assert resolved_keys(probe_chart, KEYS, True, installed) == KEYS["signing"]["keys"] == given
    no_keys = {"secrets": {"existingSecret": "elsewhere"}}  # keeps secret.yaml out of this render
    assert resolved_keys(probe_chart, no_keys, True, installed) == {"generated": "x" * 48}  # upgrade: kept
    assert resolved_keys(probe_chart, no_keys, False, installed) == {"generated": "x" * 48}
    fresh = resolved_keys(probe_chart, no_keys, True, {})  # first real install: one new key
    assert list(fresh) == ["generated"] and len(fresh["generated"]) == 48
    with pytest.raises(helm.HelmRenderError, match="cannot be read"):
        resolved_keys(probe_chart, no_keys, False, {})


# --- 3. the compute DaemonSet -----------------------------------------------------------------

def test_daemonset_metrics_port_binding_node_name_and_os(chart):
    docs = render(chart, merged(KEYS, {"computePoller": {"metricsPort": 19464, "nodeSelector": {"pool": "a"}}}))
    ds = workload(docs, "compute-poller")
    spec = pod_spec(ds)
    (c,) = spec["containers"]
    env = env_of(c)
    assert c["ports"] == [{"name": "metrics", "containerPort": 19464, "protocol": "TCP"}]
    assert env["STREAMS_POLLER__METRICS_PORT"]["value"] == "19464"
    assert env["STREAMS_METRICS_HOST"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux", "pool": "a"}
    service = by_kind(docs, "Service")[f"{FULL}-compute-poller"]
    assert service["spec"]["ports"][0]["port"] == 19464
    # Without the host network there is no node port to protect: listen on the pod's address.
    docs = render(chart, merged(KEYS, {"computePoller": {"hostNetwork": False}}))
    (c,) = pod_spec(workload(docs, "compute-poller"))["containers"]
    assert "STREAMS_METRICS_HOST" not in env_of(c) and "NODE_NAME" in env_of(c)
    docs = render(chart, merged(KEYS, {"computePoller": {"metricsBindHostIP": False}}))
    assert "STREAMS_METRICS_HOST" not in env_of(pod_spec(workload(docs, "compute-poller"))["containers"][0])


def test_node_name_is_the_host_resource_id(monkeypatch):
    from streams.pollers.compute import NODE_NAME_ENV, LocalHostDiscovery, LocalProcessDiscovery

    assert NODE_NAME_ENV == "NODE_NAME"
    monkeypatch.setenv("NODE_NAME", "node-a")
    (host,) = LocalHostDiscovery().discover()
    assert host.id == "node-a" and host.metadata["host"] == "node-a"
    assert all(r.id.startswith("node-a/process/") for r in LocalProcessDiscovery(limit=3).discover())


def test_readme_gives_no_sys_ptrace_advice_and_names_the_privileged_level():
    readme = (CHART / "README.md").read_text()
    values = (CHART / "values.yaml").read_text()
    assert "privileged" in readme and "pod-security.kubernetes.io/enforce=privileged" in readme
    for text in (readme, values):
        # The old advice ("you may grant CAP_SYS_PTRACE through computePoller.securityContext") does
        # nothing for uid 10001: capabilities added to a non-root container never become effective.
        assert not re.search(r"you may grant|add: \[?\s*\"?SYS_PTRACE", text), "SYS_PTRACE advice is back"
    assert "changes nothing" in readme


def test_compute_poller_in_its_own_namespace(chart):
    values = merged(KEYS, {"computePoller": {"namespace": "streams-node"}})
    docs = render(chart, values)
    ns = "streams-node"
    ds = workload(docs, "compute-poller")
    assert ds["metadata"]["namespace"] == ns
    spec = pod_spec(ds)
    config = [v for v in spec["volumes"] if v["name"] == "config"][0]["configMap"]["name"]
    cms, secrets = objects(docs, "ConfigMap"), objects(docs, "Secret")
    assert (ns, config) in cms
    assert set(cms[(ns, config)]["data"]) == {"streams.yaml", "polling-compute.yaml"}
    assert cms[(ns, config)]["data"]["streams.yaml"] == by_kind(docs, "ConfigMap")[FULL]["data"]["streams.yaml"]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in spec["containers"][0]["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {FULL} and set(secret_data(secrets[(ns, FULL)])) == {"signing-keys"}
    assert secret_data(secrets[(ns, FULL)])["signing-keys"] == secret_data(secrets[(NAMESPACE, FULL)])["signing-keys"]
    assert (ns, spec["serviceAccountName"]) in objects(docs, "ServiceAccount")
    assert (ns, f"{FULL}-compute-poller") in objects(docs, "Service")
    # Everything else stays in the release's namespace.
    others = [d for d in docs if d["kind"] in WORKLOADS and d["metadata"]["name"] != f"{FULL}-compute-poller"]
    assert others and all(d["metadata"].get("namespace", NAMESPACE) == NAMESPACE for d in others)


# --- 4. the topics and schema Job -------------------------------------------------------------

def test_job_waits_for_the_services_within_a_deadline_under_helms_timeout(chart):
    docs = render(chart, merged(KEYS, ZK))
    job = by_kind(docs, "Job")[f"{FULL}-migrations"]
    first = pod_spec(job)["initContainers"][0]
    assert first["name"] == "wait" and first["args"] == ["wait", "--timeout", "120"]
    assert job["spec"]["activeDeadlineSeconds"] < 300  # Helm's default --timeout
    assert int(first["args"][2]) < job["spec"]["activeDeadlineSeconds"]
    with pytest.raises(helm.HelmRenderError, match="waitTimeoutSeconds .* must be below"):
        render(chart, merged(KEYS, {"migrations": {"waitTimeoutSeconds": 300, "activeDeadlineSeconds": 240}}))


def test_wait_waits_for_what_is_configured(monkeypatch):
    from click.testing import CliRunner

    import streams.checks as checks
    from streams.cli import cli

    seen = []
    for name in checks.DEPENDENCIES:
        monkeypatch.setitem(checks.PROBES, name, lambda s, t, name=name: seen.append(name) or name)
    monkeypatch.setenv("STREAMS_COORDINATION__HOSTS", "zk:2181")
    result = CliRunner().invoke(cli, ["wait", "--timeout", "5"])
    assert result.exit_code == 0, result.output
    assert seen == ["kafka", "clickhouse", "zookeeper"] and "zookeeper: ready after" in result.output

    def never(settings, timeout):
        raise checks.CheckFailed("connection refused")

    monkeypatch.setitem(checks.PROBES, "kafka", never)
    result = CliRunner().invoke(cli, ["wait", "--timeout", "1", "kafka"])
    assert result.exit_code == 1 and "kafka did not answer within 1 s: connection refused" in result.output


def test_job_without_helm_hooks_is_a_plain_job_named_after_what_it_runs(chart):
    values = merged(KEYS, {"migrations": {"useHelmHooks": False,
                                          "jobAnnotations": {"argocd.argoproj.io/sync-wave": "-1"}}})
    docs = render(chart, values)
    assert not [d for d in docs if hook(d) and hook(d) != "test"]
    (job,) = by_kind(docs, "Job").values()
    assert job["metadata"]["name"].startswith(f"{FULL}-migrations-")
    assert job["metadata"]["annotations"] == {"argocd.argoproj.io/sync-wave": "-1"}
    volumes = {v["name"]: v for v in pod_spec(job)["volumes"]}
    assert volumes["config"]["configMap"]["name"] == FULL
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for c in containers(job) for e in c["env"] if "valueFrom" in e}
    assert refs == {FULL}
    assert by_kind(render(chart, values), "Job").keys() == by_kind(docs, "Job").keys()  # stable
    changed = by_kind(render(chart, merged(values, {"config": {"processor": {"app_id": "other"}}})), "Job")
    assert changed.keys() != by_kind(docs, "Job").keys()


# --- 5. the processor: replicas, KEDA, spread -------------------------------------------------

def test_processor_replicas_above_the_partitions_are_refused(chart):
    render(chart, merged(KEYS, {"processor": {"replicas": 12}, "kafka": {"partitions": 12}}))
    with pytest.raises(helm.HelmRenderError, match="processor.replicas is 13 but kafka.partitions is 12"):
        render(chart, merged(KEYS, {"processor": {"replicas": 13}, "kafka": {"partitions": 12}}))


def test_keda_scales_on_lag_up_to_the_partition_count(chart):
    values = merged(KEYS, {"kafka": {"partitions": 6}, "processor": {"autoscaling": {
        "enabled": True, "maxReplicas": 20, "lagThreshold": 500}}})
    docs = render(chart, values)
    (so,) = by_kind(docs, "ScaledObject").values()
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert so["spec"]["scaleTargetRef"] == {"name": f"{FULL}-processor"}
    assert so["spec"]["maxReplicaCount"] == 6 and so["spec"]["minReplicaCount"] == 1
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"] == {"bootstrapServers": "kafka:9092", "consumerGroup": "streams-processor",
                                   "topic": "samples", "lagThreshold": "500", "activationLagThreshold": "0",
                                   "offsetResetPolicy": "earliest", "allowIdleConsumers": "false"}
    assert "authenticationRef" not in trigger and not by_kind(docs, "TriggerAuthentication")
    assert "replicas" not in workload(docs, "processor")["spec"]  # left to KEDA
    assert "replicas" in workload(render(chart, KEYS), "processor")["spec"]


def test_keda_gets_the_kafka_credentials(chart):
    values = merged(KEYS, {"processor": {"autoscaling": {"enabled": True}}, "kafka": {
        "sasl": {"mechanism": "SCRAM-SHA-256", "username": "streams", "password": "pw"},
        "tls": {"enabled": True, "caSecret": "kafka-ca", "clientSecret": "user", "clientCertKey": "user.crt",
                "clientKeyKey": "user.key"}}})
    docs = render(chart, values)
    (so,) = by_kind(docs, "ScaledObject").values()
    meta = so["spec"]["triggers"][0]["metadata"]
    assert meta["sasl"] == "scram_sha256" and meta["tls"] == "enable"
    (auth,) = by_kind(docs, "TriggerAuthentication").values()
    assert so["spec"]["triggers"][0]["authenticationRef"] == {"name": auth["metadata"]["name"]}
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {"password": (FULL, "kafka-sasl-password"), "ca": ("kafka-ca", "ca.crt"),
                    "cert": ("user", "user.crt"), "key": ("user", "user.key")}
    (env_ref,) = auth["spec"]["env"]
    processor = pod_spec(workload(docs, "processor"))["containers"][0]
    assert env_ref["containerName"] == processor["name"]
    assert env_of(processor)[env_ref["name"]]["value"] == "streams"
    assert get_sasl("PLAIN", chart) == "plaintext" and get_sasl("SCRAM-SHA-512", chart) == "scram_sha512"


def get_sasl(mechanism: str, chart) -> str:
    docs = render(chart, merged(KEYS, {"processor": {"autoscaling": {"enabled": True}},
                                       "kafka": {"sasl": {"mechanism": mechanism, "username": "u"}}}))
    return next(iter(by_kind(docs, "ScaledObject").values()))["spec"]["triggers"][0]["metadata"]["sasl"]


def test_topology_spread_gets_the_component_selector(chart):
    docs = render(chart, merged(KEYS, {"notifier": {"topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}]}}))
    (spread,) = pod_spec(workload(docs, "processor"))["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "processor"
    (spread,) = pod_spec(workload(docs, "notifier"))["topologySpreadConstraints"]
    assert spread["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "notifier"


# --- 6. alerts --------------------------------------------------------------------------------

def exported_metrics() -> set[str]:
    """Names the components export, as Prometheus sees them (counters with _total)."""
    from prometheus_client import REGISTRY

    import streams.alarms.stage  # noqa: F401  (modules that define metrics)
    import streams.api.app  # noqa: F401
    import streams.bridge.service  # noqa: F401
    import streams.coordination.registry  # noqa: F401
    import streams.notifiers.service  # noqa: F401
    import streams.observability  # noqa: F401

    names = set()
    for collector in list(REGISTRY._collector_to_names):
        for metric in collector.collect():  # a labelled metric has no samples until used: use its name
            names.add(f"{metric.name}_total" if metric.type == "counter" else metric.name)
    return names


def test_prometheus_rule_alerts_on_metrics_that_exist(chart):
    docs = render(chart, merged(KEYS, ZK, OPENSTACK, {"metrics": {"prometheusRule": {"enabled": True,
                                                                                     "labels": {"release": "kps"}}}}))
    (rule,) = by_kind(docs, "PrometheusRule").values()
    assert rule["metadata"]["labels"]["release"] == "kps"
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(rules) == {"StreamsConsumerLagGrowing", "StreamsDeadLetters", "StreamsSinkFailing",
                          "StreamsAlarmEvaluatorStopped", "StreamsPollerNotReporting", "StreamsComputePollerMissing",
                          "StreamsCentralPollerMissing", "StreamsNotifierDeadLetters",
                          "StreamsCeilometerBridgeDeadLetters", "StreamsApiErrors"}
    assert "streams-ceilometer-bridge" in rules["StreamsConsumerLagGrowing"]["expr"]  # its group's lag too
    assert 'status=~"5.."' in rules["StreamsApiErrors"]["expr"] and "> 0.05" in rules["StreamsApiErrors"]["expr"]
    assert "streams_bridge_dead_letters_total" in rules["StreamsCeilometerBridgeDeadLetters"]["expr"]
    exported = exported_metrics()
    for name, r in rules.items():
        for metric in re.findall(r"\bstreams_[a-z_]+", r["expr"]):
            assert metric in exported, f"{name} reads {metric}, which no component exports"
        assert r["labels"]["severity"] in ("warning", "critical") and r["annotations"]["summary"]
        assert r["expr"].count("(") == r["expr"].count(")") and r["expr"].count("{") == r["expr"].count("}")
    assert "kafka_consumergroup_lag" in rules["StreamsConsumerLagGrowing"]["expr"]
    assert "streams_notifier_dead_letters_total" in rules["StreamsNotifierDeadLetters"]["expr"]
    # Without ZooKeeper there is no registry to count against.
    docs = render(chart, merged(KEYS, {"metrics": {"prometheusRule": {"enabled": True}}}))
    (rule,) = by_kind(docs, "PrometheusRule").values()
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert not {"StreamsComputePollerMissing", "StreamsApiErrors", "StreamsCeilometerBridgeDeadLetters"} & alerts


def test_alarm_definitions_gauge_follows_the_watcher(monkeypatch):
    import streams.alarms.definitions as definitions
    from streams.alarms.evaluator import AlarmSet
    from streams.alarms.stage import ALARM_DEFINITIONS, create_alarm_stage
    from streams.config import Settings

    seen = {}

    class Watcher:  # the ZooKeeper watcher's callback contract, without ZooKeeper
        def __init__(self, session, on_change=None, **kwargs):
            seen["on_change"] = on_change
            self.alarms = AlarmSet()

        def disable(self, *args):
            pass

    class App:
        def add_dependency(self, dep):
            pass

    monkeypatch.setattr(definitions, "AlarmWatcher", Watcher)
    settings = Settings(coordination={"hosts": "zk:2181"}, signing={"keys": {"k": "secret-secret-secret"}})
    assert create_alarm_stage(settings, App()) is not None
    seen["on_change"](type("Alarms", (), {"by_id": {"a": 1, "b": 2}})())
    assert ALARM_DEFINITIONS._value.get() == 2


# --- 7. escape hatches ------------------------------------------------------------------------

def test_image_digest_and_global_registry(chart):
    digest = "sha256:" + "a" * 64
    docs = render(chart, merged(KEYS, {"image": {"digest": digest, "tag": "ignored"},
                                       "global": {"imageRegistry": "mirror.example:5000"}}))
    images = {c["image"] for d in docs if d["kind"] in WORKLOADS for c in containers(d)}
    assert images == {f"mirror.example:5000/streams-metering/streams@{digest}"}
    docs = render(chart, merged(KEYS, {"image": {"registry": "", "repository": "streams", "tag": "1.2"}}))
    assert {c["image"] for d in docs if d["kind"] in WORKLOADS for c in containers(d)} == {"streams:1.2"}
    with pytest.raises(helm.HelmValuesError, match="/image/digest"):
        render(chart, merged(KEYS, {"image": {"digest": "latest"}}))


def test_extra_volumes_env_from_labels_and_probes_reach_every_workload(chart):
    extra = {"extraVolumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
             "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/corp-ca", "readOnly": True}],
             "extraEnvFrom": [{"secretRef": {"name": "streams-extra"}}],
             "podLabels": {"team": "metering"},
             "processor": {"probes": {"readiness": {"periodSeconds": 3}}, "podLabels": {"tier": "stream"},
                           "extraEnvFrom": [{"configMapRef": {"name": "processor-extra"}}]}}
    docs = render(chart, merged(KEYS, ZK, OPENSTACK, extra))
    assert {f"{FULL}-api", f"{FULL}-ceilometer-bridge"} <= set(by_kind(docs, "Deployment"))
    for doc in [d for d in docs if d["kind"] in WORKLOADS]:
        spec, labels = pod_spec(doc), (doc["metadata"] if doc["kind"] == "Pod" else doc["spec"]["template"]["metadata"])
        assert {"name": "ca", "configMap": {"name": "corp-ca"}} in spec["volumes"], doc["metadata"]["name"]
        assert labels["labels"]["team"] == "metering", doc["metadata"]["name"]
        for c in containers(doc):
            assert {"name": "ca", "mountPath": "/etc/corp-ca", "readOnly": True} in c["volumeMounts"]
            assert {"secretRef": {"name": "streams-extra"}} in c["envFrom"]
    processor = workload(docs, "processor")
    (c,) = pod_spec(processor)["containers"]
    assert c["envFrom"] == [{"secretRef": {"name": "streams-extra"}}, {"configMapRef": {"name": "processor-extra"}}]
    assert c["readinessProbe"]["periodSeconds"] == 3 and c["readinessProbe"]["timeoutSeconds"] == 5
    assert processor["spec"]["template"]["metadata"]["labels"]["tier"] == "stream"
    assert "tier" not in processor["spec"]["selector"]["matchLabels"]
    (n,) = pod_spec(workload(docs, "notifier"))["containers"]
    assert n["readinessProbe"]["periodSeconds"] == 10


def test_network_policy(chart):
    docs = render(chart, merged(KEYS, {"networkPolicy": {"enabled": True, "metricsFrom": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]},
        "computePoller": {"namespace": "streams-node"}}))
    policies = objects(docs, "NetworkPolicy")
    assert set(policies) == {(NAMESPACE, FULL), ("streams-node", FULL)}
    np = policies[(NAMESPACE, FULL)]["spec"]
    assert np["policyTypes"] == ["Ingress"] and "egress" not in np
    (rule,) = np["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "monitoring"
    assert np["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "streams",
                                                "app.kubernetes.io/instance": RELEASE}
    docs = render(chart, merged(KEYS, {"networkPolicy": {"enabled": True, "egress": [
        {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}}))
    np = by_kind(docs, "NetworkPolicy")[FULL]["spec"]
    assert np["policyTypes"] == ["Ingress", "Egress"]
    assert np["egress"][0]["ports"][0] == {"port": 53, "protocol": "UDP"} and np["egress"][1]["to"]


def test_helm_test_pod_checks_topics_tables_and_the_registry(chart):
    docs = render(chart, merged(KEYS, ZK))
    pod = by_kind(docs, "Pod")[f"{FULL}-test"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (c,) = pod["spec"]["containers"]
    assert c["args"] == ["check", "--service", "streams-poll-central", "--service", "streams-poll-compute",
                         "--service", "streams-process"]
    docs = render(chart, merged(KEYS, {"computePoller": {"enabled": False}}))
    assert by_kind(docs, "Pod")[f"{FULL}-test"]["spec"]["containers"][0]["args"] == ["check"]
    assert not by_kind(render(chart, merged(KEYS, {"tests": {"enabled": False}})), "Pod")


def test_check_reports_each_problem(monkeypatch):
    from click.testing import CliRunner

    import streams.checks as checks
    from streams.cli import cli

    monkeypatch.setattr(checks, "topic_problems", lambda s: ["topic 'samples' does not exist"])
    monkeypatch.setattr(checks, "schema_problems", lambda s: [])
    monkeypatch.setattr(checks, "registry_problems", lambda s, b: [f"no live {x!r}" for x in b])
    result = CliRunner().invoke(cli, ["check", "--service", "streams-process"])
    assert result.exit_code == 1
    assert result.output.splitlines() == ["topics: FAILED", "  - topic 'samples' does not exist", "schema: ok",
                                          "services: FAILED", "  - no live 'streams-process'",
                                          "Error: 2 check(s) failed"]


# --- 8. the README's values table -------------------------------------------------------------

def readme_rows() -> list[list[str]]:
    """The values table as GitHub renders it: the cells of each body row (GFM tables)."""
    readme = (CHART / "README.md").read_text()
    section = readme.split("<!-- values-table:start -->", 1)[1].split("<!-- values-table:end -->", 1)[0]
    tokens = MarkdownIt("commonmark").enable("table").parse(section)
    rows, row, in_body = [], None, False
    for t in tokens:
        if t.type == "tbody_open":
            in_body = True
        elif t.type == "tr_open" and in_body:
            row = []
        elif t.type == "inline" and row is not None:
            row.append(t.content)
        elif t.type == "tr_close" and row is not None:
            rows.append(row)
            row = None
    return rows


def test_values_table_is_generated_from_values_yaml():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(CHART / "values_table.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_values_table_renders_three_cells_per_row_and_covers_every_value():
    rows = readme_rows()
    assert len(rows) > 100
    for cells in rows:
        assert len(cells) == 3 and all(c.strip() for c in cells), cells
    documented = {cells[0].strip("`") for cells in rows}

    def leaves(d: dict, prefix: str = ""):
        for k, v in d.items():
            path = f"{prefix}{k}"
            if path in documented:
                continue
            if isinstance(v, dict) and v:
                yield from leaves(v, f"{path}.")
            else:
                yield path

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert not list(leaves(values)), "values.yaml keys without a `# --` comment"
    assert not [p for p in documented if p.startswith("__")]


def test_packaged_chart_leaves_the_generator_out(tmp_path):
    archive = helm.package(CHART, destination=tmp_path)
    with helm.Chart.load_archive(Path(archive).read_bytes()) as packaged:
        assert "values_table.py" not in {f["name"] for f in packaged.files}
