"""Docker Swarm through the docker SDK's services API (never CLI output), in worker threads.

:class:`SwarmAdapter` lists a stack's services by the ``com.docker.stack.namespace`` label as
typed :class:`~brace_watchdog.swarm_release.SwarmService` values, lists a service's tasks through
the manager's task API (node-agnostic: no container is inspected, wherever it runs) with the
spec each was created from — its image identified (:class:`ImageIdentities`: a bare tag is
the image ID its node resolved it to) — and changes a service: pin its image
(``update``), go back to Swarm's previous spec (``rollback``), write a kept container spec back
(``restore_spec``), or scale it. Every blocking SDK call
runs in a worker thread (:meth:`DockerAdapter.call`); every engine failure is a
:class:`DockerError`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from typing import Any, TypeVar

import docker
from docker import DockerClient

from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.errors import DockerError
from brace_watchdog.releases import ComposeContainer, check_seconds
from brace_watchdog.swarm_release import (
    LIVE_DESIRED_STATES,
    STACK_LABEL,
    ServiceTarget,
    StackLook,
    StackTask,
    SwarmService,
    SwarmTask,
    identify,
    pinned,
    rollout,
    spec_hash,
    stack_containers,
    swarm_name,
)

__all__ = ["ImageIdentities", "SpecHashes", "SwarmAdapter", "engine_for"]

T = TypeVar("T")
SEQUENCE_ATTEMPTS = 3


class SwarmAdapter(DockerAdapter):
    """A docker engine that is a Swarm manager. :meth:`look` reads a stack — its services and
    their tasks as the compose driver's :class:`ComposeContainer` values
    (:func:`~brace_watchdog.swarm_release.stack_containers`: each task's own spec image and
    spec hash in place of compose's labels) — in one services listing and one task-API call;
    :meth:`compose_containers` is that look, so release tracking, attribution and image
    verification are the compose driver's own, and it keeps the look as :attr:`last_look` for
    the Swarm watch of the same cycle. Spec hashes are computed once per (service ID, spec
    version) (:class:`SpecHashes`); a bare tag's image is resolved as :class:`ImageIdentities`
    says."""

    def __init__(self, base_url: str | None = None, *, timeout: float = 60.0,
                 client: DockerClient | None = None) -> None:
        super().__init__(base_url, timeout=timeout, client=client)
        self.hashes = SpecHashes()
        self.images = ImageIdentities(lambda: self.client)
        self.last_look: StackLook | None = None

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
        return await self._run(f"listing the services of stack {stack}",
                               lambda: self._services(stack))

    def _services(self, stack: str, tags: dict[str, str] | None = None) -> list[SwarmService]:
        """The stack's services, their specs' images identified (``tags``: the look's tag
        resolutions, :meth:`ImageIdentities.tag`)."""
        found = self.client.services.list(filters={"label": f"{STACK_LABEL}={stack}"})
        tags = {} if tags is None else tags
        return sorted((self._service_of(s.attrs, stack, tags) for s in found),
                      key=lambda s: s.name)

    async def look(self, stack: str) -> StackLook:
        """The stack's services and their tasks, read together (kept as :attr:`last_look`)."""
        def work() -> StackLook:
            tags: dict[str, str] = {}
            services = self._services(stack, tags)
            versions: dict[str, int | None] = {s.id: s.version for s in services}
            tasks = self._live_tasks(versions, tags) if services else []
            self.images.forget_except({t.container_id for t in tasks})
            return StackLook(stack, tuple(services),
                             tuple(stack_containers(stack, services, tasks)))
        self.last_look = look = await self._run(f"reading stack {stack}", work)
        return look

    async def compose_containers(self, project: str) -> list[ComposeContainer]:
        return list((await self.look(project)).containers)

    async def tasks(self, service_id: str) -> list[SwarmTask]:
        """Every task of the service (any node, any desired state), its image identified."""
        return await self._run(f"listing the tasks of {service_id}",
                               lambda: self._all_tasks({service_id: None}, {}))

    async def converging(self, stack: str) -> tuple[list[SwarmService], list[SwarmTask]]:
        """The stack's services and every task of theirs, read together (what verification
        judges with :func:`~brace_watchdog.swarm_release.not_converged`)."""
        def work() -> tuple[list[SwarmService], list[SwarmTask]]:
            tags: dict[str, str] = {}
            services = self._services(stack, tags)
            return services, self._all_tasks({s.id: s.version for s in services}, tags)
        return await self._run(f"reading the tasks of stack {stack}", work)

    def _all_tasks(self, versions: dict[str, int | None],
                   tags: dict[str, str]) -> list[SwarmTask]:
        """Every task of the services (``versions``, as :meth:`_live_tasks`), whatever Swarm
        wants of it, with why it does not run (Swarm's message)."""
        if not versions:
            return []
        api: Any = self.client.api  # the SDK's low-level calls are untyped
        out = []
        for task in api.tasks(filters={"service": list(versions)}):
            status = task.get("Status", {})
            _, target, _ = self._task_target(task, versions, tags)
            out.append(SwarmTask(
                service_id=str(task.get("ServiceID", "")), target=target,
                state=str(status.get("State", "")), desired=str(task.get("DesiredState", "")),
                note=str(status.get("Err") or status.get("Message") or "")))
        return out

    def _task_target(self, task: dict[str, Any], versions: dict[str, int | None],
                     tags: dict[str, str]) -> tuple[ServiceTarget, ServiceTarget, str]:
        """A task's spec target, the same with its image identified (:class:`ImageIdentities`:
        a pinned image ID or digest is the same on every node, a bare tag what its node
        resolved it to), and its container's ID once its node created one."""
        service_id, status = str(task.get("ServiceID", "")), task.get("Status", {})
        spec = self.hashes.target(service_id, versions.get(service_id),
                                  task.get("Spec", {}).get("ContainerSpec", {}))
        container = str(status.get("ContainerStatus", {}).get("ContainerID", ""))
        return spec, identify(spec, self.images.task(spec.image, str(task.get("NodeID", "")),
                                                     container, tags)), container

    async def task_states(self, service_id: str) -> list[str]:
        """``Status.State`` of every task of the service, from the manager's task API (tasks
        on any node; shut-down tasks included)."""
        def work() -> list[str]:
            api: Any = self.client.api  # the SDK's low-level calls are untyped
            return [str(task.get("Status", {}).get("State", ""))
                    for task in api.tasks(filters={"service": service_id})]
        return await self._run(f"listing the tasks of {service_id}", work)

    def _live_tasks(self, versions: dict[str, int | None],
                    tags: dict[str, str]) -> list[StackTask]:
        """The tasks Swarm means to run (:data:`LIVE_DESIRED_STATES`) of the services
        (``versions``: service ID → spec version, None if not read), in one call to the
        manager's task API, so a task on any node counts alike: its state, its container ID
        once its node created one, and the spec it was created from — its own, not the
        service's current one (during an update or a rollback old and new tasks differ until
        Swarm converges). The image is the one the task runs (:class:`ImageIdentities`): a
        pinned image ID or digest is the same on every node, a bare tag what its node resolved
        it to."""
        api: Any = self.client.api  # the SDK's low-level calls are untyped
        found = api.tasks(filters={"service": list(versions),
                                   "desired-state": list(LIVE_DESIRED_STATES)})
        out = []
        for task in found:
            spec, target, container = self._task_target(task, versions, tags)
            service_id, task_spec = str(task.get("ServiceID", "")), task.get("Spec", {})
            out.append(StackTask(
                id=str(task.get("ID", "")), service_id=service_id, target=target,
                state=str(task.get("Status", {}).get("State", "")),
                created=str(task.get("CreatedAt", "")), container_id=container,
                image_ref=spec.image,
                rollout=self.hashes.rollout(service_id, versions.get(service_id), task_spec),
                check_seconds=check_seconds(task_spec.get("ContainerSpec", {}).get(
                    "Healthcheck"))))
        return out

    def _service_of(self, attrs: dict[str, Any], stack: str,
                    tags: dict[str, str]) -> SwarmService:
        """One service; its current and previous specs' images as what their tags name now
        on the manager (what a task started from them would run)."""
        spec = attrs["Spec"]
        version = int(attrs.get("Version", {}).get("Index", 0))
        previous = (attrs.get("PreviousSpec") or {}).get("TaskTemplate")

        def target(container_spec: dict[str, Any]) -> ServiceTarget:
            found = self.hashes.target(str(attrs["ID"]), version, container_spec)
            return identify(found, self.images.tag(found.image, tags))
        return _service(attrs, stack, version,
                        target(spec.get("TaskTemplate", {}).get("ContainerSpec", {})),
                        None if previous is None else target(previous.get("ContainerSpec", {})))

    async def update_image(self, service_id: str, image: str) -> None:
        """``service update --image``: the rest of the spec as it is."""
        await self._run(f"updating {service_id}",
                        lambda: self._service(service_id).update(image=image))

    async def rollback(self, service_id: str) -> None:
        """``service rollback``: Swarm restores its previous spec. The SDK has no call for the
        API's ``rollback=previous`` update, so it is posted as the CLI posts it."""
        await self._run(f"rolling back {service_id}",
                        lambda: self._post_update(service_id, {"rollback": "previous"}))

    async def restore_spec(self, service_id: str, container_spec: dict[str, Any]) -> None:
        """``service update`` with ``container_spec`` as the task template's container spec
        (the rest of the service's spec as it is)."""
        def edit(spec: dict[str, Any]) -> None:
            spec.setdefault("TaskTemplate", {})["ContainerSpec"] = container_spec
        await self._run(f"restoring the spec of {service_id}",
                        lambda: self._post_update(service_id, {}, edit))

    def _post_update(self, service_id: str, params: dict[str, str],
                     edit: Callable[[dict[str, Any]], None] = lambda spec: None) -> None:
        """Post the service's current spec (``edit`` changes it first) as an update."""
        api: Any = self.client.api
        current = api.inspect_service(service_id)
        spec = current["Spec"]
        edit(spec)
        url = api._url("/services/{0}/update", service_id)
        response = api._post_json(url, data=spec, params={
            "version": current["Version"]["Index"], **params})
        api._raise_for_status(response)

    async def container_specs(self, stack: str) -> dict[str, list[dict[str, Any]]]:
        """Each service's container specs as the manager has them: its current and previous
        specs and those its live tasks were created from (the release's own is among them)."""
        def work() -> dict[str, list[dict[str, Any]]]:
            found = self.client.services.list(filters={"label": f"{STACK_LABEL}={stack}"})
            api: Any = self.client.api
            tasks = api.tasks(filters={"service": [s.id for s in found],
                                       "desired-state": list(LIVE_DESIRED_STATES)}
                              ) if found else []
            out = {}
            for service in found:
                attrs = service.attrs
                out[_service_name(attrs, stack)] = [
                    (spec.get("TaskTemplate") or {}).get("ContainerSpec", {})
                    for spec in (attrs["Spec"], attrs.get("PreviousSpec") or {})
                ] + [t.get("Spec", {}).get("ContainerSpec", {}) for t in tasks
                     if t.get("ServiceID") == service.id]
            return out
        return await self._run(f"reading the specs of stack {stack}", work)

    async def scale(self, service_id: str, replicas: int) -> None:
        await self._run(f"scaling {service_id} to {replicas}",
                        lambda: self._service(service_id).scale(replicas))

    def _service(self, service_id: str) -> Any:
        services: Any = self.client.services  # untyped in the SDK's stubs
        return services.get(service_id)


def engine_for(driver: str) -> DockerAdapter:
    """The engine adapter of ``[rollback] driver``: a Swarm manager, or a compose host."""
    return SwarmAdapter() if driver == "swarm" else DockerAdapter()


class ImageIdentities:
    """What a bare tag runs as (a pinned reference is its own identity, never looked up). The
    task API names only the spec's reference; the node that starts a task resolves a tag
    against its own images, and only its engine knows to what: a task on the node of this
    engine is its container's image ID (inspected once per container: it never changes); one
    on another node, or with no container yet, is what the tag names on this engine now,
    looked up once per look (``tags``), as are a service's own specs. A tag this engine does
    not hold stays the tag. Looks run in worker threads: the cache is only read and set per
    key."""

    def __init__(self, client: Callable[[], DockerClient]) -> None:
        self._client = client
        self._node: str | None = None
        self._containers: dict[str, str] = {}
        self.inspected = 0
        """How many containers were inspected: what the cache saves shows here."""

    def task(self, image: str, node: str, container: str, tags: dict[str, str]) -> str:
        """The image ID a task runs (``""``: unknown, or ``image`` is pinned)."""
        if pinned(image):
            return ""
        if container and node == self._own_node():
            found = self._container_image(container)
            if found:
                return found
        return self.tag(image, tags)

    def tag(self, image: str, tags: dict[str, str]) -> str:
        """The image ID ``image`` names on this engine now (``""``: pinned, or not held)."""
        if pinned(image):
            return ""
        if image not in tags:
            api: Any = self._client().api  # the SDK's low-level calls are untyped
            try:
                tags[image] = str(api.inspect_image(image)["Id"])
            except docker.errors.NotFound:
                tags[image] = ""
        return tags[image]

    def forget_except(self, containers: Collection[str]) -> None:
        """Drop the cached containers that are no longer any live task's."""
        for gone in set(self._containers) - set(containers):
            self._containers.pop(gone, None)

    def _own_node(self) -> str:
        if self._node is None:
            self._node = str(self._client().info().get("Swarm", {}).get("NodeID", ""))
        return self._node

    def _container_image(self, container: str) -> str:
        if container not in self._containers:
            api: Any = self._client().api
            try:
                found = str(api.inspect_container(container)["Image"])
            except docker.errors.NotFound:
                return ""  # removed since the task listing: the tag says it then
            self.inspected += 1
            self._containers[container] = found
        return self._containers[container]


class SpecHashes:
    """Each service's spec hashes, computed once per (service ID, spec version): its current
    and previous container specs, and the specs its tasks were created from (their container
    specs' :func:`~brace_watchdog.swarm_release.spec_hash`, and their whole task specs'
    :func:`~brace_watchdog.swarm_release.rollout`). A task's spec never changes and is, but for
    old tasks in a long rollout, one of its service's two: it is compared by equality with
    those already hashed, and hashed only when new. Only the latest version of a service is
    kept. Thread-safe (looks run in worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str], tuple[int, list[tuple[dict[str, Any], Any]]]] = {}
        self.computed = 0
        """How many hashes were computed (not found): what the cache saves shows here."""

    def target(self, service_id: str, version: int | None,
               container_spec: dict[str, Any]) -> ServiceTarget:
        """The target of ``container_spec``, a spec of the service at ``version`` (None: not
        read, any version hashed so far)."""
        found: ServiceTarget = self._find("target", service_id, version, container_spec,
                                          lambda: ServiceTarget(
                                              image=str(container_spec.get("Image", "")),
                                              spec_hash=spec_hash(container_spec)))
        return found

    def rollout(self, service_id: str, version: int | None, task_spec: dict[str, Any]) -> str:
        """The rollout of a task's spec (its whole task template), as :meth:`target`."""
        found: str = self._find("rollout", service_id, version, task_spec,
                                lambda: rollout(task_spec))
        return found

    def _find(self, kind: str, service_id: str, version: int | None, spec: dict[str, Any],
              compute: Callable[[], T]) -> T:
        with self._lock:
            key = (service_id, kind)
            known_version, known = self._known.get(key, (version or 0, []))
            if version is not None and known_version != version:
                known_version, known = version, []
            self._known[key] = (known_version, known)
            for seen, value in known:
                if seen == spec:
                    return value  # type: ignore[no-any-return]
            value = compute()
            known.append((spec, value))
            self.computed += 1
            return value


def _service(attrs: dict[str, Any], stack: str, version: int, current: ServiceTarget,
             previous: ServiceTarget | None) -> SwarmService:
    spec = attrs["Spec"]
    replicated = spec.get("Mode", {}).get("Replicated")
    update = attrs.get("UpdateStatus") or {}
    return SwarmService(
        id=str(attrs["ID"]), name=_service_name(attrs, stack),
        version=version, current=current, previous=previous,
        replicas=int(replicated.get("Replicas", 1)) if replicated is not None else None,
        update_state=str(update.get("State", "")), update_message=str(update.get("Message", "")),
        update_started=str(update.get("StartedAt", "")),
        auto_rollback=(spec.get("UpdateConfig") or {}).get("FailureAction") == "rollback")


def _service_name(attrs: dict[str, Any], stack: str) -> str:
    """The service's name in its stack (``docker stack deploy`` prefixes ``<stack>_``)."""
    return str(attrs["Spec"].get("Name", "")).removeprefix(swarm_name(stack, ""))
