"""What a release is on Docker Swarm, and how one service goes back to its known-good spec (pure).

A stack's services are the ones labelled ``com.docker.stack.namespace=<stack>``. Each
:class:`SwarmService` carries its image reference (pinned to an image ID or a digest) and a
:func:`spec_hash` over what else decides its behaviour — env, command, args, mounts, configs,
secrets — so a release is the services' (image, spec hash) pairs and its fingerprint changes
when either does. Swarm's spec version counts every update, which is how a deploy is seen.

:func:`choose_step` decides how one service returns to its known-good :class:`ServiceTarget`:

* ``rollback`` (``docker service rollback``) when Swarm's *previous* spec is exactly the
  known-good one — Swarm restores that whole spec, config included, in one step;
* ``update`` (``docker service update --image <known-good image ID/digest>``) when only the image
  differs from the known-good spec — the pinned image, nothing else touched;
* ``none`` when the service already runs the known-good spec;
* ``refuse`` when the config moved too and Swarm's previous spec is not the known-good one: the
  image alone would leave the changed config in place, so an operator must decide.

:func:`swarm_rolled_back` says when Swarm's own ``failure_action: rollback`` already undid an
update: that is recorded, not fought. :func:`converged` says when every task runs the target.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["STACK_LABEL", "RollbackStep", "ServiceTarget", "SwarmService", "SwarmTask",
           "choose_step", "converged", "fingerprint", "spec_hash", "swarm_rolled_back"]

STACK_LABEL = "com.docker.stack.namespace"
SPEC_KEYS = ("Env", "Command", "Args", "Mounts", "Configs", "Secrets", "User", "Dir")


def spec_hash(container_spec: Mapping[str, Any]) -> str:
    """sha256 over the container spec's behaviour (image excluded; env order ignored)."""
    picked = {key: container_spec.get(key) for key in SPEC_KEYS}
    if isinstance(picked["Env"], list):
        picked["Env"] = sorted(picked["Env"])
    text = json.dumps(picked, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ServiceTarget:
    """One service of a release: the image (ID or digest reference) and the spec hash."""

    image: str
    spec_hash: str


@dataclass(frozen=True)
class SwarmService:
    id: str
    name: str
    version: int
    current: ServiceTarget
    previous: ServiceTarget | None
    replicas: int | None
    update_state: str = ""


@dataclass(frozen=True)
class SwarmTask:
    image_id: str
    state: str


@dataclass(frozen=True)
class RollbackStep:
    method: Literal["none", "rollback", "update", "refuse"]
    why: str


def fingerprint(services: Sequence[SwarmService]) -> str:
    pairs = sorted((s.name, s.current.image, s.current.spec_hash) for s in services)
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]


def choose_step(service: SwarmService, target: ServiceTarget) -> RollbackStep:
    if service.current == target:
        return RollbackStep("none", f"{service.name} already runs the known-good spec")
    if service.previous == target:
        return RollbackStep("rollback", f"{service.name}: Swarm's previous spec is the "
                            "known-good one; `service rollback` restores all of it at once")
    if service.current.spec_hash == target.spec_hash:
        return RollbackStep("update", f"{service.name}: only the image changed; `service "
                            f"update --image {target.image[:19]}` pins the known-good image")
    return RollbackStep("refuse", f"{service.name}: its config changed and Swarm's previous "
                        "spec is not the known-good one; the image alone would keep the new "
                        "config — an operator must decide")


def swarm_rolled_back(service: SwarmService) -> bool:
    """Swarm's own update rollback ran (``failure_action: rollback``): record it, don't fight."""
    return service.update_state in ("rollback_started", "rollback_completed",
                                    "rollback_paused")


def converged(tasks: Sequence[SwarmTask], image_id: str, replicas: int | None) -> bool:
    """Every running task runs ``image_id`` and there are as many as the service wants."""
    running = [t for t in tasks if t.state == "running"]
    if any(t.image_id != image_id for t in running):
        return False
    return len(running) == replicas if replicas is not None else bool(running)
