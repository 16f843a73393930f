"""The container image: the Dockerfile cannot be built here (no Docker engine), so check what can
be: its shape, and that the wheel it installs builds from exactly the files it copies and holds
the Avro schemas and the `streams` entry point."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "Dockerfile"


def stages() -> list[list[str]]:
    """Instructions of each stage (continuation lines joined)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def test_dockerfile_is_multi_stage_non_root_with_streams_entrypoint():
    builder, final = stages()
    assert builder[0].startswith("FROM ${PYTHON_IMAGE} AS builder")
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE.read_text()
    final_text = "\n".join(final)
    assert "build-essential" in "\n".join(builder) and "pip wheel" in "\n".join(builder)
    for tool in ("build-essential", "gcc", "apt-get install", "pip wheel"):
        assert tool not in final_text, f"build tool {tool!r} in the final stage"
    assert "from=builder" in final_text and "--no-index" in final_text
    assert 'ENTRYPOINT ["streams"]' in final
    assert "HEALTHCHECK" in final_text and "/healthz" in final_text
    (user,) = [i for i in final if i.startswith("USER ")]
    uid = user.split()[1].split(":")[0]
    assert uid != "0" and uid.isdigit()
    # The chart runs pods as the image's user.
    values = yaml.safe_load((ROOT / "deploy/helm/streams/values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)


def test_dockerignore_keeps_the_context_small():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".dev", "tests"} <= ignored
    assert not {"streams", "schemas", "pyproject.toml", "README.md"} & ignored


def test_wheel_builds_from_the_copied_files_and_holds_schemas(tmp_path):
    builder = stages()[0]
    context = tmp_path / "src"
    context.mkdir()
    # Reproduce the builder stage's COPY instructions (the build context as the Dockerfile sees it).
    for instr in builder:
        if instr.startswith("COPY ") and "--from" not in instr:
            *sources, dest = instr.split()[1:]
            for src in sources:
                target = context / dest / (Path(src).name if dest.endswith("/") else "")
                if (ROOT / src).is_dir():
                    shutil.copytree(ROOT / src, context / dest, symlinks=True,
                                    ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / src, target)
    out = tmp_path / "wheels"
    # No build isolation: the venv's setuptools builds it, without network.
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(context), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = out.glob("streams_metering-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        schemas = sorted((ROOT / "schemas").glob("*.avsc"))
        assert schemas
        for schema in schemas:
            assert f"streams/schemas/{schema.name}" in names
            assert zf.read(f"streams/schemas/{schema.name}") == schema.read_bytes()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "streams = streams.cli:main" in zf.read(entry_points).decode()


@pytest.mark.parametrize("command", [["--help"], ["poll", "--help"], ["process", "--help"], ["notify", "--help"],
                                     ["topics", "create", "--help"], ["schema", "migrate", "--help"]])
def test_entrypoint_commands_exist(command):
    from click.testing import CliRunner

    from streams.cli import cli

    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 0, result.output
