"""Alarm definition validation: every bad field is named."""

from __future__ import annotations

import pytest

from streams.alarms.model import AlarmDefinitionError, parse_alarm
from streams.alarms.records import RecordCodec

GOOD = {"name": "x", "threshold_rule": {"meter_name": "cpu_util", "threshold": 90, "period": 1}}


def test_defaults_are_aodhs():
    a = parse_alarm(GOOD)
    r = a.threshold_rule
    assert (r.statistic, r.comparison_operator, r.evaluation_periods) == ("avg", "eq", 1)
    assert (a.severity, a.enabled, a.repeat_actions, a.type) == ("low", True, False, "threshold")
    assert parse_alarm(a.to_json()) == a


@pytest.mark.parametrize(("patch", "message"), [
    ({"name": ""}, "name: String should have at least 1 character"),
    ({"severity": "huge"}, "severity: Input should be 'low', 'moderate' or 'critical'"),
    ({"alarm_id": "a/b"}, "alarm_id: must be 1-128 characters"),
    ({"alarm_actions": ["ftp://x"]}, "alarm_actions: action 'ftp://x': scheme must be one of"),
    ({"ok_actions": ["http:///nohost"]}, "ok_actions: action 'http:///nohost': no host"),
    ({"threshold_rule": {"meter_name": "c", "threshold": 1, "statistic": "p99"}}, "threshold_rule.statistic"),
    ({"threshold_rule": {"meter_name": "c", "threshold": 1, "comparison_operator": ">"}},
     "threshold_rule.comparison_operator"),
    ({"threshold_rule": {"meter_name": "c", "threshold": 1, "period": 0}}, "threshold_rule.period"),
    ({"threshold_rule": {"meter_name": "c", "threshold": 1, "evaluation_periods": 0}},
     "threshold_rule.evaluation_periods"),
    ({"threshold_rule": {"meter_name": "c"}}, "threshold_rule.threshold: Field required"),
    ({"threshold_rule": {"meter_name": "c", "threshold": 1, "query": {"flavor": "x"}}},
     "threshold_rule.query.flavor: Extra inputs are not permitted"),
    ({"time_constraints": [{"name": "t", "start": "nope", "duration": 1}]}, "time_constraints[0].start"),
    ({"time_constraints": [{"name": "t", "start": "* * * * *", "duration": -1}]}, "time_constraints[0].duration"),
    ({"time_constraints": [{"name": "t", "start": "* * * * *", "duration": 1, "timezone": "Mars/Base"}]},
     "time_constraints[0].timezone: unknown time zone"),
    ({"time_constraints": [{"name": "t", "start": "* * * * *", "duration": 1}] * 2}, "names must be unique"),
    ({"type": "composite"}, "type composite needs composite_rule"),
    ({"bogus": 1}, "bogus: Extra inputs are not permitted"),
])
def test_bad_fields_are_named(patch, message):
    with pytest.raises(AlarmDefinitionError, match=None) as exc:
        parse_alarm({**GOOD, **patch})
    assert message in str(exc.value)


def test_composite_errors_point_into_the_tree():
    with pytest.raises(AlarmDefinitionError) as exc:
        parse_alarm({"name": "c", "type": "composite", "composite_rule": {"and": [
            {"meter_name": "a", "threshold": 1}, {"or": [{"meter_name": "b", "threshold": "x"}]}]}})
    assert "composite_rule.and[1].or[0].threshold" in str(exc.value)


def test_not_json():
    with pytest.raises(AlarmDefinitionError, match="not valid JSON"):
        parse_alarm(b"{")


def test_alarm_record_round_trip():
    codec = RecordCodec()
    rec = {"event_id": "e", "alarm_id": "a", "alarm_name": "n", "type": "threshold", "severity": "low",
           "resource_id": "r", "project_id": None, "user_id": None, "previous": "ok", "current": "alarm",
           "transition": True, "reason": "why", "reason_data": "{}", "actions": ["log://"], "timestamp": 5}
    data = codec.encode(rec)
    assert data[:2] == b"\xc3\x01"
    assert codec.decode(data) == rec
    with pytest.raises(ValueError):
        codec.decode(b"nope")


def test_alarm_records_are_signed_like_sample_batches(keyring):
    from streams.alarms.records import AlarmRecordCodec
    from streams.codec import RejectedMessage
    from streams.signing import Keyring

    rec = {"event_id": "e", "alarm_id": "a", "alarm_name": "n", "type": "threshold", "severity": "low",
           "resource_id": "r", "project_id": None, "user_id": None, "previous": "ok", "current": "alarm",
           "transition": True, "reason": "why", "reason_data": "{}", "actions": ["log://"], "timestamp": 5}
    codec = AlarmRecordCodec(keyring)
    data = codec.encode(rec)
    assert codec.decode(data) == rec
    # A subscriber holding only the alarm key verifies it.
    alarm_only = AlarmRecordCodec(Keyring({"k-new": keyring.keys["k-new"]}, "k-new"))
    assert alarm_only.decode(data) == rec
    tampered = bytearray(data)
    tampered[-40] ^= 1
    with pytest.raises(RejectedMessage, match="bad_signature"):
        codec.decode(bytes(tampered))
    unsigned = RecordCodec().encode(rec)
    with pytest.raises(RejectedMessage, match="unsigned"):
        codec.decode(unsigned)
    assert codec.decode(unsigned, accept_unsigned=True) == rec


@pytest.mark.parametrize("cron", ["0 0 30 2 *", "0 0 31 4 *"])
def test_time_constraints_that_never_fire_are_refused(cron):
    doc = {**GOOD, "time_constraints": [{"name": "never", "start": cron, "duration": 60}]}
    with pytest.raises(AlarmDefinitionError, match="never fires"):
        parse_alarm(doc)


def test_deeply_nested_documents_are_refused_cleanly():
    node = {"meter_name": "cpu", "threshold": 1}
    for _ in range(100_000):
        node = {"and": [node]}
    with pytest.raises(AlarmDefinitionError, match="nests too deeply"):
        parse_alarm({"name": "deep", "type": "composite", "composite_rule": node})
    text = '{"name": "deep", "type": "composite", "composite_rule": ' + '{"and": [' * 100_000
    with pytest.raises(AlarmDefinitionError, match="limit is"):
        parse_alarm(text)  # over the document size limit: refused before parsing
    text = "[" * 30_000 + "]" * 30_000  # under the size limit, but deeper than json.loads can recurse
    with pytest.raises(AlarmDefinitionError, match="too deeply"):
        parse_alarm(text)
