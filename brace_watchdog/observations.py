"""Plain value types the monitors publish and the policies read: probes, backups, database, alerts.

Samples come from two sources and share one window per target: HTTP probes of the health
monitor (:data:`PROBE_RESULTS`) and the liveness of every ``[rollback] services`` container as
the engine reports it (:data:`LIVENESS_RESULTS`, targets ``service:<name>``).

A component that must act on a failure at once (the rollback) registers a callback in
:attr:`Observations.failure_listeners`: it is called with every sample whose result is not ``ok``,
as it is added, so a healthy probe costs nothing more.

No I/O here. Monitors produce these; decision code (``monitors/policy.py``, rollback, control)
receives them as values, never the clients that made them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "LIVENESS_RESULTS",
    "PROBE_RESULTS",
    "SAMPLE_RESULTS",
    "BackupFile",
    "BackupScan",
    "DatabaseStatus",
    "FiringAlert",
    "Observations",
    "ProbeResult",
    "ProbeSample",
    "alerts_fresh",
    "alerts_stale_after",
    "service_target",
    "target_service",
]

ProbeResult = Literal["ok", "http_4xx", "http_5xx", "timeout", "connection_error",
                      "container_down", "container_unhealthy", "container_starting"]
PROBE_RESULTS: tuple[ProbeResult, ...] = ("ok", "http_4xx", "http_5xx", "timeout",
                                          "connection_error")
"""Results of an HTTP probe (the health monitor)."""
LIVENESS_RESULTS: tuple[ProbeResult, ...] = ("ok", "container_down", "container_unhealthy",
                                             "container_starting")
"""Results of a service's liveness as the engine reports it (the rollback's release tracker)."""
SAMPLE_RESULTS: tuple[ProbeResult, ...] = (*PROBE_RESULTS, *LIVENESS_RESULTS[1:])
SERVICE_TARGET_PREFIX = "service:"


def service_target(service: str) -> str:
    """The sample target of a compose service's liveness (``service:scheduler``)."""
    return SERVICE_TARGET_PREFIX + service


def target_service(target: str) -> str:
    """The compose service a sample target is about: ``service:scheduler`` → ``scheduler``;
    an HTTP target (``backend``, ``frontend``) is named after its service."""
    return target.removeprefix(SERVICE_TARGET_PREFIX)


@dataclass(frozen=True)
class ProbeSample:
    """One probe of one target: an HTTP target (``backend``, ``frontend``) or a compose
    service's liveness (``service:<name>``, see :func:`service_target`)."""

    ts: float
    target: str
    result: ProbeResult
    status: int = 0
    latency_seconds: float = 0.0
    detail: str = ""


@dataclass(frozen=True)
class BackupFile:
    path: Path
    size: int
    timestamp: float
    timestamp_source: Literal["name", "mtime"]
    valid: bool
    reason: str = ""

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class BackupScan:
    scanned_at: float
    files: tuple[BackupFile, ...]
    max_age_seconds: float
    unverified: int = 0
    """Dumps older than the newest valid one whose header a large first scan has not read yet."""

    @property
    def valid(self) -> tuple[BackupFile, ...]:
        return tuple(f for f in self.files if f.valid)

    @property
    def newest(self) -> BackupFile | None:
        valid = self.valid
        return max(valid, key=lambda f: f.timestamp) if valid else None

    def age_seconds(self, now: float) -> float | None:
        newest = self.newest
        return None if newest is None else max(0.0, now - newest.timestamp)

    def fresh(self, now: float) -> bool:
        age = self.age_seconds(now)
        return age is not None and age <= self.max_age_seconds


FailureKind = Literal["authentication", "refused", "timeout", "other"]


@dataclass(frozen=True)
class DatabaseStatus:
    checked_at: float
    up: bool
    revision: str | None = None
    latency_seconds: float = 0.0
    failure_kind: FailureKind | None = None
    message: str = ""


@dataclass(frozen=True)
class FiringAlert:
    name: str
    severity: str
    labels: tuple[tuple[str, str], ...] = ()
    starts_at: str = ""


def alerts_stale_after(interval_seconds: float, timeout_seconds: float) -> float:
    """How old the last successful Alertmanager poll may be: two polls missed, one timing out."""
    return 2 * interval_seconds + timeout_seconds


def alerts_fresh(up: bool | None, fetched_at: float | None, now: float,
                 stale_after: float) -> bool:
    """Alerts are current only while the last poll succeeded and is at most ``stale_after`` old;
    when Alertmanager is down, or the alerts monitor stopped polling, they are stale."""
    return up is True and fetched_at is not None and now - fetched_at <= stale_after


@dataclass
class Observations:
    """The latest view of the world, shared by components inside one event loop."""

    window_size: int = 360
    probes: dict[str, deque[ProbeSample]] = field(default_factory=dict)
    backups: BackupScan | None = None
    database: DatabaseStatus | None = None
    alerts: tuple[FiringAlert, ...] = ()
    alertmanager_up: bool | None = None
    alerts_fetched_at: float | None = None
    failure_listeners: list[Callable[[ProbeSample], None]] = field(default_factory=list)
    """Called with every sample added whose result is not ``ok`` (no I/O, no awaiting)."""

    def publish_alerts(self, alerts: tuple[FiringAlert, ...], at: float) -> None:
        """A successful Alertmanager poll at ``at`` found ``alerts`` firing."""
        self.alerts, self.alerts_fetched_at, self.alertmanager_up = alerts, at, True

    def current_alerts(self, now: float, stale_after: float) -> tuple[FiringAlert, ...]:
        """The firing alerts, or none while they are stale (:func:`alerts_fresh`): stale alerts
        are shown (``brace_alerts_firing``) but never trigger anything."""
        fresh = alerts_fresh(self.alertmanager_up, self.alerts_fetched_at, now, stale_after)
        return self.alerts if fresh else ()

    def resize(self, window_size: int) -> None:
        """Adopt a new window size, keeping the newest samples of every target."""
        self.window_size = window_size
        self.probes = {target: deque(window, maxlen=window_size)
                       for target, window in self.probes.items()}

    def add_probe(self, sample: ProbeSample) -> None:
        window = self.probes.setdefault(sample.target, deque(maxlen=self.window_size))
        window.append(sample)
        if sample.result != "ok":
            for listener in self.failure_listeners:
                listener(sample)

    def samples(self, target: str | None = None) -> list[ProbeSample]:
        if target is not None:
            return list(self.probes.get(target, ()))
        merged = [s for window in self.probes.values() for s in window]
        return sorted(merged, key=lambda s: s.ts)

    def latest(self, target: str) -> ProbeSample | None:
        window = self.probes.get(target)
        return window[-1] if window else None
