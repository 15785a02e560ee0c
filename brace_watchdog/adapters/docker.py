"""The docker engine adapter: every docker SDK call runs in a worker thread, never on the loop.

One thin class over ``docker.DockerClient``. Errors from the SDK become
:class:`~brace_watchdog.errors.DockerError` with a message an operator can act on. Methods are
grouped by the capability that needs them (throwaway restore containers; compose releases).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import docker
import docker.errors
from docker import DockerClient

from brace_watchdog.errors import DockerError

__all__ = ["DockerAdapter"]

T = TypeVar("T")


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
        except docker.errors.DockerException as exc:
            raise DockerError(str(exc)) from None
        except OSError as exc:
            raise DockerError(f"docker engine unreachable: {exc}") from None

    async def ping(self) -> bool:
        return bool(await self.call(lambda: self.client.ping()))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
