"""Attribution: the daemon rolls back only failures it can blame on the deploy. A database
outage (a real PostgreSQL, stopped), failures that were already there before the deploy and
failures that begin long after it escalate with their reason — in the event and in the
notification (the daemon's webhook notifier posting to a real receiver, for the last) — and
change nothing. (The engine-down guard is in ``test_rollback_outage.py``, beside its proxy.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.pg import PgCluster
from tests.support.stack import Harness, Stack, rollback_config
from tests.support.webhooks import webhook_receiver

pytestmark = pytest.mark.docker


async def test_a_database_outage_escalates_instead_of_rolling_back(
        stack: Stack, tmp_path: Path, pg_cluster: PgCluster) -> None:
    pg_cluster.psql("create table alembic_version (version_num varchar(32) primary key);"
                    "insert into alembic_version values ('aaa111');")
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path, dsn=pg_cluster.dsn()),
                       extra=("database",)) as h:
        await h.wait_event("release.known_good", timeout=30)
        pg_cluster.pg_ctl("stop", "-m", "immediate", "-w")
        await h.wait_event("database.down", timeout=20)
        stack.deploy("v2")  # a bad deploy in the middle of the outage
        escalation = await h.wait_event("escalation", timeout=30)
        assert escalation.evidence["reason"] == "database_down"
        assert escalation.message.startswith("escalated: the database is down (refused")
        await asyncio.sleep(1.5)
        assert h.store.actions(kind="rollback") == []
        assert stack.running_images()["backend"] == stack.images["v2"]
        sent = [payload for event, payload in h.notifier.sent if event == "escalation"]
        assert sent[0]["reason"] == "database_down"
        assert "database is down" in sent[0]["message"]


async def test_failures_that_predate_the_deploy_escalate(stack: Stack, tmp_path: Path) -> None:
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path)) as h:
        await h.wait_event("release.known_good", timeout=20)
        stack.break_health(500)  # every release fails: not the deploy's doing
        await h.wait_event("escalation", timeout=20)  # known_good_running
        # a deploy during the outage, failing as well; in a thread, so that the probes go on
        # while compose runs, as they would in the daemon's own process
        await asyncio.to_thread(stack.deploy, "v1", {"RELEASE": "2"})
        deploy = await h.wait_event("deploy")
        assert deploy.evidence["failing_before"] is True
        while len(h.events("escalation")) < 2:
            await asyncio.sleep(0.05)
        escalation = h.events("escalation")[1]
        assert escalation.evidence["reason"] == "failures_predate_deploy"
        assert "failures predate the deploy" in escalation.message
        await asyncio.sleep(1.5)
        assert h.store.actions(kind="rollback") == []
        assert [p["reason"] for e, p in h.notifier.sent if e == "escalation"] == [
            "known_good_running", "failures_predate_deploy"]


async def test_failures_long_after_the_deploy_escalate(stack: Stack, tmp_path: Path) -> None:
    # max_deploy_age_seconds = 1: failures cannot be sustained sooner than the grace (0.5 s)
    # plus 4 more probe intervals (0.2 s) after the deploy, so any deploy here is "too old"
    stack.deploy("v1")
    with webhook_receiver() as receiver:
        config = rollback_config(stack, tmp_path, max_deploy_age_seconds=1.0,
                                 webhook_url=receiver.url().reveal())
        async with Harness(config) as h:
            await h.wait_event("release.known_good", timeout=20)
            stack.deploy("v2")
            escalation = await h.wait_event("escalation", timeout=30)
            assert escalation.evidence["reason"] == "deploy_too_old"
            assert "older than max_deploy_age_seconds = 1" in escalation.message
            decision = h.events("rollback.decision")[0]
            assert decision.evidence["reason"] == "deploy_too_old"
            await asyncio.sleep(1.5)
            assert h.store.actions(kind="rollback") == []
        sent = [body for body in receiver.bodies if body["event"] == "escalation"]
        assert [body["reason"] for body in sent] == ["deploy_too_old"]
        assert "failures this late are not attributed to it" in sent[0]["message"]
    assert stack.running_images()["backend"] == stack.images["v2"]


async def test_failures_while_the_deploy_replaces_the_backend_are_the_deploys(
        stack: Stack, tmp_path: Path) -> None:
    """Compose stops the old backend before it starts the new one, and the tracker may see the
    new release later still (seconds, on a loaded engine): failures that began after the old
    release was last seen whole are the deploy's. Here the gap is stretched until the failures
    are sustained (the daemon escalates meanwhile: nothing it can blame); the deploy that ends
    it is still rolled back, not escalated as failing before it."""
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path)) as h:
        await h.wait_event("release.known_good", timeout=60)
        await asyncio.to_thread(stack.compose, "stop", "backend")
        gap = await h.wait_event("escalation", timeout=30)
        assert gap.evidence["reason"] == "known_good_running"
        await asyncio.to_thread(stack.deploy, "v2")  # probes go on while compose runs
        deploy = await h.wait_event("deploy")
        assert deploy.evidence["failing_before"] is False
        await h.wait_event("rollback.succeeded", timeout=60)
        assert [e.evidence["reason"] for e in h.events("escalation")] == ["known_good_running"]
    assert stack.running_images() == stack.all_on("v1")
