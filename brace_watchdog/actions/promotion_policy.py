"""Pure rules of known-good: a release's health evidence, and when it earns promotion.

:class:`ReleaseHealth` is what the daemon has *itself watched* of one release — aggregates, not
samples: how long it has been observed healthy since the last bad sample, how long it was
watched at all, sample counts, the last bad and failing sample. The release tracker persists it
per release in the state store after every cycle, so the evidence survives a restart.

:func:`observe` folds new samples in. Evidence only advances to the time *every* required
target (the HTTP probes and each service's liveness, ``service:<name>``) has reported: a probe
still hanging is no evidence, so a release whose backend hangs never looks healthy meanwhile.
A span counts as watched only when it is not longer than ``max_gap_seconds``; and the tracker
moves ``observed_until`` to "now" whenever it (re)starts watching a release (daemon start, a
redeploy of an older release), so time the daemon did not watch never counts. Any sample that
is not healthy (the one rule of :mod:`~brace_watchdog.monitors.policy`) or a firing trigger
alert restarts the healthy clock.

:func:`promotion` decides: no docker health check of the release ``starting`` or ``unhealthy``
now (the engine's word at the promotion, not only the samples before it), at least one ``ok``
sample, and ``stable_after_seconds`` of watched healthy time — or, when longer, the time each
health check needs to reach a verdict (``retries`` * (``interval`` + ``timeout``)), so that a
container whose check passed once and fails from then on is called ``unhealthy`` by docker
before it could be blessed, however short the stability time or long the rollback window.
No I/O, no clock; tested exhaustively in ``tests/unit/test_promotion_policy.py``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from brace_watchdog.monitors.policy import is_failing, is_healthy
from brace_watchdog.observations import ProbeSample
from brace_watchdog.releases import HealthCheck

__all__ = ["HEALTH_SAVE_SECONDS", "Promotion", "ReleaseHealth", "health_save_due", "observe",
           "promotion"]


@dataclass(frozen=True)
class ReleaseHealth:
    """The daemon's own evidence about one release (persisted per fingerprint)."""

    fingerprint: str
    observed_until: float
    healthy_seconds: float = 0.0
    watched_seconds: float = 0.0
    ok_samples: int = 0
    failing_samples: int = 0
    other_samples: int = 0
    last_bad_at: float | None = None
    last_failing_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReleaseHealth:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


HEALTH_SAVE_SECONDS = 60.0
"""Longest stretch of watched, uneventful time the evidence goes without being persisted."""


def health_save_due(saved: ReleaseHealth | None, health: ReleaseHealth) -> bool:
    """Whether ``health`` must be persisted now: nothing saved of it yet, a failing or other bad
    sample or an alert since the last save, or ``HEALTH_SAVE_SECONDS`` of watched time."""
    if saved is None or saved.fingerprint != health.fingerprint:
        return True
    bad = (health.failing_samples, health.other_samples, health.last_bad_at,
           health.last_failing_at)
    if bad != (saved.failing_samples, saved.other_samples, saved.last_bad_at,
               saved.last_failing_at):
        return True
    return health.watched_seconds - saved.watched_seconds >= HEALTH_SAVE_SECONDS


def observe(health: ReleaseHealth, samples: Iterable[ProbeSample], *, now: float,
            targets: Collection[str], failure_results: Collection[str], max_gap_seconds: float,
            alert_firing: bool = False) -> ReleaseHealth:
    """``health`` with the samples up to the time every target has reported folded in."""
    relevant = [s for s in samples if s.target in targets and health.observed_until < s.ts]
    newest = {s.target: s.ts for s in sorted(relevant, key=lambda s: s.ts)}
    if alert_firing:
        health = replace(health, healthy_seconds=0.0, last_bad_at=now)
    if not targets or set(targets) - set(newest):
        return health  # some target has not reported since: no evidence yet
    until = min(*newest.values(), now)
    span = [s for s in relevant if s.ts <= until]
    ok = sum(1 for s in span if is_healthy(s))
    failing = [s.ts for s in span if is_failing(s, failure_results)]
    bad = [s.ts for s in span if not is_healthy(s)]
    gap = until - health.observed_until
    watched = gap if gap <= max_gap_seconds else 0.0
    healthy = 0.0 if bad or alert_firing else health.healthy_seconds + watched
    return replace(health, observed_until=until, healthy_seconds=healthy,
                   watched_seconds=health.watched_seconds + watched,
                   ok_samples=health.ok_samples + ok,
                   failing_samples=health.failing_samples + len(failing),
                   other_samples=health.other_samples + len(bad) - len(failing),
                   last_bad_at=max(bad, default=health.last_bad_at),
                   last_failing_at=max(failing, default=health.last_failing_at))


@dataclass(frozen=True)
class Promotion:
    ready: bool
    reason: str


def promotion(health: ReleaseHealth, *, stable_after_seconds: float,
              checks: Sequence[HealthCheck] = ()) -> Promotion:
    """Known-good needs every health check of ``checks`` ``healthy`` now, an ``ok`` sample,
    and watched healthy time of ``stable_after_seconds`` or, when longer, of the slowest
    check's verdict time."""
    for status in ("unhealthy", "starting"):
        named = sorted(c.service for c in checks if c.status == status)
        if named:
            return Promotion(False, f"the docker health check of {', '.join(named)} "
                                    f"{'says' if status == 'unhealthy' else 'is still'} {status}")
    if health.ok_samples == 0:
        return Promotion(False, "no ok sample watched yet")
    slowest = max(checks, key=lambda c: c.verdict_seconds, default=None)
    needed = stable_after_seconds
    covers = ""
    if slowest is not None and slowest.verdict_seconds > stable_after_seconds:
        needed = slowest.verdict_seconds
        covers = f" (a full health-check verdict of {slowest.service})"
    if health.healthy_seconds < needed:
        return Promotion(False, f"watched healthy for {health.healthy_seconds:.0f}s of "
                                f"{needed:.0f}s{covers}")
    return Promotion(True, f"watched unchanged and healthy for {health.healthy_seconds:.0f}s"
                           f"{covers}, no bad sample since")
