"""The Swarm driver's rollback steps: each service of the known-good release back to its spec.

Used by :class:`~brace_watchdog.actions.rollback_run.RollbackRun` in place of
:class:`~brace_watchdog.actions.rollback_steps.RollbackSteps` when ``[rollback] driver =
"swarm"``. Every service's method is decided first
(:func:`~brace_watchdog.swarm_release.choose_step`): ``service rollback`` when Swarm's previous
spec is the known-good one, ``service update --image <known-good image ID>`` when only the image
moved, ``service update`` with the known-good container spec kept at promotion (image pinned)
when the config moved too; if any service must be refused (no spec kept) nothing is changed.
Then each service is changed in turn, leadership confirmed before each, each journalled with
the method and why.

:func:`verify_tasks` is the Swarm side of verification (before the health probes): every
service's tasks converged on the known-good spec — no running task on another spec, and as many
running on it as the service's replicas (a global service: every task Swarm places, one per
eligible node) — within the same deadline as the compose driver's image check.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from brace_watchdog.actions.rollback_steps import (
    Before,
    Journal,
    Polling,
    RollbackPlan,
    wait_restored,
)
from brace_watchdog.adapters.process import CommandResult
from brace_watchdog.adapters.swarm import SwarmAdapter
from brace_watchdog.errors import ActionError, AdapterError
from brace_watchdog.releases import ServiceRelease
from brace_watchdog.swarm_release import (
    RollbackStep,
    ServiceTarget,
    SwarmService,
    choose_step,
    not_converged,
)

__all__ = ["SwarmSteps", "targets_of", "verify_tasks"]


class SwarmSteps:
    """Carries out a plan on a Swarm (``specs``: the known-good release's container spec per
    service, kept at its promotion)."""

    def __init__(self, swarm: SwarmAdapter, stack: str, journal: Journal, before: Before,
                 specs: Mapping[str, dict[str, Any]] | None = None) -> None:
        self._swarm = swarm
        self._stack = stack
        self._journal = journal
        self._before = before
        self._specs = specs or {}

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
                elif step.method == "restore":
                    await self._swarm.restore_spec(service.id, {
                        **self._specs[service.name], "Image": target.image_id})
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
            step = choose_step(service, ServiceTarget(target.image_id, target.config_hash),
                               kept=target.service in self._specs)
            if step.method == "refuse":
                raise ActionError("swarm", step.why)
            chosen.append((service, step, target))
        return chosen


def targets_of(plan: RollbackPlan) -> dict[str, ServiceTarget]:
    """Each service's known-good (image, spec hash), as its tasks' specs name them."""
    configs = plan.expected_config
    return {service: ServiceTarget(image, configs.get(service, ""))
            for service, image in plan.expected_images.items()}


async def verify_tasks(swarm: SwarmAdapter, stack: str, expected: Mapping[str, ServiceTarget],
                       polling: Polling) -> dict[str, str]:
    """Wait until every service's tasks have converged on its known-good spec
    (:func:`~brace_watchdog.swarm_release.not_converged`; returned: the image per service)."""
    async def look() -> tuple[dict[str, str] | None, str]:
        services, tasks = await swarm.converging(stack)
        found = {s.name: s for s in services}
        wrong = {}
        for name, target in sorted(expected.items()):
            service = found.get(name)
            why = ("not found in the stack" if service is None else not_converged(
                [t for t in tasks if t.service_id == service.id], target, service.replicas))
            if why is not None:
                wrong[name] = why
        if not wrong:
            return {name: target.image for name, target in expected.items()}, ""
        return None, "services not converged on the known-good spec: " + "; ".join(
            f"{name}: {why}" for name, why in wrong.items())
    return await wait_restored(look, polling,
                               failure="Swarm did not converge on the known-good release")
