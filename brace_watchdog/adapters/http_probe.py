"""A lean HTTP/1.1 GET prober for the health monitor's hot path, over one kept-alive connection.

The health monitor probes two URLs every few seconds for the daemon's whole life. Measured here
(``bench/bench_footprint.py``), one ``httpx.AsyncClient.get`` costs ~1.7 ms of CPU per cold probe
while writing a pre-built request on a kept-alive asyncio stream costs ~0.26 ms, and the brief's
footprint target (CPU per probe at most 0.5x prometheus-blackbox-exporter) is out of reach with the
former. This prober does exactly what a probe needs and no more: send ``GET``, read the status
line and headers (1xx interim answers skipped, at most ``HEADER_LIMIT``), drain the body
(Content-Length, chunked, or until close) so the connection can be reused, and report the status.
A body past ``BODY_LIMIT`` is not drained: the status is known, so the connection is dropped
instead. The app rollback's verification probes through it too (no TLS context to build for a
plain-HTTP URL, so its first round starts at once); everything else (Alertmanager, webhooks,
the gated actions' checks) uses httpx.

Why not ``h11`` (the sans-IO parser under httpx)? It was tried: the footprint benchmark measured
its exchange at ~0.5 ms CPU per cold probe against ~0.2 ms for a raw stream request, which took
the daemon from 0.46x to 0.85x blackbox_exporter's CPU per probe (target 0.5x);
``bench/bench_footprint.py`` keeps measuring both paths (``probe_path_h11``).

A request on a reused connection that fails before any byte of the answer arrived is retried
once on a fresh connection: the server may have closed an idle keep-alive connection.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

__all__ = ["HttpProbeError", "KeepAliveProber"]

HEADER_LIMIT = 64 * 1024
BODY_LIMIT = 1024 * 1024


class HttpProbeError(Exception):
    """The peer closed, refused, or answered something that is not HTTP/1.x."""


class _StaleConnection(Exception):
    """A reused connection closed before answering; worth one fresh attempt."""


class KeepAliveProber:
    """GETs one URL repeatedly; ``await get()`` returns the status code."""

    def __init__(self, url: str, *, timeout: float, user_agent: str = "brace-watchdog") -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.timeout = timeout
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = parts.netloc.rsplit("@", 1)[-1]
        self._request = (f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\n"
                         f"User-Agent: {user_agent}\r\nAccept: */*\r\n\r\n").encode("latin-1")
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self) -> int:
        """One probe; raises TimeoutError or HttpProbeError, never anything else for the network."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._get_with_one_retry()
        except (TimeoutError, HttpProbeError):
            self.close()
            raise
        except asyncio.LimitOverrunError:
            self.close()
            raise HttpProbeError(f"not an HTTP/1.x answer: headers past {HEADER_LIMIT} bytes"
                                 ) from None
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.close()
            raise HttpProbeError(f"{type(exc).__name__}: {exc}") from None

    async def _get_with_one_retry(self) -> int:
        reused = self._writer is not None
        try:
            return await self._exchange()
        except _StaleConnection:
            self.close()
        if reused:
            try:
                return await self._exchange()
            except _StaleConnection:
                self.close()
        raise HttpProbeError("connection closed before an answer")

    async def _exchange(self) -> int:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(
                self._host, self._port, ssl=self._ssl, limit=HEADER_LIMIT)
        assert self._reader is not None
        self._writer.write(self._request)
        await self._writer.drain()
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _StaleConnection from None
            raise
        status, headers = _parse_head(head)
        while 100 <= status < 200 and status != 101:  # interim answers: the real one follows
            status, headers = _parse_head(await self._reader.readuntil(b"\r\n\r\n"))
        keep_alive = await _drain_body(self._reader, headers)
        if not keep_alive:
            self.close()
        return status

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise HttpProbeError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip().lower()
    if version == "HTTP/1.0" and "keep-alive" not in headers.get("connection", ""):
        headers["connection"] = "close"
    return int(code), headers


async def _drain_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bool:
    """Read and discard the body; True when the connection may be reused (never past
    ``BODY_LIMIT``: a longer body costs the connection, not an unbounded read)."""
    close = "close" in headers.get("connection", "")
    if "chunked" in headers.get("transfer-encoding", ""):
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            total += size
            if total > BODY_LIMIT:
                return False
            await reader.readexactly(size + 2) if size else await _drain_trailers(reader)
            if not size:
                return not close
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length > BODY_LIMIT:
            return False
        await reader.readexactly(length)
        return not close
    await _read_at_most(reader, BODY_LIMIT)
    return False


async def _read_at_most(reader: asyncio.StreamReader, limit: int) -> None:
    """Read until the peer closes, or until ``limit`` bytes were read (then stop)."""
    left = limit
    while left > 0 and (chunk := await reader.read(min(left, 64 * 1024))):
        left -= len(chunk)


async def _drain_trailers(reader: asyncio.StreamReader) -> None:
    while await reader.readuntil(b"\r\n") != b"\r\n":
        pass
