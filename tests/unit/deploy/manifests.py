"""Rendering the chart and reading its manifests as Kubernetes would: shared by the render tests
(tests/unit/deploy) and the rendered-pods test (tests/integration/test_helm_rendered_pods.py)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "deploy" / "helm" / "streams"
RELEASE, NAMESPACE = "metering", "streams"
FULL = f"{RELEASE}-streams"
KEYS = {"signing": {"keys": {"2026-11": "0123456789abcdef0123456789abcdef"}}}
"""Explicit signing keys: every offline render needs them (or secrets.existingSecret)."""
WORKLOADS = {"DaemonSet", "Deployment", "StatefulSet", "Job", "Pod"}


def render_files(chart: helm.Chart, values: dict, **opts) -> dict[str, str]:
    """Template path -> rendered text, as ``helm template`` (offline: ``lookup`` finds nothing)."""
    return chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True, **opts)


def render(chart: helm.Chart, values: dict, **opts) -> list[dict]:
    """Every object the chart renders for ``values`` (NOTES.txt excluded)."""
    docs = []
    for path, text in sorted(render_files(chart, values, **opts).items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def namespace_of(doc: dict) -> str:
    return doc["metadata"].get("namespace", NAMESPACE)


def objects(docs: list[dict], kind: str) -> dict[tuple[str, str], dict]:
    """(namespace, name) -> object of ``kind``: a pod reads ConfigMaps and Secrets of its own namespace."""
    return {(namespace_of(d), d["metadata"]["name"]): d for d in docs if d["kind"] == kind}


def secret_data(secret: dict) -> dict[str, str]:
    data = dict(secret.get("stringData") or {})
    data.update({k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()})
    return data


def pod_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]


def containers(doc: dict) -> list[dict]:
    spec = pod_spec(doc)
    return spec.get("initContainers", []) + spec["containers"]


def hook(doc: dict) -> str | None:
    return (doc["metadata"].get("annotations") or {}).get("helm.sh/hook")


_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def container_env(container: dict, namespace: str, configmaps: dict[tuple[str, str], dict[str, str]],
                  secrets: dict[tuple[str, str], dict[str, str]], fields: dict[str, str]) -> dict[str, str]:
    """The environment Kubernetes would give ``container`` in ``namespace``: ``envFrom`` first, then
    ``env`` in order, with ``value`` (and its ``$(VAR)`` references), ``secretKeyRef``,
    ``configMapKeyRef`` and downward-API ``fieldRef`` (from ``fields``, e.g. ``spec.nodeName``).

    Raises:
        AssertionError: a reference to an object or key that is not there (and not optional).
    """
    where = container["name"]
    env: dict[str, str] = {}
    sources = {"secretRef": secrets, "configMapRef": configmaps}
    for src in container.get("envFrom", []):
        for kind, store in sources.items():
            if kind in src:
                data = store.get((namespace, src[kind]["name"]))
                assert data is not None or src[kind].get("optional"), f"{where}: envFrom {kind} {src[kind]['name']}"
                env.update({src.get("prefix", "") + k: v for k, v in (data or {}).items()})
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = _REF.sub(lambda m: env.get(m[1], m[0]), str(e["value"]))
            continue
        ref = e["valueFrom"]
        if "fieldRef" in ref:
            path = ref["fieldRef"]["fieldPath"]
            assert path in fields, f"{where}: env {e['name']} reads field {path}, not given"
            env[e["name"]] = fields[path]
            continue
        kind, store = (("secretKeyRef", secrets) if "secretKeyRef" in ref else ("configMapKeyRef", configmaps))
        key_ref = ref[kind]
        data = store.get((namespace, key_ref["name"]))
        assert data is not None, f"{where}: env {e['name']} reads {kind} {namespace}/{key_ref['name']}, not rendered"
        if key_ref["key"] not in data:
            assert key_ref.get("optional"), f"{where}: {namespace}/{key_ref['name']} has no key {key_ref['key']}"
            continue
        env[e["name"]] = data[key_ref["key"]]
    return env
