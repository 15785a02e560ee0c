"""Updates Swarm rolls back itself (``failure_action: rollback``): recorded, never fought.

With ``[rollback] driver = "swarm"`` the app-rollback component hands each look at the stack's
services to :class:`SwarmRollbackWatch`. A rollback Swarm ran on its own
(:func:`~brace_watchdog.swarm_release.swarm_rolled_back`; not one asked for by hand or by the
watchdog) is recorded once per update: event ``swarm.rolled_back``,
``brace_swarm_rollbacks_total{service}`` and a ``swarm.rolled_back`` notification. One that
Swarm *paused* (its own rollback failed: the service is left half-way) is escalated. The updates
already recorded are kept in a state flag, so a restart does not record them again.

:meth:`SwarmRollbackWatch.observe` returns the services whose update Swarm is in charge of right
now (:func:`~brace_watchdog.swarm_release.swarm_in_charge`: updating under ``failure_action:
rollback``, or rolling back on its own — until every running task runs the restored spec: Swarm
declares ``rollback_completed`` before that); the rollback policy holds while there are any (guard
``swarm_in_charge``), so the watchdog never starts its own rollback across Swarm's. Once Swarm is
done, the tracker simply sees the previous release running again (a deploy), and the usual guards
apply to that.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from brace_watchdog.runtime import Hub
from brace_watchdog.swarm_release import (
    SwarmService,
    runs_current_spec,
    swarm_in_charge,
    swarm_name,
    swarm_rolled_back,
)

__all__ = ["RECORDED_FLAG", "SwarmRollbackWatch"]

RECORDED_FLAG = "swarm.rollbacks_recorded"
KEEP_RECORDED = 50
SOURCE = "rollback"


class SwarmRollbackWatch:
    def __init__(self, hub: Hub, stack: str) -> None:
        self.hub = hub
        self.stack = stack
        self._before: dict[str, SwarmService] = {}
        self._settling: dict[str, str] = {}  # service -> the update Swarm rolled back itself

    async def observe(self, services: Sequence[SwarmService],
                      running: Mapping[str, Collection[tuple[str, str]]]) -> tuple[str, ...]:
        """Record what Swarm rolled back on its own since the last look; the services whose
        update Swarm is judging or undoing now — until its rollback has converged (``running``:
        each service's running tasks' (image, spec hash))."""
        for service in services:
            if swarm_rolled_back(service, self._before.get(service.name)):
                await self._record(service)
                self._settling[service.name] = service.update_started
        self._before = {s.name: s for s in services}
        return tuple(s.name for s in services
                     if swarm_in_charge(s) or self._settling_now(s, running.get(s.name, ())))

    def _settling_now(self, service: SwarmService,
                      running: Collection[tuple[str, str]]) -> bool:
        """Swarm's own rollback is declared completed but its tasks have not converged yet."""
        if (self._settling.get(service.name) == service.update_started
                and service.update_state == "rollback_completed"
                and not runs_current_spec(service, running)):
            return True
        self._settling.pop(service.name, None)
        return False

    async def _record(self, service: SwarmService) -> None:
        paused = service.update_state == "rollback_paused"
        key = f"{service.name}@{service.update_started}{'/paused' if paused else ''}"
        recorded = self.hub.store.flag(RECORDED_FLAG)
        seen = [str(k) for k in recorded] if isinstance(recorded, list) else []
        if key in seen:
            return
        self.hub.store.set_flag(RECORDED_FLAG, [*seen, key][-KEEP_RECORDED:])
        name = swarm_name(self.stack, service.name)
        evidence: dict[str, Any] = {
            "service": service.name, "swarm_service": name, "state": service.update_state,
            "swarm_message": service.update_message, "update_started": service.update_started,
            "spec": {"image": service.current.image, "spec_hash": service.current.spec_hash}}
        if paused:
            await self.hub.escalate(
                "swarm_rollback_paused", f"Swarm paused its own rollback of {name} "
                f"({service.update_message}); the service may run a mix of old and new tasks. "
                f"The watchdog does not act on it: check `docker service ps {name}`",
                source=SOURCE, evidence=evidence)
            return
        self.hub.record("swarm.rolled_back", SOURCE, f"Swarm rolled back the update of {name} "
                        f"itself ({service.update_message}); recorded, not fought: the watchdog "
                        "does not act while Swarm rolls back", evidence=evidence,
                        severity="warning")
        self.hub.metrics.swarm_rollbacks.labels(service=service.name).inc()
        await self.hub.notifier.send("swarm.rolled_back", evidence)
