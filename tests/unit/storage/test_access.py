"""The read-only user step of every migrate, per server generation (no server needed)."""

from __future__ import annotations

import hashlib

import pytest

from streams.storage.access import ensure_readonly_user, readonly_user_sql, users_xml_entry
from streams.storage.dialect import ServerVersion


class FakeServer:
    embedded = False

    def __init__(self, version: str, users: int = 0):
        self.version, self.database, self.sql, self.users = ServerVersion.parse(version), "db", [], users

    def execute(self, sql, params=None):
        self.sql.append(sql)
        return [(self.users,)] if "system.users" in sql else []


def test_with_a_password_the_user_is_created_then_altered_to_the_settings_on_every_node():
    nodes = [FakeServer("24.8.1"), FakeServer("24.8.1")]
    out = ensure_readonly_user(nodes, "s3cret", ["10.0.0.0/8", "::1"])
    digest = hashlib.sha256(b"s3cret").hexdigest()
    for n in nodes:
        assert n.sql == readonly_user_sql("db", "s3cret", ["10.0.0.0/8", "::1"])
        assert n.sql[1] == (f"ALTER USER grafana IDENTIFIED WITH sha256_hash BY '{digest}' "
                            "HOST IP '10.0.0.0/8', IP '::1' SETTINGS readonly = 2")
        assert n.sql[2] == "GRANT SELECT ON db.* TO grafana"
        assert not any("s3cret" in s for s in n.sql)
    assert "on 2 nodes" in out


def test_without_a_password_no_user_is_created(caplog):
    server = FakeServer("24.8.1", users=1)
    out = ensure_readonly_user([server], "", ["127.0.0.1"])
    assert "WARNING not created" in out and "existing one is left" in out
    assert not any(s.startswith(("CREATE USER", "ALTER USER", "GRANT")) for s in server.sql)
    assert "not created" in caplog.text


def test_on_18_16_migrate_prints_the_users_xml_entry_and_changes_nothing():
    server = FakeServer("18.16.1")
    out = ensure_readonly_user([server], "s3cret", ["127.0.0.1"])
    assert users_xml_entry("db", "s3cret", ["127.0.0.1"]) in out and server.sql == []
    assert f"<password_sha256_hex>{hashlib.sha256(b's3cret').hexdigest()}</password_sha256_hex>" in out
    assert "s3cret<" not in out
    assert "WARNING" in ensure_readonly_user([server], "", ["127.0.0.1"])


def test_networks_must_be_addresses_or_cidr():
    with pytest.raises(ValueError, match="'example.com' is not an IP address"):
        readonly_user_sql("db", "x", ["example.com"])
