"""The notification body is Aodh's REST notifier shape plus an id for de-duplication."""

from streams.notifiers import available_notifiers
from streams.notifiers.service import payload_for


def test_payload_shape():
    body = payload_for({"event_id": "e1", "alarm_id": "a", "alarm_name": "n", "severity": "critical",
                        "previous": "ok", "current": "alarm", "reason": "r", "reason_data": '{"count": 2}',
                        "resource_id": "vm", "project_id": "p", "transition": True, "timestamp": 0, "type": "x"})
    assert {k: body[k] for k in ("alarm_name", "alarm_id", "severity", "previous", "current", "reason")} == {
        "alarm_name": "n", "alarm_id": "a", "severity": "critical", "previous": "ok", "current": "alarm",
        "reason": "r"}
    assert body["reason_data"] == {"count": 2} and body["id"] == "e1"
    assert body["timestamp"] == "1970-01-01T00:00:00+00:00"


def test_schemes():
    assert {"http", "https", "log"} <= set(available_notifiers())
