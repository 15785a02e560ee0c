"""Bad deploys as they really look, rolled back end to end: a release that hangs, one whose
backend crash-loops, one whose ``scheduler`` (a worker without HTTP health) crash-loops, and one
whose ``admin-bot`` docker's own health check reports unhealthy.

Real docker engine, real compose, real images (``tests/support/stack.py``); every service has
``restart: always``, so ``CRASH=1`` (exit at start) is a crash loop as production would see it.
The health monitor and the rollback component run with small time values. The hang and the
backend crash loop run under both composes (stopping a container that hangs, recreating one
that restarts, are compose's own work).

The rollback decides when the evidence is there, not on its next cycle: a failing probe wakes it
(counted in samples, never in seconds: timing lives in ``bench/bench_rollback.py``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from brace_watchdog.state import Event
from tests.support.stack import BOTH_COMPOSES, Harness, Stack, rollback_config

pytestmark = pytest.mark.docker


def window_targets(started: Event) -> dict[str, set[str]]:
    """target -> the results in the window the rollback decided on."""
    targets: dict[str, set[str]] = {}
    for _, target, result, _ in started.evidence["decision"]["window"]["samples"]:
        targets.setdefault(target, set()).add(result)
    return targets


async def rolled_back_to(h: Harness) -> str:
    """The release the rollback's own redeploy brought back, once the tracker has seen it."""
    for _ in range(200):
        back = [e for e in h.events("deploy") if "by the rollback" in e.message]
        if back:
            return str(back[0].evidence["to"]["fingerprint"])
        await asyncio.sleep(0.05)
    raise AssertionError("the tracker never saw the rolled-back release")


@BOTH_COMPOSES
async def test_a_hanging_release_is_rolled_back(stack: Stack, tmp_path: Path) -> None:
    stack.deploy("v1")
    # each probe of a hanging backend takes the 2 s timeout: a window that holds 5 of them
    async with Harness(rollback_config(stack, tmp_path, probe_timeout=2.0,
                                       window_seconds=14.0)) as h:
        good = await h.wait_event("release.known_good", timeout=20)
        stack.deploy("v1", {"HEALTH_STATUS": "hang"})
        await h.wait_event("rollback.succeeded", timeout=60)
        started = h.events("rollback.started")[0]
        assert window_targets(started)["backend"] == {"timeout"}
        assert "newest timeout" in started.evidence["decision"]["window"]["reason"]
        back = await rolled_back_to(h)
        assert back == good.evidence["release"]["fingerprint"]


@BOTH_COMPOSES
async def test_a_crash_looping_backend_is_rolled_back(stack: Stack, tmp_path: Path) -> None:
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path)) as h:
        await h.wait_event("release.known_good", timeout=20)
        stack.deploy("v1", {"CRASH": "1"}, wait=False)  # exits at start, restarted forever
        await h.wait_event("rollback.succeeded", timeout=60)
        targets = window_targets(h.events("rollback.started")[0])
        assert "connection_error" in targets.get("backend", set()) or (
            "container_down" in targets.get("service:backend", set())), targets
        down = [e for e in h.events("service.transition") if e.evidence["service"] == "backend"
                and e.evidence["to"] == "container_down"]
        assert down, "the engine's view of the crash loop was recorded"
        assert "crashing at start" in h.notifier.sent[0][1]["logs"]["backend"]


async def test_a_crash_looping_scheduler_is_rolled_back(stack: Stack, tmp_path: Path) -> None:
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path)) as h:
        await h.wait_event("release.known_good", timeout=20)
        assert h.metric("brace_service_up", service="scheduler") == 1
        stack.deploy("v1", env={"scheduler": {"CRASH": "1"}})
        await h.wait_event("rollback.succeeded", timeout=60)
        started = h.events("rollback.started")[0]
        # the verdict of the first sustained target decides, and "backend" and "frontend" sort
        # before "service:…": the scheduler's window alone triggered the rollback
        targets = window_targets(started)
        assert list(targets) == ["service:scheduler"] and "container_down" in targets[
            "service:scheduler"]
        assert "crashing at start" in h.notifier.sent[0][1]["logs"]["scheduler"]


async def test_a_release_docker_reports_unhealthy_is_rolled_back(stack: Stack,
                                                                 tmp_path: Path) -> None:
    # admin-bot has no HTTP health, only docker's own health check (State.Health), which the
    # bad release fails: the container runs and never restarts, docker calls it unhealthy
    stack.healthchecked = ("admin-bot",)
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path)) as h:
        await h.wait_event("release.known_good", timeout=30)
        assert docker_health(stack, "admin-bot") == "healthy"
        stack.deploy("v1", env={"admin-bot": {"SICK": "1"}})
        await h.wait_event("rollback.succeeded", timeout=60)
        started = h.events("rollback.started")[0]
        targets = window_targets(started)
        assert list(targets) == ["service:admin-bot"], targets
        assert "container_unhealthy" in targets["service:admin-bot"]
        assert "container_down" not in targets["service:admin-bot"]  # it never restarted
        unhealthy = [e for e in h.events("service.transition")
                     if e.evidence["service"] == "admin-bot"
                     and e.evidence["to"] == "container_unhealthy"]
        assert unhealthy and "unhealthy" in unhealthy[0].message
    assert 'SICK: "1"' not in stack.compose_file.read_text()  # the known-good config is back


async def test_a_release_whose_health_check_passes_once_is_never_blessed(
        stack: Stack, tmp_path: Path) -> None:
    """admin-bot's check passes once (docker: ``healthy``) and fails from then on: docker says
    ``unhealthy`` only after 4 failures in a row, longer than the 2 s stability time. The
    release must not be known-good before docker's verdict, and is rolled back with a 10 s
    window as with a 3 s one (was: blessed ~3 s after its deploy, so nothing to roll back to,
    under either compose: the promotion does not depend on it, one is run)."""
    stack.healthchecked, stack.health_retries = ("admin-bot",), 4
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path, window_seconds=10.0)) as h:
        good = await h.wait_event("release.known_good", timeout=60)
        assert "health-check verdict of admin-bot" in good.message
        stack.deploy("v1", env={"admin-bot": {"SICK": "after-first"}})
        await h.wait_event("rollback.succeeded", timeout=90)
        started = h.events("rollback.started")[0]
        assert "container_unhealthy" in window_targets(started)["service:admin-bot"]
        blessed = [e.evidence["release"]["fingerprint"] for e in h.events("release.known_good")]
        assert blessed == [good.evidence["release"]["fingerprint"]], blessed
        assert await rolled_back_to(h) == blessed[0]


def docker_health(stack: Stack, service: str) -> str:
    """What the engine says of the service's health check, read the way the daemon does not."""
    found = stack.client.containers.list(filters={
        "label": [f"com.docker.compose.project={stack.project}",
                  f"com.docker.compose.service={service}"]})
    return str(found[0].attrs["State"]["Health"]["Status"])


async def test_the_decision_comes_with_the_sample_that_makes_the_failure_sustained(
        stack: Stack, tmp_path: Path) -> None:
    """A rollback cycle every 8 s, probes every 0.3 s: a decision taken on the next cycle would
    see the whole 3 s window (about 10 samples); woken by each failing probe, the rollback
    decides on the ``min_samples``-th failing sample after the grace period, or at the latest
    one probe later."""
    stack.deploy("v1")
    config = rollback_config(stack, tmp_path, probe_interval=0.3, interval_seconds=8.0,
                             stable_after_seconds=0.5, min_samples=5)
    async with Harness(config) as h:
        await h.wait_event("release.known_good", timeout=40)
        before = time.time()
        stack.deploy("v2")  # blocks this loop: no probe runs until the new backend is up
        await h.wait_event("rollback.succeeded", timeout=60)
        window = h.events("rollback.started")[0].evidence["decision"]["window"]
        assert window["sustained"]
        assert 5 <= window["total"] <= 5 + 1, window
        # the grace ran from the deploy (the new containers' creation, as the engine reports
        # it), not from the look the first failing probe prompted
        first = min(s.ts for s in h.hub.observations.samples("backend")
                    if s.ts > before and s.result != "ok")
        deployed = h.events("deploy")[0].evidence["deployed_at"]
        assert before < deployed < first
