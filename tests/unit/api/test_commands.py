"""``streams api`` refuses to start insecurely or without its store, with a message saying what to set."""

from __future__ import annotations

from click.testing import CliRunner

from streams.cli import cli


def run(monkeypatch, *args: str, **env: str):
    monkeypatch.delenv("STREAMS_CONFIG", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return CliRunner().invoke(cli, ["api", *args])


def test_refuses_to_start_without_a_token_by_default(monkeypatch):
    r = run(monkeypatch, STREAMS_COORDINATION__HOSTS="127.0.0.1:1")
    assert r.exit_code != 0
    assert "api.tokens: api.auth is 'token' (the default) but no token is configured" in r.output


def test_refuses_to_start_without_zookeeper(monkeypatch):
    monkeypatch.delenv("STREAMS_COORDINATION__HOSTS", raising=False)
    r = run(monkeypatch, "--auth", "noauth")
    assert r.exit_code != 0 and "coordination.hosts is not set" in r.output

