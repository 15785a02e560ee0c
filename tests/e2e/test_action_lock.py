"""One action at a time, under real concurrency: manual and automatic app rollbacks racing each
other, and a gated action (approved through the real control socket) racing an app rollback,
against a real compose stack."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from brace_watchdog.actions.rollback_run import RollbackVerdict
from brace_watchdog.adapters.compose import ComposeCLI
from brace_watchdog.control.server import ControlServer
from brace_watchdog.errors import RefusedError
from tests.integration.control_helpers import TouchAction, add_touch_planner, call, short_dir
from tests.support.stack import Harness, Stack, rollback_config, slow_compose

pytestmark = pytest.mark.docker

SLOW_COMPOSE = ComposeCLI(slow_compose(4), timeout=60)


async def test_racing_manual_and_automatic_rollbacks_start_exactly_one(stack: Stack,
                                                                       tmp_path: Path) -> None:
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path, max_per_day=10)) as h:
        await h.wait_event("release.known_good", timeout=20)
        stack.deploy("v2")
        await h.wait_event("deploy")
        # three operators at once, while the component's own cycle runs too
        outcomes = await asyncio.gather(
            *(h.rollback.manual_rollback(f"op{i}") for i in range(3)), h.rollback.cycle(),
            return_exceptions=True)
        verdicts = [o for o in outcomes if isinstance(o, RollbackVerdict)]
        refused = [o for o in outcomes if isinstance(o, RefusedError)]
        assert not [o for o in outcomes if isinstance(o, BaseException)
                    and not isinstance(o, RefusedError)], outcomes
        assert len(verdicts) <= 1 and len(refused) >= 2, outcomes
        assert all("one action at a time" in str(r) for r in refused)
        await h.wait_event("rollback.succeeded", timeout=60)
        await asyncio.sleep(1)
        assert len(h.store.actions(kind="rollback")) == 1
        assert h.hub.action_lock.holder is None


@asynccontextmanager
async def control(h: Harness, action: TouchAction) -> AsyncIterator[Path]:
    folder = short_dir()
    server = ControlServer(h.hub, socket_path=folder / "c.sock", gated={"touch": action})
    add_touch_planner(server)
    await server.start()
    try:
        yield folder / "c.sock"
    finally:
        await server.stop()
        folder.rmdir()


async def test_a_gated_action_blocks_app_rollbacks_and_vice_versa(stack: Stack,
                                                                   tmp_path: Path) -> None:
    stack.deploy("v1")
    action = TouchAction(tmp_path / "touched", delay=6.0)
    config = rollback_config(stack, tmp_path, max_per_day=10)
    async with Harness(config, compose=SLOW_COMPOSE) as h, control(h, action) as sock:
        await h.wait_event("release.known_good", timeout=20)
        token = (await call(sock, "plan-touch"))[-1]["data"]["token"]
        approved = asyncio.create_task(call(sock, "approve", {"token": token}))
        while h.hub.action_lock.holder is None:
            await asyncio.sleep(0.05)
        stack.deploy("v2")  # the bad release fails while the gated action holds the lock
        with pytest.raises(RefusedError, match=r"approved touch .* is running"):
            await h.rollback.manual_rollback("alice")
        assert (await h.rollback.cycle()).startswith("not deciding while approved touch")
        assert (await approved)[-1]["ok"]
        assert h.store.actions(kind="rollback") == []
        # the lock is free: the automatic rollback runs (its compose waits 4 s) ...
        await h.wait_event("action.rollback.begin", timeout=40)
        token = (await call(sock, "plan-touch"))[-1]["data"]["token"]
        busy = (await call(sock, "approve", {"token": token}))[-1]
        # ... and a gated action approved meanwhile is refused, its token kept
        assert busy["error"]["code"] == "refused", busy
        assert "automatic rollback" in busy["error"]["message"]
        assert (tmp_path / "touched").read_text() == "root->root\n"
        await h.wait_event("rollback.succeeded", timeout=60)
        assert (await call(sock, "approve", {"token": token}))[-1]["ok"]
        assert (tmp_path / "touched").read_text() == "root->root\n" * 2
