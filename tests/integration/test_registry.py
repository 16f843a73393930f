"""The live-service registry: a running poller or processor registers, reports, and disappears when it ends."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid

from tests.integration.conftest import wait_for

SESSION_TIMEOUT = 4


def services_list(pipeline, root: str, zk: str, *flags: str) -> str:
    env = {**pipeline.env, "STREAMS_COORDINATION__HOSTS": zk, "STREAMS_COORDINATION__ROOT": root}
    out = subprocess.run([sys.executable, "-m", "streams.cli", "services", "list", *flags], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def registry_row(pipeline, root: str, zk: str, pid: str) -> list[str] | None:
    """The `streams services list` row of process ``pid``, split into columns; None if absent."""
    for line in services_list(pipeline, root, zk).splitlines()[1:]:
        cols = line.split("\t")
        if cols[2] == pid:
            return cols
    return None


def test_poller_registers_refreshes_and_vanishes(pipeline, services):
    root = f"/t{uuid.uuid4().hex[:10]}"
    zk = services["zookeeper"]
    agent = pipeline.spawn("poll", STREAMS_POLLER__INTERVAL="1", STREAMS_POLLER__MAX_PROCESSES="5",
                           STREAMS_COORDINATION__HOSTS=zk, STREAMS_COORDINATION__ROOT=root,
                           STREAMS_COORDINATION__SESSION_TIMEOUT=str(SESSION_TIMEOUT),
                           STREAMS_POLLER__REPORT_INTERVAL="1")
    agent.wait_ready()
    pid = str(agent.proc.pid)

    def row():
        return registry_row(pipeline, root, zk, pid)

    binary, host, _, version, up_s, last_s, alive = wait_for(row, 20, "the poller in `streams services list`")
    assert (binary, host, alive) == ("streams-poll-compute", socket.gethostname(), "yes")
    assert version == "0.1.0" and float(last_s) <= 2.5
    # The report is refreshed: uptime grows while the last report stays fresh.
    wait_for(lambda: (r := row()) and float(r[4]) >= float(up_s) + 2 and float(r[5]) <= 2.5, 15,
             "a refreshed report")

    agent.kill()  # kill -9: the ephemeral znode goes with the session
    wait_for(lambda: pid not in services_list(pipeline, root, zk, "--all"), SESSION_TIMEOUT + 8,
             "the killed poller gone from the registry")


def test_processor_registers_and_leaves_on_stop(pipeline, services):
    root = f"/t{uuid.uuid4().hex[:10]}"
    zk = services["zookeeper"]
    proc = pipeline.spawn("process", STREAMS_COORDINATION__HOSTS=zk, STREAMS_COORDINATION__ROOT=root,
                          STREAMS_COORDINATION__SESSION_TIMEOUT=str(SESSION_TIMEOUT))
    proc.wait_ready()
    pid = str(proc.proc.pid)

    binary, host, *_, alive = wait_for(lambda: registry_row(pipeline, root, zk, pid), 20, "the processor in `streams services list`")
    assert (binary, host, alive) == ("streams-process", socket.gethostname(), "yes")
    proc.stop()  # SIGTERM: a clean stop deletes the znode at once, no session timeout to wait for
    wait_for(lambda: pid not in services_list(pipeline, root, zk, "--all"), 10, "the stopped processor gone")
