"""The health monitor: probes the backend's ``/api/health`` and the frontend over HTTP.

Each target is probed over one kept-alive connection by the lean
:class:`~brace_watchdog.adapters.http_probe.KeepAliveProber` (no per-probe set-up; see that module
for why it is not httpx). :func:`probe` is the same check through an httpx client, for callers
that already hold one (the gated actions' checks). Each probe is classified (ok, http_4xx,
http_5xx, timeout, connection_error), exported as metrics, appended to the in-memory window the
rollback policy reads, and a change of result per target is recorded as an event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from brace_watchdog.adapters.http_probe import HttpProbeError, KeepAliveProber
from brace_watchdog.component import Component
from brace_watchdog.config import Config, HealthConfig
from brace_watchdog.monitors.policy import classify_status
from brace_watchdog.observations import ProbeResult, ProbeSample
from brace_watchdog.runtime import Hub

__all__ = ["HealthMonitor", "StatusGetter", "probe", "probe_with"]



def build_probers(config: HealthConfig) -> dict[str, KeepAliveProber]:
    """One keep-alive prober per health target (the monitor's, and a rollback's verification)."""
    return {target: KeepAliveProber(url, timeout=config.timeout_seconds)
            for target, url in config.targets()}

class StatusGetter(Protocol):
    """Something that GETs one URL: returns the status, raises TimeoutError or HttpProbeError."""

    async def get(self) -> int: ...


class _HttpxGetter:
    """Adapts an ``httpx.AsyncClient`` to :class:`StatusGetter` for callers that hold one."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self._client = client
        self._url = url

    async def get(self) -> int:
        try:
            return (await self._client.get(self._url)).status_code
        except httpx.TimeoutException:
            raise TimeoutError from None
        except httpx.TransportError as exc:
            raise HttpProbeError(f"{type(exc).__name__}: {exc}") from None


async def probe_with(getter: StatusGetter, target: str, *, ok_statuses: tuple[str, ...],
                     clock: Callable[[], float] = time.time,
                     timer: Callable[[], float] = time.perf_counter) -> ProbeSample:
    """One probe through ``getter``, classified; never raises for network trouble."""
    started = timer()
    result: ProbeResult
    status, detail = 0, ""
    try:
        status = await getter.get()
        result = classify_status(status, ok_statuses)
    except TimeoutError:
        result, detail = "timeout", "no answer within the timeout"
    except HttpProbeError as exc:
        result, detail = "connection_error", str(exc)[:200]
    return ProbeSample(ts=clock(), target=target, result=result, status=status,
                       latency_seconds=timer() - started, detail=detail)


async def probe(client: httpx.AsyncClient, target: str, url: str, *, ok_statuses: tuple[str, ...],
                clock: Callable[[], float] = time.time) -> ProbeSample:
    """GET ``url`` once through an httpx client and classify the outcome."""
    return await probe_with(_HttpxGetter(client, url), target, ok_statuses=ok_statuses,
                            clock=clock)


class HealthMonitor(Component):
    name = "health"

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._probers: dict[str, KeepAliveProber] = {}
        self._last_result: dict[str, ProbeResult] = {}
        self._config = hub.config.health
        self._metric_children: dict[str, tuple[Any, ...]] = {}

    def interval(self) -> float:
        return self._config.interval_seconds

    def progress_deadline(self) -> float:
        return max(3 * self.interval(), self.interval() + 2 * self._config.timeout_seconds + 10)

    async def start(self) -> None:
        self._build_probers()

    def _build_probers(self) -> None:
        self._close_probers()
        self._probers = build_probers(self._config)

    def reconfigure(self, config: Config) -> None:
        self._config = config.health
        self.hub.observations.resize(config.health.window_size)
        self._build_probers()

    async def cycle(self) -> str:
        probers = list(self._probers.items())
        if len(probers) == 1:
            samples = [await self._probe(*probers[0])]
        else:
            samples = list(await asyncio.gather(*(self._probe(t, p) for t, p in probers)))
        for sample in samples:
            self._publish(sample)
        return ", ".join(_describe(s) for s in samples)

    async def _probe(self, target: str, prober: KeepAliveProber) -> ProbeSample:
        return await probe_with(prober, target, ok_statuses=self._config.ok_statuses,
                                clock=self.hub.clock)

    def _children(self, target: str) -> tuple[Any, ...]:
        """Labelled metric children, looked up once per target instead of once per probe."""
        children = self._metric_children.get(target)
        if children is None:
            m = self.hub.metrics
            children = (m.health_up.labels(target=target),
                        m.health_status_code.labels(target=target),
                        m.health_latency.labels(target=target),
                        m.health_last_probe.labels(target=target))
            self._metric_children[target] = children
        return children

    def _publish(self, sample: ProbeSample) -> None:
        target = sample.target
        self.hub.observations.add_probe(sample)
        up, status_code, latency, last_probe = self._children(target)
        up.set(1 if sample.result == "ok" else 0)
        status_code.set(sample.status)
        latency.observe(sample.latency_seconds)
        last_probe.set(sample.ts)
        self.hub.metrics.health_probes.labels(target=target, result=sample.result).inc()
        previous = self._last_result.get(target)
        self._last_result[target] = sample.result
        if previous != sample.result:
            self.hub.record(
                "health.transition", f"health.{target}",
                f"{target} {previous or 'unknown'} -> {_describe(sample)}",
                severity="info" if sample.result == "ok" else "warning",
                evidence={"target": target, "from": previous, "to": sample.result,
                          "status": sample.status, "detail": sample.detail})

    def _close_probers(self) -> None:
        for prober in self._probers.values():
            prober.close()
        self._probers = {}

    async def stop(self) -> None:
        self._close_probers()


def _describe(sample: ProbeSample) -> str:
    if sample.result in ("timeout", "connection_error"):
        return f"{sample.target} {sample.result}"
    return f"{sample.target} {sample.result} {sample.status} {sample.latency_seconds * 1000:.0f}ms"
