"""ZooKeeper digest authentication and ACLs on the real ZooKeeper; TLS on a private one.

With ``coordination.username``/``password`` set, what the project writes
(alarms, hooks, groups, services, locks) is readable and writable by that
identity alone; wrong or missing credentials get a clear error naming the
user, never the password; with the right ones everything works as before.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError, NotEmptyError
from kazoo.security import make_digest_acl
from pydantic import SecretStr

from streams.alarms.definitions import AlarmWatcher
from streams.config import CoordinationSettings
from streams.coordination import connect, leader
from streams.coordination.security import CoordinationAccessError, CoordinationError
from streams.coordination.session import ZooKeeperSession
from tests.integration.conftest import free_port, wait_for
from tests.integration.test_central_partitioning import (  # noqa: F401  (fixtures)
    RESOURCES,
    collector,
    exposition,
    polling_file,
    settled,
    spawn_central,
)
from tests.integration.test_central_zookeeper_restart import PrivateZooKeeper


def run_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, capture_output=True, text=True,
                          timeout=90)


@pytest.fixture
def identity(services):
    """A fresh root and digest identity on the shared ZooKeeper, and an anonymous client."""
    user, password = f"u{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    settings = CoordinationSettings(hosts=services["zookeeper"], root=f"/t{uuid.uuid4().hex[:10]}",
                                    username=user, password=password, connect_timeout=10)
    env = {"STREAMS_COORDINATION__HOSTS": settings.hosts, "STREAMS_COORDINATION__ROOT": settings.root,
           "STREAMS_COORDINATION__USERNAME": user, "STREAMS_COORDINATION__PASSWORD": password}
    anonymous = KazooClient(hosts=services["zookeeper"])
    anonymous.start(10)
    yield settings, env, anonymous
    anonymous.stop()
    anonymous.close()
    owner = connect(settings)
    for _ in range(10):  # a stopped process's ephemeral member may still be appearing or expiring
        try:
            owner.delete(settings.root, recursive=True)
            break
        except NotEmptyError:
            time.sleep(1)
    owner.stop()
    owner.close()


def assert_only_owner(settings: CoordinationSettings, owner: KazooClient, anonymous: KazooClient, path: str) -> None:
    """``path`` has the owner's digest ACL alone; an anonymous client can neither read nor write it."""
    acls, _ = owner.get_acls(path)
    assert acls == [make_digest_acl(settings.username, settings.password.get_secret_value(), all=True)], path
    for attempt in (lambda: anonymous.get(path), lambda: anonymous.get_children(path),
                    lambda: anonymous.set(path, b"evil"), lambda: anonymous.create(f"{path}/evil", b""),
                    lambda: anonymous.delete(path, recursive=True), lambda: anonymous.get_acls(path)):
        with pytest.raises(NoAuthError):
            attempt()


def load_alarms(settings: CoordinationSettings) -> list[str]:
    """Alarm ids the processor's watcher (AlarmWatcher on a ZooKeeperSession) loads with ``settings``."""
    async def run() -> list[str]:
        watcher = AlarmWatcher(ZooKeeperSession(settings))
        await watcher.start()
        try:
            for _ in range(100):
                if len(watcher.alarms):
                    break
                await asyncio.sleep(0.1)
            return sorted(watcher.alarms.by_id)
        finally:
            await watcher.stop()
    return asyncio.run(run())


def test_secured_tree_refuses_anonymous_and_wrong_credentials_and_works_with_the_right_ones(
        pipeline, identity, exposition, collector):  # noqa: F811
    settings, creds, anonymous = identity
    env = {**pipeline.env, **creds}

    # Alarms through the CLI, hooks through the CLI, both with the ACL.
    r = run_cli(env, "alarm", "create", "--id", "cpu-high", "--name", "cpu high", "--meter", "cpu_util",
                "--operator", "gt", "--threshold", "90", "--period", "10", "--evaluation-periods", "1")
    assert r.returncode == 0, r.stderr
    hooks_file = pipeline.tmp / "hooks.yaml"
    hooks_file.write_text('hooks:\n  - {meters: ["test.dropped"], kind: drop}\n')
    r = run_cli(env, "hooks", "set", str(hooks_file))
    assert r.returncode == 0, r.stderr

    # Two authenticated central agents partition the resources and apply the hooks.
    pipeline.env.update(creds)
    polling = polling_file(pipeline.tmp, exposition.url, extra_series=[
        {"series": "central_test_dropped", "meter": "test.dropped", "unit": "item"}])
    agents = [spawn_central(pipeline, polling, settings.hosts, settings.root, n) for n in ("a", "b")]
    for a in agents:
        a.wait_ready()
    shares = wait_for(lambda: settled(collector, {"a", "b"}), 40, "two disjoint shares covering all")
    assert sum(map(len, shares.values())) == len(RESOURCES)
    assert collector.since(0, meter="test.value") and collector.since(0, meter="test.dropped") == []

    # The processor's alarm watcher loads the CLI-made alarm; the schema-migrate lock works.
    assert load_alarms(settings) == ["cpu-high"]
    with leader(settings, "schema-migrate", timeout=10) as held:
        assert held

    # Every znode the project made is the identity's alone.
    owner = connect(settings)
    try:
        group = f"{settings.root}/groups/poll-central"
        assert len(owner.get_children(group)) == 2
        members = [f"{group}/{m}" for m in owner.get_children(group)]
        services = [f"{settings.root}/services/streams-poll-central/{m}"
                    for m in owner.get_children(f"{settings.root}/services/streams-poll-central")]
        for path in [settings.root, f"{settings.root}/alarms", f"{settings.root}/alarms/cpu-high",
                     f"{settings.root}/hooks", group, *members, *services, f"{settings.root}/locks/schema-migrate"]:
            assert_only_owner(settings, owner, anonymous, path)
        # An anonymous client cannot join the group (nor register a service) ...
        with pytest.raises(NoAuthError):
            anonymous.create(f"{group}/intruder", b"", ephemeral=True)
        with pytest.raises(NoAuthError):
            anonymous.create(f"{settings.root}/services/streams-poll-central/intruder", b"", ephemeral=True)
    finally:
        owner.stop()
        owner.close()

    # ... and neither can a real agent without credentials, or with a wrong password: each stops with
    # an error naming the user (never the password), and the group keeps its two members.
    anon_env = {k: v for k, v in env.items() if not k.startswith("STREAMS_COORDINATION__")}
    anon_env.update(STREAMS_COORDINATION__HOSTS=settings.hosts, STREAMS_COORDINATION__ROOT=settings.root)
    wrong_env = {**env, "STREAMS_COORDINATION__PASSWORD": "not-the-password"}
    for bad, expected in ((anon_env, "set coordination.username and coordination.password"),
                          (wrong_env, f"denied user '{settings.username}' access to {settings.root}")):
        r = run_cli(bad, "alarm", "list")
        assert r.returncode == 1 and expected in r.stderr and "Traceback" not in r.stderr, r.stderr
        r = run_cli(bad, "hooks", "set", str(hooks_file))
        assert r.returncode == 1 and expected in r.stderr, r.stderr
        agent = subprocess.run([sys.executable, "-m", "streams.cli", "poll", "--agent", "central",
                                "--polling", str(polling)],
                               env={**bad, "STREAMS_POLLER__METRICS_PORT": str(free_port())},
                               capture_output=True, text=True, timeout=120)
        assert agent.returncode != 0 and expected in agent.stderr, agent.stderr[-2000:]
        for out in (r.stderr, agent.stderr):
            assert settings.password.get_secret_value() not in out and "not-the-password" not in out
    with pytest.raises(CoordinationAccessError, match=f"denied user '{settings.username}'"):
        connect(settings.model_copy(update={"password": SecretStr("not-the-password")}))
    owner = connect(settings)
    try:
        assert len(owner.get_children(f"{settings.root}/groups/poll-central")) == 2
    finally:
        owner.stop()
        owner.close()
    assert all(a.proc.poll() is None for a in agents)


def test_coordination_secure_migrates_open_znodes_idempotently(pipeline, identity):
    settings, creds, anonymous = identity
    env = {**pipeline.env, **creds}
    old = [f"{settings.root}/alarms/old", f"{settings.root}/hooks", f"{settings.root}/groups/g/m",
           f"{settings.root}/services/streams-process/m"]
    for path in old:  # as written before credentials were set: world-open
        anonymous.create(path, b"{}", makepath=True)

    r = run_cli(env, "coordination", "secure")
    assert r.returncode == 0, r.stderr
    assert f"secured {settings.root}/alarms/old" in r.stdout
    assert f"10 znodes secured, 0 already had the ACL of '{settings.username}'" in r.stdout
    owner = connect(settings)
    try:
        for path in [settings.root, *old]:
            assert_only_owner(settings, owner, anonymous, path)
    finally:
        owner.stop()
        owner.close()
    again = run_cli(env, "coordination", "secure")
    assert again.returncode == 0 and "0 znodes secured, 10 already had the ACL" in again.stdout, again.stdout

    # Securing needs an identity.
    anon_env = {k: v for k, v in env.items() if k not in ("STREAMS_COORDINATION__USERNAME",
                                                          "STREAMS_COORDINATION__PASSWORD")}
    r = run_cli(anon_env, "coordination", "secure")
    assert r.returncode == 1 and "coordination.username and coordination.password are not set" in r.stderr


def test_an_agent_started_while_zookeeper_is_down_stops_once_it_is_refused(pipeline, services, tmp_path):
    """Access is checked when the session first comes up, not only at start: an agent with a wrong
    password keeps polling through an outage, then stops with the error when ZooKeeper refuses it."""
    zk = PrivateZooKeeper(tmp_path / "zk", free_port())
    zk.start()
    owner = CoordinationSettings(hosts=zk.address, root="/late", username="streams", password="right")
    client = connect(owner)
    client.ensure_path("/late/groups")
    client.stop()
    client.close()
    zk.stop()
    wrong = f"wrong-{uuid.uuid4().hex}"
    polling = pipeline.tmp / "zk.yaml"
    polling.write_text("sources:\n  - {name: zk, interval: 1, meters: ['zookeeper.*'], pollsters: {zookeeper: {}},\n"
                       f"     resources: [{{id: zk, metadata: {{address: '{services['zookeeper']}'}}}}]}}\n")
    agent = pipeline.spawn("poll", "--agent", "central", "--polling", str(polling),
                           STREAMS_COORDINATION__HOSTS=zk.address, STREAMS_COORDINATION__ROOT="/late",
                           STREAMS_COORDINATION__USERNAME="streams", STREAMS_COORDINATION__PASSWORD=wrong,
                           STREAMS_COORDINATION__CONNECT_TIMEOUT="2")
    try:
        agent.wait_ready()  # polling without ZooKeeper
        zk.start()
        wait_for(lambda: agent.proc.poll() is not None, 60, "the agent to stop once ZooKeeper refuses it")
        assert agent.proc.returncode != 0
        log = agent.log_path.read_text()
        assert "denied user 'streams' access to /late" in log and wrong not in log
    finally:
        zk.stop()


# --------------------------------------------------------------------------- TLS (private ZooKeeper)


class TlsZooKeeper(PrivateZooKeeper):
    """A private ZooKeeper that also serves TLS (Netty) on ``secure_port``, requiring client certificates.

    Debian's zookeeper.jar names only part of Netty in its manifest's Class-Path:
    ``netty-codec`` and ``netty-resolver`` must be added for the Netty connection factory.
    """

    NETTY_JARS = ("/usr/share/java/netty-codec.jar", "/usr/share/java/netty-resolver.jar",
                  "/usr/share/java/netty-transport-native-unix-common.jar")

    def __init__(self, root, port: int, secure_port: int, keystore, truststore) -> None:
        super().__init__(root, port)
        self.secure_port = secure_port
        self.keystore, self.truststore = keystore, truststore

    def prepare(self) -> None:
        super().prepare()
        with self.config_path.open("a") as f:
            f.write("\n".join([
                "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory",
                f"secureClientPort={self.secure_port}",
                "secureClientPortAddress=127.0.0.1",
                f"ssl.keyStore.location={self.keystore}", "ssl.keyStore.type=PEM",
                f"ssl.trustStore.location={self.truststore}", "ssl.trustStore.type=PEM",
                "ssl.clientAuth=need", "",
            ]))

    def command(self) -> list[str]:
        cmd = super().command()
        i = cmd.index("-cp") + 1
        cmd[i] = ":".join([cmd[i], *self.NETTY_JARS])
        return cmd


def _pkcs8_with_chain(leaf: trustme.LeafCert) -> bytes:
    """ZooKeeper's PEM keystore reads PKCS#8 keys (trustme writes the traditional format)."""
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()) + b"".join(b.bytes() for b in leaf.cert_chain_pems)


@pytest.fixture
def tls_zk(services, tmp_path):
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("streams-client")
    files = {name: tmp_path / f"{name}.pem" for name in ("keystore", "ca", "client-cert", "client-key", "other-ca")}
    files["keystore"].write_bytes(_pkcs8_with_chain(server))
    ca.cert_pem.write_to_path(str(files["ca"]))
    client.cert_chain_pems[0].write_to_path(str(files["client-cert"]))
    client.private_key_pem.write_to_path(str(files["client-key"]))
    trustme.CA().cert_pem.write_to_path(str(files["other-ca"]))
    zk = TlsZooKeeper(tmp_path / "zk", free_port(), free_port(), files["keystore"], files["ca"])
    zk.start()
    yield zk, files
    zk.stop()


def test_tls_verified_with_client_certificate_and_untrusted_ca_refused(tls_zk):
    zk, files = tls_zk
    good = CoordinationSettings(hosts=f"127.0.0.1:{zk.secure_port}", root="/tls", use_ssl=True,
                                ca_file=str(files["ca"]), cert_file=str(files["client-cert"]),
                                key_file=str(files["client-key"]), username="streams", password="s3cret",
                                connect_timeout=10)
    client = connect(good)
    try:  # authenticated and ACL'd over TLS
        client.create("/tls/alarms/a", b"{}", makepath=True)
        assert client.get("/tls/alarms/a")[0] == b"{}"
        assert client.get_acls("/tls/alarms/a")[0][0].id.id.startswith("streams:")
    finally:
        client.stop()
        client.close()

    untrusted = good.model_copy(update={"ca_file": str(files["other-ca"]), "connect_timeout": 3})
    with pytest.raises(CoordinationError, match="certificate verify failed"):
        connect(untrusted)
    plaintext_to_tls_port = good.model_copy(update={"use_ssl": False, "ca_file": None, "cert_file": None,
                                                    "key_file": None, "connect_timeout": 3})
    with pytest.raises(CoordinationError, match="not reachable"):
        connect(plaintext_to_tls_port)
    missing = good.model_copy(update={"ca_file": str(files["ca"]) + ".missing"})
    with pytest.raises(CoordinationError, match=r"coordination.ca_file: .*\.missing: no such file"):
        connect(missing)
