"""Known-good from the daemon's own evidence: what counts as watched healthy, and when it is
enough. Every rule alone, then brute force over sample patterns."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from brace_watchdog.actions.promotion_policy import (
    HEALTH_SAVE_SECONDS,
    Promotion,
    ReleaseHealth,
    health_save_due,
    observe,
    promotion,
)
from brace_watchdog.config import RollbackConfig
from brace_watchdog.observations import ProbeSample
from brace_watchdog.releases import HealthCheck

TARGETS = ("backend", "service:scheduler")
FAILURES = RollbackConfig().failure_results
KINDS = {"o": "ok", "x": "http_5xx", "t": "timeout", "4": "http_4xx", "d": "container_down",
         "s": "container_starting"}


def sample(ts: float, result: str = "o", target: str = "backend") -> ProbeSample:
    return ProbeSample(ts=ts, target=target, result=KINDS[result])  # type: ignore[arg-type]


def both(ts: float, backend: str = "o", scheduler: str = "o") -> list[ProbeSample]:
    return [sample(ts, backend), sample(ts, scheduler, "service:scheduler")]


def fold(health: ReleaseHealth, samples: list[ProbeSample], now: float, *,
         max_gap: float = 5.0, alert: bool = False) -> ReleaseHealth:
    return observe(health, samples, now=now, targets=TARGETS, failure_results=FAILURES,
                   max_gap_seconds=max_gap, alert_firing=alert)


def run(pattern: list[list[ProbeSample]], *, step: float = 1.0) -> ReleaseHealth:
    """Fold one batch of samples per cycle, a cycle every ``step`` seconds from t=0."""
    health = ReleaseHealth("fp", observed_until=0.0)
    for i, batch in enumerate(pattern, start=1):
        health = fold(health, batch, now=i * step)
    return health


def test_healthy_samples_accumulate_watched_time() -> None:
    health = run([both(1), both(2), both(3)])
    assert (health.healthy_seconds, health.watched_seconds, health.ok_samples) == (3.0, 3.0, 6)
    assert health.observed_until == 3
    assert promotion(health, stable_after_seconds=3).ready
    assert not promotion(health, stable_after_seconds=3.5).ready


def test_evidence_waits_for_every_target() -> None:
    """A probe still hanging is no evidence: only the liveness reported, nothing advances."""
    health = fold(ReleaseHealth("fp", 0.0), [sample(1, "o", "service:scheduler")], now=1)
    assert health == ReleaseHealth("fp", 0.0)
    later = fold(health, [sample(1, "o", "service:scheduler"), sample(2, "t"),
                          sample(2, "o", "service:scheduler")], now=2)
    assert later.healthy_seconds == 0 and later.last_bad_at == 2


def test_evidence_advances_only_to_the_slowest_target() -> None:
    samples = [sample(1), sample(2), sample(3), sample(1.5, "o", "service:scheduler")]
    health = fold(ReleaseHealth("fp", 0.0), samples, now=3)
    assert health.observed_until == 1.5 and health.ok_samples == 2
    again = fold(health, [*samples, sample(3, "o", "service:scheduler")], now=3)
    assert again.observed_until == 3 and again.ok_samples == 5  # nothing counted twice


@pytest.mark.parametrize("bad", ["x", "t", "4", "d", "s"])
def test_any_sample_that_is_not_ok_restarts_the_clock(bad: str) -> None:
    health = run([both(1), both(2), both(3, scheduler=bad), both(4)])
    assert health.healthy_seconds == 1.0
    assert health.last_bad_at == 3
    failing = KINDS[bad] in FAILURES
    assert (health.failing_samples, health.other_samples) == ((1, 0) if failing else (0, 1))
    assert health.last_failing_at == (3 if failing else None)


def test_a_firing_trigger_alert_restarts_the_clock_even_without_samples() -> None:
    health = run([both(1), both(2)])
    alerted = fold(health, [], now=2.5, alert=True)
    assert alerted.healthy_seconds == 0 and alerted.last_bad_at == 2.5
    assert fold(health, both(3), now=3, alert=True).healthy_seconds == 0


def test_a_gap_longer_than_max_gap_is_not_watched_time() -> None:
    health = run([both(1), both(2)])
    resumed = fold(health, both(30), now=30)
    assert resumed.healthy_seconds == 2.0 and resumed.watched_seconds == 2.0
    assert resumed.observed_until == 30
    assert fold(resumed, both(31), now=31).healthy_seconds == 3.0


def test_a_restart_resumes_the_evidence_without_the_time_it_missed() -> None:
    """The tracker moves observed_until to 'now' on start: the repro of the issue — 3 s watched
    healthy, a restart, the first ok probe after it — is 3 s and a bit, not promotion."""
    before = run([both(1), both(2), both(3)])
    restarted = replace(ReleaseHealth.from_dict(before.to_dict()), observed_until=9.0)
    after = fold(restarted, both(9.2), now=9.2)
    assert after.healthy_seconds == pytest.approx(3.2)
    assert not promotion(after, stable_after_seconds=9).ready


def test_samples_from_before_observed_until_are_ignored() -> None:
    health = fold(ReleaseHealth("fp", 10.0), [*both(5, "x", "d"), *both(11)], now=11)
    assert (health.healthy_seconds, health.failing_samples, health.ok_samples) == (1.0, 0, 2)


def test_samples_of_other_targets_are_ignored() -> None:
    health = fold(ReleaseHealth("fp", 0.0), [*both(1), sample(1, "x", "frontend")], now=1)
    assert health.failing_samples == 0 and health.healthy_seconds == 1.0


def test_no_targets_is_no_evidence() -> None:
    health = observe(ReleaseHealth("fp", 0.0), both(1), now=1, targets=(),
                     failure_results=FAILURES, max_gap_seconds=5)
    assert health == ReleaseHealth("fp", 0.0)


def test_promotion_needs_an_ok_sample() -> None:
    assert promotion(ReleaseHealth("fp", 0.0, healthy_seconds=99), stable_after_seconds=1
                     ).reason == "no ok sample watched yet"
    verdict = promotion(ReleaseHealth("fp", 0.0, healthy_seconds=4, ok_samples=3),
                        stable_after_seconds=10)
    assert not verdict.ready and verdict.reason == "watched healthy for 4s of 10s"


def test_round_trip_through_a_dict() -> None:
    health = run([both(1), both(2, "x")])
    assert ReleaseHealth.from_dict({**health.to_dict(), "unknown": 1}) == health


@pytest.mark.parametrize("pattern", ["".join(p) for p in itertools.product("ox", repeat=6)])
def test_every_six_cycle_pattern_matches_the_definition(pattern: str) -> None:
    """Brute force: healthy time = the cycles since the last bad one (each cycle 1 s)."""
    health = run([both(i, scheduler=ch) for i, ch in enumerate(pattern, start=1)])
    last_bad = pattern.rfind("x") + 1
    assert health.healthy_seconds == len(pattern) - last_bad
    assert health.watched_seconds == len(pattern)
    assert promotion(health, stable_after_seconds=3).ready is (len(pattern) - last_bad >= 3)


def test_evidence_is_saved_at_once_when_something_went_wrong_else_once_a_minute() -> None:
    """Healthy cycles are batched (a crash loses at most HEALTH_SAVE_SECONDS of healthy time,
    which only delays a promotion); anything bad, a first sighting or another release at once."""
    saved = run([both(t) for t in range(1, 4)])
    assert health_save_due(None, saved)
    assert health_save_due(saved, replace(saved, fingerprint="other"))
    assert not health_save_due(saved, saved)
    steps = [[both(t)] for t in range(4, 4 + int(HEALTH_SAVE_SECONDS) + 2)]
    healthy = [saved]
    for batch in steps:
        healthy.append(fold(healthy[-1], batch[0], now=batch[0][0].ts))
    due = [health_save_due(saved, h) for h in healthy]
    first = due.index(True)
    assert not any(due[:first])
    assert healthy[first].watched_seconds - saved.watched_seconds >= HEALTH_SAVE_SECONDS
    assert healthy[first - 1].watched_seconds - saved.watched_seconds < HEALTH_SAVE_SECONDS
    for bad in ("x", "t", "4", "d", "s"):
        worse = fold(saved, both(4, bad), now=4)
        assert health_save_due(saved, worse), bad
    assert health_save_due(saved, fold(saved, both(4), now=4, alert=True))


# -- docker health checks: the engine's verdict now, and evidence covering a full verdict --------

STATUSES = ("none", "starting", "healthy", "unhealthy")
# healthy seconds watched, against stable_after_seconds=10 and a check needing 20 s to a verdict
EVIDENCE = {"no ok sample": (30.0, 0), "short of stable": (5.0, 9),
            "stable, short of a verdict": (15.0, 9), "covers a verdict": (20.0, 9)}


def checks_of(*statuses: str, verdict: float = 20.0) -> tuple[HealthCheck, ...]:
    return tuple(HealthCheck(f"svc{i}", status, verdict)  # type: ignore[arg-type]
                 for i, status in enumerate(statuses) if status != "none")


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("evidence", list(EVIDENCE))
def test_promotion_by_health_check_status_and_evidence(status: str, evidence: str) -> None:
    healthy, ok = EVIDENCE[evidence]
    health = ReleaseHealth("fp", 0.0, healthy_seconds=healthy, ok_samples=ok)
    verdict = promotion(health, stable_after_seconds=10, checks=checks_of(status))
    if status in ("starting", "unhealthy"):
        word = "is still" if status == "starting" else "says"
        assert verdict == Promotion(False, f"the docker health check of svc0 {word} {status}")
    elif evidence == "no ok sample":
        assert verdict == Promotion(False, "no ok sample watched yet")
    elif status == "none":  # no check: the stability time alone
        assert verdict.ready is (healthy >= 10), verdict
    else:
        assert verdict.ready is (evidence == "covers a verdict"), verdict
        assert "a full health-check verdict of svc0" in verdict.reason


@pytest.mark.parametrize("statuses", list(itertools.product(STATUSES, repeat=3)))
def test_one_check_not_healthy_holds_the_release_back(statuses: tuple[str, ...]) -> None:
    """Three services, every combination: ready only when no check is starting or unhealthy;
    an unhealthy one is named before a starting one, every service so named is listed."""
    health = ReleaseHealth("fp", 0.0, healthy_seconds=99, ok_samples=9)
    verdict = promotion(health, stable_after_seconds=10, checks=checks_of(*statuses))
    worst = next((s for s in ("unhealthy", "starting") if s in statuses), None)
    assert verdict.ready is (worst is None)
    if worst is not None:
        named = [f"svc{i}" for i, s in enumerate(statuses) if s == worst]
        assert f"of {', '.join(named)} " in verdict.reason and worst in verdict.reason


@pytest.mark.parametrize(("stable", "verdicts", "needed"), [
    (10, (), 10), (10, (4.0,), 10), (10, (10.0,), 10), (10, (4.0, 25.0, 12.0), 25),
    (0, (3.0,), 3), (0, (), 0)])
def test_the_slowest_verdict_or_the_stability_time_whichever_is_longer(
        stable: float, verdicts: tuple[float, ...], needed: float) -> None:
    checks = tuple(HealthCheck(f"svc{i}", "healthy", v) for i, v in enumerate(verdicts))
    for healthy in (needed - 0.5, needed):
        health = ReleaseHealth("fp", 0.0, healthy_seconds=healthy, ok_samples=1)
        assert promotion(health, stable_after_seconds=stable, checks=checks).ready is (
            healthy >= needed)
