"""Integration: the alerts monitor against a real ``prometheus-alertmanager`` on loopback.

Alerts are POSTed to Alertmanager's own v2 API, silenced through it, and the daemon's view is
checked through the metrics registry. A real HTTP server stands in for a misbehaving peer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from brace_watchdog.config import parse_config
from brace_watchdog.metrics import Metrics
from brace_watchdog.monitors.alerts import AlertsMonitor
from brace_watchdog.runtime import Hub
from brace_watchdog.state import StateStore
from tests.support.alertmanager import Alertmanager, start_alertmanager
from tests.support.net import free_port
from tests.support.webserver import switchable_server


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    am = start_alertmanager(tmp_path)
    yield am
    am.stop()


def _hub(url: str, **alerts: Any) -> Hub:
    config = parse_config({"alerts": {"alertmanager_url": url, "timeout_seconds": 2, **alerts}})
    return Hub(config=config, store=StateStore(":memory:").open(),
               metrics=Metrics(CollectorRegistry()))


def _firing(hub: Hub, name: str, severity: str) -> float | None:
    return hub.metrics.registry.get_sample_value("brace_alerts_firing",
                                                 {"alertname": name, "severity": severity})


def _up(hub: Hub) -> float | None:
    return hub.metrics.registry.get_sample_value("brace_alertmanager_up")


def _kinds(hub: Hub) -> list[str]:
    return [event.kind for event in hub.store.events(limit=1000)]


async def test_firing_silenced_resolved_and_alertmanager_gone(alertmanager: Alertmanager,
                                                             tmp_path: Path) -> None:
    hub = _hub(alertmanager.url)
    monitor = AlertsMonitor(hub)
    await monitor.start()
    try:
        assert await monitor.cycle() == "0 firing"
        assert _up(hub) == 1

        alertmanager.post(alertname="BackendDown", severity="critical", instance="a")
        alertmanager.post(alertname="BackendDown", severity="critical", instance="b")
        alertmanager.post(alertname="DiskFull", severity="warning")
        assert await monitor.cycle() == "3 firing: BackendDown, DiskFull"
        assert _firing(hub, "BackendDown", "critical") == 2
        assert _firing(hub, "DiskFull", "warning") == 1
        assert _kinds(hub) == ["alert.firing"] * 3
        assert {a.name for a in hub.observations.alerts} == {"BackendDown", "DiskFull"}

        alertmanager.silence("DiskFull")
        alertmanager.post(alertname="BackendDown", severity="critical", instance="b",
                          ends_in=-timedelta(seconds=1))             # resolved
        assert await monitor.cycle() == "1 firing: BackendDown"
        assert _firing(hub, "DiskFull", "warning") is None            # label set cleared
        assert _firing(hub, "BackendDown", "critical") == 1
        assert _kinds(hub)[3:] == ["alert.resolved", "alert.resolved"]
        await monitor.cycle()
        assert len(_kinds(hub)) == 5                                   # no change, no event

        alertmanager.stop()
        status = await monitor.cycle()
        assert status.startswith("alertmanager unreachable: "), status
        assert _up(hub) == 0
        assert hub.observations.alertmanager_up is False
        await monitor.cycle()
        assert _kinds(hub)[5:] == ["alertmanager.down"]
        assert _firing(hub, "BackendDown", "critical") == 1          # last known, up=0

        restarted = start_alertmanager(tmp_path, port=int(alertmanager.url.rsplit(":", 1)[1]))
        try:
            assert await monitor.cycle() == "0 firing"               # alerts were not persisted
        finally:
            restarted.stop()
        assert _up(hub) == 1
        assert _kinds(hub)[6:] == ["alertmanager.up", "alert.resolved"]
        assert _firing(hub, "BackendDown", "critical") is None
    finally:
        await monitor.stop()


async def test_matchers_filter_what_the_daemon_sees(alertmanager: Alertmanager) -> None:
    alertmanager.post(alertname="BackendDown", severity="critical", env="prod")
    alertmanager.post(alertname="BackendDown", severity="critical", env="staging")
    alertmanager.post(alertname="CertExpiry", severity="warning", env="prod")
    hub = _hub(alertmanager.url, matchers=['severity="critical"', "env=~prod"])
    monitor = AlertsMonitor(hub)
    try:
        assert await monitor.cycle() == "1 firing: BackendDown"
        assert _firing(hub, "BackendDown", "critical") == 1
        assert _firing(hub, "CertExpiry", "warning") is None
        assert dict(hub.observations.alerts[0].labels)["env"] == "prod"
    finally:
        await monitor.stop()


async def test_a_peer_that_is_not_alertmanager_is_reported_not_fatal() -> None:
    with switchable_server() as server:
        hub = _hub(server.url("/"))
        monitor = AlertsMonitor(hub)
        try:
            server.mode = "200"                      # answers {"status": "ok"}: not a list
            status = await monitor.cycle()
            assert status == ("alertmanager answered a malformed alert list: alertmanager "
                              "answered a dict, expected a list of alerts; is [alerts] "
                              "alertmanager_url pointing at Alertmanager?")
            server.mode = "500"
            assert (await monitor.cycle()).startswith("alertmanager answered HTTP 500 at ")
            server.mode, server.hang_seconds = "hang", 5
            assert (await monitor.cycle()).startswith(
                "alertmanager unreachable: no answer from ")
            server.release_hung()
            assert _up(hub) == 0
            assert _kinds(hub) == ["alertmanager.down"]
        finally:
            await monitor.stop()


async def test_nothing_listening_is_unreachable() -> None:
    hub = _hub(f"http://127.0.0.1:{free_port()}")
    monitor = AlertsMonitor(hub)
    try:
        status = await monitor.cycle()
    finally:
        await monitor.stop()
    assert status.startswith("alertmanager unreachable: ")
    assert f"cannot connect to {hub.config.alerts.alertmanager_url}/api/v2/alerts" in status
    assert _up(hub) == 0


async def test_alertmanager_down_makes_alerts_stale(alertmanager: Alertmanager) -> None:
    """The last known alerts stay visible but are stale: they never reach a policy."""
    now = [time.time()]
    hub = _hub(alertmanager.url, interval_seconds=15)
    hub.clock = lambda: now[0]
    monitor = AlertsMonitor(hub)
    stale_after = monitor.stale_after()
    await monitor.start()
    try:
        alertmanager.post(alertname="BraceBackendErrors", severity="critical")
        assert await monitor.cycle() == "1 firing: BraceBackendErrors"
        assert _stale(hub) == 0
        assert [a.name for a in hub.observations.current_alerts(now[0], stale_after)] == [
            "BraceBackendErrors"]
        now[0] += stale_after + 1  # the alerts monitor stopped polling (or hung)
        assert _stale(hub) == 1
        assert hub.observations.current_alerts(now[0], stale_after) == ()

        assert await monitor.cycle() == "1 firing: BraceBackendErrors"
        assert _stale(hub) == 0
        alertmanager.stop()
        assert (await monitor.cycle()).startswith("alertmanager unreachable: ")
        assert _stale(hub) == 1  # at once, not only once the bound has passed
        assert hub.observations.current_alerts(now[0], stale_after) == ()
        assert _firing(hub, "BraceBackendErrors", "critical") == 1  # still shown, as known
        assert hub.metrics.registry.get_sample_value(
            "brace_alertmanager_last_success_timestamp_seconds") == now[0]
    finally:
        await monitor.stop()


def _stale(hub: Hub) -> float | None:
    return hub.metrics.registry.get_sample_value("brace_alerts_stale")
