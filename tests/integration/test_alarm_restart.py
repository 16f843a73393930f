"""A restarted processor evaluates its backlog's alarm windows in event time (found by ``make chaos``).

After a restart, the records produced while the worker was down are fetched into Faust's buffers at
once, before the first batch of them is prepared. The alarm timer must not take those fetched
records for prepared ones: it would close the windows of the backlog by wall clock, declare
insufficient data for a resource that never stopped reporting, and ignore its samples as late.

The consumer must not skip the backlog either: a worker killed before its first offset commit left
no committed offset, and a restarted worker whose prefetched records were dropped during table
recovery went on from the end of the log (README, "Defects the restart test found later").
"""

from __future__ import annotations

import signal
import time
import uuid

import pytest

from streams.topics import create_topics
from tests.integration.conftest import wait_for
from tests.integration.test_alarms import cli, reporting_load


def load_high_alarm(pipeline, services, **extra: str) -> None:
    """Alarm topics of this test's own, the processor's env (coordination, short grace and timer, plus
    ``extra``) in ``pipeline.env``, and alarm ``load-high``: vm-1's max load over 2 s above 50."""
    name = pipeline.name
    alarms_topic = f"{name}.alarms"
    create_topics(pipeline.settings.kafka, [alarms_topic, f"{name}.alarms.dlq"])
    pipeline.env = {**pipeline.env,
                    "STREAMS_COORDINATION__HOSTS": services["zookeeper"],
                    "STREAMS_COORDINATION__ROOT": f"/t{uuid.uuid4().hex}",
                    "STREAMS_KAFKA__ALARMS_TOPIC": alarms_topic,
                    "STREAMS_KAFKA__ALARMS_DLQ_TOPIC": f"{name}.alarms.dlq",
                    "STREAMS_ALARMS__GRACE": "0.5",
                    "STREAMS_ALARMS__TIMER_INTERVAL": "0.25", **extra}
    cli(pipeline.env, "alarm", "create", "--id", "load-high", "--name", "load high", "--meter", "load",
        "--operator", "gt", "--threshold", "50", "--statistic", "max", "--period", "2", "--evaluation-periods",
        "1", "--resource-id", "vm-1", "--alarm-action", "log://")


def test_a_restarted_processor_keeps_event_time_for_its_backlog(pipeline, services):
    load_high_alarm(pipeline, services)

    def transitions() -> list[tuple[str, str]]:
        return pipeline.rows("SELECT previous_state, state FROM {db}.alarm_history FINAL "
                             "WHERE alarm_id = 'load-high' ORDER BY timestamp_us")

    with reporting_load(pipeline):  # vm-1 reports load 80 every 0.2 s, whatever happens to the processor
        first = pipeline.spawn("process")
        first.wait_ready()
        wait_for(lambda: transitions() == [("insufficient data", "alarm")], 60, "the alarm firing")
        first.kill(signal.SIGKILL)
        killed = time.time()
        time.sleep(8)  # a backlog of 40 records while no worker runs
        # A wide batch window: the first batch of the backlog is prepared 5 s after it is fetched, and
        # the timer runs every 0.25 s meanwhile.
        second = pipeline.spawn("process", STREAMS_PROCESSOR__BATCH_TIMEOUT="5")
        second.wait_ready()
        restarted = time.time()
        wait_for(lambda: pipeline.rows("SELECT max(timestamp_us) FROM {db}.samples")[0][0] / 1e6 > restarted + 5,
                 60, "the backlog and five more seconds stored")
    history = pipeline.rows("SELECT previous_state, state, timestamp_us, reason FROM {db}.alarm_history FINAL "
                            "WHERE alarm_id = 'load-high' ORDER BY timestamp_us")
    if [(p, s) for p, s, *_ in history] != [("insufficient data", "alarm")]:
        # What a failing run needs to tell: were the backlog's samples stored, and what did the restarted
        # worker log about rebalances and recovery?
        stored = pipeline.rows("SELECT intDiv(timestamp_us, 1000000) AS s, count() FROM {db}.samples "
                               "WHERE resource_id = 'vm-1' GROUP BY s ORDER BY s")
        log = [line for line in second.log_path.read_text().splitlines()
               if any(w in line for w in ("generation", "Recovery", "Worker", "flush:", "alarm", "rejected"))]
        detail = (f"killed at {killed:.1f}, restarted at {restarted:.1f}; history {history}; vm-1 samples stored "
                  f"per second: {stored}; restarted worker's log: {log[-60:]}")
        pytest.fail(detail)
    # The backlog is stored (nothing skipped while no worker ran). vm-1 reports 5 times a second; two
    # seconds in a row without a sample would be more than a starved reporting thread.
    seconds = {s for s, _ in pipeline.rows("SELECT intDiv(timestamp_us, 1000000) AS s, count() FROM {db}.samples "
                                           "WHERE resource_id = 'vm-1' GROUP BY s")}
    missing = [s for s in range(int(killed) + 1, int(restarted)) if s not in seconds]
    assert not [s for s in missing if s + 1 in missing], f"no sample stored for these seconds of the backlog: {missing}"
    assert second.proc.poll() is None


def test_alarm_state_survives_workers_joining_and_leaving(pipeline, services):
    """A second worker joins and leaves twice while vm-1 reports: each rebalance re-reads the state's
    changelog (Faust's recovery), which must not roll the first worker's alarm windows back."""
    load_high_alarm(pipeline, services, STREAMS_PROCESSOR__BATCH_TIMEOUT="0.05")

    def transitions() -> list:
        return pipeline.rows("SELECT previous_state, state, timestamp_us, reason FROM {db}.alarm_history FINAL "
                             "WHERE alarm_id = 'load-high' ORDER BY timestamp_us")

    with reporting_load(pipeline):
        first = pipeline.spawn("process")
        first.wait_ready()
        wait_for(lambda: [t[:2] for t in transitions()] == [("insufficient data", "alarm")], 60, "the alarm firing")
        for _ in range(2):
            other = pipeline.spawn("process")
            other.wait_ready()
            time.sleep(3)
            other.kill(signal.SIGTERM)  # leaves the group: another rebalance
            time.sleep(3)
    assert [(p, s) for p, s, *_ in transitions()] == [("insufficient data", "alarm")], transitions()
    assert first.proc.poll() is None
