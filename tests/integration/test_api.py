"""``streams api`` as a real process on the local services, driven by the real python-aodhclient.

* the ``aodh`` CLI (``aodh-noauth`` plugin): create, list, show (by id and by
  name), update, state get/set, alarm-history show, delete, with the CLI's own
  JSON output parsed; error cases with Aodh's status codes;
* alarms created through the API (``gnocchi_resources_threshold``, and Heat's
  ``OS::Aodh::GnocchiAggregationByResourcesAlarm`` body) firing on real
  samples through real ``streams process`` and ``streams notify``, at a
  loopback webhook; ``aodh alarm-history show`` listing the transitions; a
  state set through the API adopted by the running evaluator;
* token authentication with the aodhclient library and the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aodhclient import client as aodh_client
from aodhclient import exceptions as aodh_exc
from aodhclient.noauth import AodhNoAuthPlugin
from keystoneauth1 import session as ks_session
from keystoneauth1.token_endpoint import Token

from streams.topics import create_topics
from tests.conftest import make_test_sample
from tests.integration.conftest import StreamsProcess, free_port, http_get, wait_for
from tests.integration.test_alarms import Webhook, reporting_load
from tests.integration.test_alarms import cli as streams_cli

AODH = str(Path(sys.executable).with_name("aodh"))
ADMIN_TOKEN = "admin-token-for-integration-tests"
MEMBER_TOKEN = "member-token-for-integration-tests"


class Api:
    """A running ``streams api`` and ways to reach it."""

    def __init__(self, pipeline, services, auth: str = "noauth", **env: str) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        root = pipeline.env.get("STREAMS_COORDINATION__ROOT") or f"/t{uuid.uuid4().hex}"
        pipeline.env = {**pipeline.env, "STREAMS_COORDINATION__HOSTS": services["zookeeper"],
                        "STREAMS_COORDINATION__ROOT": root}
        self.env = pipeline.env
        metrics_port = free_port()
        self.process = StreamsProcess(["api", "--auth", auth, "--port", str(self.port)],
                                      {**pipeline.env, "STREAMS_API__METRICS_PORT": str(metrics_port), **env},
                                      pipeline.tmp / f"api-{self.port}.log", metrics_port)
        pipeline.processes.append(self.process)
        self.process.start().wait_ready(60)

    def cli(self, *args: str, user: str = "u-admin", project: str = "p-admin", roles: str = "admin",
            check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([AODH, "--os-auth-type", "aodh-noauth", "--aodh-endpoint", self.endpoint,
                            "--user-id", user, "--project-id", project, "--roles", roles, *args],
                           capture_output=True, text=True, timeout=60)
        if check:
            assert r.returncode == 0, f"aodh {' '.join(args)}: {r.stderr}"
        return r

    def json(self, *args: str, **kw) -> object:
        return json.loads(self.cli(*args, "-f", "json", **kw).stdout)

    def client(self, user: str = "u-admin", project: str = "p-admin", roles: str = "admin"):
        sess = ks_session.Session(auth=AodhNoAuthPlugin(user, project, roles, self.endpoint))
        return aodh_client.Client("2", session=sess)

    def token_client(self, token: str):
        return aodh_client.Client("2", session=ks_session.Session(auth=Token(self.endpoint, token)))


def test_aodh_cli_create_list_show_update_state_history_delete(pipeline, services):
    api = Api(pipeline, services)
    created = api.json("alarm", "create", "--name", "cpu-high", "--type", "gnocchi_resources_threshold",
                       "--metric", "cpu_util", "--resource-id", "host-a", "--resource-type", "generic",
                       "--aggregation-method", "mean", "--threshold", "80", "--comparison-operator", "gt",
                       "--granularity", "60", "--evaluation-periods", "3", "--severity", "critical",
                       "--alarm-action", "http://127.0.0.1:9/hook", "--description", "host too busy")
    aid = created["alarm_id"]
    assert uuid.UUID(aid)
    assert (created["type"], created["state"], created["severity"]) == (
        "gnocchi_resources_threshold", "insufficient data", "critical")
    # The CLI flattens the rule into the top level of its output.
    assert (created["metric"], created["resource_id"], created["threshold"], created["granularity"],
            created["evaluation_periods"], created["aggregation_method"]) == (
        "cpu_util", "host-a", 80.0, 60, 3, "mean")

    listed = api.json("alarm", "list")
    assert [(a["alarm_id"], a["name"], a["state"], a["enabled"]) for a in listed] == [
        (aid, "cpu-high", "insufficient data", True)]
    assert api.json("alarm", "show", aid)["description"] == "host too busy"
    assert api.json("alarm", "show", "--name", "cpu-high")["alarm_id"] == aid  # found by complex query

    # One source of truth: the definition the processor watches, in ZooKeeper.
    definition = json.loads(streams_cli(api.env, "alarm", "show", aid))
    assert definition["threshold_rule"]["meter_name"] == "cpu_util"
    assert definition["threshold_rule"]["period"] == 60 and definition["threshold_rule"]["statistic"] == "avg"

    updated = api.json("alarm", "update", aid, "--threshold", "90", "--evaluation-periods", "2")
    assert (updated["threshold"], updated["evaluation_periods"], updated["metric"]) == (90.0, 2, "cpu_util")
    assert json.loads(streams_cli(api.env, "alarm", "show", aid))["threshold_rule"]["threshold"] == 90

    assert api.json("alarm", "state", "get", aid) == {"state": "insufficient data"}
    assert api.json("alarm", "state", "set", aid, "--state", "alarm") == {"state": "alarm"}
    assert api.json("alarm", "state", "get", aid) == {"state": "alarm"}
    shown = api.json("alarm", "show", aid)
    assert (shown["state"], shown["state_reason"]) == ("alarm", "Manually set via API")
    assert json.loads(streams_cli(api.env, "alarm", "show", aid))["state_override"]["state"] == "alarm"

    history = api.json("alarm-history", "show", aid)
    assert [(h["type"], json.loads(h["detail"])) for h in history] == [
        ("state transition", {"state": "alarm", "state_reason": "Manually set via API"})]
    assert "Manually set via API" in streams_cli(api.env, "alarm", "history", aid)

    # An alarm made with `streams alarm create` is seen through the API (admins see alarms of no project).
    streams_cli(api.env, "alarm", "create", "--id", "load-high", "--name", "load", "--meter", "load",
                "--operator", "gt", "--threshold", "5", "--resource-id", "vm-*", "--period", "30")
    every = api.json("alarm", "list", "--filter", "all_projects=true")
    assert {a["name"] for a in every} == {"cpu-high", "load"}
    made_by_cli = api.json("alarm", "show", "--name", "load")
    assert made_by_cli["type"] == "gnocchi_aggregation_by_resources_threshold"
    assert json.loads(made_by_cli["query"]) == {"like": {"id": "vm-%"}}

    # Error cases, with Aodh's status codes in the client's messages.
    missing = api.cli("alarm", "show", "6d9f2c4e-0d7e-4a3b-9c57-3f0e9a1b2c3d", check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr
    unsupported = api.cli("alarm", "create", "--name", "p", "--type", "prometheus", "--query", "up",
                          "--threshold", "1", check=False)
    assert unsupported.returncode != 0
    assert "Alarm type prometheus is not supported here" in unsupported.stderr and "(HTTP 400)" in unsupported.stderr
    median = api.cli("alarm", "create", "--name", "m", "--type", "gnocchi_resources_threshold", "--metric", "x",
                     "--resource-id", "r", "--resource-type", "generic", "--aggregation-method", "median",
                     "--threshold", "1", check=False)
    assert "not median" in median.stderr and "(HTTP 400)" in median.stderr

    lib = api.client()
    with pytest.raises(aodh_exc.NotFound):
        lib.alarm.get("6d9f2c4e-0d7e-4a3b-9c57-3f0e9a1b2c3d")
    with pytest.raises(aodh_exc.BadRequest) as bad:
        lib.alarm.create({"name": "b", "type": "gnocchi_resources_threshold",
                          "gnocchi_resources_threshold_rule": {"metric": "x", "resource_id": "r",
                                                               "resource_type": "generic",
                                                               "aggregation_method": "mean", "threshold": 1,
                                                               "comparison_operator": "bigger"}})
    assert "comparison_operator" in bad.value.message and bad.value.code == 400
    with pytest.raises(aodh_exc.BadRequest):
        lib.alarm.set_state(aid, "sideways")

    api.cli("alarm", "delete", aid)
    assert [a["name"] for a in api.json("alarm", "list")] == []
    assert "cpu-high" not in streams_cli(api.env, "alarm", "list")
    gone = api.cli("alarm-history", "show", aid, check=False)
    assert gone.returncode != 0 and "(HTTP 404)" in gone.stderr


def test_alarms_made_through_the_api_fire_on_real_samples_and_heats_body_is_evaluated(pipeline, services):
    name = pipeline.name
    alarms_topic, alarms_dlq = f"{name}.alarms", f"{name}.alarms.dlq"
    create_topics(pipeline.settings.kafka, [alarms_topic, alarms_dlq])
    pipeline.env = {**pipeline.env,
                    "STREAMS_COORDINATION__HOSTS": services["zookeeper"],
                    "STREAMS_COORDINATION__ROOT": f"/t{uuid.uuid4().hex}",
                    "STREAMS_KAFKA__ALARMS_TOPIC": alarms_topic, "STREAMS_KAFKA__ALARMS_DLQ_TOPIC": alarms_dlq,
                    "STREAMS_ALARMS__GRACE": "0.5", "STREAMS_ALARMS__TIMER_INTERVAL": "0.25",
                    "STREAMS_NOTIFIER__GROUP_ID": f"{name}-notifier", "STREAMS_NOTIFIER__BACKOFF": "0.1"}
    api = Api(pipeline, services)
    hook = Webhook()
    lib = api.client()

    # 1. gnocchi_resources_threshold through the aodh CLI
    load = api.json("alarm", "create", "--name", "load-high", "--type", "gnocchi_resources_threshold",
                    "--metric", "load", "--resource-id", "vm-1", "--resource-type", "instance",
                    "--aggregation-method", "max", "--threshold", "50", "--comparison-operator", "gt",
                    "--granularity", "1", "--evaluation-periods", "2", "--alarm-action", hook.url(),
                    "--ok-action", hook.url())
    # 2. what Heat's OS::Aodh::GnocchiAggregationByResourcesAlarm sends (Heat fills unset properties with null)
    heat = lib.alarm.create({
        "name": "stack-cpu_alarm_high-abc", "type": "gnocchi_aggregation_by_resources_threshold",
        "description": "Scale up if CPU > 80%", "enabled": True, "repeat_actions": True, "severity": "low",
        "alarm_actions": [hook.url() + "?scale=up"], "ok_actions": [], "insufficient_data_actions": [],
        "time_constraints": [],
        "gnocchi_aggregation_by_resources_threshold_rule": {
            "metric": "cpu_util", "aggregation_method": "mean", "granularity": 1, "evaluation_periods": None,
            "threshold": 80.0, "resource_type": "instance", "comparison_operator": "gt",
            "query": json.dumps({"=": {"server_group": "stack-abc"}})}})
    assert heat["gnocchi_aggregation_by_resources_threshold_rule"]["evaluation_periods"] == 1

    processor = pipeline.spawn("process")
    notifier_port = free_port()
    pipeline.spawn("notify", "--metrics-port", str(notifier_port))
    processor.wait_ready()
    wait_for(lambda: http_get(f"http://127.0.0.1:{notifier_port}/readyz")[0] == 200, 60, "notifier /readyz")

    def reports(now: int) -> list[dict]:  # every 0.2 s of real time: vm-1 load 80; vm-a (in the stack) and vm-b busy
        return [make_test_sample(name="load", type="gauge", unit="%", volume=80.0, resource_id="vm-1", timestamp=now),
                make_test_sample(name="cpu_util", type="gauge", unit="%", volume=95.0, resource_id="vm-a",
                                 timestamp=now, resource_metadata={"server_group": "stack-abc"}),
                make_test_sample(name="cpu_util", type="gauge", unit="%", volume=95.0, resource_id="vm-b",
                                 timestamp=now, resource_metadata={"server_group": "stack-other"})]

    with reporting_load(pipeline, samples=reports):
        wait_for(lambda: "alarm" in hook.states("vm-1"), 90, "the API-made alarm firing at the webhook")
        fired = next(b for b in hook.received if b["alarm_id"] == load["alarm_id"])
        assert (fired["previous"], fired["current"], fired["alarm_name"]) == ("insufficient data", "alarm",
                                                                              "load-high")
        wait_for(lambda: "alarm" in hook.states("vm-a"), 60, "Heat's alarm firing for the stack's server")
        assert all(b["alarm_id"] == heat["alarm_id"] for b in hook.received if b["resource_id"] == "vm-a")
        assert hook.states("vm-b") == []  # not in the stack's server group

        wait_for(lambda: api.json("alarm", "state", "get", load["alarm_id"]) == {"state": "alarm"}, 30,
                 "the API showing the alarm state")
        history = api.json("alarm-history", "show", load["alarm_id"])
        detail = json.loads(history[0]["detail"])
        assert history[0]["type"] == "state transition"
        assert (detail["state"], detail["resource_id"]) == ("alarm", "vm-1")
        assert detail["transition_reason"].startswith("Transition to alarm due to 2 samples outside threshold")
        assert lib.alarm.get(heat["alarm_id"])["state"] == "alarm"

        # 3. An operator sets ok: the running evaluator continues from ok, and vm-1, still at 80,
        #    goes back to alarm (ok -> alarm at the webhook), stamped after the override.
        api.cli("alarm", "state", "set", load["alarm_id"], "--state", "ok")
        wait_for(lambda: any(b["resource_id"] == "vm-1" and b["previous"] == "ok" and b["current"] == "alarm"
                             for b in list(hook.received)), 60, "ok -> alarm after the state was set to ok")
        def kinds() -> list:  # newest first; the processor may insert its row just after producing the event
            return [(json.loads(h["detail"]).get("previous_state"), json.loads(h["detail"])["state"])
                    for h in api.json("alarm-history", "show", load["alarm_id"])]
        wait_for(lambda: kinds()[:1] == [("ok", "alarm")], 30, "the ok -> alarm transition in the history")
        assert kinds()[:3] == [("ok", "alarm"), (None, "ok"), ("insufficient data", "alarm")]
        assert api.json("alarm", "state", "get", load["alarm_id"]) == {"state": "alarm"}
    assert processor.proc.poll() is None


def test_token_auth_no_token_is_401_and_other_projects_are_invisible(pipeline, services):
    tokens = [{"token": ADMIN_TOKEN, "user_id": "u-admin", "project_id": "p-admin", "roles": ["admin"]},
              {"token": MEMBER_TOKEN, "user_id": "u-1", "project_id": "p-1", "roles": ["member"]}]
    api = Api(pipeline, services, auth="token", STREAMS_API__TOKENS=json.dumps(tokens))
    status, _ = http_get(f"{api.endpoint}/v2/alarms")
    assert status == 401
    with pytest.raises(aodh_exc.Unauthorized):
        api.token_client("not-a-configured-token").alarm.list()

    member = api.token_client(MEMBER_TOKEN)
    mine = member.alarm.create({"name": "mine", "type": "gnocchi_resources_threshold",
                                "gnocchi_resources_threshold_rule": {"metric": "cpu_util", "resource_id": "vm-1",
                                                                     "resource_type": "instance",
                                                                     "aggregation_method": "mean", "threshold": 50}})
    assert (mine["project_id"], mine["user_id"]) == ("p-1", "u-1")
    with pytest.raises(aodh_exc.Unauthorized):  # a member cannot set up log:// actions
        member.alarm.create({"name": "log", "type": "gnocchi_resources_threshold", "alarm_actions": ["log://"],
                             "gnocchi_resources_threshold_rule": {"metric": "m", "resource_id": "r",
                                                                  "resource_type": "instance",
                                                                  "aggregation_method": "mean", "threshold": 1}})

    admin = api.token_client(ADMIN_TOKEN)
    theirs = admin.alarm.create({"name": "theirs", "type": "gnocchi_resources_threshold",
                                 "gnocchi_resources_threshold_rule": {"metric": "cpu_util", "resource_id": "vm-9",
                                                                      "resource_type": "instance",
                                                                      "aggregation_method": "mean",
                                                                      "threshold": 50}})
    assert [a["name"] for a in member.alarm.list()] == ["mine"]
    with pytest.raises(aodh_exc.NotFound):
        member.alarm.get(theirs["alarm_id"])
    with pytest.raises(aodh_exc.NotFound):
        member.alarm.delete(theirs["alarm_id"])
    with pytest.raises(aodh_exc.Unauthorized):
        member.alarm.list(filters={"project_id": "p-admin"})
    assert {a["name"] for a in admin.alarm.list(filters={"all_projects": "true"})} == {"mine", "theirs"}
    assert admin.alarm.get(mine["alarm_id"])["name"] == "mine"

    # The aodh CLI with a static token (keystoneauth's admin_token plugin).
    r = subprocess.run([AODH, "--os-auth-type", "admin_token", "--os-endpoint", api.endpoint, "--os-token",
                        MEMBER_TOKEN, "alarm", "list", "-f", "json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert [a["name"] for a in json.loads(r.stdout)] == ["mine"]
