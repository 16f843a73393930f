"""The chart's pods, run for real without a cluster.

The chart is rendered with values pointing at the local services (a unique ZooKeeper root,
ClickHouse database, topics and consumer groups). Then every workload's container runs as a local
process, exactly as the manifest says: its args (after the image's entrypoint, ``streams``), its
environment with ``secretKeyRef``, ``configMapKeyRef``, ``envFrom`` and downward-API fields
resolved, and its ConfigMap and Secret volumes written under a temporary root at the paths its
``volumeMounts`` name (absolute paths in args, env and the mounted files are remapped under that
root; a hostPath mount is the host's own path). So a wrong path, env name, port or key in the
chart fails here.

Asserted: the topics and schema Job completes (wait, topics create with the Ceilometer bridge's
topics, schema migrate); every service answers its rendered readiness probe (port and path);
samples of the rendered compute poller (its node name from the downward API) and central poller
reach ClickHouse through the rendered processor; a Ceilometer record (a captured one, re-stamped
and re-signed with the rendered telemetry secret) produced to the bridge's source topic reaches
ClickHouse through the rendered bridge and processor, and a Ceilometer event the events table; an
alarm created with ``streams alarm create`` against the same ZooKeeper root reaches a loopback
webhook through the rendered notifier, and the rendered Aodh API lists it and its history with a
token from the rendered Secret (and refuses a request without one); the ``helm test`` pod passes.

The image's ``ENV STREAMS_METRICS_HOST=0.0.0.0`` is replaced by the pod's address, loopback here,
and so is the API's listen address (``api.host: 0.0.0.0``, pinned in the rendered streams.yaml),
so nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import helm_python as helm
import pytest
from clickhouse_driver import Client
from confluent_kafka import Producer

from streams.bridge.signing import compute_signature
from tests.integration.conftest import free_port, http_get, wait_for
from tests.integration.test_alarms import Webhook
from tests.unit.bridge.conftest import records as ceilometer_records
from tests.unit.deploy.manifests import (
    CHART,
    FULL,
    WORKLOADS,
    container_env,
    containers,
    namespace_of,
    objects,
    pod_spec,
    render,
    secret_data,
)

STREAMS = Path(sys.executable).with_name("streams")  # the image's ENTRYPOINT (tini -- streams)
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Entry:
    """One workload of the chart and how this test runs it: ``run`` to completion (Job, test pod)
    or ``serve`` until stopped, answering its readiness probe."""

    kind: str
    name: str
    role: str  # "run" or "serve"


# One entry per workload the chart renders for these values; a new service is one more line.
TABLE = [
    Entry("Job", f"{FULL}-migrations", "run"),
    Entry("DaemonSet", f"{FULL}-compute-poller", "serve"),
    Entry("Deployment", f"{FULL}-central-poller", "serve"),
    Entry("Deployment", f"{FULL}-processor", "serve"),
    Entry("Deployment", f"{FULL}-notifier", "serve"),
    Entry("Deployment", f"{FULL}-api", "serve"),
    Entry("Deployment", f"{FULL}-ceilometer-bridge", "serve"),
    Entry("Pod", f"{FULL}-test", "run"),
]


@dataclass
class Container:
    """A rendered container made a local process."""

    where: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    spec: dict
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def run(self, timeout: float) -> str:
        with self.log.open("w") as out:
            rc = subprocess.run(self.argv, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                                timeout=timeout).returncode
        text = self.log.read_text()
        assert rc == 0, f"{self.where} exited with {rc}:\n{text[-3000:]}"
        return text

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def port(self, name: str) -> int:
        """The container port called ``name``."""
        (port,) = [p["containerPort"] for p in self.spec["ports"] if p["name"] == name]
        return port

    def readiness_url(self) -> str:
        probe = self.spec["readinessProbe"]["httpGet"]
        port = probe["port"]
        if isinstance(port, str):  # a named port: the container's own
            port = self.port(port)
        return f"http://{LOOPBACK}:{port}{probe['path']}"

    def wait_ready(self, timeout: float) -> None:
        def ready():
            if self.proc.poll() is not None:
                pytest.fail(f"{self.where} exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            return http_get(self.readiness_url())[0] == 200
        wait_for(ready, timeout, f"{self.where} readiness probe {self.readiness_url()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def remapper(mounts: dict[str, Path]):
    """A function rewriting absolute mount paths in a string to their local directories."""
    ordered = sorted(mounts, key=len, reverse=True)
    pattern = re.compile("|".join(rf"(?<![\w/.]){re.escape(m.rstrip('/'))}(?=/|$|[\s'\",])" for m in ordered))
    return lambda text: pattern.sub(lambda m: str(mounts[m[0]] if m[0] in mounts else mounts[m[0] + "/"]), text)


def localize(doc: dict, container: dict, root: Path, stores: tuple[dict, dict], fields: dict[str, str],
             logs: Path) -> Container:
    """``container`` of ``doc`` as a local process: its files under ``root``, its paths remapped."""
    configmaps, secrets = stores
    ns = namespace_of(doc)
    volumes = {v["name"]: v for v in pod_spec(doc).get("volumes", [])}
    mounts: dict[str, Path] = {}
    for m in container.get("volumeMounts", []):
        volume = volumes[m["name"]]
        if "hostPath" in volume:  # the node's own path
            mounts[m["mountPath"]] = Path(volume["hostPath"]["path"])
            continue
        local = root / m["mountPath"].lstrip("/")
        local.mkdir(parents=True, exist_ok=True)
        mounts[m["mountPath"]] = local
        source = volume.get("configMap") or volume.get("secret")
        if source is None:
            continue  # an emptyDir: the empty directory stands in
        data = (configmaps if "configMap" in volume else secrets)[(ns, source.get("name") or source["secretName"])]
        for item in source.get("items") or [{"key": k, "path": k} for k in data]:
            (local / item["path"]).write_text(data[item["key"]])
    remap = remapper(mounts)
    for m in container.get("volumeMounts", []):  # paths inside the mounted files (streams.yaml, polling)
        if "hostPath" not in volumes[m["name"]]:
            for f in mounts[m["mountPath"]].iterdir():
                if f.is_file():
                    f.write_text(remap(f.read_text()))
    env = {k: remap(v) for k, v in container_env(container, ns, configmaps, secrets, fields).items()}
    base = {"PATH": f"{STREAMS.parent}:/usr/bin:/bin", "HOME": str(root), "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1", "STREAMS_METRICS_HOST": fields["status.podIP"],
            "STREAMS_API__HOST": fields["status.podIP"]}
    workdir = mounts.get("/var/lib/streams", root)  # the image's WORKDIR
    where = f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}"
    assert "command" not in container, f"{where} overrides the image's entrypoint"
    return Container(where, [str(STREAMS), *[remap(a) for a in container["args"]]], {**base, **env}, workdir,
                     logs / f"{doc['metadata']['name']}-{container['name']}.log", container)


def restamped(capture: str, secret: str, resource: str) -> tuple[bytes, list[str]]:
    """The first record of a Ceilometer capture (tests/data/ceilometer) as Ceilometer would publish
    it now: fresh message ids, times just past, ``resource`` as the resource of every sample and
    event, each entry signed with ``secret`` as Ceilometer signs. Returns (record value, entry ids)."""
    envelope = json.loads(ceilometer_records(capture)[0]["value"])
    message = json.loads(envelope["oslo.message"])
    now = datetime.now(UTC)
    ids = []
    for i, entry in enumerate(message["payload"]):
        entry["message_id"] = str(uuid.uuid4())
        if "counter_name" in entry:  # a sample
            entry["resource_id"] = resource
            entry["timestamp"] = (now - timedelta(seconds=10 - i)).isoformat()
        else:  # an event: its resource traits
            entry["generated"] = (now - timedelta(seconds=5)).replace(tzinfo=None).isoformat()
            entry["traits"] = [[k, kind, resource if k in ("resource_id", "instance_id") else v]
                               for k, kind, v in entry["traits"]]
        entry["message_signature"] = compute_signature(entry, secret)
        ids.append(entry["message_id"])
    message["message_id"] = str(uuid.uuid4())
    envelope["oslo.message"] = json.dumps(message)
    return json.dumps(envelope).encode(), ids


def api_get(url: str, token: str | None) -> tuple[int, object]:
    """GET ``url`` of the Aodh API with ``X-Auth-Token: token``: (status, JSON body)."""
    request = urllib.request.Request(url, headers={"X-Auth-Token": token} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@pytest.fixture
def installation(services, tmp_path):
    """The rendered chart for this test's slice of the local services."""
    name = f"h{uuid.uuid4().hex[:10]}"
    node = f"node-{name}"
    values = {
        "kafka": {"bootstrapServers": services["kafka"], "partitions": 2, "replicationFactor": 1},
        "zookeeper": {"hosts": services["zookeeper"], "root": f"/{name}"},
        "clickhouse": {"url": f"clickhouse://default@{services['clickhouse']}/{name}"},
        "signing": {"keys": {"2026-11": uuid.uuid4().hex}},
        "config": {
            "log_level": "INFO",
            "kafka": {"samples_topic": f"{name}.samples", "dlq_topic": f"{name}.samples.dlq",
                      "alarms_topic": f"{name}.alarms", "alarms_dlq_topic": f"{name}.alarms.dlq",
                      "session_timeout_ms": 6000},
            "poller": {"metrics_port": free_port(), "interval": 1, "report_interval": 1},
            "processor": {"app_id": f"{name}-processor", "metrics_port": free_port(), "batch_timeout": 0.5},
            "notifier": {"group_id": f"{name}-notifier", "metrics_port": free_port(), "backoff": 0.1},
            "alarms": {"grace": 0.5, "timer_interval": 0.25},
            "api": {"port": free_port(), "metrics_port": free_port()},
            "ceilometer": {"topics": [f"{name}.metering.sample", f"{name}.event.sample"],
                           "group_id": f"{name}-ceilometer-bridge", "dlq_topic": f"{name}.ceilometer.dlq",
                           "metrics_port": free_port(), "batch_timeout": 0.2},
        },
        "computePoller": {"metricsPort": free_port(), "polling": {"sources": [
            {"name": "host", "interval": 1, "meters": ["*"], "pollsters": {"host": {}}},
            {"name": "containers", "interval": 5, "meters": ["cpu", "memory.usage"], "pollsters": {"cgroups": {}},
             "discovery_params": {"local_cgroups": {"root": "/host/sys/fs/cgroup", "max_depth": 1}}}]}},
        "centralPoller": {"polling": {"sources": [
            {"name": "kafka-lag", "interval": 2, "meters": ["kafka.consumer_group.lag"],
             "pollsters": {"kafka_lag": {"bootstrap_servers": "{{ .Values.kafka.bootstrapServers }}"}},
             "resources": [{"id": "kafka/{{ .Values.config.processor.app_id }}",
                            "metadata": {"group": "{{ .Values.config.processor.app_id }}"}}]}]}},
        "processor": {"replicas": 1},
        "api": {"enabled": True, "replicas": 1, "tokens": [
            {"token": uuid.uuid4().hex, "user_id": "operator", "project_id": "admin", "roles": ["admin"]}]},
        "ceilometerBridge": {"enabled": True, "telemetrySecret": uuid.uuid4().hex},
        "migrations": {"waitTimeoutSeconds": 60},
    }
    with helm.Chart.load(CHART) as chart:
        docs = render(chart, values)
    ch = Client.from_url(f"clickhouse://default@{services['clickhouse']}/default")
    try:
        yield name, node, docs
    finally:
        ch.execute(f"DROP DATABASE IF EXISTS {name}")
        ch.disconnect()


def test_rendered_pods_run(installation, tmp_path, services):
    name, node, docs = installation
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in WORKLOADS}
    assert set(rendered) == {(e.kind, e.name) for e in TABLE}, "a workload of the chart is missing from TABLE"
    stores = ({k: d["data"] for k, d in objects(docs, "ConfigMap").items()},
              {k: secret_data(d) for k, d in objects(docs, "Secret").items()})
    fields = {"spec.nodeName": node, "status.hostIP": LOOPBACK, "status.podIP": LOOPBACK}
    logs = tmp_path / "logs"
    logs.mkdir()
    pods: dict[str, list[Container]] = {}
    for entry in TABLE:
        doc = rendered[(entry.kind, entry.name)]
        root = tmp_path / entry.name
        pods[entry.name] = [localize(doc, c, root, stores, fields, logs) for c in containers(doc)]

    running: list[Container] = []
    try:
        # The Job: init containers in order, then its container; each must complete.
        wait, topics, schema = pods[f"{FULL}-migrations"]
        assert "kafka: ready" in wait.run(120) and "zookeeper: ready" in wait.log.read_text()
        created = topics.run(120)
        for topic in (f"{name}.samples", f"{name}.metering.sample", f"{name}.event.sample", f"{name}.ceilometer.dlq"):
            assert f"{topic}: created" in created, created
        assert "applied" in schema.run(120)

        # Every service, started as rendered, answers its rendered readiness probe.
        for entry in [e for e in TABLE if e.role == "serve"]:
            (service,) = pods[entry.name]
            service.start()
            running.append(service)
        for service in running:
            service.wait_ready(120)

        # Samples from the rendered pollers, through the rendered processor, into ClickHouse.
        ch = Client.from_url(f"clickhouse://default@{services['clickhouse']}/{name}")

        def stored(resource: str) -> int:
            return ch.execute("SELECT count() FROM samples WHERE resource_id = %(r)s", {"r": resource})[0][0]

        wait_for(lambda: stored(node), 90, f"compute samples of {node} in ClickHouse")
        wait_for(lambda: stored(f"kafka/{name}-processor"), 90, "central poller samples in ClickHouse")
        def meters(resource: str) -> set[str]:
            return {r[0] for r in ch.execute("SELECT DISTINCT name FROM samples WHERE resource_id = %(r)s",
                                             {"r": resource})}

        assert {"cpu", "memory.usage"} <= meters(node)

        # Ceilometer's samples and events, through the rendered bridge (its telemetry secret from the
        # rendered Secret) and processor, into ClickHouse; the events also into the events table.
        (bridge,) = pods[f"{FULL}-ceilometer-bridge"]
        secret = bridge.env["STREAMS_CEILOMETER__TELEMETRY_SECRET"]
        vm = f"{name}-vm"
        samples, _ = restamped("kafka_metering_samples.json", secret, vm)
        events, event_ids = restamped("kafka_events.json", secret, vm)
        producer = Producer({"bootstrap.servers": services["kafka"]})
        producer.produce(f"{name}.metering.sample", samples)
        producer.produce(f"{name}.event.sample", events)
        assert producer.flush(30) == 0
        expected = {"cpu", "memory.usage", "network.incoming.bytes", "vcpus", "memory"}  # the last two from the event
        wait_for(lambda: expected <= meters(vm), 90, f"Ceilometer samples of {vm} in ClickHouse")
        stored_events = ch.execute("SELECT message_id FROM events WHERE message_id IN %(ids)s",
                                   {"ids": tuple(event_ids)})
        assert sorted(r[0] for r in stored_events) == sorted(event_ids)

        # An alarm made with the CLI against the same ZooKeeper root fires through the rendered notifier.
        hook = Webhook()
        processor = pods[f"{FULL}-processor"][0]
        created = subprocess.run(
            [str(STREAMS), "alarm", "create", "--id", f"{name}-memory", "--name", "memory used",
             "--meter", "memory.usage", "--operator", "gt", "--threshold", "0", "--statistic", "max",
             "--period", "1", "--evaluation-periods", "1", "--resource-id", node, "--alarm-action", hook.url()],
            env=processor.env, cwd=processor.cwd, capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stderr
        assert json.loads(created.stdout)["alarm_id"] == f"{name}-memory"
        wait_for(lambda: "alarm" in hook.states(node), 90, "the alarm at the webhook, through the notifier")
        body = next(b for b in hook.received if b["resource_id"] == node)
        assert body["alarm_id"] == f"{name}-memory" and body["current"] == "alarm"

        # The rendered Aodh API serves that alarm and its history, for a token of the rendered Secret.
        (api,) = pods[f"{FULL}-api"]
        token = json.loads(api.env["STREAMS_API__TOKENS"])[0]["token"]
        url = f"http://{LOOPBACK}:{api.port('http')}/v2/alarms"
        assert api_get(url, None)[0] == 401
        status, alarms = api_get(f"{url}?q.field=all_projects&q.op=eq&q.value=true", token)
        assert status == 200 and f"{name}-memory" in [a["alarm_id"] for a in alarms], alarms

        def transitions() -> list:
            status, history = api_get(f"{url}/{name}-memory/history", token)
            assert status == 200, history
            return [h for h in history if h["type"] == "state transition" and '"alarm"' in h["detail"]]

        wait_for(transitions, 60, "the alarm's transition in the API's history (alarm_history)")

        # `helm test`: topics, tables and the service registry, as the test pod checks them.
        (check,) = pods[f"{FULL}-test"]
        out = check.run(120)
        assert out.splitlines()[:3] == ["topics: ok", "schema: ok", "services: ok"], out
        for service in running:
            assert service.proc.poll() is None, f"{service.where} stopped:\n{service.log.read_text()[-2000:]}"
    finally:
        for service in running:
            service.stop()
