"""TLS to ClickHouse: every client verifies the server against clickhouse.ca_file; an untrusted CA is refused.

A private ClickHouse 18.16 (``devenv.PrivateClickHouse``: the dev config on free ports) serves the native protocol over
TLS with a certificate from its dev dir's own CA (streams.devenv.tls). It is started and
stopped here; the shared server is not touched.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from streams import devenv
from streams.config import ClickHouseSettings
from streams.devenv.tls import ensure_ca
from streams.pollers.base import Resource
from streams.pollers.central import ClickHousePollster
from streams.storage.clickhouse import ClickHouseSink
from tests.conftest import make_test_sample, recent_hour_us


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    svc = devenv.PrivateClickHouse(tmp_path_factory.mktemp("clickhouse-tls"), devenv.free_base_port(1))
    devenv.start([svc])
    try:
        yield svc
    finally:
        assert devenv.stop([svc])[svc.name].startswith("stopped pid")


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in __import__("os").environ.items() if not k.startswith("STREAMS_")}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env={**full, **env}, capture_output=True,
                          text=True, timeout=120)


def test_every_client_works_over_verified_tls(tls_server, tmp_path):
    db = f"tls{uuid.uuid4().hex[:8]}"
    url = f"clickhouses://default@127.0.0.1:{tls_server.tls_port}/{db}"
    env = {"STREAMS_CLICKHOUSE__URL": url, "STREAMS_CLICKHOUSE__CA_FILE": str(tls_server.ca_file)}
    migrated = cli(env, "schema", "migrate")
    assert migrated.returncode == 0 and "applied   1 samples" in migrated.stdout, migrated.stderr
    settings = ClickHouseSettings(url=url, ca_file=str(tls_server.ca_file))
    sink = ClickHouseSink(settings)  # the processor's sink
    rows = [make_test_sample(name="cpu_util", volume=float(i), timestamp=recent_hour_us() + i) for i in range(10)]
    sink.add(rows)
    assert sink.flush() == 10
    sink.close()
    # queries, through ?secure=true as well as clickhouses://
    for u in (url, f"clickhouse://default@127.0.0.1:{tls_server.tls_port}/{db}?secure=true"):
        out = cli({**env, "STREAMS_CLICKHOUSE__URL": u}, "query", "statistics", "-m", "cpu_util", "--json")
        assert out.returncode == 0 and '"count": 10' in out.stdout, out.stderr
    history = cli(env, "alarm", "history", "no-such-alarm")  # alarm history reads alarm_history over TLS
    assert history.returncode == 0 and history.stdout.startswith("timestamp\tresource_id"), history.stderr
    pollster = ClickHousePollster()
    samples = pollster.get_samples([Resource("ch-tls", {"url": url, "ca_file": str(tls_server.ca_file)})])
    assert any(s["name"] == "clickhouse.queries" for s in samples)


def test_an_untrusted_ca_and_plaintext_are_refused(tls_server, tmp_path):
    url = f"clickhouses://default@127.0.0.1:{tls_server.tls_port}/x"
    other = ensure_ca(tmp_path / "other-ca", "not the server's CA")
    for ca in (str(other), None):  # another CA, then the system's CAs
        env = {"STREAMS_CLICKHOUSE__URL": url, **({"STREAMS_CLICKHOUSE__CA_FILE": ca} if ca else {})}
        out = cli(env, "schema", "status")
        assert out.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in out.stderr, out.stderr[-1500:]
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        ClickHousePollster().get_samples([Resource("ch-tls", {"url": url, "ca_file": str(other)})])
    plain = cli({"STREAMS_CLICKHOUSE__URL": f"clickhouse://default@127.0.0.1:{tls_server.tls_port}/x"},
                "schema", "status")
    assert plain.returncode != 0
