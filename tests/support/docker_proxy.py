"""A docker engine the test can break: a unix socket forwarding to the real engine's socket.

The code under test is pointed at :attr:`DockerProxy.url` (``DockerAdapter(base_url=…)``,
``DOCKER_HOST=…`` for compose). :meth:`DockerProxy.cut` makes the engine unreachable for it —
the socket file disappears and open connections drop, which is what a client sees while dockerd
restarts — and :meth:`DockerProxy.mend` brings it back. The shared engine itself is never touched
(the protocol forbids stopping it), and nothing else on the machine sees the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

from tests.integration.control_helpers import short_dir

__all__ = ["DockerProxy", "ThreadedDockerProxy", "threaded_docker_proxy"]

UPSTREAM = "/var/run/docker.sock"
CHUNK = 64 * 1024


class DockerProxy:
    def __init__(self, upstream: str = UPSTREAM) -> None:
        self.folder = short_dir()
        self.path = self.folder / "docker.sock"
        self.upstream = upstream
        self._server: asyncio.AbstractServer | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    async def mend(self) -> None:
        """(Re)open the socket: the engine answers again."""
        if self._server is None:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def cut(self) -> None:
        """The engine stops answering: no socket, every open connection dropped."""
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            Path(self.path).unlink()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await asyncio.sleep(0.1)  # let the transports finish closing their sockets

    async def close(self) -> None:
        await self.cut()
        shutil.rmtree(self.folder, ignore_errors=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        sides = [writer]
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
            sides.append(up_writer)
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass  # cut(): the connection drops, as when dockerd goes away
        finally:
            for side in sides:
                side.close()
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await side.wait_closed()
            self._pipes.discard(task)


class ThreadedDockerProxy:
    """A :class:`DockerProxy` on its own event loop in a thread, for a test that is not async
    (e.g. one driving the daemon as a process): :meth:`cut` and :meth:`mend` block until done."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.proxy = DockerProxy()
        self.mend()

    @property
    def url(self) -> str:
        return self.proxy.url

    def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def cut(self) -> None:
        self._run(self.proxy.cut())

    def mend(self) -> None:
        self._run(self.proxy.mend())

    def close(self) -> None:
        self._run(self.proxy.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@contextlib.contextmanager
def threaded_docker_proxy() -> Iterator[ThreadedDockerProxy]:
    proxy = ThreadedDockerProxy()
    try:
        yield proxy
    finally:
        proxy.close()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()
    with contextlib.suppress(OSError):
        if sink.can_write_eof():
            sink.write_eof()
