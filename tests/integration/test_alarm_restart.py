"""A restarted processor evaluates its backlog's alarm windows in event time (found by ``make chaos``).

After a restart, the records produced while the worker was down are fetched into Faust's buffers at
once, before the first batch of them is prepared. The alarm timer must not take those fetched
records for prepared ones: it would close the windows of the backlog by wall clock, declare
insufficient data for a resource that never stopped reporting, and ignore its samples as late.
"""

from __future__ import annotations

import signal
import time
import uuid
import warnings

import pytest

from streams.topics import create_topics
from tests.integration.conftest import wait_for
from tests.integration.test_alarms import cli, reporting_load


# An open defect, not a flaky test: in about one run in ten to twenty (seen in CI and in the kill loop, under
# load) the restarted processor's alarm state showed no sample of the backlog (the first window with data
# after the restart starts when the new worker became ready; the state's `late` count is 0): it reports
# alarm -> insufficient data -> alarm. One way to lose a batch's state was found and closed since (Faust's
# recovery re-applied the processor's own changelog records at a rebalance and could roll back a batch
# stored meanwhile: streams/processor/state.py, VERSION_KEY), but that needs a second rebalance in the
# restarted worker, which no logged run showed; 27 runs in a row passed before that change too, so the
# test stays xfail until a failing run is caught with the instrumentation. README, Status.
@pytest.mark.xfail(strict=False, reason="open defect: a restarted processor's alarm state sometimes misses the "
                   "backlog's samples (about 1 run in 10-20); README, Status")
def test_a_restarted_processor_keeps_event_time_for_its_backlog(pipeline, services):
    name = pipeline.name
    alarms_topic = f"{name}.alarms"
    create_topics(pipeline.settings.kafka, [alarms_topic, f"{name}.alarms.dlq"])
    env = {**pipeline.env,
           "STREAMS_COORDINATION__HOSTS": services["zookeeper"],
           "STREAMS_COORDINATION__ROOT": f"/t{uuid.uuid4().hex}",
           "STREAMS_KAFKA__ALARMS_TOPIC": alarms_topic,
           "STREAMS_KAFKA__ALARMS_DLQ_TOPIC": f"{name}.alarms.dlq",
           "STREAMS_ALARMS__GRACE": "0.5",
           "STREAMS_ALARMS__TIMER_INTERVAL": "0.25"}
    pipeline.env = env
    cli(env, "alarm", "create", "--id", "load-high", "--name", "load high", "--meter", "load", "--operator", "gt",
        "--threshold", "50", "--statistic", "max", "--period", "2", "--evaluation-periods", "1",
        "--resource-id", "vm-1", "--alarm-action", "log://")
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
        # What a failing run needs to tell (the open defect above): were the backlog's samples stored, and
        # what did the restarted worker log about rebalances and recovery?
        stored = pipeline.rows("SELECT intDiv(timestamp_us, 1000000) AS s, count() FROM {db}.samples "
                               "WHERE resource_id = 'vm-1' GROUP BY s ORDER BY s")
        log = [line for line in second.log_path.read_text().splitlines()
               if any(w in line for w in ("generation", "Recovery", "Worker", "flush:", "alarm", "rejected"))]
        detail = (f"killed at {killed:.1f}, restarted at {restarted:.1f}; history {history}; vm-1 samples stored "
                  f"per second: {stored}; restarted worker's log: {log[-60:]}")
        warnings.warn(f"test_alarm_restart: the open defect happened: {detail}", stacklevel=1)  # shown even as xfail
        pytest.fail(detail)
    assert second.proc.poll() is None


def test_alarm_state_survives_workers_joining_and_leaving(pipeline, services):
    """A second worker joins and leaves twice while vm-1 reports: each rebalance re-reads the state's
    changelog (Faust's recovery), which must not roll the first worker's alarm windows back."""
    name = pipeline.name
    alarms_topic = f"{name}.alarms"
    create_topics(pipeline.settings.kafka, [alarms_topic, f"{name}.alarms.dlq"])
    env = {**pipeline.env,
           "STREAMS_COORDINATION__HOSTS": services["zookeeper"],
           "STREAMS_COORDINATION__ROOT": f"/t{uuid.uuid4().hex}",
           "STREAMS_KAFKA__ALARMS_TOPIC": alarms_topic,
           "STREAMS_KAFKA__ALARMS_DLQ_TOPIC": f"{name}.alarms.dlq",
           "STREAMS_ALARMS__GRACE": "0.5",
           "STREAMS_ALARMS__TIMER_INTERVAL": "0.25",
           "STREAMS_PROCESSOR__BATCH_TIMEOUT": "0.05"}
    pipeline.env = env
    cli(env, "alarm", "create", "--id", "load-high", "--name", "load high", "--meter", "load", "--operator", "gt",
        "--threshold", "50", "--statistic", "max", "--period", "2", "--evaluation-periods", "1",
        "--resource-id", "vm-1", "--alarm-action", "log://")

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
