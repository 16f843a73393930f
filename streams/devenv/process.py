"""Process handling of the local services: start, wait until ready, stop, find the owner.

Start and wait are mirakuru's (:class:`ServiceExecutor`, a ``mirakuru.Executor``):
it launches the server in its own session, polls :meth:`Service.ready` (a
protocol-level request, not just an open port) until it answers, notices a
server that exits before answering (``ProcessExitedWithError``) and kills one
that does not answer in time (``TimeoutExpired``).

Stop and "find the owner" are done with psutil on the pid file, because
mirakuru cannot serve there: its executors own their child for the life of
the Python process that started it (``Executor.stop`` needs that process's
``Popen``; an atexit hook and ``__del__`` kill the child when that process
ends). ``streams dev up`` must leave the servers running after the CLI exits,
and ``streams dev down`` runs in another process. So the executor here drops
mirakuru's child marker and its kill-on-delete, the pid file records the
server, and :func:`managed_process` / :func:`stop_process` find and stop it
from any process (SIGTERM to its process group, SIGKILL after
:data:`STOP_TIMEOUT` s).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
from mirakuru import Executor, SimpleExecutor
from mirakuru.base import ENV_UUID
from mirakuru.exceptions import ProcessExitedWithError, TimeoutExpired

from streams.devenv.base import DevEnvError, Service, ServiceStartError, port_open

log = logging.getLogger(__name__)

STOP_TIMEOUT = 20.0
"""Seconds to wait after SIGTERM before SIGKILLing a service's process group."""


class ServiceExecutor(Executor):
    """mirakuru executor of one :class:`Service`: output appended to the service's log,
    started when :meth:`Service.ready` answers.

    Unlike a plain mirakuru executor, the server outlives this object and this
    Python process (see the module docstring).
    """

    def __init__(self, svc: Service, timeout: float, logf) -> None:
        self.svc = svc
        super().__init__(svc.command(), cwd=str(svc.workdir), timeout=timeout, sleep=0.2,
                         stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)

    @property
    def envvars(self) -> dict[str, str]:
        # Without mirakuru's marker, its atexit cleanup does not kill our servers.
        env = super().envvars
        env.pop(ENV_UUID, None)
        return env

    def pre_start_check(self) -> bool:
        return port_open(self.svc.port)

    def after_start_check(self) -> bool:
        return self.svc.ready(timeout=1.0)

    def __del__(self) -> None:
        """Leave the server running (mirakuru's default kills it when the executor is collected)."""


# Executors of servers started by this Python process: kept so their Popen is reaped.
_EXECUTORS: dict[int, ServiceExecutor] = {}


def launch(svc: Service, timeout: float) -> ServiceExecutor:
    """Write ``svc``'s config, start it in its own session and record its pid. Does not wait.

    :raises MissingDependencyError: the server is not installed.
    """
    svc.command()  # fail on a missing binary before touching files
    svc.prepare()
    svc.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(svc.log_path, "ab") as logf:
        ex = ServiceExecutor(svc, timeout, logf)
        logf.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} streams dev: starting {svc.name}: "
                   f"{ex.command}\n".encode())
        logf.flush()
        SimpleExecutor.start(ex)  # Popen only; Executor.start would also wait (we launch all, then wait)
    pid = ex.process.pid
    _EXECUTORS[pid] = ex
    svc.pid_path.write_text(f"{pid}\n")
    log.info("%s: started pid %d, log %s", svc.name, pid, svc.log_path)
    return ex


def wait_ready(ex: ServiceExecutor) -> float:
    """Wait until the launched server answers (mirakuru's ``wait_for``); return seconds since launch.

    :raises ServiceStartError: it exited, or did not answer within the executor's timeout
        (then mirakuru has killed it); the pid file is removed.
    """
    svc = ex.svc
    started = time.monotonic()
    pid = ex.process.pid
    try:
        ex.wait_for(ex.check_subprocess)
    except ProcessExitedWithError as exc:
        _forget(svc, pid)
        raise ServiceStartError(svc.name, f"process {pid} exited (code {exc.exit_code}) before answering on "
                                          f"{svc.address}", svc.log_path) from None
    except TimeoutExpired as exc:
        _forget(svc, pid)
        raise ServiceStartError(svc.name, f"did not answer on {svc.address} within {exc.timeout:.0f}s",
                                svc.log_path) from None
    return time.monotonic() - started


def _forget(svc: Service, pid: int) -> None:
    _EXECUTORS.pop(pid, None)
    svc.pid_path.unlink(missing_ok=True)


def wait_answering(svc: Service, timeout: float) -> None:
    """Wait until a server we did not launch in this process (found by its pid file) answers.

    :raises ServiceStartError: it did not answer within ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    while not svc.ready(timeout=1.0):
        if time.monotonic() > deadline:
            raise ServiceStartError(svc.name, f"did not answer on {svc.address} within {timeout:.0f}s",
                                    svc.log_path)
        time.sleep(0.2)


def alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie."""
    ex = _EXECUTORS.get(pid)
    if ex is not None and ex.process is not None:
        return ex.process.poll() is None
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def managed_process(svc: Service) -> psutil.Process | None:
    """The owner of ``svc``: the live process in its pid file if it really is this service, else None.

    Removes a stale pid file (dead process, zombie, or pid reused by something else).
    """
    try:
        pid = int(svc.pid_path.read_text().strip())
    except (OSError, ValueError):
        return None
    ex = _EXECUTORS.get(pid)
    if ex is not None and ex.process is not None and ex.process.poll() is not None:  # our child exited: reaped
        _EXECUTORS.pop(pid, None)
    try:
        proc = psutil.Process(pid)
        if proc.status() != psutil.STATUS_ZOMBIE and svc.owns(proc):
            return proc
    except psutil.Error:
        pass
    log.info("%s: removing stale pid file %s (pid %s)", svc.name, svc.pid_path, pid)
    svc.pid_path.unlink(missing_ok=True)
    return None


def stop_process(svc: Service, proc: psutil.Process, timeout: float = STOP_TIMEOUT,
                 sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to the service's process group, wait ``timeout`` s, then SIGKILL it; remove the pid file.

    ``sig=SIGKILL`` kills at once (a crash, for failure tests).

    :raises DevEnvError: the process survived SIGKILL.
    """
    stop_processes([(svc, proc)], timeout, sig)


def _signal_group(pid: int, sig: int) -> None:
    """Signal the process group ``pid`` leads (its own session), else the process alone; never our group."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if pgid == pid and pgid != os.getpgid(0):
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)


def stop_processes(pairs: list[tuple[Service, psutil.Process]], timeout: float = STOP_TIMEOUT,
                   sig: int = signal.SIGTERM) -> None:
    """:func:`stop_process` for several services at once: signal them all, then wait for each.

    :raises DevEnvError: a process survived SIGKILL.
    """
    for _, proc in pairs:
        _signal_group(proc.pid, sig)
    deadline = time.monotonic() + timeout
    for svc, proc in pairs:
        pid = proc.pid
        if not _wait_gone(pid, max(0.0, deadline - time.monotonic())):
            log.warning("%s: pid %d still running %.0fs after signal %d, sending SIGKILL", svc.name, pid, timeout,
                        sig)
            _signal_group(pid, signal.SIGKILL)
            if not _wait_gone(pid, 10):
                raise DevEnvError(f"{svc.name}: pid {pid} survived SIGKILL")
        _signal_group(pid, signal.SIGKILL)  # leftovers in the group (there should be none)
        _forget(svc, pid)
        log.info("%s: stopped pid %d", svc.name, pid)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``<root>/.lock`` so concurrent up/down calls do not race."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
