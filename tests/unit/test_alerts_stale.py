"""Unit tests: when are Alertmanager's alerts current, and when stale (never a trigger)?"""

from __future__ import annotations

import itertools

import pytest

from brace_watchdog.observations import (
    FiringAlert,
    Observations,
    alerts_fresh,
    alerts_stale_after,
)

NOW = 1_000.0
STALE_AFTER = alerts_stale_after(interval_seconds=15.0, timeout_seconds=5.0)


def test_two_missed_polls_and_a_timeout_make_alerts_stale() -> None:
    assert STALE_AFTER == 35.0


@pytest.mark.parametrize(("up", "fetched_at"), list(itertools.product(
    (None, False, True), (None, NOW - 3600, NOW - STALE_AFTER - 0.001, NOW - STALE_AFTER,
                          NOW - 1, NOW, NOW + 5))))
def test_fresh_only_while_the_last_poll_succeeded_recently(up: bool | None,
                                                           fetched_at: float | None) -> None:
    expected = up is True and fetched_at is not None and fetched_at >= NOW - STALE_AFTER
    assert alerts_fresh(up, fetched_at, NOW, STALE_AFTER) is expected


def test_current_alerts_hide_stale_ones_but_keep_them_known() -> None:
    alert = FiringAlert("BraceBackendErrors", "critical")
    obs = Observations()
    assert obs.current_alerts(NOW, STALE_AFTER) == ()  # never polled
    obs.publish_alerts((alert,), NOW - 10)
    assert obs.current_alerts(NOW, STALE_AFTER) == (alert,)
    assert obs.current_alerts(NOW + STALE_AFTER, STALE_AFTER) == ()  # no poll since
    obs.alertmanager_up = False  # the next poll failed
    assert obs.current_alerts(NOW, STALE_AFTER) == ()
    assert obs.alerts == (alert,)  # still shown as the last known alerts
    obs.publish_alerts((), NOW)
    assert obs.current_alerts(NOW, STALE_AFTER) == ()
