"""Updates Swarm rolls back itself: recorded once (event, metric, notification), a paused one
escalated, requested rollbacks ignored, and the services Swarm is in charge of reported."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from brace_watchdog.actions.swarm_watch import SwarmRollbackWatch
from brace_watchdog.config import parse_config
from brace_watchdog.metrics import Metrics
from brace_watchdog.runtime import Hub
from brace_watchdog.state import StateStore
from brace_watchdog.swarm_release import ServiceTarget, SwarmService

AUTO = "update rolled back due to failure or early termination of task kt7g9"


class Notes:
    """Collects notifications (the webhook sender has its own tests against a real server)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def send(self, event: str, payload: dict[str, Any]) -> None:
        self.sent.append((event, payload))


def _hub(store: StateStore) -> tuple[Hub, Notes, CollectorRegistry]:
    notes, registry = Notes(), CollectorRegistry()
    hub = Hub(config=parse_config({}), store=store, metrics=Metrics(registry, process=False),
              notifier=notes)
    return hub, notes, registry


def _svc(name: str, state: str, message: str = "", started: str = "t1") -> SwarmService:
    return SwarmService(f"id-{name}", name, 3, ServiceTarget("sha256:a", "h"), None, 1, state,
                        message, started, auto_rollback=True)


CONVERGED = {"backend": {("sha256:a", "h")}}  # every running task on the service's spec


async def _look(watch: SwarmRollbackWatch, services: list[SwarmService],
                running: Mapping[str, set[tuple[str, str]]] = CONVERGED) -> tuple[str, ...]:
    return await watch.observe(services, running)


def _kinds(hub: Hub) -> list[str]:
    return [e.kind for e in sorted(hub.store.events(limit=100), key=lambda e: e.id)]


async def test_swarms_own_rollback_is_recorded_once_and_never_after_a_restart() -> None:
    store = StateStore(":memory:").open()
    hub, notes, registry = _hub(store)
    watch = SwarmRollbackWatch(hub, "brace")
    assert await _look(watch, [_svc("backend", "updating", "update in progress"),
                                _svc("frontend", "completed")]) == ("backend",)
    assert await _look(watch, [_svc("backend", "rollback_started", AUTO)]) == ("backend",)
    assert await _look(watch, [_svc("backend", "rollback_completed", "rollback completed")]
                               ) == ()
    assert _kinds(hub) == ["swarm.rolled_back"]
    event = hub.store.events(limit=1)[0]
    assert "brace_backend" in event.message and AUTO in event.message
    assert notes.sent == [("swarm.rolled_back", event.evidence)]
    assert registry.get_sample_value("brace_swarm_rollbacks_total",
                                     {"service": "backend"}) == 1
    # a restarted daemon sees the same (completed) rollback again: not recorded twice
    again = SwarmRollbackWatch(_hub(store)[0], "brace")
    await _look(again, [_svc("backend", "rollback_started", AUTO)])
    assert _kinds(hub) == ["swarm.rolled_back"]


async def test_a_requested_rollback_is_not_swarms_own() -> None:
    hub, notes, _ = _hub(StateStore(":memory:").open())
    watch = SwarmRollbackWatch(hub, "brace")
    for service in (_svc("backend", "updating", started="t1"),
                    _svc("backend", "rollback_started", "manually requested rollback", "t2"),
                    _svc("backend", "rollback_completed", "rollback completed", "t2")):
        assert await _look(watch, [service]) == (("backend",) if service.update_state ==
                                                  "updating" else ())
    assert _kinds(hub) == [] and notes.sent == []


async def test_a_paused_swarm_rollback_is_escalated() -> None:
    hub, notes, _ = _hub(StateStore(":memory:").open())
    watch = SwarmRollbackWatch(hub, "brace")
    await _look(watch, [_svc("backend", "rollback_started", AUTO)])
    await _look(watch, [_svc("backend", "rollback_paused", "rollback paused: task failed")])
    await _look(watch, [_svc("backend", "rollback_paused", "rollback paused: task failed")])
    assert _kinds(hub) == ["swarm.rolled_back", "escalation"]
    escalation = hub.escalation()
    assert escalation and escalation["reason"] == "swarm_rollback_paused"
    assert "docker service ps brace_backend" in escalation["message"]
    assert [event for event, _ in notes.sent] == ["swarm.rolled_back", "escalation"]


async def test_swarm_stays_in_charge_until_its_rollback_has_converged() -> None:
    hub, _, _ = _hub(StateStore(":memory:").open())
    watch = SwarmRollbackWatch(hub, "brace")
    done = _svc("backend", "rollback_completed", "rollback completed")
    assert await _look(watch, [_svc("backend", "rollback_started", AUTO)]) == ("backend",)
    # declared completed while the restored task does not run yet (or the bad one still does)
    assert await _look(watch, [done], {}) == ("backend",)
    assert await _look(watch, [done], {"backend": {("sha256:bad", "h")}}) == ("backend",)
    assert await _look(watch, [done]) == ()
    assert await _look(watch, [done], {}) == ()  # settled once: a later gap is not Swarm's
