"""What every local service shares: errors, the dev dir, ports, and the :class:`Service` ABC."""

from __future__ import annotations

import logging
import os
import socket
from abc import ABC, abstractmethod
from pathlib import Path

import click
import psutil

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
"""All services listen on this loopback address only."""

DEV_DIR_ENV = "STREAMS_DEV_DIR"


class DevEnvError(click.ClickException):
    """Base error of this package.

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
        tail = tail_of(log_path, 15)
        msg = f"{service}: {reason}; see its log: {log_path}"
        if tail:
            msg += "\n--- last lines of " + str(log_path) + " ---\n" + tail
        super().__init__(msg)


class PortInUseError(DevEnvError):
    """The service's port is bound by something that does not answer like that service."""


class MissingDependencyError(DevEnvError):
    """A server binary or jar is not installed (run ``scripts/bootstrap.sh``)."""


def dev_dir() -> Path:
    """Return the absolute dev dir: ``$STREAMS_DEV_DIR`` or ``<cwd>/.dev`` (not created)."""
    return Path(os.environ.get(DEV_DIR_ENV) or Path.cwd() / ".dev").resolve()


def env_port(var: str, default: int) -> int:
    """The port in env var ``var``, or ``default``.

    :raises DevEnvError: not a number in 1..65535.
    """
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


def port_open(port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``HOST:port``."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_owner(port: int) -> str:
    """Best-effort description of the process listening on ``port`` (needs root for others' sockets)."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                proc = psutil.Process(conn.pid)
                return f"pid {conn.pid} ({' '.join(proc.cmdline())[:120]})"
    except (psutil.Error, OSError):
        pass
    return "an unknown process"


def tail_of(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log file ('' if unreadable)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            return b"\n".join(fh.read().splitlines()[-lines:]).decode("utf-8", "replace")
    except OSError:
        return ""


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
        return env_port(self.port_env, self.default_port)

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
            return f"{self.workdir}/" in " ".join(proc.cmdline())
        except psutil.Error:
            return False
