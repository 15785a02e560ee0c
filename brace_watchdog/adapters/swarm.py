"""Docker Swarm through the docker SDK's services API (never CLI output), in worker threads.

:class:`SwarmAdapter` lists a stack's services by the ``com.docker.stack.namespace`` label as
typed :class:`~brace_watchdog.swarm_release.SwarmService` values, lists a service's tasks through
the manager's task API (node-agnostic: no container is inspected, wherever it runs) with the
spec each was created from, and changes a service: pin its image
(``update``), go back to Swarm's previous spec (``rollback``), or scale it. Every blocking SDK call
runs in a worker thread (:meth:`DockerAdapter.call`); every engine failure is a
:class:`DockerError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.errors import DockerError
from brace_watchdog.releases import ComposeContainer
from brace_watchdog.swarm_release import (
    LIVE_DESIRED_STATES,
    STACK_LABEL,
    ServiceTarget,
    StackTask,
    SwarmService,
    SwarmTask,
    spec_hash,
    stack_containers,
)

__all__ = ["SwarmAdapter"]

T = TypeVar("T")
SEQUENCE_ATTEMPTS = 3


class SwarmAdapter(DockerAdapter):
    """A docker engine that is a Swarm manager; :meth:`compose_containers` reports the stack's
    tasks as the compose driver's :class:`ComposeContainer` values
    (:func:`~brace_watchdog.swarm_release.stack_containers`: each task's own spec image and
    spec hash in place of compose's labels), so release tracking, attribution and image
    verification are the compose driver's own."""

    async def _run(self, what: str, work: Callable[[], T]) -> T:
        for attempt in range(1, SEQUENCE_ATTEMPTS + 1):
            try:
                return await self.call(work)
            except DockerError as exc:
                # the spec version moved between our read and our write (Swarm advancing its
                # own update): read again and retry, a few times
                if "out of sequence" in str(exc) and attempt < SEQUENCE_ATTEMPTS:
                    continue
                raise DockerError(f"swarm: {what}: {exc}") from None
        raise AssertionError("unreachable")

    async def services(self, stack: str) -> list[SwarmService]:
        def work() -> list[SwarmService]:
            found = self.client.services.list(filters={"label": f"{STACK_LABEL}={stack}"})
            return sorted((_service(s.attrs, stack) for s in found), key=lambda s: s.name)
        return await self._run(f"listing the services of stack {stack}", work)

    async def tasks(self, service_id: str) -> list[SwarmTask]:
        """Tasks meant to run, with the image each was created from (any node)."""
        return [SwarmTask(image_id=t.target.image, state=t.state)
                for t in await self._run(f"listing the tasks of {service_id}",
                                         lambda: self._live_tasks([service_id]))]

    async def task_states(self, service_id: str) -> list[str]:
        """``Status.State`` of every task of the service, from the manager's task API (tasks
        on any node; shut-down tasks included)."""
        def work() -> list[str]:
            api: Any = self.client.api  # the SDK's low-level calls are untyped
            return [str(task.get("Status", {}).get("State", ""))
                    for task in api.tasks(filters={"service": service_id})]
        return await self._run(f"listing the tasks of {service_id}", work)

    async def compose_containers(self, project: str) -> list[ComposeContainer]:
        def work() -> list[ComposeContainer]:
            found = self.client.services.list(filters={"label": f"{STACK_LABEL}={project}"})
            services = [_service(item.attrs, project) for item in found]
            tasks = self._live_tasks([s.id for s in services]) if services else []
            return stack_containers(project, services, tasks)
        return await self._run(f"reading stack {project}", work)

    def _live_tasks(self, service_ids: list[str]) -> list[StackTask]:
        """The services' tasks Swarm means to run (:data:`LIVE_DESIRED_STATES`), in one call to
        the manager's task API, so a task on any node counts alike: its state, its container
        ID once its node created one, and the spec it was created from — its own, not the
        service's current one (during an update or a rollback old and new tasks differ until
        Swarm converges). The image is the task spec's reference: the pinned image ID or
        digest, the same on every node."""
        api: Any = self.client.api  # the SDK's low-level calls are untyped
        found = api.tasks(filters={"service": service_ids,
                                   "desired-state": list(LIVE_DESIRED_STATES)})
        return [StackTask(
            id=str(task.get("ID", "")), service_id=str(task.get("ServiceID", "")),
            target=_container_target(task.get("Spec", {}).get("ContainerSpec", {})),
            state=str(task.get("Status", {}).get("State", "")),
            created=str(task.get("CreatedAt", "")),
            container_id=str(task.get("Status", {}).get("ContainerStatus", {})
                             .get("ContainerID", "")))
            for task in found]

    async def update_image(self, service_id: str, image: str) -> None:
        """``service update --image``: the rest of the spec as it is."""
        await self._run(f"updating {service_id}",
                        lambda: self._service(service_id).update(image=image))

    async def rollback(self, service_id: str) -> None:
        """``service rollback``: Swarm restores its previous spec. The SDK has no call for the
        API's ``rollback=previous`` update, so it is posted as the CLI posts it."""
        def work() -> None:
            api: Any = self.client.api
            current = api.inspect_service(service_id)
            url = api._url("/services/{0}/update", service_id)
            response = api._post_json(url, data=current["Spec"], params={
                "version": current["Version"]["Index"], "rollback": "previous"})
            api._raise_for_status(response)
        await self._run(f"rolling back {service_id}", work)

    async def scale(self, service_id: str, replicas: int) -> None:
        await self._run(f"scaling {service_id} to {replicas}",
                        lambda: self._service(service_id).scale(replicas))

    def _service(self, service_id: str) -> Any:
        services: Any = self.client.services  # untyped in the SDK's stubs
        return services.get(service_id)


def _container_target(container: dict[str, Any]) -> ServiceTarget:
    return ServiceTarget(image=str(container.get("Image", "")), spec_hash=spec_hash(container))


def _target(spec: dict[str, Any] | None) -> ServiceTarget | None:
    """A service spec's target (its task template's container spec)."""
    if not spec:
        return None
    return _container_target(spec.get("TaskTemplate", {}).get("ContainerSpec", {}))


def _service(attrs: dict[str, Any], stack: str) -> SwarmService:
    spec = attrs["Spec"]
    name = str(spec.get("Name", ""))
    replicated = spec.get("Mode", {}).get("Replicated")
    current = _target(spec)
    assert current is not None  # a service always has a spec
    update = attrs.get("UpdateStatus") or {}
    return SwarmService(
        id=str(attrs["ID"]), name=name.removeprefix(f"{stack}_"),
        version=int(attrs.get("Version", {}).get("Index", 0)), current=current,
        previous=_target(attrs.get("PreviousSpec")),
        replicas=int(replicated.get("Replicas", 1)) if replicated is not None else None,
        update_state=str(update.get("State", "")), update_message=str(update.get("Message", "")),
        update_started=str(update.get("StartedAt", "")),
        auto_rollback=(spec.get("UpdateConfig") or {}).get("FailureAction") == "rollback")
