"""The keep-alive prober against real loopback servers that answer in every HTTP/1.x framing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from brace_watchdog.adapters.http_probe import HEADER_LIMIT, HttpProbeError, KeepAliveProber

Reply = Callable[[int], bytes]


@asynccontextmanager
async def raw_server(reply: Reply, *, close_after: int = 0) -> AsyncIterator[dict[str, int]]:
    """Answers each request with ``reply(n)``; closes a connection after ``close_after`` answers."""
    stats = {"connections": 0, "requests": 0}
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats["connections"] += 1
        writers.append(writer)
        answered = 0
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                stats["requests"] += 1
                writer.write(reply(stats["requests"]))
                await writer.drain()
                answered += 1
                if close_after and answered >= close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    stats["port"] = server.sockets[0].getsockname()[1]
    try:
        async with server:
            yield stats
    finally:
        for writer in writers:
            writer.close()
        await asyncio.sleep(0.01)


def fixed(data: bytes) -> Reply:
    return lambda n: data


async def probe_n(port: int, n: int, path: str = "/api/health") -> list[int]:
    prober = KeepAliveProber(f"http://127.0.0.1:{port}{path}", timeout=2)
    try:
        return [await prober.get() for _ in range(n)]
    finally:
        prober.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n3;x=y\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nTrailer: 1\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
])
async def test_framings_that_keep_the_connection(answer: bytes) -> None:
    async with raw_server(fixed(answer)) as stats:
        statuses = await probe_n(stats["port"], 5)
    assert statuses[0] in (200, 204) and len(set(statuses)) == 1
    assert stats["connections"] == 1


async def test_connection_close_and_http10_reconnect_each_time() -> None:
    for answer in (b"HTTP/1.1 503 Unavailable\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx",
                   b"HTTP/1.0 500 Oops\r\n\r\nbody until close"):
        async with raw_server(fixed(answer), close_after=1) as stats:
            statuses = await probe_n(stats["port"], 3)
        assert statuses[0] >= 500 and len(set(statuses)) == 1
        assert stats["connections"] == 3


async def test_server_closing_an_idle_connection_is_retried_once() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    async with raw_server(fixed(answer), close_after=1) as stats:
        prober = KeepAliveProber(f"http://127.0.0.1:{stats['port']}/", timeout=2)
        assert await prober.get() == 200
        await asyncio.sleep(0.05)  # the server has closed the kept connection by now
        assert await prober.get() == 200
        prober.close()
    assert stats["connections"] == 2


async def test_garbage_and_refusal_are_probe_errors() -> None:
    async with raw_server(fixed(b"SSH-2.0-OpenSSH\r\n\r\n")) as stats:
        with pytest.raises(HttpProbeError, match="not an HTTP"):
            await probe_n(stats["port"], 1)
        port = stats["port"]
    with pytest.raises(HttpProbeError):
        await probe_n(port, 1)


async def test_silence_is_a_timeout() -> None:
    async with raw_server(lambda n: b"") as stats:
        prober = KeepAliveProber(f"http://127.0.0.1:{stats['port']}/", timeout=0.3)
        with pytest.raises(TimeoutError):
            await prober.get()
        prober.close()


def test_only_http_urls() -> None:
    with pytest.raises(ValueError, match="not an http"):
        KeepAliveProber("ftp://example/", timeout=1)


async def test_an_endless_body_is_not_drained_past_the_limit() -> None:
    """A 200 whose close-delimited body never ends: the status counts, the connection goes."""
    streams: list[asyncio.StreamWriter] = []

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        streams.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        chunk = b"x" * 65536
        with contextlib.suppress(ConnectionError):
            while not writer.is_closing():
                writer.write(chunk)
                await writer.drain()

    server = await asyncio.start_server(endless, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        prober = KeepAliveProber(f"http://127.0.0.1:{port}/", timeout=30)
        assert await prober.get() == 200
        assert await prober.get() == 200           # on a new connection: the old one was dropped
        prober.close()
        for writer in streams:
            writer.close()
    assert len(streams) == 2


async def test_oversized_headers_are_a_probe_error() -> None:
    answer = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (3 * HEADER_LIMIT) + b"\r\n\r\n"
    async with raw_server(fixed(answer)) as stats:
        with pytest.raises(HttpProbeError, match="not an HTTP"):
            await probe_n(stats["port"], 1)


async def test_informational_answers_are_skipped() -> None:
    answer = (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
              b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    async with raw_server(fixed(answer)) as stats:
        assert await probe_n(stats["port"], 3) == [200, 200, 200]
    assert stats["connections"] == 1
