"""One attempt per bad release: a release that was rolled back and is deployed again is not
rolled back a second time — the redeploy escalates, also after a restart of the components."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.stack import Harness, Stack, rollback_config

pytestmark = pytest.mark.docker


async def test_a_redeployed_bad_release_escalates_instead_of_a_second_rollback(
        stack: Stack, tmp_path: Path) -> None:
    config = rollback_config(stack, tmp_path, cooldown_seconds=0.0, max_per_day=10)
    stack.deploy("v1")
    async with Harness(config) as h:
        await h.wait_event("release.known_good", timeout=20)
        stack.deploy("v2")
        await h.wait_event("rollback.succeeded", timeout=40)
        bad = h.store.actions(kind="rollback")[0].plan["current"]["fingerprint"]
        assert h.store.release(bad).rolled_back_at is not None  # type: ignore[union-attr]
        stack.deploy("v2")  # the pipeline ships the same bad release again
        escalation = await h.wait_event("escalation", timeout=30)
        assert escalation.evidence["reason"] == "rolled_back_before"
        assert escalation.evidence["current_release"] == bad
        await asyncio.sleep(2)
        assert len(h.store.actions(kind="rollback")) == 1
        before_restart = h.store.events(limit=100000)[-1].id
    async with Harness(config) as again:  # a restart keeps the mark
        decision = await again.wait_event("rollback.decision", since_id=before_restart)
        assert decision.evidence["reason"] == "rolled_back_before"
        await asyncio.sleep(2)
        assert len(again.store.actions(kind="rollback")) == 1
    assert stack.running_images()["backend"] == stack.images["v2"]
