"""The docker engine adapter: every docker SDK call runs in a worker thread, never on the loop.

One thin class over ``docker.DockerClient``. Errors from the SDK become
:class:`~brace_watchdog.errors.DockerError` with a message an operator can act on. Methods are
grouped by the capability that needs them (throwaway restore containers; compose releases).
Importing it makes docker-py close the socket of a unix connect that failed
(:func:`_connect_closing`): docker-py leaves it open until the garbage collector runs, one fd
per failed call, every cycle, while the engine is unreachable.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import docker.transport.unixconn
from docker import DockerClient

from brace_watchdog.adapters.process import CommandResult
from brace_watchdog.errors import DockerError
from brace_watchdog.releases import ComposeContainer, TagUser, check_seconds, config_digest

__all__ = ["DockerAdapter"]

T = TypeVar("T")


def _connect_closing(self: docker.transport.unixconn.UnixHTTPConnection) -> None:
    """docker-py's unix ``connect``, closing its socket when the connect fails."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(self.timeout)
        sock.connect(self.unix_socket)
    except BaseException:
        sock.close()
        raise
    self.sock = sock


docker.transport.unixconn.UnixHTTPConnection.connect = _connect_closing  # type: ignore[method-assign]


class DockerAdapter:
    """Talks to one docker engine (``base_url`` like ``unix:///var/run/docker.sock``)."""

    def __init__(self, base_url: str | None = None, *, timeout: float = 60.0,
                 client: DockerClient | None = None) -> None:
        self._base_url = base_url
        self._timeout = timeout
        self._client = client

    @property
    def client(self) -> DockerClient:
        if self._client is None:
            try:
                if self._base_url:
                    self._client = docker.DockerClient(base_url=self._base_url,
                                                       timeout=int(self._timeout))
                else:
                    self._client = docker.from_env(timeout=int(self._timeout))
            except docker.errors.DockerException as exc:
                raise DockerError(f"docker engine unreachable: {exc}; is dockerd running and "
                                  "may this user use its socket?") from None
        return self._client

    async def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking SDK call in a worker thread, translating SDK errors."""
        return await asyncio.to_thread(self._guarded, func, *args, **kwargs)

    def _guarded(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return func(*args, **kwargs)
        except docker.errors.APIError as exc:
            raise DockerError(str(exc), status=exc.status_code) from None
        except docker.errors.DockerException as exc:
            raise DockerError(str(exc)) from None
        except OSError as exc:
            raise DockerError(f"docker engine unreachable: {exc}") from None

    async def ping(self) -> bool:
        # the lambda defers building the client into the worker thread
        return bool(await self.call(lambda: self.client.ping()))  # noqa: PLW0108

    # -- throwaway containers (restore tests) ------------------------------------------------
    async def image_exists(self, image: str) -> bool:
        """True when ``image`` is present locally (never pulls: no registry may be reachable)."""
        def get() -> bool:
            try:
                self.client.images.get(image)
            except docker.errors.ImageNotFound:
                return False
            return True
        return await self.call(get)

    async def run_container(self, image: str, *, name: str, command: Sequence[str] | None,
                            environment: Mapping[str, str], labels: Mapping[str, str],
                            network_mode: str, ports: Mapping[str, tuple[str, int]] | None = None,
                            volumes: Mapping[str, Mapping[str, str]] | None = None,
                            tmpfs: Mapping[str, str] | None = None) -> str:
        """Start a detached container; return its id. ``tmpfs``: mount point → options."""
        def run() -> str:
            container = self.client.containers.run(
                image, list(command) if command else None, name=name, detach=True,
                environment=dict(environment), labels=dict(labels), network_mode=network_mode,
                ports=dict(ports) if ports else None,
                volumes={k: dict(v) for k, v in (volumes or {}).items()},
                tmpfs=dict(tmpfs) if tmpfs else None)
            return str(container.id)
        return await self.call(run)

    async def exec(self, container_id: str, argv: Sequence[str], *,
                   environment: Mapping[str, str] | None = None, user: str = "") -> CommandResult:
        """Run ``argv`` inside a running container and wait for it (stdout/stderr apart)."""
        def run() -> CommandResult:
            started = time.monotonic()
            container = self.client.containers.get(container_id)
            code, output = container.exec_run(list(argv), environment=dict(environment or {}),
                                               user=user, demux=True)
            out, err = output if isinstance(output, tuple) else (output, b"")
            return CommandResult(tuple(argv), int(code if code is not None else -1),
                                 _decode(out), _decode(err), time.monotonic() - started)
        return await self.call(run)

    async def container_state(self, container_id: str) -> tuple[str, str]:
        """``(status, last log lines)`` of a container (``status`` like running/exited; the
        logs only when it is not running)."""
        def state() -> tuple[str, str]:
            container = self.client.containers.get(container_id)
            if container.status == "running":
                return "running", ""
            return str(container.status), container.logs(tail=20).decode("utf-8", "replace")
        return await self.call(state)

    async def containers_with_label(self, label: str) -> list[tuple[str, dict[str, str]]]:
        """``(id, labels)`` of every container, running or not, carrying ``label`` (k or k=v)."""
        def find() -> list[tuple[str, dict[str, str]]]:
            found = self.client.containers.list(all=True, filters={"label": label},
                                                ignore_removed=True)
            return [(str(c.id), dict(c.labels)) for c in found]
        return await self.call(find)

    async def remove_container(self, container_id: str) -> bool:
        """Kill and remove a container with its anonymous volumes; False if already gone."""
        def remove() -> bool:
            try:
                self.client.containers.get(container_id).remove(force=True, v=True)
            except docker.errors.NotFound:
                return False
            return True
        return await self.call(remove)

    # -- compose releases ------------------------------------------------------------------
    async def compose_containers(self, project: str) -> list[ComposeContainer]:
        """Every container (running or not) of a compose project, from its compose labels; one
        removed between the listing and its inspection (compose recreating it) is left out."""
        def find() -> list[ComposeContainer]:
            found = self.client.containers.list(
                all=True, filters={"label": f"{_COMPOSE}.project={project}"}, ignore_removed=True)
            return [_compose_container(c.attrs) for c in found]
        return await self.call(find)

    async def tag_users(self, refs: Sequence[str]) -> list[TagUser]:
        """Every container (running or not, any project) created from one of ``refs``, by the
        reference it was created with (``Config.Image``). The list API shows that reference
        unless the tag has since moved to another image, when it shows the image ID: only
        those containers are inspected (one call each), not every container on the engine."""
        wanted = set(refs)
        if not wanted:
            return []

        def created_with(entry: dict[str, Any]) -> str:
            ref = str(entry.get("Image", ""))
            if not ref.startswith("sha256:"):
                return ref
            try:
                attrs = self.client.api.inspect_container(entry["Id"])
            except docker.errors.NotFound:
                return ""  # removed since the listing
            return str((attrs.get("Config") or {}).get("Image", ""))

        def find() -> list[TagUser]:
            users = []
            for entry in self.client.api.containers(all=True):
                ref = created_with(entry)
                if ref in wanted:
                    labels = entry.get("Labels") or {}
                    users.append(TagUser(
                        name=str((entry.get("Names") or [""])[0]).lstrip("/"),
                        project=labels.get(f"{_COMPOSE}.project", ""),
                        service=labels.get(f"{_COMPOSE}.service", ""), image_ref=ref,
                        image_id=str(entry.get("ImageID", ""))))
            return users
        return await self.call(find)

    async def image_id(self, ref: str) -> str | None:
        """The ID an image reference (tag or ID) resolves to; None when it does not exist."""
        def resolve() -> str | None:
            try:
                return str(self.client.images.get(ref).id)
            except docker.errors.ImageNotFound:
                return None
        return await self.call(resolve)

    async def image_tags(self) -> dict[str, frozenset[str]]:
        """Every image the engine has: its ID and its tags (one API call)."""
        def listing() -> dict[str, frozenset[str]]:
            return {str(i["Id"]): frozenset(t for t in i.get("RepoTags") or ()
                                            if t != "<none>:<none>")
                    for i in self.client.api.images(all=True)}
        return await self.call(listing)

    async def save_image(self, image_id: str, target: Path) -> None:
        """``docker save`` one image (by ID) into the file ``target``, streamed."""
        def save() -> None:
            with target.open("wb") as out:
                for chunk in self.client.images.get(image_id).save(named=False):
                    out.write(chunk)
        await self.call(save)

    async def load_image(self, source: Path) -> list[str]:
        """``docker load`` an archive (streamed); the IDs of the images it brought."""
        def load() -> list[str]:
            with source.open("rb") as data:
                return [str(image.id) for image in self.client.images.load(data)]
        return await self.call(load)

    async def tag_image(self, image_id: str, repository: str, tag: str) -> None:
        """Point ``repository:tag`` at ``image_id`` (moving the tag if it pointed elsewhere)."""
        def tag_it() -> None:
            if not self.client.api.tag(image_id, repository, tag, force=True):
                raise DockerError(f"docker refused to tag {image_id[:19]} as {repository}:{tag}")
        await self.call(tag_it)

    async def remove_image_tag(self, ref: str) -> bool:
        """Remove one tag (the image stays while other tags or containers use it)."""
        def untag() -> bool:
            try:
                self.client.images.remove(ref, noprune=False)
            except docker.errors.ImageNotFound:
                return False
            return True
        return await self.call(untag)

    async def container_logs(self, container_id: str, *, tail: int) -> str:
        """The last ``tail`` lines of a container's stdout and stderr."""
        def logs() -> str:
            raw = self.client.containers.get(container_id).logs(tail=tail, timestamps=False)
            return bytes(raw).decode("utf-8", errors="replace")
        return await self.call(logs)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _decode(data: object) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else ""


_COMPOSE = "com.docker.compose"


def _compose_container(attrs: dict[str, Any]) -> ComposeContainer:
    labels: dict[str, str] = (attrs.get("Config") or {}).get("Labels") or {}
    files = labels.get(f"{_COMPOSE}.project.config_files", "")
    return ComposeContainer(
        id=str(attrs.get("Id", "")), name=str(attrs.get("Name", "")).lstrip("/"),
        project=labels.get(f"{_COMPOSE}.project", ""),
        service=labels.get(f"{_COMPOSE}.service", ""), image_id=str(attrs.get("Image", "")),
        image_ref=str((attrs.get("Config") or {}).get("Image", "")),
        config_hash=labels.get(f"{_COMPOSE}.config-hash", ""),
        working_dir=labels.get(f"{_COMPOSE}.project.working_dir", ""),
        config_files=tuple(f for f in files.split(",") if f),
        state=str((attrs.get("State") or {}).get("Status", "")),
        created=str(attrs.get("Created", "")),
        oneoff=labels.get(f"{_COMPOSE}.oneoff", "False") == "True",
        config_digest=config_digest(attrs), restart_count=int(attrs.get("RestartCount") or 0),
        health=str(((attrs.get("State") or {}).get("Health") or {}).get("Status") or ""),
        check_seconds=check_seconds((attrs.get("Config") or {}).get("Healthcheck")))
