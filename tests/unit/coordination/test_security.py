"""Coordination settings for authentication and TLS, and the kazoo options built from them (no ZooKeeper)."""

from __future__ import annotations

import pytest
from kazoo.security import make_digest_acl

from streams.config import ConfigError, CoordinationSettings, load_settings
from streams.coordination.security import CoordinationError, client_options, denied_message, new_client


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for k in list(os.environ):
        if k.startswith("STREAMS_"):
            monkeypatch.delenv(k)


def test_credentials_come_from_the_documented_env_names_and_stay_secret(monkeypatch):
    monkeypatch.setenv("STREAMS_COORDINATION__USERNAME", "streams")
    monkeypatch.setenv("STREAMS_COORDINATION__PASSWORD", "hunter2")
    s = load_settings().coordination
    assert s.username == "streams" and s.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())


@pytest.mark.parametrize("env, problem", [
    ({"USERNAME": "streams"}, "username and password go together"),
    ({"PASSWORD": "x"}, "username and password go together"),
    ({"USERNAME": "a:b", "PASSWORD": "x"}, "hold no ':'"),
    ({"CA_FILE": "/ca.pem"}, "need use_ssl: true"),
    ({"USE_SSL": "true", "CERT_FILE": "/c.pem"}, "cert_file and key_file go together"),
])
def test_inconsistent_security_settings_are_rejected_at_load(monkeypatch, env, problem):
    for k, v in env.items():
        monkeypatch.setenv(f"STREAMS_COORDINATION__{k}", v)
    with pytest.raises(ConfigError, match="coordination") as err:
        load_settings()
    assert problem in str(err.value)


def test_no_security_settings_means_plain_kazoo_defaults():
    assert client_options(CoordinationSettings(hosts="h:1")) == {}


def test_credentials_give_digest_auth_and_an_acl_for_that_identity_alone():
    s = CoordinationSettings(hosts="h:1", username="streams", password="hunter2")
    opts = client_options(s)
    assert opts["auth_data"] == [("digest", "streams:hunter2")]
    assert opts["default_acl"] == [make_digest_acl("streams", "hunter2", all=True)]
    client = new_client(s)
    assert client.default_acl == opts["default_acl"] and client.auth_data == {("digest", "streams:hunter2")}
    client.close()


def test_tls_always_verifies_certificate_and_host_name(tmp_path):
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem"))
    for f in (ca, cert, key):
        f.write_text("-")
    s = CoordinationSettings(hosts="h:1", use_ssl=True, ca_file=str(ca), cert_file=str(cert), key_file=str(key))
    assert client_options(s) == {"use_ssl": True, "verify_certs": True, "check_hostname": True, "ca": str(ca),
                                 "certfile": str(cert), "keyfile": str(key)}
    with pytest.raises(CoordinationError, match=r"coordination.key_file: .*nope.pem: no such file"):
        client_options(s.model_copy(update={"key_file": str(tmp_path / "nope.pem")}))


def test_refusals_name_the_user_never_the_password():
    s = CoordinationSettings(hosts="h:1", root="/r", username="streams", password="hunter2")
    msg = denied_message(s, "/r")
    assert "'streams'" in msg and "/r" in msg and "coordination.password" in msg and "hunter2" not in msg
    assert "set coordination.username" in denied_message(CoordinationSettings(hosts="h:1"), "/r")
