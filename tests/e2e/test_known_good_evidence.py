"""Known-good survives a restart only as evidence the daemon watched: the real daemon process,
stopped and started again against a real compose stack, never promotes a release on the strength
of time it did not watch (the repro of issue 10: a release seen for a few seconds, a restart,
then its first ok probe promoted it, and its failures later were "not a deploy problem").
Nor is a release promoted while a trigger alert fires (a real Alertmanager), however healthy
its probes look."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from brace_watchdog.state import Event, StateStore
from tests.support.alertmanager import start_alertmanager
from tests.support.stack import Harness, Stack, rollback_config, write_daemon_config

pytestmark = pytest.mark.docker
STABLE_AFTER = 8.0


def run_daemon(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "brace_watchdog", "run", "--config",
                             str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(daemon: subprocess.Popen[bytes]) -> None:
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0


def events(state: Path, *kinds: str, since_id: int = 0) -> list[Event]:
    store = StateStore(state).open()
    try:
        return store.events(kinds=kinds, since_id=since_id, limit=1000)
    finally:
        store.close()


async def next_event(state: Path, kind: str, *, since_id: int = 0,
                     timeout: float = 40) -> Event:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(events, state, kind, since_id=since_id)
        if found:
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {kind} event after #{since_id} within {timeout}s: "
                         f"{[(e.kind, e.message) for e in events(state, since_id=since_id)]}")


async def test_a_restart_never_promotes_a_release_it_did_not_watch(stack: Stack,
                                                                   tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    config = write_daemon_config(stack, tmp_path, stable_after_seconds=STABLE_AFTER)
    stack.deploy("v1")
    daemon = run_daemon(config)
    try:
        good = await next_event(state, "release.known_good")
        stack.deploy("v1", {"OVERRIDE": "release2"})  # healthy for now
        deploy = await next_event(state, "deploy", since_id=good.id)
        await asyncio.sleep(1.0)  # watched healthy for about a second
    finally:
        stop(daemon)
    await asyncio.sleep(STABLE_AFTER + 2)  # healthy, unwatched, longer than stable_after
    daemon = run_daemon(config)
    try:
        started = await next_event(state, "daemon.started", since_id=deploy.id)
        await next_event(state, "health.transition", since_id=started.id)  # first ok probe
        await asyncio.sleep(1.5)  # the old code promoted on the first cycle after it
        stack.break_health(500, "release2")  # now the new release fails (and only it)
        done = await next_event(state, "rollback.succeeded", since_id=started.id)
    finally:
        stop(daemon)
    promoted = [e.evidence["release"]["fingerprint"] for e in events(state, "release.known_good")]
    assert promoted == [good.evidence["release"]["fingerprint"]]
    bad = deploy.evidence["to"]["fingerprint"]
    store = StateStore(state).open()
    try:
        health = store.release_health(bad)
        action = store.actions(kind="rollback")[0]
    finally:
        store.close()
    assert health is not None and health["failing_samples"] > 0
    assert 0 < health["watched_seconds"] < STABLE_AFTER
    assert action.plan["target"]["fingerprint"] == promoted[0]
    assert done.action_id == action.id


async def test_no_promotion_while_a_trigger_alert_fires(stack: Stack, tmp_path: Path) -> None:
    alertmanager = start_alertmanager(tmp_path / "alertmanager")
    try:
        alertmanager.post(alertname="BraceBackendErrors", severity="critical")
        stack.deploy("v1")
        config = rollback_config(stack, tmp_path, alertmanager_url=alertmanager.url,
                                 trigger_alerts=["BraceBackendErrors"])
        async with Harness(config, extra=("alerts",)) as h:
            await h.wait_event("alert.firing", timeout=20)
            # watched with every probe and every service ok for 3x stable_after_seconds (2 s)
            while (h.rollback.tracker.health is None
                   or h.rollback.tracker.health.watched_seconds < 6.0):
                await asyncio.sleep(0.1)
            health = h.rollback.tracker.health
            assert health.ok_samples > 0 and health.failing_samples == 0, health
            assert health.healthy_seconds == 0.0, health  # the alert keeps resetting the clock
            assert h.events("release.known_good") == []
            alertmanager.post(alertname="BraceBackendErrors", severity="critical",
                              ends_in=-timedelta(seconds=1))  # resolved
            resolved = await h.wait_event("alert.resolved", timeout=20)
            promoted = await h.wait_event("release.known_good", timeout=30)
            assert promoted.id > resolved.id
    finally:
        alertmanager.stop()
