"""``make chaos``: the fault suite. Faults one after another under a steady load; one table row per fault.

What runs (all real, on loopback): a private Kafka-protocol broker, ZooKeeper and ClickHouse started
through :mod:`streams.devenv` in ``.dev/chaos`` on free ports (so stopping ClickHouse or ZooKeeper here
never touches the shared services); ``streams process`` (the bench's stateful pipeline) and
``streams notify`` as supervised subprocesses (restarted whenever they exit, as Kubernetes would);
a load generator (:class:`~tests.chaos.harness.Generator`: about 5,000 signed samples/s through the
project's ``KafkaPublisher``, keyed by resource_id, each sample with a recorded message_id and its
phase as project_id); four alarms created with ``streams alarm create`` on resources whose load
crosses the threshold on a fixed event-time pattern, with webhook actions to a local receiver.

Phases (rows), in order: baseline (no fault); ``kill -9`` of the processor just after a batch's insert
(restarted at once); ``kill -9`` of the notifier while a slow webhook is being delivered; ClickHouse
stopped for 20 s; ZooKeeper stopped for 20 s while ``streams alarm update`` changes a threshold; the
webhook receiver down for 30 s; a webhook that never answers again; a burst of every poison case.

Counted from the real stores once the load has stopped (:mod:`tests.chaos.tally`):

* samples produced = broker-acknowledged samples of the phase; stored = distinct message ids of the
  phase in ``<db>.samples``; dead-lettered = the phase's samples in ``samples.dlq``; lost = produced
  ids neither stored nor dead-lettered; duplicated = ``count() - uniqExact(message_id)`` without FINAL,
  plus any excess of the 1-minute rollups' count over the distinct ids;
* alarm transitions expected = the pure evaluator (:mod:`streams.alarms.evaluator`) run offline over
  the acknowledged samples; seen = expected transitions found both in ``alarm_history`` and on the
  alarms topic; duplicated = extra ``alarm_history`` rows without FINAL / extra alarms-topic records
  of the same event id; a transition belongs to the phase holding its boundary (event time);
* webhooks expected = expected events x their webhook actions; delivered = those the receiver got
  (event id from ``X-Streams-Event-Id``); dead-lettered = those in ``alarms.dlq``; redelivered =
  further arrivals of a delivered event id (at-least-once; receivers de-duplicate on the header);
* time to recover: per row, from the moment the fault is removed to the moment named in the row's
  ``recovery_what`` (e.g. every sample acknowledged before that moment stored).

Usage: ``python tests/chaos/run.py [--scale 1.0] [--resources 1000] [--keep]``; writes
``bench/chaos.json``. Exit status 1 if any row lost or duplicated anything.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from clickhouse_driver import Client  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from kazoo.client import KazooClient  # noqa: E402

from streams import devenv  # noqa: E402
from streams.alarms.definitions import AlarmDefinitionStore  # noqa: E402
from streams.alarms.model import parse_alarm  # noqa: E402
from streams.alarms.records import AlarmRecordCodec, RecordCodec  # noqa: E402
from streams.codec import BatchCodec  # noqa: E402
from streams.config import load_settings  # noqa: E402
from streams.signing import Keyring  # noqa: E402
from streams.storage.clickhouse import connect  # noqa: E402
from streams.storage.migrations import migrate  # noqa: E402
from streams.topics import create_topics  # noqa: E402
from tests.chaos import harness as h  # noqa: E402
from tests.chaos.tally import Row, count_alarms, count_samples, dump, expected_events, hook_of, markdown, table  # noqa: E402
from tests.conftest import unsigned_record  # noqa: E402

KEYS = {"chaos": "chaos-signing-secret-not-for-production"}
DB = "chaos"
GRACE_S = 2.0
PRE = 5
"""Seconds of steady load in each phase before its fault."""
SETTLED_LAG, SETTLE_MAX = 10, 120
"""A phase ends once every sample produced until SETTLED_LAG s ago is stored, or after SETTLE_MAX s."""
NOTIFIER = {"TIMEOUT": "5", "MAX_RETRIES": "15", "BACKOFF": "0.5", "BACKOFF_MAX": "4", "DELIVERY_TIMEOUT": "45"}
"""The notifier's retry budget: a webhook down for 30 s is retried at least every 4 s (backoff capped by
backoff_max) for 45 s (delivery_timeout; 15 retries would wait 51.5 s), so a delivery first tried
anywhere in the outage succeeds within 4 s of the receiver's return. One attempt takes at most 5 s
(timeout), the bound on how long a hanging webhook delays others."""

ALARM_RESOURCES = {
    **{f"alarm-vm-{k}": h.cycle(10 * k) for k in range(4)},
    "zk-vm-0": lambda t, phase, start: h.BETWEEN if phase == "zookeeper" else h.cycle(0)(t, phase, start),
    "dead-vm-0": lambda t, phase, start: h.HIGH if phase == "webhook-dead" and 5 <= t - start < 25 else h.LOW,
}
"""Alarm resources and their load: alarm-vm-* cycle high/low (40 s, shifted 10 s apart); zk-vm-0 holds 70
(between the old threshold 50 and the new 90) through the ZooKeeper phase; dead-vm-0 is high only
5-25 s into the dead-webhook phase."""

POISON_REASONS = {
    b"poison-mixed": "mixed_resources", b"poison-not-the-key": "key_mismatch", b"poison-inf": "non_finite_volume",
    b"poison-old": "too_old", b"poison-too-many-samples": "too_many_samples",
    b"poison-too-many-metadata": "too_many_metadata", b"poison-huge": "too_large",
    b"poison-huge-key-id": "unknown_key", b"poison-bad-signature": "bad_signature",
    b"poison-garbage": "not_single_object",
}
ALARM_POISON_REASONS = {b"poison-a1": "bad_event", b"poison-a2": "unsigned", b"poison-a3": "not_single_object"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait(predicate: Callable[[], object], timeout: float, interval: float = 0.5) -> float | None:
    """Poll ``predicate`` (exceptions count as False) until truthy; the wall time it was, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return time.time()
        except Exception:  # noqa: BLE001 - a store being restarted answers with errors meanwhile
            pass
        time.sleep(interval)
    return None


class Chaos:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.scale = args.scale
        self.dev = ROOT / ".dev" / "chaos"
        self.rows: list[Row] = []
        self.poison: list[dict] = []
        self.facts: dict = {}
        self.started = time.time()

    # -- setup -------------------------------------------------------------------------------------

    def services(self) -> None:
        self.dev.mkdir(parents=True, exist_ok=True)
        os.environ["STREAMS_DEV_DIR"] = str(self.dev)
        devenv.down(purge=True)  # leftovers of an interrupted run (pid files in our own dev dir only)
        for var in ("STREAMS_DEV_KAFKA_PORT", "STREAMS_DEV_ZOOKEEPER_PORT", "STREAMS_DEV_CLICKHOUSE_PORT",
                    "STREAMS_DEV_CLICKHOUSE_HTTP_PORT", "STREAMS_DEV_CLICKHOUSE_TLS_PORT"):
            os.environ[var] = str(h.free_port())
        os.environ.setdefault("STREAMS_DEV_ZOOKEEPER_HEAP", "256m")
        addresses = devenv.up()
        log(f"private services in {self.dev}: {addresses}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_") or k.startswith("STREAMS_DEV_")}
        env.update({
            "STREAMS_KAFKA__BOOTSTRAP_SERVERS": addresses["kafka"],
            "STREAMS_KAFKA__PARTITIONS": "4",
            "STREAMS_CLICKHOUSE__URL": f"clickhouse://default@{addresses['clickhouse']}/{DB}",
            "STREAMS_SIGNING__KEYS": json.dumps(KEYS),
            "STREAMS_SIGNING__ACTIVE": "chaos",
            "STREAMS_COORDINATION__HOSTS": addresses["zookeeper"],
            "STREAMS_COORDINATION__ROOT": "/chaos",
            "STREAMS_PROCESSOR__PIPELINE": str(ROOT / "bench" / "pipeline.yaml"),
            "STREAMS_PROCESSOR__DATA_DIR": str(self.dev / "faust"),
            "STREAMS_PROCESSOR__METRICS_PORT": str(h.free_port()),
            "STREAMS_PROCESSOR__MAX_SAMPLE_AGE": str(30 * 86400),  # the too_old case
            "STREAMS_PROCESSOR__MAX_FUTURE_SKEW": str(4 * 366 * 86400),  # the alarm whose cron fails in 3 years
            "STREAMS_ALARMS__GRACE": str(GRACE_S),
            "STREAMS_NOTIFIER__METRICS_PORT": str(h.free_port()),
            "STREAMS_LOG_LEVEL": "INFO",
            **{f"STREAMS_NOTIFIER__{k}": v for k, v in NOTIFIER.items()},
        })
        self.env = env
        os.environ.update({k: v for k, v in env.items() if k.startswith("STREAMS_")})
        os.environ.pop("STREAMS_CONFIG", None)
        self.settings = load_settings()
        create_topics(self.settings.kafka)
        migrate(connect(self.settings.clickhouse), DB)
        self.ch = Client(**self.settings.clickhouse.client_kwargs())
        self.keyring = Keyring({k: v.encode() for k, v in KEYS.items()}, "chaos")
        self.codec = BatchCodec(self.keyring)

    def cli(self, *args: str, timeout: float = 60, **env: str) -> str:
        r = subprocess.run([sys.executable, "-m", "streams.cli", *args], env={**self.env, **env},
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"streams {' '.join(args[:3])} failed ({r.returncode}): {r.stderr[-2000:]}")
        return r.stdout

    def alarms(self) -> None:
        rx = self.receiver
        rule = ["--meter", "load", "--operator", "gt", "--threshold", "50", "--statistic", "max", "--period", "5",
                "--evaluation-periods", "2"]
        self.cli("alarm", "create", "--id", "hi-load", "--name", "load high", *rule, "--resource-id", "alarm-vm-*",
                 "--severity", "moderate", "--alarm-action", rx.url("hi"), "--ok-action", rx.url("hi"))
        self.cli("alarm", "create", "--id", "lo-load", "--name", "load low", "--meter", "load", "--operator", "lt",
                 "--threshold", "30", "--statistic", "avg", "--period", "10", "--evaluation-periods", "1",
                 "--resource-id", "alarm-vm-*", "--alarm-action", rx.url("lo"), "--ok-action", rx.url("lo"),
                 "--insufficient-data-action", rx.url("lo"))
        self.cli("alarm", "create", "--id", "zk-load", "--name", "load high (changed during the outage)", *rule,
                 "--resource-id", "zk-vm-0", "--alarm-action", rx.url("zk"), "--ok-action", rx.url("zk"))
        self.cli("alarm", "create", "--id", "dead-hook", "--name", "webhook that stops answering", *rule,
                 "--resource-id", "dead-vm-0", "--alarm-action", rx.url("dead"))
        zk = KazooClient(hosts=self.settings.coordination.hosts)
        zk.start(timeout=30)
        try:
            self.definitions = AlarmDefinitionStore(zk, self.settings.coordination.root).list()
        finally:
            zk.stop()
            zk.close()
        log(f"alarms: {', '.join(a.alarm_id for a in self.definitions)}")

    def processes(self) -> None:
        logs = self.dev / "logs"
        p = self.settings.processor
        self.processor = h.Supervised("processor", ["process"], self.env, logs / "processor.log", p.metrics_port)
        self.notifier = h.Supervised("notifier", ["notify"], self.env, logs / "notifier.log",
                                     self.settings.notifier.metrics_port)
        self.processor.start()
        self.notifier.start()
        for proc in (self.processor, self.notifier):
            if wait(proc.ready, 180) is None:
                raise RuntimeError(f"{proc.name} not ready in 180 s; see {proc.log_path}")
        self.rss = h.RssMonitor([self.processor, self.notifier])
        self.rss.start()
        log(f"processor pid {self.processor.pid} and notifier pid {self.notifier.pid} ready")

    def setup(self) -> None:
        self.services()
        self.receiver = h.Receiver()
        self.alarms()
        alarm_codec = AlarmRecordCodec(self.keyring)
        k = self.settings.kafka
        self.alarm_topic = h.TopicReader(k, k.alarms_topic, alarm_codec.decode)
        self.alarm_dlq = h.TopicReader(k, k.alarms_dlq_topic, alarm_codec.decode)
        self.alarm_topic.start()
        self.alarm_dlq.start()
        self.processes()
        self.gen = h.Generator(k, self.codec, self.args.resources, ALARM_RESOURCES)

    # -- helpers -----------------------------------------------------------------------------------

    def begin(self, name: str, fault: str) -> Row:
        now = time.time()
        if self.rows:
            self.rows[-1].end = now
        row = Row(name, fault, start=now)
        self.rows.append(row)
        self.gen.set_phase(name)
        log(f"== {fault}")
        return row

    def hold(self, row: Row, seconds: float) -> None:
        """Let the phase run until ``seconds`` (scaled) after its start."""
        time.sleep(max(0.0, row.start + seconds * self.scale - time.time()))

    def settle(self, row: Row) -> None:
        """End the phase once the pipeline has caught up: every sample produced until
        :data:`SETTLED_LAG` seconds ago stored (waiting up to :data:`SETTLE_MAX` s), so that the next
        fault does not start on top of this one's backlog."""
        started = time.time()
        at = wait(lambda: self.stored_before(time.time() - SETTLED_LAG), SETTLE_MAX, 1.0)
        row.facts["settled_after_s"] = None if at is None else round(at - started, 1)
        if at is None:
            row.notes.append(f"the pipeline was still more than {SETTLED_LAG} s behind {SETTLE_MAX} s after the "
                             "fault's recovery")

    def stop_service(self, row: Row, name: str) -> float:
        """Stop one private service (SIGTERM, as ``streams dev down``); return when it was down."""
        stopping = time.time()
        devenv.down(services=[name])
        down = time.time()
        row.facts["stop_took_s"] = round(down - stopping, 1)
        log(f"   {name} stopped ({down - stopping:.1f} s to shut down)")
        return down

    def sleep_until(self, t: float) -> None:
        time.sleep(max(0.0, t - time.time()))

    def recovered(self, row: Row, since: float, at: float | None, what: str) -> None:
        row.recovery_what = what
        if at is None:
            row.notes.append(f"not recovered in time: {what}")
            log(f"   NOT recovered: {what}")
        else:
            row.recovery_s = round(at - since, 2)
            log(f"   recovered in {row.recovery_s:.1f} s: {what}")

    def stored_before(self, t: float) -> bool:
        """Every load sample acknowledged with a timestamp before ``t`` is stored: checked on each resource's
        newest record before ``t`` (one primary-key lookup), since the processor stores a partition's
        records whole and in order (the final count checks every sample)."""
        newest = self.gen.last_records_before(int(t * 1e6))
        if not newest:
            return True
        [(got,)] = self.ch.execute(
            f"SELECT uniqExact(message_id) FROM {DB}.samples WHERE name = 'cpu' AND resource_id IN %(r)s "
            "AND timestamp_us IN %(t)s AND message_id IN %(m)s",
            {"r": tuple({r for r, _, _ in newest}), "t": tuple({ts for _, ts, _ in newest}),
             "m": tuple(h.message_id(seq) for _, _, seq in newest)})
        return got >= len(newest)

    def wait_stored_before(self, t: float, timeout: float) -> float | None:
        time.sleep(1.0)  # the broker's acknowledgements of samples produced just before t
        return wait(lambda: self.stored_before(t), timeout)

    def hook_events_before(self, t: float) -> set[tuple[str, str]]:
        """(event id, hook) of the alarms-topic records appended before ``t``, for answering hooks."""
        base = self.receiver.url("")
        return {(e["event_id"], hk) for ts, _, e, _, _ in list(self.alarm_topic.records) if e and ts < t
                for hk in (hook_of(u, base) for u in e["actions"]) if hk and self.receiver.modes.get(hk) != "hang"}

    def delivered_before(self, t: float) -> bool:
        got = {(d["event_id"], d["hook"]) for d in list(self.receiver.deliveries)}
        return self.hook_events_before(t) <= got

    def parts_rows(self) -> int:
        [(n,)] = self.ch.execute("SELECT sum(rows) FROM system.parts WHERE database = %(db)s AND table = 'samples' "
                                 "AND active", {"db": DB})
        return int(n)

    # -- the faults --------------------------------------------------------------------------------

    def baseline(self) -> None:
        row = self.begin("baseline", "none (baseline)")
        self.hold(row, 20)
        t = time.time()
        at = self.wait_stored_before(t, 60)
        row.recovery_what = "no fault"
        row.facts["all_stored_within_s"] = None if at is None else round(at - t, 2)

    def processor_kill(self) -> None:
        row = self.begin("processor-kill", "kill -9 processor mid-batch")
        self.hold(row, PRE)
        base = self.parts_rows()
        wait(lambda: self.parts_rows() != base, 30, 0.02)  # a batch's insert just landed: kill before its ack
        killed = self.processor.kill9()
        row.facts["killed_at"] = killed
        log(f"   processor killed (-9) just after an insert, restarted as pid {self.processor.pid}")
        at = self.wait_stored_before(killed, 240)
        self.recovered(row, killed, at, "every sample acknowledged before the kill stored (restart at once)")
        ready = wait(self.processor.ready, 60)
        row.facts["restart_to_ready_s"] = None if ready is None else round(ready - killed, 2)
        self.settle(row)

    def notifier_kill(self) -> None:
        row = self.begin("notifier-kill", "kill -9 notifier mid-delivery")
        for hook in ("hi", "lo", "zk"):
            self.receiver.modes[hook] = "slow"  # 3 s per delivery, so deliveries are in flight
        if wait(lambda: self.receiver.in_flight > 0, 90, 0.02) is None:
            row.notes.append("no delivery was in flight within 90 s")
        in_flight = self.receiver.in_flight
        killed = self.notifier.kill9()
        row.facts.update(killed_at=killed, in_flight_at_kill=in_flight)
        log(f"   notifier killed (-9) with {in_flight} deliveries in flight, restarted as pid {self.notifier.pid}")
        first = wait(lambda: any(d["t"] > killed for d in list(self.receiver.deliveries)), 180, 0.1)
        done = wait(lambda: self.delivered_before(killed), 180)
        row.facts["first_delivery_after_s"] = None if first is None else round(first - killed, 2)
        self.recovered(row, killed, None if None in (first, done) else max(first, done),
                       "kill and restart -> the restarted notifier delivering again, and every webhook of an "
                       "event on the alarms topic before the kill delivered")
        for hook in ("hi", "lo", "zk"):
            self.receiver.modes[hook] = "ok"
        self.settle(row)

    def clickhouse_stop(self) -> None:
        row = self.begin("clickhouse", "ClickHouse stopped for 20 s")
        self.hold(row, PRE)
        down = self.stop_service(row, "clickhouse")
        self.sleep_until(down + 20)
        devenv.up(["clickhouse"])
        up = time.time()
        row.facts.update(down_at=down, up_at=up)
        log(f"   ClickHouse answering again after {up - down:.1f} s")
        at = self.wait_stored_before(up, 300)
        self.recovered(row, up, at, "ClickHouse back -> every sample acknowledged before then stored")
        self.settle(row)

    def zookeeper_stop(self) -> None:
        row = self.begin("zookeeper", "ZooKeeper stopped for 20 s")
        self.hold(row, PRE)
        down = self.stop_service(row, "zookeeper")
        time.sleep(5)
        update = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "alarm", "update", "zk-load", "--threshold", "90"],
            env={**self.env, "STREAMS_COORDINATION__CONNECT_TIMEOUT": "120"}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        started = time.time()
        log("   `streams alarm update zk-load --threshold 90` started during the outage")
        self.sleep_until(down + 20)
        devenv.up(["zookeeper"])
        up = time.time()
        log(f"   ZooKeeper answering again after {up - down:.1f} s")
        out, err = update.communicate(timeout=180)
        landed = time.time()
        if update.returncode != 0:
            raise RuntimeError(f"alarm update failed: {err[-2000:]}")
        self.new_zk_load = parse_alarm(json.loads(out))
        log(f"   the update landed {landed - up:.1f} s after ZooKeeper was back")
        switched = wait(lambda: self.switch() is not None, 180)
        stored = self.wait_stored_before(up, 180)
        row.facts.update(down_at=down, up_at=up, update_started_at=started, update_landed_at=landed,
                         update_rc=update.returncode, switched_seen_at=switched)
        if switched is not None:
            t_switch, appended = self.switch()
            row.facts.update(switch_boundary_us=t_switch, switch_event_appended_at=appended,
                             applied_after_landing_s=round(appended - landed, 2))
            log(f"   new threshold applied at boundary {datetime.fromtimestamp(t_switch / 1e6, UTC):%H:%M:%S}, the "
                f"first evaluated after it landed (its event on the alarms topic {appended - landed:.1f} s later)")
        done = None if switched is None or stored is None else max(self.switch()[1], stored)
        self.recovered(row, up, done, "ZooKeeper back -> the updated definition applied (first event with "
                                      "the new threshold on the alarms topic) and every sample stored")
        self.settle(row)

    def switch(self) -> tuple[int, float] | None:
        """(boundary µs, append time) of the first zk-load event evaluated with the updated threshold."""
        for ts, _, e, _, _ in list(self.alarm_topic.records):
            if e and e["alarm_id"] == "zk-load" and json.loads(e["reason_data"]).get("threshold") == 90:
                return e["timestamp"], ts
        return None

    def receiver_down(self) -> None:
        row = self.begin("receiver", "webhook receiver down for 30 s")
        self.hold(row, PRE)
        down = time.time()
        self.receiver.down()
        log("   receiver down")
        self.sleep_until(down + 30)
        self.receiver.up()
        up = time.time()
        row.facts.update(down_at=down, up_at=up)
        log("   receiver up again")
        first = wait(lambda: any(d["t"] >= up for d in list(self.receiver.deliveries)), 60, 0.1)
        row.facts["first_delivery_after_s"] = None if first is None else round(first - up, 2)
        at = wait(lambda: self.delivered_before(up), 120)
        self.recovered(row, up, at, "receiver back -> every webhook of an event on the alarms topic before "
                                    "then delivered")
        self.settle(row)

    def webhook_dead(self) -> None:
        row = self.begin("webhook-dead", "a webhook that never recovers")
        self.receiver.modes["dead"] = "hang"
        first = wait(lambda: any(a["hook"] == "dead" for a in self.receiver.attempts), 120, 0.1)
        budget = float(NOTIFIER["DELIVERY_TIMEOUT"]) + 30
        dead = None if first is None else wait(
            lambda: any(r[2] and r[2]["alarm_id"] == "dead-hook" for r in list(self.alarm_dlq.records)), budget)
        if first is not None:
            row.facts["first_attempt_at"] = first
        if dead is not None and first is not None:
            self.recovered(row, first, dead, "first attempt -> the record in alarms.dlq (delivery_timeout)")
        else:
            row.notes.append("the dead webhook's record did not reach alarms.dlq in time")
        attempts = [a["t"] for a in self.receiver.attempts if a["hook"] == "dead"]
        row.facts["dead_hook_attempts"] = [round(t - attempts[0], 2) for t in attempts] if attempts else []
        self.settle(row)
        row.facts["window"] = (first, dead)

    def poison_burst(self) -> None:
        row = self.begin("poison", "a burst of every poison case")
        self.hold(row, PRE)
        pids = (self.processor.pid, self.notifier.pid)
        year = datetime.now(UTC).year
        cron = f"0 0 1 1 * 0 {year - 1}-{year + 1}"  # a previous and a next date now; none in year + 3
        doc = self.dev / "cron-alarm.json"
        doc.write_text(json.dumps({"alarm_id": "cron-bounded", "name": "cron bounded", "threshold_rule": {
            "meter_name": "chaos.cron", "threshold": 1, "comparison_operator": "gt", "period": 1},
            "time_constraints": [{"name": "years", "start": cron, "duration": 3600}]}))
        self.cli("alarm", "create", "--file", str(doc))
        zk = KazooClient(hosts=self.settings.coordination.hosts)
        zk.start(timeout=30)
        levels = 100_000
        deep = ('{"name":"deep","type":"composite","composite_rule":' + '{"and":[' * levels
                + '{"meter_name":"load","threshold":1}' + "]}" * levels + "}")
        root = self.settings.coordination.root
        zk.create(f"{root}/alarms/deep", deep[:900_000].encode())
        zk.create(f"{root}/alarms/never", json.dumps({"name": "never", "threshold_rule": {
            "meter_name": "load", "threshold": 1}, "time_constraints": [
            {"name": "feb30", "start": "0 0 30 2 *", "duration": 60}]}).encode())
        zk.stop()
        zk.close()
        time.sleep(1)  # the watch loads the cron alarm before its samples arrive

        now = time.time_ns() // 1000
        bad = poison_records(self.codec, now)
        producer = Producer({**self.settings.kafka.client_config(), "message.max.bytes": 10_000_000})
        for key, value in bad.items():
            producer.produce(self.settings.kafka.samples_topic, key=key, value=value)
        alarm_codec = AlarmRecordCodec(self.keyring)
        for key, value in poison_alarm_records(alarm_codec, self.receiver.url("hi"), now).items():
            producer.produce(self.settings.kafka.alarms_topic, key=key, value=value)
        assert producer.flush(60) == 0
        future = datetime(year + 3, 6, 1, tzinfo=UTC).timestamp()
        for i in range(6):  # the cron alarm's samples: its evaluation raises in year + 3
            self.gen.publish_extra([sample("cron-vm", "chaos.cron", "%", 50.0, int((future + i) * 1e6))])
        for i in range(60):  # memory: validly signed records just under 1 MiB, many at once
            md = {f"k{j}": "v" * 900 for j in range(200)}
            self.gen.publish_extra([sample(f"big-{i}", "memory.usage", "B", 1.0, now + j, md) for j in range(5)])
        sent = time.time()
        log(f"   sent {len(bad)} bad sample records, 3 bad alarm records, 60 records of ~0.9 MB, "
            "a cron alarm that raises, 2 invalid alarm documents")

        def all_dead_lettered() -> bool:
            keys = {m.key() for m in h.read_all(self.settings.kafka, self.settings.kafka.dlq_topic)}
            alarm_keys = {r[1] for r in list(self.alarm_dlq.records)}
            return set(POISON_REASONS) <= keys and set(ALARM_POISON_REASONS) <= alarm_keys

        dead = wait(all_dead_lettered, 120, 2.0)
        stored = self.wait_stored_before(sent, 120)
        disabled = wait(lambda: "CroniterBadDateError" in self.cli("alarm", "show", "cron-bounded"), 60, 2.0)
        self.recovered(row, sent, None if None in (dead, stored) else max(dead, stored),
                       "burst sent -> every bad record dead-lettered and every good sample stored")
        self.settle(row)
        shown = json.loads(self.cli("alarm", "show", "cron-bounded"))
        listed = self.cli("alarm", "list")
        row.facts.update(
            sent_at=sent, same_pids=(self.processor.pid, self.notifier.pid) == pids,
            cron_alarm={"enabled": shown.get("enabled"), "disabled_reason": shown.get("disabled_reason"),
                        "disabled_seen_after_s": None if disabled is None else round(disabled - sent, 1)},
            invalid_documents_listed=[i for i in ("deep", "never") if f"{i}\t-\t-\tinvalid" in listed])

    # -- the end -----------------------------------------------------------------------------------

    def drain(self) -> None:
        """The load goes on (untagged) while everything of the rows is stored and delivered; then stop."""
        end = time.time()
        self.rows[-1].end = end
        self.gen.set_phase("drain")
        log("== drain: waiting until every phase's samples are stored and its webhooks done")
        self.wait_stored_before(end, 300)
        expected = self.expected()
        base = self.receiver.url("")
        pairs = {(e.event_id, hk) for e in expected if e.timestamp_us < end * 1e6
                 for hk in (hook_of(u, base) for u in e.actions) if hk}

        def done() -> bool:
            got = {(d["event_id"], d["hook"]) for d in list(self.receiver.deliveries)}
            got |= {(r[2]["event_id"], hook_of(dict(r[4]).get("streams.dlq.action", b"").decode(), base))
                    for r in list(self.alarm_dlq.records) if r[2]}
            return pairs <= got

        if wait(done, 120, 1.0) is None:
            log("   some webhooks neither delivered nor dead-lettered after 120 s")
        self.gen.stop()
        if self.wait_stored_before(time.time(), 300) is None:  # so that the derived rows can be counted exactly
            log("   the load's last samples were not all stored after 300 s")

    def expected(self):
        records = [r for r in list(self.gen.alarm_records) if self.gen.is_acked(h.seq_of(r[0]["message_id"]))]
        switch = self.switch()
        if switch is None:
            log("   the updated zk-load definition was never applied: expected as if from its landing")
            landed = self.rows_by("zookeeper").facts.get("update_landed_at", time.time())
            switch = (int(landed * 1e6) // 5_000_000 * 5_000_000 + 5_000_000, 0)
        new = getattr(self, "new_zk_load", None)
        return expected_events(self.definitions, records, int(GRACE_S * 1e6),
                               (switch[0], new) if new is not None else None)

    def rows_by(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def count(self) -> dict:
        log("counting from ClickHouse, the dead-letter topics, the alarms topic and the receiver")
        k = self.settings.kafka
        dlq = h.read_all(k, k.dlq_topic)
        dlq_seqs: set[int] = set()
        poison_seen: dict[bytes, str] = {}
        for m in dlq:
            reason = dict(m.headers() or []).get("streams.dlq.reason", b"").decode()
            if m.key() in POISON_REASONS:
                poison_seen[m.key()] = reason
                continue
            try:
                samples = self.codec.decode(m.value())
            except Exception:  # noqa: BLE001 - not one of ours
                continue
            dlq_seqs.update(h.seq_of(s["message_id"]) for s in samples)
        samples = count_samples(self.rows, self.ch, DB, self.gen, h.DERIVED_METER, dlq_seqs)
        expected = self.expected()
        history = self.ch.execute(f"SELECT event_id, alarm_id, resource_id, previous_state, state, timestamp_us "
                                  f"FROM {DB}.alarm_history")
        topic = [e for _, _, e, _, _ in self.alarm_topic.records if e and e["transition"]]
        base = self.receiver.url("")
        dead = [(r[2]["event_id"], hook_of(dict(r[4]).get("streams.dlq.action", b"").decode(), base))
                for r in self.alarm_dlq.records if r[2]]
        count_alarms(self.rows, expected, history, topic, list(self.receiver.deliveries), dead, base)
        alarm_poison = {r[1]: dict(r[4]).get("streams.dlq.reason", b"").decode() for r in self.alarm_dlq.records
                        if r[1] in ALARM_POISON_REASONS}
        poison = self.rows_by("poison")
        poison.dead_lettered += len(poison_seen)
        poison.notes.append(f"dead-lettered counts {len(poison_seen)} bad records (not samples)")
        self.poison = [{"case": k.decode(), "expected": v, "seen": poison_seen.get(k)}
                       for k, v in POISON_REASONS.items()]
        self.poison += [{"case": k.decode() + " (alarms topic)", "expected": v, "seen": alarm_poison.get(k)}
                        for k, v in ALARM_POISON_REASONS.items()]
        [(derived, derived_ids)] = self.ch.execute(
            f"SELECT count(), uniqExact(message_id) FROM {DB}.samples WHERE name = %(n)s", {"n": h.DERIVED_METER})
        load_records = self.gen.load_records
        flushes = self.ch.execute(f"SELECT flushed_at_us, rows, duplicates FROM {DB}.sink_flushes")
        for row in self.rows:
            mine = [(n, d) for t, n, d in flushes if row.holds(t / 1e6)]
            row.facts["sink_rows_inserted"] = sum(n for n, _ in mine)
            row.facts["sink_skipped_as_stored"] = sum(d for _, d in mine)  # a replay the sink recognised
            row.exits = {p.name: [rc for t, rc, deliberate in p.exits if not deliberate and row.holds(t)]
                         for p in (self.processor, self.notifier)}
            row.peak_rss_mib = {p.name: round(self.rss.peak(p.name, row.start, row.end) / 2**20, 1)
                                for p in (self.processor, self.notifier)}
        self.webhook_latency()
        return {**samples, "derived_rows": derived, "derived_distinct": derived_ids,
                "load_records_acked": load_records, "publish_failed": self.gen.failed,
                "generator_behind_max_s": round(self.gen.behind_s, 2)}

    def webhook_latency(self) -> None:
        """Delivery latency of the answering hooks (alarms-topic append -> receiver), per row; for the
        dead-webhook row, while the dead webhook was being retried."""
        appended = {e["event_id"]: ts for ts, _, e, _, _ in self.alarm_topic.records if e}
        for row in self.rows:
            lo, hi = row.facts.get("window", (row.start, row.end))
            lo, hi = lo or row.start, hi or row.end
            lat = [d["t"] - appended[d["event_id"]] for d in self.receiver.deliveries
                   if d["event_id"] in appended and d["hook"] != "dead" and lo <= d["t"] < hi]
            if lat:
                row.facts["webhook_latency_max_s"] = round(max(lat), 2)
                row.facts["webhook_latency_n"] = len(lat)

    def report(self, figures: dict, elapsed: float) -> int:
        print()
        print(table(self.rows))
        print()
        for r in self.rows:
            seconds = r.end - r.start
            print(f"{r.fault}: {seconds:.0f} s, {r.produced / seconds:,.0f} samples/s acknowledged, peak RSS "
                  + ", ".join(f"{k} {v:.0f} MiB" for k, v in r.peak_rss_mib.items()))
            print(f"    time to recover = {r.recovery_what or '-'}")
            for note in r.notes:
                print(f"    note: {note}")
            for key in ("webhook_latency_max_s", "first_delivery_after_s", "dead_hook_attempts", "same_pids",
                        "cron_alarm", "invalid_documents_listed", "restart_to_ready_s", "in_flight_at_kill",
                        "applied_after_landing_s", "settled_after_s", "stop_took_s", "sink_skipped_as_stored"):
                if key in r.facts:
                    print(f"    {key}: {r.facts[key]}")
            if any(r.exits.values()):
                print(f"    unplanned exits: {r.exits}")
            if r.transitions_missing or r.transitions_unexpected:
                print(f"    transitions missing: {r.transitions_missing[:5]} unexpected: "
                      f"{r.transitions_unexpected[:5]}")
            if r.rollup_extra:
                print(f"    rollups count {r.rollup_extra} more samples than stored")
        print()
        print("poison cases: " + ", ".join(f"{p['case']} -> {p['seen']}"
                                           + ("" if p["seen"] == p["expected"] else f" (expected {p['expected']})")
                                           for p in self.poison))
        print(f"derived rows (bench.cpu_rate): {figures['derived_rows']}, distinct {figures['derived_distinct']}, "
              f"expected {figures['load_records_acked'] - self.args.resources} (one per acknowledged cpu sample "
              "but each resource's first)")
        print(f"run time {elapsed / 60:.1f} min; generator at most {figures['generator_behind_max_s']} s behind "
              f"schedule; samples the publisher failed to deliver: {figures['publish_failed']}")
        out = ROOT / "bench" / "chaos.json"
        dump(out, self.rows, {"figures": figures, "poison": self.poison, "elapsed_s": round(elapsed, 1),
                              "notifier": NOTIFIER, "resources": self.args.resources, "scale": self.scale,
                              "markdown": markdown(self.rows)})
        (self.dev / "table.md").write_text(markdown(self.rows) + "\n")
        print(f"wrote {out} and {self.dev / 'table.md'}")
        bad = [r.fault for r in self.rows if r.lost or r.duplicated or r.rollup_extra or r.webhooks_lost
               or r.transitions_seen != r.transitions_expected or r.transitions_unexpected
               or r.history_duplicated or r.webhooks_unexpected]
        bad += [p["case"] for p in self.poison if p["seen"] != p["expected"]]
        if bad:
            print(f"GOAL MISSED in: {', '.join(bad)}")
        return 1 if bad else 0

    def teardown(self) -> None:
        for stop in ("gen", "processor", "notifier", "alarm_topic", "alarm_dlq", "rss", "receiver"):
            obj = getattr(self, stop, None)
            if obj is None:
                continue
            with contextlib.suppress(Exception):
                if stop == "rss":
                    obj.stopping.set()
                elif stop == "receiver":
                    obj.close()
                elif stop == "gen":
                    if obj.is_alive():
                        obj.stop()
                else:
                    obj.stop()
        self.gen = None  # its librdkafka producer would keep reconnecting to the stopped broker
        gc.collect()
        if not self.args.keep:
            log("stopping the private services")
            devenv.down(purge=True)
            log("private services stopped (logs kept in .dev/chaos/logs)")

    def run(self) -> int:
        try:
            self.setup()
            self.gen.start()
            self.gen_started = time.time()
            self.baseline()
            self.processor_kill()
            self.notifier_kill()
            self.clickhouse_stop()
            self.zookeeper_stop()
            self.receiver_down()
            self.webhook_dead()
            self.poison_burst()
            self.drain()
            figures = self.count()
            return self.report(figures, time.time() - self.started)
        except Exception:
            traceback.print_exc()
            return 2
        finally:
            self.teardown()


# --------------------------------------------------------------------------- poison


def sample(rid: str, name: str, unit: str, volume: float, ts_us: int, md: dict | None = None,
           project: str = "chaos-poison") -> dict:
    return {"message_id": h.message_id(0), "name": name, "type": "gauge", "unit": unit, "volume": volume,
            "user_id": None, "user_name": None, "project_id": project, "project_name": None, "resource_id": rid,
            "timestamp": ts_us, "monotonic_time": None, "resource_metadata": md or {}, "source": "chaos-extra",
            "message_signature": None}


def poison_records(codec: BatchCodec, now: int) -> dict[bytes, bytes]:
    """Each bad sample record of tests/integration/test_poison.py, keyed as :data:`POISON_REASONS`."""
    import uuid

    def s(rid: str, **kw) -> dict:
        out = sample(rid, kw.pop("name", "cpu_util"), kw.pop("unit", "%"), kw.pop("volume", 1.0),
                     kw.pop("ts", now), kw.pop("md", None), "chaos-poison-bad")
        out["message_id"] = str(uuid.uuid4())
        return out

    tampered = bytearray(codec.encode([s("poison-bad-signature")]))
    tampered[20] ^= 0x01
    return {
        b"poison-mixed": codec.encode([s("poison-mixed"), s("poison-other")]),
        b"poison-not-the-key": codec.encode([s("poison-the-resource")]),
        b"poison-inf": codec.encode([s("poison-inf", unit="TiB", volume=1e300)]),
        b"poison-old": codec.encode([s("poison-old", ts=now - 40 * 86_400_000_000)]),
        b"poison-too-many-samples": codec.encode([s("poison-too-many-samples") for _ in range(1001)]),
        b"poison-too-many-metadata": codec.encode([s("poison-too-many-metadata",
                                                     md={f"k{i}": "v" * 900 for i in range(1000)})]),
        b"poison-huge": codec.encode([s("poison-huge", md={"x": "y" * 1_200_000})]),
        b"poison-huge-key-id": unsigned_record(codec, "k" * 500_000),
        b"poison-bad-signature": bytes(tampered),
        b"poison-garbage": b"garbage",
    }


def poison_alarm_records(codec: AlarmRecordCodec, url: str, now: int) -> dict[bytes, bytes]:
    """The notifier's poison pills: a timestamp out of range, an unsigned record, garbage."""
    def event(i: int, ts: int) -> dict:
        return {"event_id": f"poison-e{i}", "alarm_id": f"poison-a{i}", "alarm_name": "poison", "type": "threshold",
                "severity": "low", "resource_id": "r", "project_id": None, "user_id": None, "previous": "ok",
                "current": "alarm", "transition": True, "reason": "poison", "reason_data": "{}",
                "actions": [url], "timestamp": ts}
    return {b"poison-a1": codec.encode(event(1, 2**62)), b"poison-a2": RecordCodec().encode(event(2, now)),
            b"poison-a3": b"garbage"}


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("clickhouse_driver").setLevel(logging.ERROR)  # its reconnects while ClickHouse is away
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="Scale of the phases' lengths (for trying it out).")
    parser.add_argument("--resources", type=int, default=1000, help="Resources polled once a second (5 samples).")
    parser.add_argument("--keep", action="store_true", help="Leave the private services running afterwards.")
    return Chaos(parser.parse_args()).run()


if __name__ == "__main__":
    sys.exit(main())
