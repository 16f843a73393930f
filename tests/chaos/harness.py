"""Moving parts of the fault suite: the steady load, the webhook receiver, supervised ``streams``
processes and readers of the pipeline's topics.

Everything here runs in the driver's process (threads) except the ``streams`` processes, which are
real subprocesses restarted whenever they exit, as Kubernetes restarts a container.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from aiohttp import web
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streams.codec import BatchCodec, Sample
from streams.config import KafkaSettings
from streams.publisher import KafkaPublisher
from tests.integration.conftest import free_port, http_get

DERIVED_METER = "bench.cpu_rate"
"""What the bench pipeline derives from ``cpu``; every other meter in the store is a produced sample."""
LOAD_SOURCE = "chaos"
"""``source`` of the steady load's samples; extra samples sent by a fault carry ``chaos-extra``."""

CYCLE_S = 40
"""The alarm resources' load pattern: high (80) for 20 s, low (20) for 20 s, offset 10 s per resource."""

HIGH, LOW, BETWEEN = 80.0, 20.0, 70.0


def project(phase: str) -> str:
    """The project_id that tags a phase's samples (so the 1-minute rollups can be counted per phase)."""
    return f"chaos-{phase}"


# --------------------------------------------------------------------------- the load


class _RecordingCodec:
    """Wraps the codec the publisher signs with: remembers each record by its signature (last 32 bytes),
    so the delivery report tells which samples the broker acknowledged."""

    def __init__(self, inner: BatchCodec, pending: dict[bytes, tuple[int, int, int, str, str]]) -> None:
        self.inner = inner
        self.pending = pending

    def encode(self, samples: list[Sample]) -> bytes:
        value = self.inner.encode(samples)
        first = samples[0]
        self.pending[value[-32:]] = (seq_of(first["message_id"]), len(samples), first["timestamp"],
                                     first["project_id"], first["source"])
        return value


class RecordingPublisher(KafkaPublisher):
    """The project's publisher (idempotent, acks=all, one signed record per resource), with a hook
    called for every record the broker acknowledged: ``on_ack(first_seq, n, timestamp_us, project, source)``."""

    def __init__(self, settings: KafkaSettings, codec: BatchCodec, on_ack: Callable[..., None]) -> None:
        self.pending: dict[bytes, tuple[int, int, int, str, str]] = {}
        self.on_ack = on_ack
        super().__init__(settings, _RecordingCodec(codec, self.pending))

    def _on_delivery(self, err, msg, count: int) -> None:
        super()._on_delivery(err, msg, count)
        info = self.pending.pop(bytes(msg.value()[-32:]), None)
        if err is None and info is not None:
            self.on_ack(*info)


_PREFIX = uuid.uuid4().hex
ID_PREFIX = f"{_PREFIX[:8]}-{_PREFIX[8:12]}-{_PREFIX[12:16]}-{_PREFIX[16:20]}-"
"""Every message_id of this run is ``ID_PREFIX + 12 hex digits of its sequence number`` (a uuid's shape)."""


def message_id(seq: int) -> str:
    return f"{ID_PREFIX}{seq:012x}"


def seq_of(mid: str) -> int:
    """The sequence number of one of this run's message ids; -1 for anything else."""
    if len(mid) != 36 or not mid.startswith(ID_PREFIX):
        return -1
    return int(mid[24:], 16)


class Resource:
    """One polled resource: five meters per poll; alarm resources report ``load`` from a pattern."""

    HOST_METERS = (("cpu", "cumulative", "ns"), ("cpu_util", "gauge", "%"), ("memory.usage", "gauge", "B"),
                   ("disk.read.bytes", "cumulative", "B"), ("network.incoming.bytes", "cumulative", "B"))
    ALARM_METERS = (("cpu", "cumulative", "ns"), ("load", "gauge", "%"), ("memory.usage", "gauge", "B"),
                    ("disk.read.bytes", "cumulative", "B"), ("network.incoming.bytes", "cumulative", "B"))

    def __init__(self, rid: str, index: int, load: Callable[[float, str, float], float] | None = None) -> None:
        self.rid = rid
        self.index = index
        self.load = load
        self.meters = self.ALARM_METERS if load else self.HOST_METERS
        self.cpu = float(index) * 1e9
        self.disk = 0.0
        self.net = 0.0

    def samples(self, ts_us: int, seq: int, phase: str, phase_start: float) -> list[Sample]:
        t = ts_us / 1e6
        self.cpu += 0.37e9 + (self.index % 7) * 1e7
        self.disk += 4096.0 * (1 + self.index % 5)
        self.net += 1500.0 * (1 + self.index % 3)
        util = 10.0 + (self.index * 7 + int(t)) % 80
        values = {"cpu": self.cpu, "cpu_util": util, "memory.usage": 2.0**30 + self.index * 4096.0,
                  "disk.read.bytes": self.disk, "network.incoming.bytes": self.net}
        if self.load is not None:
            values["load"] = self.load(t, phase, phase_start)
        md = {"kind": "host", "cpu_number": "4"}
        return [{"message_id": message_id(seq + i), "name": name, "type": type_, "unit": unit,
                 "volume": values[name], "user_id": None, "user_name": None, "project_id": project(phase),
                 "project_name": None, "resource_id": self.rid, "timestamp": ts_us, "monotonic_time": None,
                 "resource_metadata": md, "source": LOAD_SOURCE, "message_signature": None}
                for i, (name, type_, unit) in enumerate(self.meters)]


def cycle(offset_s: float) -> Callable[[float, str, float], float]:
    """Load high for the first half of each :data:`CYCLE_S` cycle (shifted by ``offset_s``), low after."""
    def load(t: float, phase: str, phase_start: float) -> float:
        return HIGH if (t + offset_s) % CYCLE_S < CYCLE_S / 2 else LOW
    return load


class Generator(threading.Thread):
    """Steady load: ``resources`` resources, each polled once a second with five samples
    (``rate`` = 5 x resources samples/s), spread over ten ticks a second; every sample has a unique
    recorded message_id and the phase tag (project_id). Only broker-acknowledged samples count.

    Alarm resources (``alarm_resources``: id -> load pattern) are among the resources; their samples
    are kept (:attr:`alarm_records`) for the offline evaluation of expected alarm transitions.
    """

    TICKS = 10

    def __init__(self, settings: KafkaSettings, codec: BatchCodec, resources: int,
                 alarm_resources: dict[str, Callable[[float, str, float], float]]) -> None:
        super().__init__(name="chaos-load", daemon=True)
        self.publisher = RecordingPublisher(settings, codec, self._on_ack)
        rs = [Resource(rid, i, load) for i, (rid, load) in enumerate(alarm_resources.items())]
        rs += [Resource(f"host-{i:04d}", i) for i in range(len(rs), resources)]
        self.resources = rs
        self.alarm_ids = set(alarm_resources)
        self.phase = "start"
        self.phase_start = time.time()
        self.stopping = threading.Event()
        self.extra: queue.Queue[list[Sample]] = queue.Queue()
        self._lock = threading.Lock()
        self._seq = 0
        self.acked = bytearray(1 << 23)  # seq -> 1 once the broker acknowledged it
        self.phase_of = bytearray(1 << 23)  # seq -> index in projects of its phase tag
        self.projects: list[str] = []
        self.sent: Counter[str] = Counter()  # project -> samples queued
        self.acked_n: Counter[str] = Counter()  # project -> samples acknowledged
        self.load_records = 0  # load records acknowledged (each holds one cpu sample)
        self.alarm_records: list[list[Sample]] = []  # records of alarm resources, in production order
        self.behind_s = 0.0  # longest the loop ran behind its schedule
        self.per_tick = [self.resources[i::self.TICKS] for i in range(self.TICKS)]
        self.ticks: list[tuple[int, int, array]] = []  # (timestamp µs, group, first seq of each resource's record)

    # -- sequence numbers and acks -------------------------------------------------------------

    def take(self, n: int) -> int:
        with self._lock:
            first = self._seq
            self._seq += n
            if self._seq > len(self.acked):
                self.acked.extend(bytes(len(self.acked)))
                self.phase_of.extend(bytes(len(self.phase_of)))
            return first

    @property
    def total(self) -> int:
        """Sequence numbers handed out so far."""
        return self._seq

    def _on_ack(self, first: int, n: int, ts_us: int, proj: str, source: str) -> None:
        with self._lock:
            if proj not in self.projects:
                self.projects.append(proj)
            self.acked[first:first + n] = b"\x01" * n
            self.phase_of[first:first + n] = bytes([self.projects.index(proj)]) * n
            self.acked_n[proj] += n
            if source == LOAD_SOURCE:
                self.load_records += 1

    def is_acked(self, seq: int) -> bool:
        return 0 <= seq < self._seq and self.acked[seq] == 1

    # -- the loop ------------------------------------------------------------------------------

    def last_records_before(self, t_us: int) -> list[tuple[str, int, int]]:
        """(resource id, timestamp µs, first seq) of each resource's newest acknowledged record stamped
        before ``t_us``. Its first sample is its ``cpu`` sample."""
        found: dict[int, tuple[int, array]] = {}
        end = bisect.bisect_left(self.ticks, t_us, key=lambda tick: tick[0])
        for ts, group, firsts in reversed(self.ticks[max(0, end - 20 * self.TICKS):end]):
            if group not in found and all(self.is_acked(f) for f in firsts):
                found[group] = (ts, firsts)
                if len(found) == self.TICKS:
                    break
        return [(r.rid, ts, first) for group, (ts, firsts) in found.items()
                for r, first in zip(self.per_tick[group], firsts, strict=True)]

    def set_phase(self, phase: str) -> None:
        self.phase_start = time.time()
        self.phase = phase

    def publish_extra(self, samples: list[Sample]) -> None:
        """Queue samples (of one resource) to be published by the load's thread, with fresh message ids."""
        first = self.take(len(samples))
        for i, s in enumerate(samples):
            s["message_id"] = message_id(first + i)
        self.extra.put(samples)

    def run(self) -> None:
        per_tick = self.per_tick
        interval = 1.0 / self.TICKS
        next_at = time.monotonic()
        tick = 0
        while not self.stopping.is_set():
            phase, phase_start = self.phase, self.phase_start
            ts_us = time.time_ns() // 1000
            batch: list[Sample] = []
            firsts = array("q")
            for r in per_tick[tick % self.TICKS]:
                first = self.take(len(r.meters))
                firsts.append(first)
                samples = r.samples(ts_us, first, phase, phase_start)
                if r.rid in self.alarm_ids:
                    self.alarm_records.append(samples)
                batch.extend(samples)
            self.ticks.append((ts_us, tick % self.TICKS, firsts))
            with self._lock:
                self.sent[project(phase)] += len(batch)
            self.publisher.publish(batch)
            for _ in range(5):  # a few extra records per tick, so the load keeps its pace
                if self.extra.empty():
                    break
                extra = self.extra.get_nowait()
                with self._lock:
                    self.sent[extra[0]["project_id"]] += len(extra)
                self.publisher.publish(extra)
            tick += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                self.behind_s = max(self.behind_s, -delay)
        self.publisher.flush(60)

    def stop(self) -> None:
        """Stop producing and wait until everything queued is acknowledged (or 60 s passed)."""
        self.stopping.set()
        self.join(90)

    @property
    def failed(self) -> int:
        return self.publisher.failed


# --------------------------------------------------------------------------- the webhook receiver


class Receiver:
    """A local aiohttp webhook receiver in its own thread, recording every request to ``/hook/<name>``.

    Per name, a mode: ``ok`` (answer 200 at once), ``slow`` (200 after :attr:`delay` s) or ``hang``
    (never answer). Requests to ok/slow hooks are deliveries (recorded on arrival, with the event id
    of header ``X-Streams-Event-Id``); requests to hanging hooks are attempts. :meth:`down` stops the
    server and closes its connections; :meth:`up` starts it again on the same port.
    """

    HOST = "127.0.0.1"

    def __init__(self) -> None:
        self.port = free_port()
        self.modes: dict[str, str] = {}
        self.delay = 3.0
        self.deliveries: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []
        self.in_flight = 0
        self.hanging = 0
        self.loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), name="chaos-receiver", daemon=True).start()
        assert started.wait(10)
        self.up()

    def url(self, name: str) -> str:
        return f"http://{self.HOST}:{self.port}/hook/{name}"

    async def _hook(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        arrived = time.time()
        body = await request.json()
        record = {"t": arrived, "hook": name, "event_id": request.headers.get("X-Streams-Event-Id", ""),
                  "alarm_id": body.get("alarm_id"), "current": body.get("current"),
                  "resource_id": body.get("resource_id")}
        mode = self.modes.get(name, "ok")
        if mode == "hang":
            self.attempts.append(record)
            self.hanging += 1
            try:
                await asyncio.sleep(3600)
            finally:
                self.hanging -= 1
        self.deliveries.append(record)
        if mode == "slow":
            self.in_flight += 1
            try:
                await asyncio.sleep(self.delay)
            finally:
                self.in_flight -= 1
        return web.Response(text="ok")

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        started.set()
        self.loop.run_forever()

    def _call(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def up(self) -> None:
        async def start() -> web.AppRunner:
            app = web.Application()
            app.router.add_post("/hook/{name}", self._hook)
            runner = web.AppRunner(app, handler_cancellation=True)
            await runner.setup()
            await web.TCPSite(runner, self.HOST, self.port, reuse_address=True).start()
            return runner
        self._runner = self._call(start())

    def down(self) -> None:
        if self._runner is not None:
            self._call(self._runner.cleanup())
            self._runner = None

    def close(self) -> None:
        self.down()
        self.loop.call_soon_threadsafe(self.loop.stop)


# --------------------------------------------------------------------------- processes


class Supervised:
    """A real ``streams`` subprocess, restarted whenever it exits (after ``restart_delay`` s), as
    Kubernetes restarts a container; :meth:`kill9` kills it and restarts it at once.

    ``exits``: (time, exit status, deliberate) per exit.
    """

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path, metrics_port: int,
                 restart_delay: float = 1.0) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_path
        self.metrics_port = metrics_port
        self.restart_delay = restart_delay
        self.proc: subprocess.Popen | None = None
        self.exits: list[tuple[float, int, bool]] = []
        self.starts: list[float] = []
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._watch, name=f"supervise-{name}", daemon=True)

    def start(self) -> Supervised:
        with self._lock:
            self._spawn()
        self._thread.start()
        return self

    def _spawn(self) -> None:
        with self.log_path.open("a") as log:
            log.write(f"\n===== chaos: starting {self.name} at {time.strftime('%H:%M:%S')}\n")
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", *self.args], env=self.env,
                                     stdout=self.log_path.open("a"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.starts.append(time.time())

    def _watch(self) -> None:
        while not self._stopping:
            time.sleep(0.2)
            with self._lock:
                if self._stopping or self.proc is None or self.proc.poll() is None:
                    continue
                self.exits.append((time.time(), self.proc.returncode, False))
            time.sleep(self.restart_delay)
            with self._lock:
                if not self._stopping:
                    self._spawn()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def kill9(self) -> float:
        """SIGKILL the process group and start it again at once; return when it was killed."""
        with self._lock:
            killed = time.time()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.exits.append((killed, self.proc.wait(30), True))
            self._spawn()
        return killed

    def ready(self) -> bool:
        return http_get(f"http://127.0.0.1:{self.metrics_port}/readyz")[0] == 200

    def metric(self, name: str) -> float:
        status, text = http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")
        total = 0.0
        for line in text.splitlines() if status == 200 else ():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total

    def rss(self) -> int:
        try:
            return psutil.Process(self.proc.pid).memory_info().rss
        except (psutil.Error, AttributeError):
            return 0

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)


class RssMonitor(threading.Thread):
    """Samples the RSS of supervised processes every half second: ``samples`` = (time, name, bytes)."""

    def __init__(self, procs: list[Supervised]) -> None:
        super().__init__(name="chaos-rss", daemon=True)
        self.procs = procs
        self.samples: list[tuple[float, str, int]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            now = time.time()
            self.samples.extend((now, p.name, p.rss()) for p in self.procs)

    def peak(self, name: str, start: float, end: float) -> int:
        return max((b for t, n, b in self.samples if n == name and start <= t < end), default=0)


# --------------------------------------------------------------------------- topics


class TopicReader(threading.Thread):
    """Reads a topic from its beginning while the run goes on; ``records`` = (append time s, key,
    decoded value or None, error text, headers) in offset order per partition."""

    def __init__(self, settings: KafkaSettings, topic: str, decode: Callable[[bytes], Any]) -> None:
        super().__init__(name=f"read-{topic}", daemon=True)
        self.consumer = Consumer({**settings.client_config(), "group.id": f"chaos-reader-{uuid.uuid4().hex[:8]}",
                                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                                  "session.timeout.ms": 6000})
        self.consumer.subscribe([topic])
        self.decode = decode
        self.records: list[tuple[float, bytes | None, Any, str, list]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            for m in self.consumer.consume(500, 0.5):
                if m.error() is not None:
                    continue
                try:
                    value, error = self.decode(m.value() or b""), ""
                except Exception as exc:  # noqa: BLE001 - poison records are recorded, not fatal
                    value, error = None, f"{type(exc).__name__}: {exc}"
                self.records.append((m.timestamp()[1] / 1000, m.key(), value, error, m.headers() or []))
        self.consumer.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


def read_all(settings: KafkaSettings, topic: str, timeout: float = 60.0) -> list:
    """Every record of ``topic`` up to its current end (all partitions), as confluent-kafka messages."""
    c = Consumer({**settings.client_config(), "group.id": f"chaos-dump-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "session.timeout.ms": 6000})
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        ends = {}
        for p in meta.partitions:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi > lo:
                ends[p] = hi
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        got = []
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                if m.error() is not None:
                    continue
                got.append(m)
                if m.offset() + 1 >= ends.get(m.partition(), 0):
                    ends.pop(m.partition(), None)
        if ends:
            raise RuntimeError(f"{topic}: could not read to the end of partitions {sorted(ends)} in {timeout:.0f} s")
        return got
    finally:
        c.close()
