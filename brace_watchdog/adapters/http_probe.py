"""A lean HTTP/1.1 GET prober for the health monitor's hot path, over one kept-alive connection.

The health monitor probes two URLs every few seconds for the daemon's whole life. Measured here
(``bench/bench_footprint.py``), one ``httpx.AsyncClient.get`` costs ~1.7 ms of CPU per cold probe
while a request on a kept-alive asyncio stream costs a fraction of that, and the brief's footprint
target (CPU per probe at most 0.5x prometheus-blackbox-exporter) is out of reach with the former.
This prober does exactly what a probe needs and no more: send ``GET``, read the status, drain the
body so the connection can be reused, and report the status. The HTTP/1.1 parsing and framing
(Content-Length, chunked, close-delimited, HTTP/1.0, 1xx, header size limit) is ``h11``'s — the
sans-IO parser httpx itself is built on. A body larger than ``BODY_LIMIT`` is not drained: the
status is already known, so the connection is closed instead. Everything else (Alertmanager,
webhooks, verification) uses httpx.

A request on a reused connection that fails before any byte of the answer arrived is retried
once on a fresh connection: the server may have closed an idle keep-alive connection.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

import h11

__all__ = ["HttpProbeError", "KeepAliveProber"]

HEADER_LIMIT = 64 * 1024
BODY_LIMIT = 1024 * 1024
_READ_SIZE = 64 * 1024
_END = h11.EndOfMessage()


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
        self._request = h11.Request(method="GET", target=path, headers=[
            ("Host", host_header), ("User-Agent", user_agent), ("Accept", "*/*")])
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._http: h11.Connection | None = None

    async def get(self) -> int:
        """One probe; raises TimeoutError or HttpProbeError, never anything else for the network."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._get_with_one_retry()
        except (TimeoutError, HttpProbeError):
            self.close()
            raise
        except (OSError, h11.LocalProtocolError, ValueError) as exc:
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
                self._host, self._port, ssl=self._ssl)
            self._http = h11.Connection(h11.CLIENT, max_incomplete_event_size=HEADER_LIMIT)
        assert self._reader is not None and self._http is not None
        self._writer.write(self._http.send(self._request) + self._http.send(_END))
        await self._writer.drain()
        status, reusable = await _read_answer(self._reader, self._http)
        if reusable:
            self._http.start_next_cycle()
        else:
            self.close()
        return status

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
        self._http = None


async def _read_answer(reader: asyncio.StreamReader, http: h11.Connection) -> tuple[int, bool]:
    """The final status and whether the connection may carry the next request."""
    status, body, answered = 0, 0, False
    while True:
        try:
            event = http.next_event()
        except h11.RemoteProtocolError as exc:
            raise HttpProbeError(f"not an HTTP/1.x answer: {exc}") from None
        if event is h11.NEED_DATA:
            data = await reader.read(_READ_SIZE)
            if not data and not answered:
                raise _StaleConnection
            answered = True
            http.receive_data(data)
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += len(event.data)
            if body > BODY_LIMIT:
                return status, False
        elif isinstance(event, h11.EndOfMessage):
            return status, http.our_state is h11.DONE and http.their_state is h11.DONE
        elif isinstance(event, h11.ConnectionClosed):
            raise HttpProbeError("connection closed in the middle of the answer")
