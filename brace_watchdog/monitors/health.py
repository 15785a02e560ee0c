"""The health monitor: probes the backend's ``/api/health`` and the frontend over HTTP.

One ``httpx.AsyncClient`` is reused for the daemon's lifetime (keep-alive connections, no
per-probe set-up). Each probe is classified (ok, http_4xx, http_5xx, timeout, connection_error),
exported as metrics, appended to the in-memory window the rollback policy reads, and a change of
result per target is recorded as an event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from brace_watchdog.component import Component
from brace_watchdog.config import Config
from brace_watchdog.monitors.policy import classify_status
from brace_watchdog.observations import ProbeResult, ProbeSample
from brace_watchdog.runtime import Hub

__all__ = ["HealthMonitor", "probe"]


async def probe(client: httpx.AsyncClient, target: str, url: str, *, ok_statuses: tuple[str, ...],
                clock: Callable[[], float] = time.time,
                timer: Callable[[], float] = time.perf_counter) -> ProbeSample:
    """GET ``url`` once and classify the outcome; never raises for network trouble."""
    started = timer()
    result: ProbeResult
    status, detail = 0, ""
    try:
        response = await client.get(url)
        status = response.status_code
        result = classify_status(status, ok_statuses)
    except httpx.TimeoutException:
        result, detail = "timeout", "no answer within the timeout"
    except httpx.TransportError as exc:
        result, detail = "connection_error", f"{type(exc).__name__}: {exc}"[:200]
    return ProbeSample(ts=clock(), target=target, result=result, status=status,
                       latency_seconds=timer() - started, detail=detail)


class HealthMonitor(Component):
    name = "health"

    def __init__(self, hub: Hub, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.hub = hub
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._last_result: dict[str, ProbeResult] = {}
        self._config = hub.config.health

    def interval(self) -> float:
        return self._config.interval_seconds

    def progress_deadline(self) -> float:
        return max(3 * self.interval(), self.interval() + 2 * self._config.timeout_seconds + 10)

    def _targets(self) -> list[tuple[str, str]]:
        targets = [("backend", self._config.url)]
        if self._config.frontend_url:
            targets.append(("frontend", self._config.frontend_url))
        return targets

    async def start(self) -> None:
        self._client = self._new_client()

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self._config.timeout_seconds),
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=4),
            transport=self._transport, follow_redirects=False, trust_env=False,
            headers={"user-agent": "brace-watchdog"})

    def reconfigure(self, config: Config) -> None:
        self._config = config.health
        self.hub.observations.window_size = config.health.window_size

    async def cycle(self) -> str:
        if self._client is None or self._client.timeout.read != self._config.timeout_seconds:
            if self._client is not None:
                await self._client.aclose()
            self._client = self._new_client()
        client = self._client
        samples = await asyncio.gather(*(
            probe(client, target, url, ok_statuses=self._config.ok_statuses, clock=self.hub.clock)
            for target, url in self._targets()))
        for sample in samples:
            self._publish(sample)
        return ", ".join(_describe(s) for s in samples)

    def _publish(self, sample: ProbeSample) -> None:
        metrics, target = self.hub.metrics, sample.target
        self.hub.observations.add_probe(sample)
        metrics.health_up.labels(target=target).set(1 if sample.result == "ok" else 0)
        metrics.health_status_code.labels(target=target).set(sample.status)
        metrics.health_latency.labels(target=target).observe(sample.latency_seconds)
        metrics.health_probes.labels(target=target, result=sample.result).inc()
        metrics.health_last_probe.labels(target=target).set(sample.ts)
        previous = self._last_result.get(target)
        self._last_result[target] = sample.result
        if previous != sample.result:
            self.hub.record(
                "health.transition", f"health.{target}",
                f"{target} {previous or 'unknown'} -> {_describe(sample)}",
                severity="info" if sample.result == "ok" else "warning",
                evidence={"target": target, "from": previous, "to": sample.result,
                          "status": sample.status, "detail": sample.detail})

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _describe(sample: ProbeSample) -> str:
    if sample.result in ("timeout", "connection_error"):
        return f"{sample.target} {sample.result}"
    return f"{sample.target} {sample.result} {sample.status} {sample.latency_seconds * 1000:.0f}ms"
