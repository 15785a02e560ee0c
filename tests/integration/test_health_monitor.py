"""The health monitor against a real HTTP server switched between 200, 500, hang and close."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from brace_watchdog.config import parse_config
from brace_watchdog.metrics import Metrics
from brace_watchdog.monitors.health import HealthMonitor
from brace_watchdog.runtime import Hub
from brace_watchdog.state import StateStore
from tests.support.webserver import SwitchableServer, switchable_server


@pytest.fixture
def server() -> Iterator[SwitchableServer]:
    with switchable_server() as srv:
        yield srv


def make_hub(backend: str, frontend: str = "", timeout: float = 0.5) -> Hub:
    config = parse_config({"health": {"url": backend, "frontend_url": frontend,
                                      "interval_seconds": 0.1, "timeout_seconds": timeout}})
    return Hub(config=config, store=StateStore(":memory:").open(),
               metrics=Metrics(CollectorRegistry(), process=False))


def value(hub: Hub, name: str, **labels: str) -> float | None:
    return hub.metrics.registry.get_sample_value(name, labels)


async def probe_once(hub: Hub) -> str:
    monitor = HealthMonitor(hub)
    await monitor.start()
    try:
        return await monitor.cycle()
    finally:
        await monitor.stop()


@pytest.mark.parametrize(("mode", "result", "up", "status"), [
    ("200", "ok", 1.0, 200.0),
    ("500", "http_5xx", 0.0, 500.0),
    ("404", "http_4xx", 0.0, 404.0),
    ("hang", "timeout", 0.0, 0.0),
    ("close", "connection_error", 0.0, 0.0),
])
async def test_each_server_behaviour_is_classified(server: SwitchableServer, mode: str,
                                                   result: str, up: float, status: float) -> None:
    server.mode = mode
    hub = make_hub(server.url())
    line = await probe_once(hub)
    assert result in line
    assert value(hub, "brace_health_up", target="backend") == up
    assert value(hub, "brace_health_status_code", target="backend") == status
    assert value(hub, "brace_health_probes_total", target="backend", result=result) == 1.0
    assert value(hub, "brace_health_probe_duration_seconds_count", target="backend") == 1.0
    assert hub.observations.latest("backend").result == result  # type: ignore[union-attr]


async def test_refused_port_is_a_connection_error() -> None:
    with switchable_server() as srv:
        url = srv.url()
    hub = make_hub(url)
    assert "connection_error" in await probe_once(hub)


async def test_transitions_are_recorded_once_per_change(server: SwitchableServer) -> None:
    hub = make_hub(server.url(), frontend=server.url("/"))
    monitor = HealthMonitor(hub)
    await monitor.start()
    try:
        for mode in ("200", "200", "500", "500", "200"):
            server.mode = mode
            await monitor.cycle()
    finally:
        await monitor.stop()
    transitions = [e for e in hub.store.events() if e.kind == "health.transition"]
    backend = [e.evidence["to"] for e in transitions if e.evidence["target"] == "backend"]
    assert backend == ["ok", "http_5xx", "ok"]
    assert len(hub.observations.samples()) == 10
    assert len(hub.observations.samples("frontend")) == 5


async def test_connections_are_reused(server: SwitchableServer) -> None:
    hub = make_hub(server.url())
    monitor = HealthMonitor(hub)
    await monitor.start()
    try:
        for _ in range(20):
            await monitor.cycle()
    finally:
        await monitor.stop()
    assert server.requests == 20
    assert server.connections == 1


async def test_window_is_bounded(server: SwitchableServer) -> None:
    hub = make_hub(server.url())
    hub.observations.window_size = 10
    monitor = HealthMonitor(hub)
    await monitor.start()
    try:
        for _ in range(25):
            await monitor.cycle()
    finally:
        await monitor.stop()
    assert len(hub.observations.samples("backend")) == 10
