"""Webhook notifications: a JSON POST to every ``[notify] webhook_urls`` entry, off the loop's path.

:class:`WebhookNotifier` implements :class:`~brace_watchdog.runtime.Notifier`. ``send`` only
schedules a background task and returns at once, so a slow or dead webhook never delays a cycle;
each POST is retried with tenacity (``[notify] retries`` more attempts, exponential wait — both
parameters, so tests shorten them without patching). Results are counted in
``brace_watchdog_notifications_total{result="sent"|"failed"}``. Webhook URLs are secrets: they
never appear in logs, only their host does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from tenacity import AsyncRetrying, RetryError, stop_after_attempt, wait_exponential

from brace_watchdog.config import NotifyConfig, Secret
from brace_watchdog.errors import HttpError
from brace_watchdog.metrics import Metrics
from brace_watchdog.runtime import Notifier, NullNotifier

__all__ = ["WebhookNotifier", "build_notifier"]

log = logging.getLogger("brace_watchdog.notify")


class WebhookNotifier:
    """Fire-and-forget JSON webhooks with bounded retries."""

    def __init__(self, config: NotifyConfig, metrics: Metrics, *, wait_seconds: float = 1.0,
                 max_wait_seconds: float = 30.0, source: str = "brace-watchdog",
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._urls = tuple(config.webhook_urls)
        self._metrics = metrics
        self._retries = config.retries
        self._wait = wait_seconds
        self._max_wait = max_wait_seconds
        self._source = source
        self._client = httpx.AsyncClient(timeout=config.timeout_seconds, transport=transport)
        self._tasks: set[asyncio.Task[None]] = set()

    async def send(self, event: str, payload: dict[str, Any]) -> None:
        """Schedule one POST per webhook and return immediately."""
        body = {"event": event, "source": self._source, "ts": time.time(), **payload}
        for url in self._urls:
            task = asyncio.create_task(self._deliver(url, body), name=f"notify:{event}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: Secret, body: dict[str, Any]) -> None:
        host = urlsplit(url.reveal()).hostname or "?"
        try:
            async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(self._retries + 1), reraise=False,
                    wait=wait_exponential(multiplier=self._wait, max=self._max_wait)):
                with attempt:
                    await self._post(url, body)
        except RetryError as exc:
            self._metrics.notifications.labels(result="failed").inc()
            log.warning("webhook to %s failed after %d attempts: %s", host, self._retries + 1,
                        exc.last_attempt.exception())
            return
        self._metrics.notifications.labels(result="sent").inc()

    async def _post(self, url: Secret, body: dict[str, Any]) -> None:
        try:
            response = await self._client.post(url.reveal(), json=_jsonable(body))
        except httpx.HTTPError as exc:
            raise HttpError(f"webhook unreachable: {type(exc).__name__}") from None
        if response.status_code >= 300:
            raise HttpError(f"webhook answered HTTP {response.status_code}")

    async def drain(self, grace_seconds: float | None = None) -> None:
        """Wait (at most ``grace_seconds``) for pending deliveries (tests, shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_seconds)

    async def close(self, grace_seconds: float = 5.0) -> None:
        """Give pending deliveries ``grace_seconds``, cancel the rest, close the client."""
        await self.drain(grace_seconds)
        for task in list(self._tasks):
            task.cancel()
        await self._client.aclose()


def _jsonable(value: Any) -> Any:
    """Evidence may hold tuples, paths or bytes; webhooks get plain JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def build_notifier(config: NotifyConfig, metrics: Metrics) -> Notifier:
    """The notifier for ``[notify]``: webhooks when URLs are configured, otherwise a no-op."""
    if not config.webhook_urls:
        return NullNotifier()
    return WebhookNotifier(config, metrics)
