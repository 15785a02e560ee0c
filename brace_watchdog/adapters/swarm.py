"""Docker Swarm through the docker SDK's services API (never CLI output), in worker threads.

:class:`SwarmAdapter` lists a stack's services by the ``com.docker.stack.namespace`` label as
typed :class:`~brace_watchdog.swarm_release.SwarmService` values, lists a service's tasks with the
image ID each task's container really runs, and changes a service: pin its image
(``update``), go back to Swarm's previous spec (``rollback``), or scale it. Every blocking SDK call
runs in :func:`asyncio.to_thread`; every engine failure is a :class:`DockerError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import docker
from docker.errors import DockerException, NotFound

from brace_watchdog.errors import DockerError
from brace_watchdog.swarm_release import (
    STACK_LABEL,
    ServiceTarget,
    SwarmService,
    SwarmTask,
    spec_hash,
)

__all__ = ["SwarmAdapter"]

T = TypeVar("T")


class SwarmAdapter:
    def __init__(self, base_url: str | None = None, *, timeout: float = 60.0) -> None:
        self._base_url = base_url
        self._timeout = timeout
        self._client: docker.DockerClient | None = None

    def _docker(self) -> docker.DockerClient:
        if self._client is None:
            self._client = (docker.DockerClient(base_url=self._base_url, timeout=int(self._timeout))
                            if self._base_url else docker.from_env(timeout=int(self._timeout)))
        return self._client

    async def _call(self, what: str, work: Callable[[], T]) -> T:
        def run() -> T:
            try:
                return work()
            except DockerException as exc:
                raise DockerError(f"swarm: {what}: {exc}") from None
        return await asyncio.to_thread(run)

    async def services(self, stack: str) -> list[SwarmService]:
        def work() -> list[SwarmService]:
            found = self._docker().services.list(filters={"label": f"{STACK_LABEL}={stack}"})
            return sorted((_service(s.attrs, stack) for s in found), key=lambda s: s.name)
        return await self._call(f"listing the services of stack {stack}", work)

    async def tasks(self, service_id: str) -> list[SwarmTask]:
        """Tasks meant to run, with the image ID of each one's container (this node's)."""
        def work() -> list[SwarmTask]:
            client = self._docker()
            api: Any = client.api  # the SDK's low-level calls are untyped
            out = []
            for task in api.tasks(filters={"service": service_id,
                                                  "desired-state": "running"}):
                status = task.get("Status", {})
                cid = status.get("ContainerStatus", {}).get("ContainerID", "")
                image = ""
                if cid:
                    try:
                        image = client.containers.get(cid).attrs.get("Image", "")
                    except NotFound:
                        image = ""
                out.append(SwarmTask(image_id=image, state=str(status.get("State", ""))))
            return out
        return await self._call(f"listing the tasks of {service_id}", work)

    async def image_id(self, reference: str) -> str | None:
        def work() -> str | None:
            try:
                return str(self._docker().images.get(reference).id)
            except NotFound:
                return None
        return await self._call(f"inspecting image {reference}", work)

    async def update_image(self, service_id: str, image: str) -> None:
        """``service update --image``: the rest of the spec as it is."""
        await self._call(f"updating {service_id}",
                         lambda: self._service(service_id).update(image=image))

    async def rollback(self, service_id: str) -> None:
        """``service rollback``: Swarm restores its previous spec. The SDK has no call for the
        API's ``rollback=previous`` update, so it is posted as the CLI posts it."""
        def work() -> None:
            api: Any = self._docker().api
            current = api.inspect_service(service_id)
            url = api._url("/services/{0}/update", service_id)
            response = api._post_json(url, data=current["Spec"], params={
                "version": current["Version"]["Index"], "rollback": "previous"})
            api._raise_for_status(response)
        await self._call(f"rolling back {service_id}", work)

    async def scale(self, service_id: str, replicas: int) -> None:
        await self._call(f"scaling {service_id} to {replicas}",
                         lambda: self._service(service_id).scale(replicas))

    def _service(self, service_id: str) -> Any:
        services: Any = self._docker().services  # untyped in the SDK's stubs
        return services.get(service_id)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _target(spec: dict[str, Any] | None) -> ServiceTarget | None:
    if not spec:
        return None
    container = spec.get("TaskTemplate", {}).get("ContainerSpec", {})
    return ServiceTarget(image=str(container.get("Image", "")), spec_hash=spec_hash(container))


def _service(attrs: dict[str, Any], stack: str) -> SwarmService:
    spec = attrs["Spec"]
    name = str(spec.get("Name", ""))
    replicated = spec.get("Mode", {}).get("Replicated")
    current = _target(spec)
    assert current is not None  # a service always has a spec
    return SwarmService(
        id=str(attrs["ID"]), name=name.removeprefix(f"{stack}_"),
        version=int(attrs.get("Version", {}).get("Index", 0)), current=current,
        previous=_target(attrs.get("PreviousSpec")),
        replicas=int(replicated.get("Replicas", 1)) if replicated is not None else None,
        update_state=str((attrs.get("UpdateStatus") or {}).get("State", "")))
