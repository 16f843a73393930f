"""The captures of tests/data/ceilometer/ (copied from the shared captures of issue 13): records from Ceilometer 27's own publisher, and signature vectors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("STREAMS_CEILOMETER_DATA", Path(__file__).parents[2] / "data" / "ceilometer"))
"""tests/data/ceilometer: a copy of the captures made for issue 13 (its README says how, with capture.py)."""
if not DATA.is_dir():  # a worktree sits one level deeper than the main checkout
    DATA = Path(__file__).parents[5] / "shared" / "data" / "ceilometer"
SECRET = "bridge-test-secret"


def load(name: str) -> dict:
    path = DATA / name
    assert path.is_file(), f"capture {path} is missing (set STREAMS_CEILOMETER_DATA)"
    return json.loads(path.read_text(encoding="utf-8"))


def records(name: str = "kafka_metering_samples.json") -> list[dict]:
    """Every captured record, with its scenario name."""
    return [{**r, "scenario": s["scenario"]} for s in load(name)["scenarios"] for r in s["records"]]


def payload_messages() -> list[dict]:
    """Every signed message (12 samples, 2 events), decoded as a consumer decodes it."""
    out = []
    for name in ("kafka_metering_samples.json", "kafka_events.json"):
        for r in records(name):
            out += json.loads(json.loads(r["value"])["oslo.message"])["payload"]
    return out


@pytest.fixture(scope="session")
def vectors() -> list[dict]:
    return load("signature_vectors.json")["vectors"]
