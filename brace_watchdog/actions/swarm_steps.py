"""The Swarm driver's rollback steps: each service of the known-good release back to its spec.

Used by :class:`~brace_watchdog.actions.rollback_run.RollbackRun` in place of
:class:`~brace_watchdog.actions.rollback_steps.RollbackSteps` when ``[rollback] driver =
"swarm"``. Every service's method is decided first
(:func:`~brace_watchdog.swarm_release.choose_step`): ``service rollback`` when Swarm's previous
spec is the known-good one, ``service update --image <known-good image ID>`` when only the image
moved; if any service must be refused nothing is changed. Then each service is changed in turn,
leadership confirmed before each, each journalled with the method and why. Verification is the
compose driver's: every task on the known-good image ID, then the health probes.
"""

from __future__ import annotations

import time

from brace_watchdog.actions.rollback_steps import Before, Journal, RollbackPlan
from brace_watchdog.adapters.process import CommandResult
from brace_watchdog.adapters.swarm import SwarmAdapter
from brace_watchdog.errors import ActionError, AdapterError
from brace_watchdog.releases import ServiceRelease
from brace_watchdog.swarm_release import RollbackStep, ServiceTarget, SwarmService, choose_step

__all__ = ["SwarmSteps"]


class SwarmSteps:
    def __init__(self, swarm: SwarmAdapter, stack: str, journal: Journal,
                 before: Before) -> None:
        self._swarm = swarm
        self._stack = stack
        self._journal = journal
        self._before = before

    async def run(self, plan: RollbackPlan) -> CommandResult:
        started = time.monotonic()
        chosen = await self._choose(plan)
        lines: list[str] = []
        for service, step, target in chosen:
            if step.method == "none":
                continue
            await self._before(f"swarm_{service.name}")
            try:
                if step.method == "rollback":
                    await self._swarm.rollback(service.id)
                else:
                    await self._swarm.update_image(service.id, target.image_id)
            except AdapterError as exc:
                raise ActionError("swarm", f"{service.name}: {exc}") from None
            lines.append(f"{service.name}: {step.method} ({step.why})")
            self._journal(f"swarm_{step.method}", {"service": service.name, "why": step.why,
                                                   "image_id": target.image_id})
        return CommandResult(argv=("swarm", self._stack), returncode=0,
                             stdout="\n".join(lines), stderr="",
                             duration_seconds=round(time.monotonic() - started, 3))

    async def _choose(self, plan: RollbackPlan
                      ) -> list[tuple[SwarmService, RollbackStep, ServiceRelease]]:
        try:
            services = {s.name: s for s in await self._swarm.services(self._stack)}
        except AdapterError as exc:
            raise ActionError("swarm", str(exc)) from None
        chosen = []
        for target in plan.target.services:
            service = services.get(target.service)
            if service is None:
                raise ActionError("swarm", f"service {target.service} of stack {self._stack} "
                                  "is gone; nothing to roll back")
            step = choose_step(service, ServiceTarget(target.image_id, target.config_hash))
            if step.method == "refuse":
                raise ActionError("swarm", step.why)
            chosen.append((service, step, target))
        return chosen
