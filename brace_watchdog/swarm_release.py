"""What a release is on Docker Swarm, and how one service goes back to its known-good spec (pure).

A stack's services are the ones labelled ``com.docker.stack.namespace=<stack>``. Each
:class:`SwarmService` carries the image its spec runs and a :func:`spec_hash` over what else
decides its behaviour — env, command, args, mounts, configs, secrets — so a release is the
services' (image, spec hash) pairs and its fingerprint changes when either does. Swarm's spec
version counts every update, which is how a deploy is seen.

A deploy that changes neither — ``docker service update --force``, a resource or placement
change — replaces the tasks all the same, from a new task template: each task's ``rollout``
(:func:`rollout`, a hash of the task spec it was created from) moves with it, so the tracker
sees a redeploy of the same release. Scaling and Swarm's own status writes move the spec
version too but create no task from a new template: not a deploy.

The image is an *identity*, not a name (:func:`identify`): a reference that names one image
everywhere (:func:`pinned`: an image ID, or a registry digest) is its own identity; a bare tag
(``brace/backend:1.4``, what Swarm keeps when no registry resolved it) is resolved by the node
that starts the task, so its identity is the image ID it resolved to — the task's container's
image, or what the tag names now on the manager for a task with no container yet (or one on a
node the adapter cannot inspect). Retagging ``:1.4`` and redeploying is then a new release, and
a known-good release names the image ID, never a tag that may point elsewhere since.

A task's docker health check is read from the task API too (:func:`task_health`: Swarm holds a
task ``starting`` until its check passes and fails it once docker calls it unhealthy), with its
spec's verdict time, so the promotion rule waits for a full health-check verdict on Swarm as on
compose.

:func:`choose_step` decides how one service returns to its known-good :class:`ServiceTarget`
(:func:`plan_steps` says so for a plan, as the ``docker service`` commands it amounts to):

* ``rollback`` (``docker service rollback``) when Swarm's *previous* spec is exactly the
  known-good one — Swarm restores that whole spec, config included, in one step;
* ``update`` (``docker service update --image <known-good image ID/digest>``) when only the image
  differs from the known-good spec — the pinned image, nothing else touched;
* ``none`` when the service already runs the known-good spec;
* ``restore`` (``service update`` with the known-good container spec, image pinned) when the
  config moved too and Swarm's previous spec is not the known-good one: the spec kept with the
  known-good release at its promotion (:func:`pick_spec`, :func:`specs_blob`) is written back;
* ``refuse`` only when that spec was not kept (a release promoted before specs were kept): the
  image alone would leave the changed config in place, so an operator must decide.

:func:`swarm_rolled_back` says when Swarm's own ``failure_action: rollback`` undid an update —
recorded, not fought — and :func:`swarm_in_charge` while it is still at it (or still watching
the update it may roll back). Swarm reports a
rollback asked for by hand (``docker service rollback``, or the watchdog's own) in the same
``rollback_*`` states, so they are told apart by ``UpdateStatus``: Swarm's own keeps the update's
``StartedAt`` and names the failed task in its message; a requested one says "manually requested
rollback" and starts anew. :func:`not_converged` says why the tasks do not (yet) run the
target — every running task on it, as many as the service's replicas.

:func:`stack_containers` turns the stack's tasks into the compose driver's containers, so release
tracking is the compose driver's own. A release is what Swarm means to run: every task whose
desired state is ``running`` or ``ready`` (a restarted task waiting out its restart delay: in a
crash loop, most of the time) counts with the spec it was created from, whether or not its node
has created its container yet; a service with no such task counts with its current spec, not
running. So the release stays known through a crash loop (the policy escalates an unknown one).

The gated DB rollback stops writer services by scaling them to 0: :func:`writers_problem` refuses
what cannot be scaled (a missing or global-mode service), :func:`tasks_gone` says when no task of a
service is alive any more, :func:`scale_argv` is the command that puts recorded counts back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from brace_watchdog.releases import ComposeContainer, Release

__all__ = ["LIVE_DESIRED_STATES", "NO_TASK", "STACK_LABEL", "RollbackStep", "ServiceTarget",
           "StackLook", "StackTask", "SwarmService", "SwarmTask", "choose_step", "fingerprint",
           "identify", "not_converged", "pick_spec", "pinned", "plan_steps", "rollout",
           "running_tasks", "runs_current_spec", "scale_argv", "spec_hash", "spec_restored",
           "specs_blob", "specs_from_blob", "stack_containers", "swarm_in_charge", "swarm_name",
           "swarm_rolled_back", "task_health", "tasks_gone",
           "writers_problem"]

STACK_LABEL = "com.docker.stack.namespace"
MANUAL_ROLLBACK = "manually requested rollback"  # UpdateStatus.Message of a requested rollback
# a task in one of these states has no live container and never gets one again
TERMINAL_TASK_STATES = frozenset({"complete", "shutdown", "failed", "rejected", "remove",
                                  "orphaned"})
# desired states of a task Swarm means to run (``ready``: created, waiting to be started)
LIVE_DESIRED_STATES = ("running", "ready")
NO_TASK = "no task"  # the state of a service that has no task Swarm means to run
IMAGE_ID = "sha256:"  # an image ID, as the engine writes it
SPEC_KEYS = ("Env", "Command", "Args", "Mounts", "Configs", "Secrets", "User", "Dir")


def _short_hash(value: object) -> str:
    """The first 16 hex digits of sha256 over ``value`` as canonical JSON."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def spec_hash(container_spec: Mapping[str, Any]) -> str:
    """sha256 over the container spec's behaviour (image excluded; env order ignored)."""
    picked = {key: container_spec.get(key) for key in SPEC_KEYS}
    if isinstance(picked["Env"], list):
        picked["Env"] = sorted(picked["Env"])
    return _short_hash(picked)


def rollout(task_spec: Mapping[str, Any]) -> str:
    """What a task was rolled out from: a hash of its whole task spec, the service's task
    template when it was created (image, container spec, resources, placement, restart policy,
    networks, ``ForceUpdate``)."""
    return _short_hash(task_spec)


@dataclass(frozen=True)
class ServiceTarget:
    """One service of a release: the image (its identity, :func:`identify`) and the spec hash."""

    image: str
    spec_hash: str


def pinned(image: str) -> bool:
    """``image`` names one image wherever it runs: an image ID or a registry digest."""
    return image.startswith(IMAGE_ID) or "@sha256:" in image


def identify(target: ServiceTarget, resolved: str) -> ServiceTarget:
    """``target`` (its spec's reference) with the image it runs: a pinned reference is its own
    identity; a bare tag is the image ID ``resolved`` (the task's container's image, or the
    tag's image on the manager), or stays the tag when nothing resolved it."""
    if pinned(target.image) or not resolved:
        return target
    return replace(target, image=resolved)


@dataclass(frozen=True)
class SwarmService:
    id: str
    name: str
    version: int
    current: ServiceTarget
    previous: ServiceTarget | None
    replicas: int | None
    update_state: str = ""
    update_message: str = ""
    update_started: str = ""
    auto_rollback: bool = False
    """``update_config.failure_action: rollback``: Swarm watches its own updates."""


@dataclass(frozen=True)
class SwarmTask:
    """A task of a service as verification reads it from the manager's task API (any node, any
    desired state — a task told to stop runs on until it has stopped): the spec it was created
    from, its state, the state Swarm wants it in, and why it is not running (Swarm's message)."""

    service_id: str
    target: ServiceTarget
    state: str
    desired: str = "running"
    note: str = ""


@dataclass(frozen=True)
class StackTask:
    """A task Swarm means to run, as the manager's task API reports it (any node): the spec it
    was created from (not necessarily its service's current one; its image identified,
    :func:`identify`), its state, its container's ID once its node has created one, and the
    image reference its spec names (``""``: the same as the target's image)."""

    id: str
    service_id: str
    target: ServiceTarget
    state: str
    created: str = ""
    container_id: str = ""
    image_ref: str = ""
    rollout: str = ""
    """:func:`rollout` of the task's own spec (``""``: not read)."""
    check_seconds: float = 0.0
    """Its spec's docker health check's verdict time (:func:`~brace_watchdog.releases.
    check_seconds`; 0: none)."""


@dataclass(frozen=True)
class StackLook:
    """One look at a stack: its services and their tasks as containers, read together."""

    stack: str
    services: tuple[SwarmService, ...]
    containers: tuple[ComposeContainer, ...]


@dataclass(frozen=True)
class RollbackStep:
    method: Literal["none", "rollback", "update", "restore", "refuse"]
    why: str


def swarm_name(stack: str, service: str) -> str:
    """The Swarm service name of a stack's service (``docker stack deploy`` names it so)."""
    return f"{stack}_{service}"


def stack_containers(stack: str, services: Sequence[SwarmService],
                     tasks: Sequence[StackTask]) -> list[ComposeContainer]:
    """The stack's tasks as the compose driver's containers (image ID: the image the task
    runs, :func:`identify`; image ref: its spec's reference; config hash: its spec hash); a
    service without a task counts with its current spec, in state :data:`NO_TASK`."""
    out: list[ComposeContainer] = []
    for service in services:
        mine = [t for t in tasks if t.service_id == service.id] or [StackTask(
            swarm_name(stack, service.name), service.id, service.current, NO_TASK,
            container_id=service.id)]
        out += [ComposeContainer(
            id=t.container_id or t.id, name=t.id, project=stack, service=service.name,
            image_id=t.target.image, image_ref=t.image_ref or t.target.image,
            config_hash=t.target.spec_hash, working_dir="", config_files=(), state=t.state,
            created=t.created, rollout=t.rollout, health=task_health(t),
            check_seconds=t.check_seconds) for t in mine]
    return out


def task_health(task: StackTask) -> str:
    """A task's docker health status as the task API tells it: Swarm keeps a task with a
    health check ``starting`` until its check passed, and fails it once docker calls it
    unhealthy, so a ``running`` one is ``healthy``; ``""`` without a check or in other states
    (the liveness reads those: not running)."""
    if not task.check_seconds:
        return ""
    return {"running": "healthy", "starting": "starting"}.get(task.state, "")


def fingerprint(services: Sequence[SwarmService]) -> str:
    return _short_hash(sorted((s.name, s.current.image, s.current.spec_hash) for s in services))


def choose_step(service: SwarmService, target: ServiceTarget, *,
                kept: bool = False) -> RollbackStep:
    """How ``service`` goes back to ``target`` (``kept``: the known-good release's container
    spec of this service was kept at its promotion)."""
    if service.current == target:
        return RollbackStep("none", f"{service.name} already runs the known-good spec")
    if service.previous == target:
        return RollbackStep("rollback", f"{service.name}: Swarm's previous spec is the "
                            "known-good one; `service rollback` restores all of it at once")
    if service.current.spec_hash == target.spec_hash:
        return RollbackStep("update", f"{service.name}: only the image changed; `service "
                            f"update --image {target.image[:19]}` pins the known-good image")
    if kept:
        return RollbackStep("restore", f"{service.name}: its config changed and Swarm's "
                            "previous spec is not the known-good one; `service update` with "
                            "the known-good container spec kept at its promotion (image "
                            f"{target.image[:19]})")
    return RollbackStep("refuse", f"{service.name}: its config changed, Swarm's previous "
                        "spec is not the known-good one and the known-good container spec was "
                        "not kept (promoted before brace-watchdog kept specs); the image alone "
                        "would keep the new config — an operator must decide")


def pick_spec(candidates: Sequence[Mapping[str, Any]], hashed: str) -> dict[str, Any] | None:
    """The first container spec whose :func:`spec_hash` is ``hashed`` (a release's own)."""
    return next((dict(spec) for spec in candidates if spec_hash(spec) == hashed), None)


def specs_blob(specs: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Container specs by service name, as the state store keeps them."""
    return json.dumps(specs, sort_keys=True).encode()


def specs_from_blob(blob: bytes | None) -> dict[str, dict[str, Any]]:
    return {str(name): dict(spec) for name, spec in json.loads(blob).items()} if blob else {}


_STEP_COMMANDS = {"rollback": "docker service rollback {name}",
                  "update": "docker service update --image {image} {name}",
                  "restore": "docker service update {name} back to the known-good container "
                             "spec kept at its promotion, image {image}",
                  "none": "nothing to do", "refuse": "REFUSED"}


def plan_steps(stack: str, services: Sequence[SwarmService], target: Release,
               kept: Collection[str] = ()) -> tuple[str, ...]:
    """What a rollback to ``target`` does to each of its services, as an operator reads it in
    a plan: the CLI equivalent of the API call the daemon makes (:func:`choose_step`; ``kept``:
    the services whose known-good container spec was kept) and why; a service of ``target``
    the stack no longer has is refused."""
    by_name = {s.name: s for s in services}
    lines = []
    for wanted in target.services:
        service = by_name.get(wanted.service)
        if service is None:
            lines.append(f"REFUSED — service {swarm_name(stack, wanted.service)} is gone; "
                         "nothing to roll back")
            continue
        step = choose_step(service, ServiceTarget(wanted.image_id, wanted.config_hash),
                           kept=wanted.service in kept)
        command = _STEP_COMMANDS[step.method].format(name=swarm_name(stack, service.name),
                                                     image=wanted.image_id)
        lines.append(f"{command} — {step.why}")
    return tuple(lines)


def _requested(service: SwarmService) -> bool:
    return service.update_message == MANUAL_ROLLBACK


def swarm_rolled_back(service: SwarmService, before: SwarmService | None) -> bool:
    """Swarm's own update rollback (``failure_action: rollback``) ran or runs: record it, don't
    fight. ``before`` is the same service at the previous look (None: not seen before). A
    ``rollback_completed`` says "rollback completed" whoever asked, so it counts only when the
    same update (same ``StartedAt``) was seen updating, or rolling back on its own, before."""
    if not service.update_state.startswith("rollback_") or _requested(service):
        return False
    if service.update_state != "rollback_completed":
        return True
    return (before is not None and before.update_started == service.update_started
            and not _requested(before)
            and before.update_state in ("updating", "rollback_started", "rollback_paused"))


def runs_current_spec(service: SwarmService, running: Collection[tuple[str, str]]) -> bool:
    """Every running task (``running``: their (image, spec hash) pairs) runs the service's
    current spec, and one does: Swarm's own rollback has converged, not only been declared
    completed (``rollback_completed`` comes before the restored task runs)."""
    return set(running) == {(service.current.image, service.current.spec_hash)}


def swarm_in_charge(service: SwarmService) -> bool:
    """Swarm itself is judging or undoing an update of this service — an update under its own
    ``failure_action: rollback`` watch, or its own rollback: acting now would fight it."""
    if service.update_state == "updating":
        return service.auto_rollback
    return service.update_state == "rollback_started" and not _requested(service)


def not_converged(tasks: Sequence[SwarmTask], target: ServiceTarget,
                  replicas: int | None) -> str | None:
    """Why the service's tasks (all of them, any desired state) have not converged on
    ``target``, or None when they have: no running task runs another spec (a task told to
    stop counts until it has stopped), and of the tasks Swarm means to keep running —
    replicated — exactly ``replicas`` run ``target``, or — global (``replicas`` None) — every
    one (one per eligible node, as Swarm places them) runs ``target``."""
    running = [t for t in tasks if t.state == "running"]
    other = sum(t.target != target for t in running)
    # a task told to stop still serves, but is no replica: it goes away
    good = sum(t.target == target and t.desired in LIVE_DESIRED_STATES for t in running)
    waiting = [t for t in tasks if t.desired in LIVE_DESIRED_STATES and t.state != "running"]
    notes = "; ".join(sorted({f"{t.state}: {t.note}" if t.note else t.state for t in waiting}))
    waits = f" ({len(waiting)} not running: {notes})" if waiting else ""
    if other:
        return f"{other} running task(s) still on another spec, {good} on the known-good{waits}"
    if replicas is not None and good != replicas:
        return f"{good} of {replicas} replicas run the known-good spec{waits}"
    if replicas is None and (waiting or not good):
        return f"{good} task(s) run the known-good spec{waits or ' (none scheduled)'}"
    return None


def spec_restored(service: SwarmService | None, target: ServiceTarget) -> bool:
    """The service's own spec is ``target`` (a rollback of it was carried out); its tasks
    may still be converging."""
    return service is not None and service.current == target


def writers_problem(services: Sequence[SwarmService], writers: Sequence[str],
                    stack: str) -> str | None:
    """Why the writer services cannot be stopped by scaling them to 0, or None."""
    found = {s.name: s for s in services}
    missing = [name for name in writers if name not in found]
    if missing:
        return (f"writer service(s) {', '.join(missing)} not found in stack {stack}; check "
                "[db_rollback] writers; nothing was changed")
    is_global = [swarm_name(stack, name) for name in writers if found[name].replicas is None]
    if is_global:
        return (f"writer service(s) {', '.join(is_global)} run in global mode: Swarm cannot "
                "scale them to 0, so the DB rollback cannot stop them. Make them replicated "
                "(deploy.mode: replicated), or take them out of [db_rollback] writers and stop "
                "them by hand first; nothing was changed")
    return None


def tasks_gone(states: Sequence[str]) -> bool:
    """No task of a service is alive (``states``: every task's ``Status.State``)."""
    return all(state in TERMINAL_TASK_STATES for state in states)


def running_tasks(states: Sequence[str]) -> int:
    return sum(state == "running" for state in states)


def scale_argv(replicas: Mapping[str, int]) -> list[str]:
    """``docker service scale NAME=N ...`` for full service names."""
    return ["docker", "service", "scale", *(f"{name}={count}"
                                            for name, count in sorted(replicas.items()))]
