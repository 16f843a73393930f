"""The Helm chart (deploy/helm/streams), rendered and linted by Helm's own Go SDK (helm-python-sdk).

Every rendered manifest is validated against the Kubernetes schemas of a current release
(kubernetes-validate, bundled schemas, offline), and the config files as rendered into the
ConfigMaps are loaded by the project's own loaders with the environment a container would get,
so the chart and the code cannot drift apart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from streams.api.auth import TokenAuth, create_authenticator
from streams.bridge.meters import load_meters
from streams.cli import cli
from streams.config import load_settings
from streams.pipeline import load_pipeline
from streams.pollers.polling import load_polling
from tests.unit.deploy.manifests import (
    CHART,
    KEYS,
    NAMESPACE,
    RELEASE,
    ROOT,
    WORKLOADS,
    by_kind,
    container_env,
    containers,
    namespace_of,
    objects,
    pod_spec,
    render,
    secret_data,
)

GRAFANA = ROOT / "deploy" / "grafana"
KUBE_VERSION = "1.37"  # the newest schemas kubernetes-validate bundles; checked below

ZK = {"zookeeper": {"hosts": "zk-0.zk:2181,zk-1.zk:2181", "username": "streams", "password": "zk-s3cret"}}
TOKENS = [{"token": "a-static-api-token-0123", "user_id": "admin", "project_id": "admin", "roles": ["admin"]},
          {"token": "another-api-token-4567", "user_id": "heat", "project_id": "demo"}]
API = {"api": {"enabled": True, "tokens": TOKENS}}
BRIDGE = {"ceilometerBridge": {"enabled": True, "telemetrySecret": "the-ceilometer-telemetry-secret"}}
METERS = {"metric": [{"name": "vcpus", "event_type": "compute.instance.*", "type": "gauge", "unit": "vcpu",
                      "volume": "$.payload.vcpus", "resource_id": "$.payload.instance_id",
                      "project_id": "$.payload.tenant_id", "user_id": "$.payload.user_id"}]}
COMBOS: dict[str, dict] = {
    "defaults": {**KEYS},
    "replicas": {**KEYS, **ZK, "centralPoller": {"replicas": 3}, "processor": {"replicas": 6},
                 "notifier": {"replicas": 2}, "kafka": {"partitions": 24}},
    "existing-secret": {"secrets": {"existingSecret": "streams-credentials"}, "clickhouse": {"url": ""}},
    "tls-sasl": {**KEYS, "kafka": {"bootstrapServers": "kafka-0.kafka:9093,kafka-1.kafka:9093",
                                   "sasl": {"mechanism": "SCRAM-SHA-512", "username": "streams", "password": "s3cret"},
                                   "tls": {"enabled": True, "caSecret": "kafka-ca", "clientSecret": "streams-kafka-user",
                                           "clientCertKey": "user.crt", "clientKeyKey": "user.key"}},
                 "processor": {"autoscaling": {"enabled": True}}},
    "tls-only": {**KEYS, "kafka": {"tls": {"enabled": True}}},
    "servicemonitor": {**KEYS, **ZK, **API, **BRIDGE, "metrics": {"serviceMonitor": {"enabled": True,
                                                                     "labels": {"release": "kube-prometheus-stack"}},
                                                 "prometheusRule": {"enabled": True}},
                       "grafana": {"datasource": {"enabled": True}}, "clickhouse": {"readonlyPassword": "ro-pass"},
                       "networkPolicy": {"enabled": True, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}},
    # The OpenStack services with the operator's Secret, SASL, an Ingress and the bridge's own meters.
    "openstack": {"secrets": {"existingSecret": "streams-credentials"}, "clickhouse": {"url": ""},
                  "zookeeper": {"hosts": "zk:2181"}, "api": {"enabled": True, "replicas": 3, "ingress": {
                      "enabled": True, "className": "nginx", "host": "aodh.example.com", "tlsSecret": "aodh-tls"}},
                  "ceilometerBridge": {"enabled": True, "replicas": 2, "meters": METERS},
                  "kafka": {"sasl": {"mechanism": "PLAIN", "username": "streams"}},
                  "config": {"api": {"rate_meters": {"cpu": "cpu.rate"}, "max_results": 500},
                             "ceilometer": {"topics": ["metering.sample.openstack", "event.sample.openstack"]}}},
    # Keystone, and a bridge accepting unsigned Ceilometer data (no telemetry secret at all).
    "keystone": {**KEYS, "zookeeper": {"hosts": "zk:2181"},
                 "config": {"api": {"auth": "keystone"}, "ceilometer": {"allow_empty_secret": True}},
                 "api": {"enabled": True, "keystone": {"auth_url": "https://keystone:5000/v3", "auth_type": "password",
                                                      "username": "aodh", "password": "ks-s3cret"}},
                 "ceilometerBridge": {"enabled": True}},
    "compute-namespace": {**KEYS, **ZK, "computePoller": {"namespace": "streams-node", "metricsPort": 19464},
                          "migrations": {"useHelmHooks": False}},
    "minimal": {"computePoller": {"enabled": False}, "centralPoller": {"enabled": False},
                "notifier": {"enabled": False}, "migrations": {"enabled": False}, "pipeline": None,
                "grafana": {"dashboards": {"enabled": False}}, "serviceAccount": {"create": False},
                "tests": {"enabled": False},
                "signing": {"keys": {"2026-11": "0123456789abcdef0123456789abcdef"}, "active": "2026-11"}},
}
# What an operator's existing Secret holds (secrets.existingSecret).
EXISTING_SECRET = {"signing-keys": json.dumps({"k1": "an-operator-provided-secret-key"}),
                   "clickhouse-url": "clickhouse://writer:pw@clickhouse.db:9000/metering",
                   "kafka-sasl-password": "operator-sasl-password", "api-tokens": json.dumps(TOKENS[:1]),
                   "ceilometer-telemetry-secret": "an-operator-telemetry-secret"}
# Downward-API fields a pod would see.
FIELDS = {"spec.nodeName": "node-a", "status.hostIP": "10.0.0.7", "status.podIP": "10.1.0.9"}
CRDS = ("monitoring.coreos.com/", "keda.sh/")


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as c:
        yield c


@pytest.fixture(scope="module", params=sorted(COMBOS))
def rendered(request, chart):
    return request.param, render(chart, COMBOS[request.param])


# --- Helm: render, lint, Kubernetes schemas ---------------------------------------------------

def test_kube_version_is_current():
    assert kubernetes_validate.utils.latest_version().startswith(KUBE_VERSION)


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_lint_reports_no_errors(combo):
    report = helm.lint(CHART, COMBOS[combo], strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}.0")
    errors = [m for m in report["messages"] if m["severity"] >= 2]  # strict: warnings count too
    assert not report["errors"] and not errors, report


def test_every_manifest_validates_against_kubernetes(rendered):
    combo, docs = rendered
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith(CRDS):
            # A CRD's schema is not among Kubernetes' own; their essentials are checked below.
            assert doc["kind"] in {"ServiceMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication"}
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{combo}: {doc['kind']}/{doc['metadata']['name']}: "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")


def test_default_install_has_every_component(chart):
    docs = render(chart, COMBOS["defaults"])
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    full = f"{RELEASE}-streams"
    for kind, name in [("DaemonSet", "compute-poller"), ("Deployment", "central-poller"),
                       ("Deployment", "processor"), ("Deployment", "notifier"), ("Job", "migrations"),
                       ("Service", "processor"), ("PodDisruptionBudget", "processor"),
                       ("ConfigMap", "dashboards"), ("Pod", "test")]:
        assert (kind, f"{full}-{name}") in kinds
    assert ("ServiceAccount", full) in kinds and ("Secret", full) in kinds and ("ConfigMap", full) in kinds
    for kind in ("ServiceMonitor", "PrometheusRule", "ScaledObject", "NetworkPolicy", "StatefulSet", "Ingress"):
        assert not by_kind(docs, kind), kind
    for name in ("api", "ceilometer-bridge"):  # the OpenStack services are opt-in
        assert not [k for k in kinds if k[1] == f"{full}-{name}"], name
    secret = secret_data(by_kind(docs, "Secret")[full])
    assert not {"api-tokens", "api-keystone", "ceilometer-telemetry-secret"} & set(secret)


# --- the config as rendered, loaded by the project's own loaders ------------------------------

def stores(docs: list[dict]) -> tuple[dict, dict]:
    """(ConfigMap data, Secret data) by (namespace, name), with the operator's existing Secret."""
    configmaps = {k: d["data"] for k, d in objects(docs, "ConfigMap").items()}
    secrets = {k: secret_data(d) for k, d in objects(docs, "Secret").items()}
    for ns in {namespace_of(d) for d in docs}:
        secrets.setdefault((ns, "streams-credentials"), EXISTING_SECRET)
    return configmaps, secrets


def local(path: str, files: Path) -> Path:
    assert path.startswith("/etc/streams/"), path
    return files / path.removeprefix("/etc/streams/")


def config_dir(doc: dict, configmaps: dict, root: Path) -> Path:
    """Write the ConfigMap mounted at /etc/streams in ``doc``'s pods under ``root``; returns that dir."""
    (volume,) = [v for v in pod_spec(doc)["volumes"] if v["name"] == "config"]
    files = root / f"{doc['kind']}-{doc['metadata']['name']}"
    files.mkdir()
    for name, text in configmaps[(namespace_of(doc), volume["configMap"]["name"])].items():
        (files / name).write_text(text)
    return files


def test_rendered_config_loads_with_the_project_loaders(rendered, tmp_path, monkeypatch):
    combo, docs = rendered
    configmaps, secrets = stores(docs)
    values = COMBOS[combo]
    workloads = [d for d in docs if d["kind"] in WORKLOADS]
    assert workloads
    for doc in workloads:
        files = config_dir(doc, configmaps, tmp_path)
        for c in containers(doc):
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            env = container_env(c, namespace_of(doc), configmaps, secrets, FIELDS)
            assert env["STREAMS_CONFIG"] == "/etc/streams/streams.yaml"
            for k in [k for k in os.environ if k.startswith("STREAMS_")]:
                monkeypatch.delenv(k)
            for k, v in env.items():
                monkeypatch.setenv(k, v)
            s = load_settings(local(env.pop("STREAMS_CONFIG"), files))
            args = c["args"]
            where = f"{combo}: {doc['kind']}/{doc['metadata']['name']}/{c['name']}"
            assert s.metrics_host in ("0.0.0.0", FIELDS["status.hostIP"]), where
            assert s.kafka.bootstrap_servers == (values.get("kafka", {}).get("bootstrapServers") or "kafka:9092")
            # Kafka security: the files librdkafka and aiokafka would open are mounted in this pod.
            conf = s.kafka.client_config()
            for key in ("ssl.ca.location", "ssl.certificate.location", "ssl.key.location"):
                if key in conf:
                    assert str(Path(conf[key]).parent) in mounts, (where, key)
            if combo == "tls-sasl":
                assert conf["security.protocol"] == "SASL_SSL" and conf["sasl.mechanism"] == "SCRAM-SHA-512"
                assert conf["sasl.password"] == "s3cret" and "ssl.certificate.location" in conf
            if combo == "tls-only":
                assert conf["security.protocol"] == "SSL" and "ssl.ca.location" not in conf  # system CAs
            # Ports of the settings are the ports the probes and Services use.
            port = {"poll": s.poller.metrics_port, "process": s.processor.metrics_port,
                    "notify": s.notifier.metrics_port, "api": s.api.metrics_port,
                    "bridge": s.ceilometer.metrics_port}.get(args[0])
            if port is not None:
                assert [p["containerPort"] for p in c["ports"] if p["name"] == "metrics"] == [port], where
                assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
                assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
                assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
                service = by_kind(docs, "Service")[doc["metadata"]["name"]]
                assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["metrics"] == port, where
            if args == ["api"]:
                # Aodh's port on every interface of the pod, behind the Service's port http.
                assert s.api.host == "0.0.0.0" and [p["containerPort"] for p in c["ports"]] == [s.api.port, port]
                service = by_kind(docs, "Service")[doc["metadata"]["name"]]
                assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]][0] == (
                    "http", s.api.port, "http")
                assert s.coordination.hosts and s.clickhouse.url
                assert "STREAMS_KAFKA__SASL_PASSWORD" not in env  # the API has no Kafka client
                if s.api.auth == "token":  # the tokens in the Secret parse, and `streams api` would start
                    assert isinstance(create_authenticator(s.api), TokenAuth)
                    given = values["api"].get("tokens") or json.loads(EXISTING_SECRET["api-tokens"])
                    assert [t.token.get_secret_value() for t in s.api.tokens] == [t["token"] for t in given]
                else:
                    assert s.api.auth == "keystone" and s.api.keystone["password"].get_secret_value() == "ks-s3cret"
                    assert "ks-s3cret" not in json.dumps(list(configmaps.values()))
            if args == ["bridge", "ceilometer"]:
                s.ceilometer.secret()  # a usable telemetry secret (or unsigned data explicitly allowed)
                assert s.ceilometer.allow_empty_secret or s.ceilometer.telemetry_secret.get_secret_value() in (
                    values["ceilometerBridge"].get("telemetrySecret"), EXISTING_SECRET["ceilometer-telemetry-secret"])
                assert len(s.signing.keyring().keys) >= 1 and s.clickhouse.url and s.ceilometer.store_events
                meters = values["ceilometerBridge"].get("meters")
                definitions = load_meters(local(s.ceilometer.meters, files) if meters else None)
                assert len(definitions) == (len(meters["metric"]) if meters else len(load_meters()))
            if args[0] == "poll":
                assert len(s.signing.keyring().keys) >= 1
                agent, polling = args[args.index("--agent") + 1], args[args.index("--polling") + 1]
                tasks = load_polling(local(polling, files), agent, sample_source=s.poller.source)
                assert tasks, where
            if args[0] == "process":
                assert len(s.signing.keyring().keys) >= 1
                assert s.processor.data_dir.startswith("/var/lib/streams/") and "/var/lib/streams" in mounts
                if values.get("pipeline", True) is None:
                    assert s.processor.pipeline is None
                else:
                    pipeline = load_pipeline(local(s.processor.pipeline, files))
                    assert "clickhouse://" in pipeline.publishers
                if values.get("secrets", {}).get("existingSecret"):
                    assert s.clickhouse.url == EXISTING_SECRET["clickhouse-url"]
                else:
                    assert s.clickhouse.url == "clickhouse://default@clickhouse:9000/streams"
            if args[:2] in (["schema", "migrate"], ["wait", "--timeout"]) or args[0] == "check":
                assert s.clickhouse.database in ("streams", "metering")
            if values.get("zookeeper"):
                assert s.coordination.hosts == values["zookeeper"]["hosts"]
                zk = values["zookeeper"]  # digest credentials: user in streams.yaml, password from the Secret
                assert (s.coordination.username, s.coordination.password.get_secret_value()) == (
                    zk.get("username"), zk.get("password", ""))


def test_hook_job_uses_the_same_config(chart):
    docs = render(chart, COMBOS["tls-sasl"])
    cms = by_kind(docs, "ConfigMap")
    main, hook = cms[f"{RELEASE}-streams"], cms[f"{RELEASE}-streams-migrations"]
    assert main["data"]["streams.yaml"] == hook["data"]["streams.yaml"]
    job = by_kind(docs, "Job")[f"{RELEASE}-streams-migrations"]
    assert [c["args"] for c in containers(job)] == [["wait", "--timeout", "120"], ["topics", "create"],
                                                   ["schema", "migrate"]]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    for d in [hook, by_kind(docs, "Secret")[f"{RELEASE}-streams-migrations"]]:
        # Created before the Job (lower weight), since hooks run before the release's own objects.
        assert int(d["metadata"]["annotations"]["helm.sh/hook-weight"]) < 0


def test_every_command_the_chart_runs_exists(chart):
    commands = set()
    for combo in COMBOS.values():
        for doc in render(chart, combo):
            if doc["kind"] in WORKLOADS:
                commands |= {tuple(c["args"]) for c in containers(doc)}
    assert {("process",), ("notify",), ("topics", "create"), ("schema", "migrate"), ("wait", "--timeout", "120"),
            ("api",), ("bridge", "ceilometer"), ("topics", "create", "--ceilometer")} <= commands
    runner = CliRunner()
    for args in commands:
        result = runner.invoke(cli, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)


# --- security, secrets ------------------------------------------------------------------------

def test_pods_run_as_non_root_with_read_only_root(rendered):
    combo, docs = rendered
    for doc in [d for d in docs if d["kind"] in WORKLOADS]:
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
        assert spec["automountServiceAccountToken"] is False
        for c in containers(doc):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}


def test_no_volume_is_mounted_inside_another(rendered):
    # The kubelet cannot create a mount point inside a read-only (configMap, Secret) volume.
    combo, docs = rendered
    for doc in [d for d in docs if d["kind"] in WORKLOADS]:
        for c in containers(doc):
            paths = [m["mountPath"].rstrip("/") + "/" for m in c["volumeMounts"]]
            nested = [(a, b) for a in paths for b in paths if a != b and b.startswith(a)]
            assert not nested, (combo, doc["metadata"]["name"], nested)


def test_compute_poller_sees_the_node(chart):
    docs = render(chart, {**KEYS, "computePoller": {"tolerations": [{"key": "gpu", "operator": "Exists"}]}})
    ds = by_kind(docs, "DaemonSet")[f"{RELEASE}-streams-compute-poller"]
    spec = pod_spec(ds)
    assert spec["hostPID"] is True and spec["hostNetwork"] is True
    assert spec["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    cgroup = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "cgroup"]
    assert cgroup == [{"name": "cgroup", "mountPath": "/host/sys/fs/cgroup", "readOnly": True}]
    polling = yaml.safe_load(by_kind(docs, "ConfigMap")[f"{RELEASE}-streams"]["data"]["polling-compute.yaml"])
    roots = [s["discovery_params"]["local_cgroups"]["root"] for s in polling["sources"] if "cgroups" in s["pollsters"]]
    assert roots == ["/host/sys/fs/cgroup"]


def test_given_or_existing_keys_are_used(chart):
    given = COMBOS["minimal"]["signing"]["keys"]
    assert json.loads(secret_data(by_kind(render(chart, COMBOS["minimal"]), "Secret")[f"{RELEASE}-streams"])
                      ["signing-keys"]) == given
    docs = render(chart, COMBOS["existing-secret"])
    assert not [s for s in by_kind(docs, "Secret") if not s.endswith("-datasource")]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for d in docs if d["kind"] in WORKLOADS
            for c in containers(d) for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {"streams-credentials"}


def test_service_monitor_scrapes_every_metrics_service(chart):
    docs = render(chart, COMBOS["servicemonitor"])
    (sm,) = by_kind(docs, "ServiceMonitor").values()
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = sm["spec"]["selector"]["matchLabels"]
    services = by_kind(docs, "Service")
    assert len(services) == 6
    for name, svc in services.items():
        assert selector.items() <= svc["metadata"]["labels"].items()
        ports = [p["name"] for p in svc["spec"]["ports"]]
        assert ports == (["http", "metrics"] if name.endswith("-api") else ["metrics"]), name
    sm = by_kind(render(chart, {**COMBOS["compute-namespace"], **COMBOS["servicemonitor"],
                                "computePoller": {"namespace": "streams-node"}}), "ServiceMonitor")
    assert sm[f"{RELEASE}-streams"]["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE, "streams-node"]


# --- Grafana ----------------------------------------------------------------------------------

def test_dashboards_are_deploy_grafanas(chart):
    docs = render(chart, COMBOS["defaults"])
    cm = by_kind(docs, "ConfigMap")[f"{RELEASE}-streams-dashboards"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    expected = {p.name: p.read_text() for p in (GRAFANA / "dashboards").glob("*.json")}
    assert len(expected) == 4 and cm["data"] == expected
    for text in cm["data"].values():
        json.loads(text)


def test_datasource_points_at_clickhouse(chart):
    docs = render(chart, COMBOS["servicemonitor"])
    secret = by_kind(docs, "Secret")[f"{RELEASE}-streams-datasource"]
    assert secret["metadata"]["labels"]["grafana_datasource"] == "1"
    (ds,) = yaml.safe_load(secret["stringData"]["streams-clickhouse.yaml"])["datasources"]
    assert ds["jsonData"]["host"] == "clickhouse" and ds["jsonData"]["port"] == 9000
    assert ds["jsonData"]["defaultDatabase"] == "streams" and ds["jsonData"]["username"] == "grafana"
    assert ds["secureJsonData"]["password"] == "ro-pass"
    source = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "clickhouse.yaml").read_text())
    assert ds["uid"] == source["datasources"][0]["uid"] and ds["type"] == source["datasources"][0]["type"]


# --- values.schema.json and template checks ---------------------------------------------------

@pytest.mark.parametrize("values, where", [
    ({"processor": {"replicas": -1}}, "/processor/replicas"),
    ({"centralPoller": {"replicas": 0}}, "/centralPoller/replicas"),
    ({"notifier": {"replicas": "two"}}, "/notifier/replicas"),
    ({"clickhouse": {"url": ""}}, "/clickhouse/url"),
    ({"clickhouse": {"url": None}}, "missing property 'url'"),
    ({"clickhouse": {"url": "http://clickhouse:8123"}}, "/clickhouse/url"),
    ({"kafka": {"bootstrapServers": ""}}, "/kafka/bootstrapServers"),
    ({"kafka": {"partitions": 0}}, "/kafka/partitions"),
    ({"kafka": {"sasl": {"mechanism": "GSSAPI"}}}, "/kafka/sasl/mechanism"),
    ({"kafka": {"sasl": {"mechanism": "PLAIN"}}}, "/kafka/sasl/username"),
    ({"processor": {"replica": 3}}, "additional properties 'replica'"),
    ({"config": {"processor": {"metrics_port": 0}}}, "/config/processor/metrics_port"),
    ({"zookeeper": {"root": "streams/"}}, "/zookeeper/root"),
    ({"signing": {"keys": {"k1": "short"}}}, "/signing/keys/k1"),
    ({"api": {"replicas": 0}}, "/api/replicas"),
    ({"api": {"tokens": [{"token": "too-short", "user_id": "u", "project_id": "p"}]}}, "/api/tokens/0/token"),
    ({"api": {"tokens": [{"token": "0123456789abcdef", "user_id": "u"}]}}, "missing property 'project_id'"),
    ({"api": {"tokens": [{"token": "0123456789abcdef", "user_id": "u", "project_id": "p", "role": "admin"}]}},
     "additional properties 'role'"),
    ({"config": {"api": {"auth": "none"}}}, "/config/api/auth"),
    ({"config": {"api": {"metrics_port": 0}}}, "/config/api/metrics_port"),
    ({"config": {"ceilometer": {"metrics_port": 0}}}, "/config/ceilometer/metrics_port"),
    ({"config": {"ceilometer": {"topics": []}}}, "/config/ceilometer/topics"),
    ({"ceilometerBridge": {"replicas": 0}}, "/ceilometerBridge/replicas"),
])
def test_schema_rejects_bad_values(chart, values, where):
    with pytest.raises(helm.HelmValuesError) as exc:
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    assert where in str(exc.value)


def test_existing_secret_makes_the_url_optional(chart):
    chart.validate_schema(chart.merge_values(COMBOS["existing-secret"]))


def test_several_central_agents_need_zookeeper(chart):
    with pytest.raises(helm.HelmRenderError, match="zookeeper.hosts is empty"):
        render(chart, {**KEYS, "centralPoller": {"replicas": 2}})
    deployment = by_kind(render(chart, COMBOS["replicas"]), "Deployment")[f"{RELEASE}-streams-central-poller"]
    assert deployment["spec"]["replicas"] == 3


def test_active_signing_key_must_exist(chart):
    with pytest.raises(helm.HelmRenderError, match='signing.active is "2026-12" but signing.keys has no such key id'):
        render(chart, {"signing": {"active": "2026-12", "keys": {"2026-11": "0123456789abcdef0123"}}})


def test_notes_say_what_was_installed(chart):
    notes = chart.render(values=COMBOS["replicas"], name=RELEASE, namespace=NAMESPACE)["streams/templates/NOTES.txt"]
    assert f"{RELEASE}-streams-processor" in notes and "replicas: 6" in notes and "/readyz" in notes
    assert "streams services list" in notes and "created the Kafka topics" in notes
    notes = chart.render(values=COMBOS["minimal"], name=RELEASE, namespace=NAMESPACE)["streams/templates/NOTES.txt"]
    assert "streams topics create" in notes and "compute poller" not in notes


def test_kafka_tls_files_are_where_the_settings_point(chart, tmp_path, monkeypatch):
    docs = render(chart, COMBOS["tls-sasl"])
    processor = by_kind(docs, "Deployment")[f"{RELEASE}-streams-processor"]
    volumes = {v["name"]: v for v in pod_spec(processor)["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in processor["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    # Files each Secret volume will show, as absolute paths in the container.
    files = {f"{mounts['kafka-ca']}/ca.crt"}  # the whole CA Secret: its keys become file names
    files |= {f"{mounts['kafka-client']}/{i['path']}" for i in volumes["kafka-client"]["secret"]["items"]}
    assert volumes["kafka-ca"]["secret"]["secretName"] == "kafka-ca"
    assert {i["key"] for i in volumes["kafka-client"]["secret"]["items"]} == {"user.crt", "user.key"}
    settings = yaml.safe_load(by_kind(docs, "ConfigMap")[f"{RELEASE}-streams"]["data"]["streams.yaml"])["kafka"]
    assert {settings["ssl_ca_location"], settings["ssl_certificate_location"], settings["ssl_key_location"]} == files


def test_packaged_chart_carries_copies_of_the_dashboards(tmp_path):
    # files/grafana is a link to deploy/grafana; `helm package` must store the files themselves.
    archive = helm.package(CHART, destination=tmp_path)
    with helm.Chart.load_archive(Path(archive).read_bytes()) as packaged:
        names = {f["name"] for f in packaged.files}
        assert "files/grafana/build.py" not in names  # .helmignore
        cm = by_kind(render(packaged, KEYS), "ConfigMap")[f"{RELEASE}-streams-dashboards"]
    assert cm["data"] == {p.name: p.read_text() for p in (GRAFANA / "dashboards").glob("*.json")}


def test_clickhouse_cluster_mode_reaches_the_settings(chart, tmp_path):
    keys = {"signing": COMBOS["minimal"]["signing"]}
    for values, path in (({"clickhouse": {"cluster": "streams"}, "zookeeper": {"root": "/prod"}}, "/prod/clickhouse"),
                         ({"clickhouse": {"cluster": "ch", "zookeeperPath": "/ch/tables"}}, "/ch/tables")):
        cm = by_kind(render(chart, {**values, **keys}), "ConfigMap")[f"{RELEASE}-streams"]
        (tmp_path / "streams.yaml").write_text(cm["data"]["streams.yaml"])
        s = load_settings(tmp_path / "streams.yaml")
        assert (s.clickhouse.cluster, s.clickhouse.zookeeper_path) == (values["clickhouse"]["cluster"], path)
    plain = by_kind(render(chart, keys), "ConfigMap")[f"{RELEASE}-streams"]
    assert "cluster" not in yaml.safe_load(plain["data"]["streams.yaml"]).get("clickhouse", {})


# --- the OpenStack services: the Aodh API and the Ceilometer bridge ---------------------------

def env_names(doc: dict) -> dict[str, dict]:
    (c,) = pod_spec(doc)["containers"]
    return {e["name"]: e for e in c["env"]}


def test_api_auth_needs_its_credential_or_an_explicit_noauth(chart):
    zk = {"zookeeper": {"hosts": "zk:2181"}}
    with pytest.raises(helm.HelmRenderError) as exc:
        render(chart, {**KEYS, **zk, "api": {"enabled": True}})
    message = str(exc.value)  # what to set, in every way that works
    for hint in ("api.tokens", "secrets.existingSecret", "api-tokens", "keystone", "noauth"):
        assert hint in message, hint
    with pytest.raises(helm.HelmRenderError, match="api.keystone"):
        render(chart, {**KEYS, **zk, "api": {"enabled": True}, "config": {"api": {"auth": "keystone"}}})
    with pytest.raises(helm.HelmRenderError, match="needs zookeeper.hosts"):
        render(chart, {**KEYS, **API})
    for key, chart_value in (("tokens", "api.tokens"), ("keystone", "api.keystone")):
        with pytest.raises(helm.HelmRenderError, match=f"config.api.{key} is a credential.*set {chart_value}"):
            render(chart, {**KEYS, **zk, **API, "config": {"api": {key: []}}})

    # noauth, chosen explicitly: no credential is read, and NOTES warns.
    values = {**KEYS, **zk, "api": {"enabled": True}, "config": {"api": {"auth": "noauth"}}}
    docs = render(chart, values)
    api = by_kind(docs, "Deployment")[f"{RELEASE}-streams-api"]
    assert set(env_names(api)) == {"STREAMS_CONFIG", "STREAMS_CLICKHOUSE__URL"}
    notes = chart.render(values=values, name=RELEASE, namespace=NAMESPACE)["streams/templates/NOTES.txt"]
    assert "WARNING: config.api.auth is noauth" in notes and "aodh-noauth" in notes

    # token: the tokens are a JSON list in the Secret, read as STREAMS_API__TOKENS.
    docs = render(chart, {**KEYS, **zk, **API})
    env = env_names(by_kind(docs, "Deployment")[f"{RELEASE}-streams-api"])
    assert env["STREAMS_API__TOKENS"]["valueFrom"]["secretKeyRef"] == {"name": f"{RELEASE}-streams", "key": "api-tokens"}
    assert json.loads(secret_data(by_kind(docs, "Secret")[f"{RELEASE}-streams"])["api-tokens"]) == TOKENS
    assert "a-static-api-token" not in json.dumps(by_kind(docs, "ConfigMap"))
    # The operator's Secret stands in for api.tokens (and the hook Job's copy holds no API credential).
    docs = render(chart, {**zk, "secrets": {"existingSecret": "creds"}, "clickhouse": {"url": ""},
                          "api": {"enabled": True}})
    env = env_names(by_kind(docs, "Deployment")[f"{RELEASE}-streams-api"])
    assert env["STREAMS_API__TOKENS"]["valueFrom"]["secretKeyRef"] == {"name": "creds", "key": "api-tokens"}


def test_api_service_ingress_and_network_policy(chart):
    values = {**KEYS, "zookeeper": {"hosts": "zk:2181"}, **API, "config": {"api": {"port": 8777}},
              "api": {**API["api"], "ingress": {"enabled": True, "host": "aodh.example.com", "tlsSecret": "aodh-tls",
                                                "annotations": {"cert-manager.io/cluster-issuer": "le"}}},
              "networkPolicy": {"enabled": True, "apiFrom": [{"namespaceSelector": {"matchLabels": {
                  "kubernetes.io/metadata.name": "ingress-nginx"}}}]}}
    docs = render(chart, values)
    (c,) = pod_spec(by_kind(docs, "Deployment")[f"{RELEASE}-streams-api"])["containers"]
    assert c["ports"][0] == {"name": "http", "containerPort": 8777, "protocol": "TCP"}
    (ingress,) = by_kind(docs, "Ingress").values()
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "aodh.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"] == {"name": f"{RELEASE}-streams-api", "port": {"name": "http"}}
    assert ingress["spec"]["tls"] == [{"secretName": "aodh-tls", "hosts": ["aodh.example.com"]}]
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "le"}
    kubernetes_validate.validate(ingress, KUBE_VERSION, strict=True)
    (np,) = by_kind(docs, "NetworkPolicy").values()
    rules = {r["ports"][0]["port"]: r for r in np["spec"]["ingress"]}
    assert set(rules) == {"metrics", "http"} and "from" not in rules["metrics"]
    assert rules["http"]["from"] == values["networkPolicy"]["apiFrom"]
    # Without the API the policy opens the metrics port only.
    (np,) = by_kind(render(chart, {**KEYS, "networkPolicy": {"enabled": True}}), "NetworkPolicy").values()
    assert [r["ports"][0]["port"] for r in np["spec"]["ingress"]] == ["metrics"]


def test_bridge_needs_the_telemetry_secret(chart):
    with pytest.raises(helm.HelmRenderError) as exc:
        render(chart, {**KEYS, "ceilometerBridge": {"enabled": True}})
    message = str(exc.value)
    for hint in ("telemetry_secret", "ceilometerBridge.telemetrySecret", "ceilometer-telemetry-secret",
                 "allow_empty_secret"):
        assert hint in message, hint
    with pytest.raises(helm.HelmRenderError, match="built-in default"):
        render(chart, {**KEYS, "ceilometerBridge": {"enabled": True, "telemetrySecret": "change this for valid signing"}})
    with pytest.raises(helm.HelmRenderError, match="config.ceilometer.telemetry_secret is a credential"):
        render(chart, {**KEYS, **BRIDGE, "config": {"ceilometer": {"telemetry_secret": "x"}}})
    docs = render(chart, {**KEYS, **BRIDGE})
    env = env_names(by_kind(docs, "Deployment")[f"{RELEASE}-streams-ceilometer-bridge"])
    ref = env["STREAMS_CEILOMETER__TELEMETRY_SECRET"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": f"{RELEASE}-streams", "key": "ceilometer-telemetry-secret"}  # required
    assert {"STREAMS_SIGNING__KEYS", "STREAMS_CLICKHOUSE__URL"} <= set(env)  # it signs and stores events
    assert secret_data(by_kind(docs, "Secret")[f"{RELEASE}-streams"])["ceilometer-telemetry-secret"] == \
        BRIDGE["ceilometerBridge"]["telemetrySecret"]
    # Unsigned data accepted explicitly: the key may be absent from an operator's Secret.
    docs = render(chart, COMBOS["keystone"])
    env = env_names(by_kind(docs, "Deployment")[f"{RELEASE}-streams-ceilometer-bridge"])
    assert env["STREAMS_CEILOMETER__TELEMETRY_SECRET"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_job_creates_the_bridge_topics_when_it_runs(chart):
    def topics_step(values: dict) -> list[str]:
        job = by_kind(render(chart, values), "Job")[f"{RELEASE}-streams-migrations"]
        return next(c["args"] for c in containers(job) if c["name"] == "topics")

    assert topics_step(KEYS) == ["topics", "create"]
    # The source topics too: their partitions bound the bridge's replicas, and a broker's
    # auto-creation (when Ceilometer publishes first) would give its default count instead.
    assert topics_step({**KEYS, **BRIDGE}) == ["topics", "create", "--ceilometer"]


def test_helm_test_pod_checks_the_api_in_the_registry(chart):
    pod = by_kind(render(chart, {**KEYS, "zookeeper": {"hosts": "zk:2181"}, **API}), "Pod")[f"{RELEASE}-streams-test"]
    args = pod["spec"]["containers"][0]["args"]
    assert args[:3] == ["check", "--service", "streams-api"] and "streams-process" in args


def test_notes_name_the_openstack_services(chart):
    notes = chart.render(values=COMBOS["servicemonitor"], name=RELEASE,
                         namespace=NAMESPACE)["streams/templates/NOTES.txt"]
    assert f"{RELEASE}-streams-api" in notes and "port 8042" in notes and "--os-token" in notes
    assert f"{RELEASE}-streams-ceilometer-bridge" in notes and "ceilometer.dlq" in notes
