"""``streams demo``: the whole pipeline on this machine's real metrics, for about a minute.

Starts the local services (unless already running), creates the topics and
schema, runs the compute poller and the processor as real processes, shows
progress from ClickHouse while they run, prints what was stored, and stops
everything it started.

With ``coordination.hosts`` set (``etc/streams.dev.yaml`` sets it) it also
runs the notifier and ``streams api`` (``--auth noauth``, on loopback), and
creates a ``cpu_util`` alarm on this host through the Aodh API, with a
threshold halfway between the host's utilisation without the demo's load
(measured during the first third, after start-up) and 100 %. Then it loads
every core (niced busy loops) for about a third of the run, and stops: the
alarm goes insufficient data -> alarm -> ok. At the end it prints the
alarm's transitions (from ``aodh alarm-history show`` when python-aodhclient
is installed, else the same API call), what the ``log://`` notifier
delivered, and deletes the alarm.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import click

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "etc" / "streams.dev.yaml"


def _spawn(name: str, args: list[str], config: Path, logdir: Path) -> tuple[subprocess.Popen, Path]:
    log_path = logdir / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "--config", str(config), *args],
        stdout=log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    return proc, log_path


def _stop(proc: subprocess.Popen, timeout: float = 30.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _table(rows: list[tuple], headers: tuple[str, ...]) -> str:
    cells = [headers] + [tuple("" if v is None else str(v) for v in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(cells[0]), line(tuple("-" * w for w in widths))] + [line(r) for r in cells[1:]])


_DEMO_IDENTITY = {"X-User-Id": "demo", "X-Project-Id": "demo", "X-Roles": "admin"}
_BURN = "import os\nos.nice(19)\nwhile True:\n    pass\n"


def _api(url: str, method: str = "GET", body: object = None, timeout: float = 10.0) -> object:
    """One call to the demo's Aodh API (noauth headers); the decoded JSON answer, None for 204."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={**_DEMO_IDENTITY, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
    except urllib.error.HTTPError as exc:
        raise click.ClickException(f"{method} {url}: HTTP {exc.code}: {exc.read().decode(errors='replace')}") \
            from None
    return json.loads(raw) if raw else None


def _wait_api(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"streams api exited with {proc.returncode}; see {log_path}")
        try:
            _api(f"{url}/v2/capabilities")
            return
        except (OSError, click.ClickException):
            time.sleep(0.5)
    raise click.ClickException(f"streams api did not answer on {url} within {timeout:.0f}s; see {log_path}")


def _history(url: str, alarm_id: str) -> list[dict]:
    """The alarm's history, through the real ``aodh`` CLI when python-aodhclient is installed."""
    aodh = shutil.which("aodh", path=str(Path(sys.executable).parent)) or shutil.which("aodh")
    if aodh:
        r = subprocess.run([aodh, "--os-auth-type", "aodh-noauth", "--aodh-endpoint", url, "--user-id", "demo",
                            "--project-id", "demo", "alarm-history", "show", alarm_id, "-f", "json"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            return json.loads(r.stdout)
    return _api(f"{url}/v2/alarms/{alarm_id}/history")  # type: ignore[return-value]


@click.command()
@click.option("--duration", type=click.IntRange(min=5), default=60, show_default=True,
              help="Seconds to run the poller.")
@click.option("--keep-services", is_flag=True, help="Leave the local services running afterwards.")
@click.pass_context
def demo(ctx: click.Context, duration: int, keep_services: bool) -> None:
    """Run poller + processor on this host's metrics, then report from ClickHouse."""
    from streams import devenv
    from streams.config import load_settings
    from streams.storage.clickhouse import connect
    from streams.storage.migrations import migrate
    from streams.topics import create_topics

    config = Path(ctx.obj.config) if ctx.obj and ctx.obj.config else DEFAULT_CONFIG
    settings = load_settings(config)
    echo = lambda msg: click.echo(msg, err=False)  # noqa: E731

    echo("==> starting local services (broker, ZooKeeper, ClickHouse)")
    results = devenv.up_detailed()
    started = [r.service for r in results if r.action == "started"]
    for r in results:
        echo(f"    {r.service:<10} {r.address:<16} {r.action}")

    logdir = devenv.dev_dir() / "demo"
    logdir.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[str, subprocess.Popen, Path]] = []
    burners: list[subprocess.Popen] = []
    alarm: dict | None = None
    api_url = ""
    try:
        echo("==> creating topics and schema")
        for name, state in create_topics(settings.kafka).items():
            echo(f"    topic {name}: {state}")
        client = connect(settings.clickhouse)
        db = settings.clickhouse.database
        echo(f"    database {db}: tables {', '.join(migrate(client, db))}")

        start_us = time.time_ns() // 1000
        alarms_on = bool(settings.coordination.hosts)
        roles = [("processor", ["process"]), ("poller", ["poll"])]
        if alarms_on:
            roles += [("notifier", ["notify"]), ("api", ["api", "--auth", "noauth"])]
        echo(f"==> running {', '.join(n for n, _ in roles)} (poll interval {settings.poller.interval:g}s) "
             f"for {duration}s; logs in {logdir}")
        for name, args in roles:
            proc, log_path = _spawn(name, args, config, logdir)
            procs.append((name, proc, log_path))
        api_url = f"http://{settings.api.host}:{settings.api.port}"
        load_start, load_end = duration * 0.3, duration * 0.6
        measuring = False
        if alarms_on:
            _wait_api(api_url, procs[3][1], procs[3][2])
            echo(f"    Aodh API on {api_url} (noauth, loopback): aodh --os-auth-type aodh-noauth "
                 f"--aodh-endpoint {api_url} --user-id demo --project-id demo alarm list")
        else:
            echo("    (no alarms: coordination.hosts is not set in the config)")
        import psutil

        def stored() -> tuple[int, int]:
            return client.execute(
                f"SELECT count(), uniqExact(resource_id) FROM {db}.samples WHERE timestamp_us >= %(s)s",
                {"s": start_us})[0]

        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < duration:
            time.sleep(min(5.0, duration - elapsed))
            for name, proc, log_path in procs:
                if proc.poll() is not None:
                    raise click.ClickException(f"{name} exited with {proc.returncode}; see {log_path}")
            rows, resources = stored()
            elapsed = time.monotonic() - t0
            note = ""
            if alarms_on and not measuring and elapsed >= duration * 0.15:
                psutil.cpu_percent(None)  # the host's utilisation without the demo's load, from now on
                measuring = True
            elif alarms_on and alarm is None and measuring and elapsed >= load_start:
                idle = psutil.cpu_percent(None)
                threshold = round(min(95.0, max(10.0, idle + (100.0 - idle) / 2)), 1)
                alarm = _api(f"{api_url}/v2/alarms", "POST", {  # type: ignore[assignment]
                    "name": "demo cpu busy", "type": "gnocchi_resources_threshold", "severity": "moderate",
                    "description": f"host cpu_util above {threshold}% (without the demo's load: {idle:.1f}%)",
                    "alarm_actions": ["log://"], "ok_actions": ["log://"],
                    "gnocchi_resources_threshold_rule": {
                        "metric": "cpu_util", "resource_id": socket.gethostname(), "resource_type": "host",
                        "aggregation_method": "mean", "comparison_operator": "gt", "threshold": threshold,
                        "granularity": max(10, round(2 * settings.poller.interval)), "evaluation_periods": 1}})
                note = (f"  alarm {alarm['alarm_id']} created through the API: cpu_util of "
                        f"{socket.gethostname()} > {threshold}% (without load: {idle:.1f}%)")
            if alarms_on and not burners and load_start <= elapsed < load_end:
                burners = [subprocess.Popen([sys.executable, "-c", _BURN]) for _ in range(os.cpu_count() or 1)]
                note += f"  loading {len(burners)} cores"
            if burners and elapsed >= load_end:
                for b in burners:
                    _stop(b, 5)
                burners = []
                note += "  load stopped"
            if alarm is not None:
                note += f"  alarm: {_api(api_url + '/v2/alarms/' + alarm['alarm_id'] + '/state')}"
            echo(f"    [{elapsed:4.0f}s] {rows:>7} samples stored from {resources} resources{note}")

        echo("==> stopping the poller (it flushes what it holds), letting the processor drain")
        _stop(procs[1][1])
        last, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < 3 and time.monotonic() - t0 < duration + 60:
            time.sleep(0.5)
            rows, _ = stored()
            if rows != last:
                last, stable_since = rows, time.monotonic()
        _stop(procs[0][1])

        where = f"FROM {db}.samples FINAL WHERE timestamp_us >= {int(start_us)}"
        echo("\n== Rows per meter")
        echo(_table(client.execute(
            f"SELECT name, unit, count() AS rows, uniqExact(resource_id) AS resources {where} "
            "GROUP BY name, unit ORDER BY name"), ("meter", "unit", "rows", "resources")))

        echo("\n== Resources seen")
        echo(_table(client.execute(
            "SELECT resource_metadata.value[indexOf(resource_metadata.key, 'kind')] AS kind, "
            f"uniqExact(resource_id), count() {where} GROUP BY kind ORDER BY kind"),
            ("kind", "resources", "samples")))

        echo("\n== Latest cpu utilisation per resource (top 15 by utilisation)")
        echo(_table(client.execute(
            "SELECT resource_id, if(any(resource_metadata.value[indexOf(resource_metadata.key, 'kind')]) = 'host', "
            "'(host)', any(resource_metadata.value[indexOf(resource_metadata.key, 'name')])) AS proc, "
            "round(argMax(volume, timestamp_us), 2) AS cpu_util_pct, "
            "toString(max(timestamp)) AS at "
            f"{where} AND name = 'cpu_util' GROUP BY resource_id ORDER BY cpu_util_pct DESC LIMIT 15"),
            ("resource", "process", "cpu_util %", "at (UTC)")))
        if settings.processor.pipeline:
            echo(f"\n== Derived by the pipeline ({settings.processor.pipeline}): latest value per host meter")
            echo(_table(client.execute(
                "SELECT name, unit, round(argMax(volume, timestamp_us), 1), count() "
                f"{where} AND resource_metadata.value[indexOf(resource_metadata.key, 'kind')] = 'host' "
                "AND name LIKE '%.rate' GROUP BY name, unit ORDER BY name"),
                ("meter", "unit", "latest", "samples")))
        rows, resources = stored()
        echo(f"\n{rows} samples from {resources} resources stored in {db}.samples "
             f"(ClickHouse {settings.clickhouse.url.rsplit('@', 1)[-1]})")
        if alarm is not None:
            _report_alarm(api_url, alarm, procs)
    finally:
        for b in burners:
            _stop(b, 5)
        if alarm is not None:
            try:
                _api(f"{api_url}/v2/alarms/{alarm['alarm_id']}", "DELETE")
            except (OSError, click.ClickException) as exc:
                echo(f"    could not delete the demo alarm {alarm['alarm_id']}: {exc}")
        for _, proc, _ in procs:
            _stop(proc)
        if started and not keep_services:
            echo(f"==> stopping the services this demo started: {', '.join(started)}")
            devenv.down(services=started)
    os.environ.pop("STREAMS_CONFIG", None)


def _report_alarm(api_url: str, alarm: dict, procs: list[tuple[str, subprocess.Popen, Path]]) -> None:
    """Print the alarm's transitions and what the log:// notifier delivered (the notifier is stopped first)."""
    alarm_id = alarm["alarm_id"]
    shown = _api(f"{api_url}/v2/alarms/{alarm_id}")
    click.echo(f"\n== Alarm '{alarm['name']}' ({alarm_id}): now {shown['state']}")  # type: ignore[index]
    click.echo(f"   transitions (aodh alarm-history show {alarm_id}):")
    rows = []
    for change in reversed(_history(api_url, alarm_id)):
        detail = json.loads(change["detail"])
        rows.append((change["timestamp"][:19], detail.get("resource_id", "(set via API)"),
                     f"{detail.get('previous_state', '')} -> {detail['state']}",
                     detail.get("transition_reason") or detail.get("state_reason", "")))
    click.echo(_table(rows, ("at (UTC)", "resource", "transition", "reason")) if rows else "   (none yet)")
    for name, proc, log_path in procs:
        if name == "notifier":
            _stop(proc)
            delivered = [line for line in log_path.read_text(errors="replace").splitlines()
                         if f"({alarm_id}) on " in line]
            click.echo(f"\n== What the log:// notifier delivered ({log_path})")
            click.echo("\n".join(delivered) if delivered else "(nothing yet)")
