"""Unit tests: Alertmanager v2 answers -> FiringAlert values; malformed answers -> HttpError."""

from __future__ import annotations

from typing import Any

import pytest

from brace_watchdog.errors import HttpError
from brace_watchdog.monitors.alerts import alert_key, alerts_query, parse_alerts
from brace_watchdog.observations import FiringAlert


def _alert(**labels: str) -> dict[str, Any]:
    return {"labels": labels, "annotations": {}, "startsAt": "2026-11-25T03:00:00Z",
            "status": {"state": "active", "silencedBy": [], "inhibitedBy": []},
            "fingerprint": "abc", "receivers": [{"name": "null"}]}


def test_parses_names_severities_and_labels_sorted() -> None:
    payload = [_alert(alertname="BackendDown", severity="critical", instance="b"),
               _alert(alertname="DiskFull", instance="a")]
    alerts = parse_alerts(payload)
    assert alerts == (
        FiringAlert(name="BackendDown", severity="critical",
                    labels=(("alertname", "BackendDown"), ("instance", "b"),
                            ("severity", "critical")),
                    starts_at="2026-11-25T03:00:00Z"),
        FiringAlert(name="DiskFull", severity="none",
                    labels=(("alertname", "DiskFull"), ("instance", "a")),
                    starts_at="2026-11-25T03:00:00Z"),
    )
    assert alert_key(alerts[0]) == "alertname=BackendDown,instance=b,severity=critical"


def test_empty_list_is_no_alerts() -> None:
    assert parse_alerts([]) == ()


def test_suppressed_alerts_are_skipped_defensively() -> None:
    item = _alert(alertname="Quiet")
    item["status"] = {"state": "suppressed"}
    assert parse_alerts([item]) == ()


def test_missing_optional_fields_are_tolerated() -> None:
    assert parse_alerts([{"labels": {"alertname": "X"}}]) == (
        FiringAlert(name="X", severity="none", labels=(("alertname", "X"),), starts_at=""),)
    assert parse_alerts([{"labels": {"alertname": "X"}, "startsAt": 5}])[0].starts_at == ""


@pytest.mark.parametrize(("payload", "message"), [
    ({"status": "error"}, "answered a dict, expected a list"),
    ("<html>", "answered a str, expected a list"),
    (None, "answered a NoneType"),
    ([1], "alert #0 is a int"),
    ([None], "alert #0 is a NoneType"),
    ([{}], "alert #0 has no 'labels' object"),
    ([{"labels": []}], "alert #0 has no 'labels' object"),
    ([{"labels": {"alertname": 3}}], "alert #0 has no 'labels' object of strings"),
    ([{"labels": {"severity": "critical"}}], "alert #0 has no 'alertname' label"),
    ([{"labels": {"alertname": ""}}], "has no 'alertname' label"),
    ([_alert(alertname="Ok"), {"labels": {"x": "y"}}], "alert #1 has no 'alertname'"),
])
def test_malformed_answers_raise_clear_http_errors(payload: Any, message: str) -> None:
    with pytest.raises(HttpError, match=message.replace("(", r"\(")):
        parse_alerts(payload)


def test_query_asks_for_active_unsilenced_uninhibited_with_each_matcher() -> None:
    params = alerts_query(('severity="critical"', "env=~prod.*"))
    assert params.multi_items() == [
        ("active", "true"), ("silenced", "false"), ("inhibited", "false"),
        ("filter", 'severity="critical"'), ("filter", "env=~prod.*")]
