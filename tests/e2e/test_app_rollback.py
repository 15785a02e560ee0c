"""App rollback end to end: a real docker engine, real compose, real images.

Each test builds its own compose project of the four app services (host networking, free
loopback ports) from the ``brace-test/web`` images — v1 answers ``/api/health`` with 200, v2
with 500 — and drives the real components (health probes, the rollback component, the database
monitor against a real PostgreSQL where needed) over a real SQLite state file, with small time
values. Every test runs under Debian's ``docker-compose`` 1.29; those marked ``BOTH_COMPOSES``
run under the ``docker compose`` v5 plugin as well (what production runs), each stack deploying
with the same compose the daemon rolls back with.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from brace_watchdog.actions.config_snapshot import ConfigSnapshot
from brace_watchdog.adapters.compose import ComposeCLI
from brace_watchdog.errors import RefusedError
from brace_watchdog.observations import FiringAlert
from brace_watchdog.state import StateStore
from tests.support.faults import hold_write_lock
from tests.support.images import TEST_LABEL
from tests.support.pg import PgCluster
from tests.support.stack import (
    APP_SERVICES,
    BOTH_COMPOSES,
    COMPOSE_V1,
    COMPOSE_V2,
    Harness,
    Stack,
    daemon_event,
    kill_daemon,
    rollback_config,
    slow_compose,
    start_daemon,
    stop_daemon,
    write_daemon_config,
)

pytestmark = pytest.mark.docker


def open_rollbacks(state_dir: Path) -> int:
    """Open (unfinished) rollback actions in the state file the stopped daemon left behind."""
    store = StateStore(state_dir / "state.db").open()
    try:
        return len(store.open_actions("rollback"))
    finally:
        store.close()


async def die_during_rollback(stack: Stack, tmp_path: Path, step: str,
                              compose: ComposeCLI | None = None) -> None:
    """Run v1 until known-good, deploy v2, and stop the components as soon as ``step`` is
    journalled — the rollback task is cancelled there, as a killed daemon would leave it."""
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path), compose=compose) as h:
        await known_good(h)
        stack.deploy("v2")
        await h.wait_event(step, timeout=30)
    assert open_rollbacks(tmp_path) == 1


async def known_good(h: Harness) -> str:
    # a wait, not the behaviour under test: ~3 s idle, 11 s with 5% of a CPU, more under load
    event = await h.wait_event("release.known_good", timeout=60)
    return str(event.evidence["release"]["fingerprint"])


@BOTH_COMPOSES
async def test_bad_image_deploy_is_rolled_back_and_verified(stack: Stack, tmp_path: Path) -> None:
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path)) as h:
        good = await known_good(h)
        assert len(stack.pins()) == 4
        stack.deploy("v2")
        done = await h.wait_event("rollback.succeeded", timeout=40)
        assert stack.running_images() == stack.all_on("v1")
        deploys = h.events("deploy")
        assert deploys[0].evidence["change"] == "image"
        assert deploys[0].evidence["services"] == {"backend": "image"}
        assert h.metric("brace_rollbacks_total", result="succeeded") == 1
        assert h.metric("brace_rollback_time_to_recovery_seconds") > 0
        assert 0 < h.metric("brace_rollback_time_to_action_seconds") < 10
        action = h.store.actions(kind="rollback")[0]
        assert (action.status, action.origin) == ("succeeded", "automatic")
        assert action.plan["target"]["fingerprint"] == good
        steps = [e.kind for e in h.store.events(action_id=action.id, limit=50)]
        assert steps[:3] == ["action.rollback.begin", "rollback.started",
                             "action.rollback.retagged"]
        assert "action.rollback.compose_done" in steps and "action.rollback.succeeded" in steps
        compose = next(e for e in h.store.events(action_id=action.id, limit=50)
                       if e.kind == "action.rollback.compose_done")
        assert compose.evidence["argv"][:len(stack.compose_command)] == list(
            stack.compose_command)
        assert "--no-deps" in compose.evidence["argv"]
        assert_never_builds_or_pulls(stack, compose.evidence["argv"])
        assert compose.evidence["argv"][-4:] == list(APP_SERVICES)
        assert [e for e, _ in h.notifier.sent][:2] == ["rollback.started", "rollback.succeeded"]
        assert "v2 GET /api/health -> 500" in h.notifier.sent[0][1]["logs"]["backend"]
        assert done.evidence["checks"]["probes"]["consecutive_ok"] == 3
        await asyncio.sleep(1.5)
        assert len(h.store.actions(kind="rollback")) == 1
        assert h.hub.frozen() is None


async def test_flapping_below_the_threshold_does_not_roll_back(stack: Stack,
                                                               tmp_path: Path) -> None:
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path)) as h:
        await known_good(h)
        stack.deploy("v1", {"FLAP_EVERY": "3"})  # a config deploy whose backend fails 1 in 3
        await h.wait_event("deploy")
        await asyncio.sleep(5)
        failing = [s for s in h.hub.observations.samples("backend") if s.result == "http_5xx"]
        assert len(failing) >= 3, "the backend did flap"
        assert h.store.actions(kind="rollback") == []
        assert h.events("rollback.decision", "escalation", "rollback.would") == []
        assert h.rollback.status()["decision"]["action"] == "none"


async def test_5xx_on_the_known_good_release_escalates_without_acting(stack: Stack,
                                                                      tmp_path: Path) -> None:
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path)) as h:
        good = await known_good(h)
        stack.break_health(500)  # same images, same config: not a deploy problem
        escalation = await h.wait_event("escalation", timeout=20)
        assert escalation.evidence["reason"] == "known_good_running"
        decision = h.events("rollback.decision")[0]
        assert decision.message.startswith("no rollback: running release is known-good")
        assert decision.evidence["current_release"] == good
        assert decision.evidence["window"]["failing"] >= 5
        await asyncio.sleep(2)
        assert len(h.events("rollback.decision")) == 1, "recorded once per episode"
        assert len(h.events("escalation")) == 1
        assert h.store.actions(kind="rollback") == []
        assert h.metric("brace_escalations_total", reason="known_good_running") == 1
        assert h.notifier.sent[0][0] == "escalation"
        assert "-> 500" in h.notifier.sent[0][1]["evidence"]["logs"]["backend"]


@BOTH_COMPOSES
async def test_config_only_bad_deploy_rolls_back_to_the_snapshot(stack: Stack,
                                                                 tmp_path: Path) -> None:
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path)) as h:
        good = await known_good(h)
        good_file = stack.compose_file.read_text()
        stack.deploy("v1", {"HEALTH_STATUS": "500"})  # same images, broken compose file
        deploy = await h.wait_event("deploy")
        assert deploy.evidence["change"] == "config"
        done = await h.wait_event("rollback.succeeded", timeout=60)
        assert f"written back over the bad one: {stack.compose_file}" in done.message
        action = h.store.actions(kind="rollback")[0]
        assert action.plan["use_snapshot"] is True
        assert action.plan["up"]["files"] == [str(stack.compose_file)]
        assert action.plan["up"]["project_directory"] == str(stack.root)
        assert stack.compose_file.read_text() == good_file  # written back before the up
        status = h.rollback.status()
        assert status["current"]["fingerprint"] == good
        assert stack.running_images() == stack.all_on("v1")


@BOTH_COMPOSES
async def test_bad_env_file_deploy_rolls_back_to_the_known_good_env_file(
        stack: Stack, tmp_path: Path) -> None:
    """Only the backend's ``env_file:`` target changes: the snapshot taken at the deploy holds
    it (compose v2+ lists env files; under 1.29 the daemon reads them from the compose file),
    and the rollback writes it back before the up. A symlink put in its place is replaced, not
    followed."""
    (stack.root / "conf").mkdir()
    env_file = stack.root / "conf" / "backend.env"
    env_file.write_text("GREETING=good\n")
    stack.deploy("v1", backend_env_file="conf/backend.env")
    async with Harness(rollback_config(stack, tmp_path)) as h:
        await known_good(h)
        elsewhere = tmp_path / "elsewhere.env"
        elsewhere.write_text("HEALTH_STATUS=500\n")
        env_file.unlink()
        env_file.symlink_to(elsewhere)  # the bad config, reached through a symlink
        stack.deploy("v1", backend_env_file="conf/backend.env")
        deploy = await h.wait_event("deploy")
        assert deploy.evidence["change"] == "config"
        done = await h.wait_event("rollback.succeeded", timeout=40)
        assert str(env_file) in done.message
        action = h.store.actions(kind="rollback")[0]
        assert str(env_file) in action.plan["config_files"]
        written = h.events("action.rollback.snapshot_written")
        assert str(env_file) in written[0].evidence["files"]
        assert not env_file.is_symlink() and env_file.read_text() == "GREETING=good\n"
        assert elsewhere.read_text() == "HEALTH_STATUS=500\n"  # the symlink was not followed
        assert stack.running_images() == stack.all_on("v1")


async def test_an_env_file_mention_compose_1_29_leaves_unclear_is_reported(
        stack: Stack, tmp_path: Path) -> None:
    """Under 1.29 the daemon reads env_file: targets from the compose file itself; a mention it
    cannot read with certainty is a warning naming file and line, never a guess, and the
    targets it did read are kept."""
    (stack.root / "conf").mkdir()
    (stack.root / "conf" / "backend.env").write_text("GREETING=good\n")
    stack.deploy("v1", backend_env_file="conf/backend.env")
    with stack.compose_file.open("a") as out:
        out.write('x-note: {env_file: "documented elsewhere"}\n')
    lines = stack.compose_file.read_text().count("\n")
    async with Harness(rollback_config(stack, tmp_path)) as h:
        unclear = await h.wait_event("release.config_unclear")
        assert unclear.evidence["unclear"] == [
            f"{stack.compose_file}:{lines}: env_file is not a plain key of a block mapping"]
        good = await known_good(h)
        kept = h.store.release(good)
        assert kept is not None and kept.config_files is not None
        assert str(stack.root / "conf" / "backend.env") in ConfigSnapshot.from_blob(
            kept.config_files).paths


async def test_schema_moved_escalates_with_the_db_plan(stack: Stack, tmp_path: Path,
                                                       pg_cluster: PgCluster) -> None:
    pg_cluster.psql("create table alembic_version (version_num varchar(32) primary key);"
                    "insert into alembic_version values ('aaa111');")
    config = rollback_config(stack, tmp_path, dsn=pg_cluster.dsn())
    stack.deploy("v1")
    async with Harness(config, extra=("database",)) as h:
        await known_good(h)
        assert h.rollback.status()["known_good"]["alembic_revision"] == "aaa111"
        pg_cluster.psql("update alembic_version set version_num = 'bbb222';")  # the migration
        stack.deploy("v2")
        escalation = await h.wait_event("escalation", timeout=30)
        assert escalation.evidence["reason"] == "schema_moved"
        plan = escalation.evidence["db_plan"]
        assert plan["action"] == "db_rollback"
        assert (plan["known_good_revision"], plan["current_revision"]) == ("aaa111", "bbb222")
        assert any("restore_db.sh" in step for step in plan["steps"])
        await asyncio.sleep(1.5)
        assert h.store.actions(kind="rollback") == []
        assert stack.running_images()["backend"] == stack.images["v2"]


@BOTH_COMPOSES
async def test_failed_verification_freezes_after_one_attempt(stack: Stack,
                                                             tmp_path: Path) -> None:
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path, verify_timeout_seconds=3.0)) as h:
        good = await known_good(h)
        stack.break_health(500)  # the known-good release will fail too once it is back
        stack.deploy("v2")
        failed = await h.wait_event("action.rollback.failed", timeout=40)
        assert "verify_probes" in failed.message
        assert h.hub.frozen() is not None
        assert h.metric("brace_automation_frozen") == 1
        assert h.metric("brace_rollbacks_total", result="failed") == 1
        assert h.store.release(good).failed_verification_at is not None  # type: ignore[union-attr]
        escalation = await h.wait_event("escalation")
        assert escalation.evidence["reason"] == "rollback_failed"
        stack.deploy("v2")  # the bad release again: frozen, no second attempt
        await asyncio.sleep(4)
        assert len(h.store.actions(kind="rollback")) == 1
        assert "rollback.failed" in [e for e, _ in h.notifier.sent]


async def test_missing_retag_target_fails_without_running_compose(stack: Stack,
                                                                  tmp_path: Path) -> None:
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path)) as h:
        await known_good(h)
        h.store.execute("UPDATE releases SET services = replace(services, ?, ?)",
                        (stack.images["v1"], "sha256:" + "0" * 64))
        stack.deploy("v2")
        failed = await h.wait_event("action.rollback.failed", timeout=30)
        assert "failed at images: known-good image sha256:000000000000 is gone" in failed.message
        assert h.events("action.rollback.compose_done") == []
        assert h.hub.frozen() is not None
        assert stack.running_images()["backend"] == stack.images["v2"]


async def test_restart_mid_rollback_does_not_repeat(stack: Stack, tmp_path: Path) -> None:
    slow = ComposeCLI(slow_compose(30), timeout=60)
    await die_during_rollback(stack, tmp_path, "action.rollback.retagged", slow)
    # the daemon died after retagging, before compose ran
    async with Harness(rollback_config(stack, tmp_path)) as again:
        interrupted = await again.wait_event("action.rollback.interrupted", timeout=10)
        assert "not repeating" in interrupted.message
        assert (await again.wait_event("escalation")).evidence["reason"] == "rollback_interrupted"
        await asyncio.sleep(2)
        assert again.hub.frozen() is not None
        assert len(again.store.actions(kind="rollback")) == 1
        assert again.events("action.rollback.compose_done") == []
        assert stack.running_images()["backend"] == stack.images["v2"]


@BOTH_COMPOSES
async def test_restart_after_compose_completes_verification(stack: Stack,
                                                            tmp_path: Path) -> None:
    await die_during_rollback(stack, tmp_path, "action.rollback.compose_done")
    # the daemon died after compose: the known-good images run, verification never finished
    async with Harness(rollback_config(stack, tmp_path)) as again:
        action = again.store.actions(kind="rollback")[0]
        done = await again.wait_event("rollback.succeeded", timeout=20)
        assert done.evidence["checks"]["resumed"] is True
        assert len(again.store.actions(kind="rollback")) == 1
        assert len(again.events("action.rollback.compose_done")) == 1
        assert again.store.action(action.id).status == "succeeded"  # type: ignore[union-attr]
        assert again.hub.frozen() is None


async def test_dry_run_records_the_plan_and_changes_nothing(stack: Stack,
                                                            tmp_path: Path) -> None:
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path, dry_run=True)) as h:
        good = await known_good(h)
        stack.deploy("v2")
        would = await h.wait_event("rollback.would", timeout=30)
        assert would.message.startswith("dry run: would roll back")
        plan = would.evidence["plan"]
        assert plan["target"]["fingerprint"] == good
        assert plan["argv"][:1] == list(COMPOSE_V1) and "--no-build" in plan["argv"]
        assert plan["retags"][0]["image_id"] == stack.images["v1"]
        await asyncio.sleep(2)
        assert len(h.events("rollback.would")) == 1
        assert h.store.actions(kind="rollback") == []
        assert stack.running_images()["backend"] == stack.images["v2"]
        assert h.metric("brace_rollbacks_total", result="dry_run") == 1


@BOTH_COMPOSES
async def test_manual_rollback_plan_and_status(stack: Stack, tmp_path: Path) -> None:
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path, max_per_day=0)) as h:
        good = await known_good(h)
        stack.deploy("v2")
        await h.wait_event("deploy")
        plan = await h.rollback.plan()
        assert plan["manual"]["action"] == "rollback"
        assert plan["plan"]["target"]["fingerprint"] == good
        said: list[tuple[str, str]] = []

        async def progress(stage: str, line: str) -> None:
            said.append((stage, line))

        verdict = await h.rollback.manual_rollback("alice", progress=progress)
        assert verdict.result == "succeeded"
        assert said[0][1].startswith(f"running: {' '.join(stack.compose_command)} ")
        assert said[-1][0] == "succeeded"
        assert stack.running_images() == stack.all_on("v1")
        assert h.store.actions(kind="rollback")[0].requester == "alice"
        with pytest.raises(RefusedError, match="known-good"):
            await h.rollback.manual_rollback("alice")


async def test_real_daemon_killed_mid_rollback_does_not_repeat(stack: Stack,
                                                               tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    stack.deploy("v1")
    slow = slow_compose(60)
    daemon = start_daemon(write_daemon_config(stack, tmp_path, compose_command=slow))
    try:
        await daemon_event(state, "release.known_good")
        stack.deploy("v2")
        await daemon_event(state, "action.rollback.retagged")
    finally:
        kill_daemon(daemon)  # kill -9 while compose is still to run
    daemon = start_daemon(write_daemon_config(stack, tmp_path))
    try:
        interrupted = await daemon_event(state, "action.rollback.interrupted", timeout=20)
        assert "not repeating" in interrupted.message
        escalation = await daemon_event(state, "escalation")
        assert escalation.evidence["reason"] == "rollback_interrupted"
        await asyncio.sleep(3)
    finally:
        stop_daemon(daemon)
    store = StateStore(state).open()
    try:
        assert [a.status for a in store.actions(kind="rollback")] == ["interrupted"]
        assert store.events(kinds=("action.rollback.compose_done",)) == []
        assert store.flag("automation_frozen") is not None
    finally:
        store.close()
    assert stack.running_images()["backend"] == stack.images["v2"]


@BOTH_COMPOSES
async def test_release_dir_mode_redeploys_the_known_good_folder(stack: Stack,
                                                                tmp_path: Path) -> None:
    stack.deploy("v1", release_dir="r1")
    good_dir = stack.compose_file.parent
    config = rollback_config(stack, tmp_path, mode="release_dir")
    async with Harness(config) as h:
        await known_good(h)
        # tags are mutable: the pipeline re-pointed the good folder's backend tag at v2 too
        stack.client.images.get(stack.images["v2"]).tag(f"{stack.project}/backend", "r1")
        stack.deploy("v2", release_dir="r2")  # the pipeline's new folder and tags
        done = await h.wait_event("rollback.succeeded", timeout=40)
        action = h.store.actions(kind="rollback")[0]
        assert action.plan["up"]["cwd"] == str(good_dir)
        assert action.plan["up"]["files"] == [str(good_dir / "docker-compose.yml")]
        assert {"tag": f"{stack.project}/backend:r1",
                "image_id": stack.images["v1"]} in action.plan["retags"]
        assert stack.running_images() == stack.all_on("v1")
        assert "verified" in done.message
        assert_never_builds_or_pulls(stack, action.plan["argv"])


def assert_never_builds_or_pulls(stack: Stack, argv: list[str]) -> None:
    """``--no-build`` always; ``--pull never`` where the compose has it (v2.8+, so v5)."""
    assert "--no-build" in argv
    pull = argv[argv.index("--pull"):argv.index("--pull") + 2] if "--pull" in argv else []
    assert pull == (["--pull", "never"] if stack.compose_command == COMPOSE_V2 else [])


async def test_pins_of_releases_no_longer_needed_are_released(stack: Stack,
                                                              tmp_path: Path) -> None:
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path)) as h:
        first = await known_good(h)
        for number in (1, 2):  # two more healthy config releases become known-good
            stack.deploy("v1", {"RELEASE": str(number)})
            await h.wait_event("deploy")
            while len(h.events("release.known_good")) < number + 1:
                await asyncio.sleep(0.1)
        unpinned = await h.wait_event("release.unpinned")
        assert unpinned.message.startswith(f"released the pins of {first[:12]}")
        assert len(stack.pins()) == 8  # two releases kept, four services each
        assert not any(first[:12] in pin for pin in stack.pins())
        assert h.store.release(first).pinned is False  # type: ignore[union-attr]


async def test_a_named_alert_alone_triggers_the_rollback(stack: Stack, tmp_path: Path) -> None:
    stack.deploy("v1")
    config = rollback_config(stack, tmp_path, trigger_alerts=["BraceBackendErrors"])
    async with Harness(config) as h:
        good = await known_good(h)
        stack.deploy("v1", {"RELEASE": "2"})  # healthy probes, but production alerts fire
        await h.wait_event("deploy")
        h.hub.observations.publish_alerts((FiringAlert("SomethingElse", "warning"),),
                                          h.hub.clock())
        await asyncio.sleep(0.75)
        assert h.store.actions(kind="rollback") == []
        stale = h.hub.clock() - 3600  # polled an hour ago: Alertmanager is down since then
        h.hub.observations.publish_alerts((FiringAlert("BraceBackendErrors", "critical"),), stale)
        await asyncio.sleep(0.75)
        assert h.store.actions(kind="rollback") == []  # a stale trigger alert never acts
        h.hub.observations.publish_alerts((FiringAlert("BraceBackendErrors", "critical"),),
                                          h.hub.clock())
        await h.wait_event("rollback.succeeded", timeout=30)
        action = h.store.actions(kind="rollback")[0]
        assert action.plan["target"]["fingerprint"] == good
        begin = h.events("rollback.started")[0]
        assert begin.evidence["decision"]["firing_alerts"] == ["BraceBackendErrors"]


async def test_a_rollback_decided_while_the_state_file_is_locked_starts_once_it_is_free(
        stack: Stack, tmp_path: Path) -> None:
    """A rollback must be journalled before it runs: while another process holds the state file
    it does not start (no unjournalled action), and it is not forgotten either."""
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path)) as h:
        await known_good(h)
        stack.deploy("v2")
        await h.wait_event("deploy")
        with hold_write_lock(tmp_path / "state.db"):
            deadline = time.monotonic() + 30
            while not h.unavailable:  # the window fills, the policy decides, the journal refuses
                assert time.monotonic() < deadline, "the rollback cycle never met the lock"
                assert stack.running_images()["backend"] == stack.images["v2"]
                await asyncio.sleep(0.2)
        await h.wait_event("rollback.succeeded", timeout=40)
        assert len(h.store.actions(kind="rollback")) == 1
        assert "unavailable (database is locked)" in str(h.unavailable[0])


async def nth_known_good(h: Harness, count: int) -> str:
    """The fingerprint of the ``count``-th release that became known-good."""
    while len(found := h.events("release.known_good")) < count:
        await asyncio.sleep(0.1)
    newest = max(found, key=lambda e: e.id)
    return str(newest.evidence["release"]["fingerprint"])


async def test_falls_back_to_the_previous_known_good_when_the_newest_failed(
        stack: Stack, tmp_path: Path) -> None:
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path)) as h:
        older = await known_good(h)
        stack.deploy("v1", {"RELEASE": "2"})  # a healthy config release becomes known-good too
        newest = await nth_known_good(h, 2)
        h.store.mark_release_failed_verification(newest, h.hub.clock())  # an earlier attempt
        stack.deploy("v2")
        await h.wait_event("rollback.succeeded", timeout=40)
        action = h.store.actions(kind="rollback")[0]
        assert action.plan["target"]["fingerprint"] == older
        started = h.events("rollback.started")[0]
        assert f"falling back to the previous known-good release {older[:12]}" in started.message
        assert stack.running_images() == stack.all_on("v1")


async def test_a_retag_that_would_switch_a_container_outside_the_list_is_refused(
        stack: Stack, tmp_path: Path) -> None:
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path)) as h:
        await known_good(h)
        stack.set_image("backend", "v2")
        # a one-off (a migration, say) made from the backend's tag, outside [rollback] services
        outsider = stack.client.containers.create(stack.tag("backend"), ["true"],
                                                  name=f"{stack.project}-migrate",
                                                  labels={TEST_LABEL: "1"})
        try:
            stack.deploy("v2")
            escalation = await h.wait_event("escalation", timeout=30)
            assert escalation.evidence["reason"] == "retag_conflict"
            assert f"(container {outsider.name}) also uses {stack.tag('backend')}" in \
                escalation.message
            await asyncio.sleep(1.5)
            assert h.store.actions(kind="rollback") == []
            assert len(h.events("escalation")) == 1, "escalated once per episode"
            assert stack.running_images()["backend"] == stack.images["v2"]
            plan = await h.rollback.plan()
            assert "container " + outsider.name in plan["refused"]
            with pytest.raises(RefusedError, match="retags conflict"):
                await h.rollback.manual_rollback("alice")
            assert stack.running_images()["backend"] == stack.images["v2"]
        finally:
            outsider.remove(force=True)


async def wait_metric(h: Harness, name: str, value: float, timeout: float = 20,
                      **labels: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while h.metric(name, **labels) != value:
        assert asyncio.get_running_loop().time() < deadline, \
            f"{name}{labels} is {h.metric(name, **labels)}, not {value}"
        await asyncio.sleep(0.1)


async def test_known_good_images_survive_a_prune_through_their_archive(stack: Stack,
                                                                      tmp_path: Path) -> None:
    own = stack.unique_image("v1")
    stack.deploy(own)
    async with Harness(rollback_config(stack, tmp_path, max_per_day=0)) as h:
        await known_good(h)
        image = stack.images[own]
        archive = tmp_path / "images" / f"{image.removeprefix('sha256:')}.tar"
        assert archive.stat().st_size > 0
        await wait_metric(h, "brace_known_good_images", 2, state="present")  # own + v1
        stack.deploy("v2")
        await h.wait_event("deploy")
        # what `docker system prune -af` does to an image no container uses any more, whatever
        # its tags and pins (the shared test engine cannot be pruned whole)
        stack.client.images.remove(image, force=True)
        await wait_metric(h, "brace_known_good_images", 1, state="archived_only")
        hidden = archive.rename(archive.with_suffix(".away"))
        await wait_metric(h, "brace_known_good_images", 1, state="missing")  # the alert's case
        hidden.rename(archive)
        await wait_metric(h, "brace_known_good_images", 0, state="missing")
        verdict = await h.rollback.manual_rollback("alice")
        assert verdict.result == "succeeded", verdict.message
        assert stack.running_images()["backend"] == image
        loaded = h.events("action.rollback.images_loaded")[0]
        assert loaded.evidence["loaded"] == [image]


async def test_a_lock_taken_mid_rollback_does_not_stop_it(stack: Stack, tmp_path: Path) -> None:
    """Another process takes the state file the moment the rollback has started: its journal
    steps wait in memory, the rollback completes, and every step lands once the lock goes."""
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path)) as h:
        await known_good(h)
        locks = contextlib.ExitStack()
        announce = h.store.on_event
        assert announce is not None

        def lock_when_started(kind: str, *rest: Any) -> None:
            announce(kind, *rest)  # type: ignore[arg-type]
            if kind == "rollback.started":
                locks.enter_context(hold_write_lock(tmp_path / "state.db"))

        h.store.on_event = lock_when_started
        stack.deploy("v2")
        with locks:
            deadline = time.monotonic() + 60
            while not (h.store.health().pending and not h.rollback.busy):
                assert time.monotonic() < deadline, "the rollback did not finish under the lock"
                await asyncio.sleep(0.2)
            assert stack.running_images() == stack.all_on("v1")
        assert h.store.flush()
        action = h.store.actions(kind="rollback")[0]
        assert action.status == "succeeded"
        steps = [e.kind for e in h.store.events(action_id=action.id, limit=50)]
        assert "action.rollback.compose_done" in steps and "rollback.succeeded" in steps


async def test_the_config_snapshot_is_the_deployed_one_not_an_edit_before_promotion(
        stack: Stack, tmp_path: Path) -> None:
    stack.deploy("v1")
    deployed = stack.compose_file.read_bytes()
    async with Harness(rollback_config(stack, tmp_path, stable_after_seconds=3.0)) as h:
        while not snapshot_taken(h):  # the release is seen (its deploy) and its config kept
            await asyncio.sleep(0.05)
        # an operator edits the file during the stability window without deploying it
        stack.compose_file.write_bytes(deployed + b"# edited, never deployed\n")
        good = await known_good(h)
        record = h.store.release(good)
        files = ConfigSnapshot.from_blob(record.config_files) if record is not None else None
        assert files is not None and files.content(str(stack.compose_file)) == deployed


def snapshot_taken(h: Harness) -> bool:
    """The tracker has seen the running release and kept its config (the tracker marks the
    release current before the snapshot's compose/file reads return) — before promotion."""
    current = h.rollback.tracker.current
    record = h.store.release(current.fingerprint) if current is not None else None
    if record is None or record.config_files is None:
        return False
    assert record.known_good_at is None, "the config was kept at promotion, not at the deploy"
    return True


OPS_GOOD = 'version: "2.4"\nservices:\n  backend:\n    environment:\n      NOTE: "good"\n'


@BOTH_COMPOSES
async def test_a_bad_edit_of_an_override_file_is_rolled_back_through_the_snapshot(
        stack: Stack, tmp_path: Path) -> None:
    """The stack runs ``-f docker-compose.yml -f ops.yml``; a deploy that only edits ops.yml
    breaks the backend. The snapshot taken at the known-good deploy holds both files: the
    rollback writes ops.yml back and runs compose with both ``-f`` files again."""
    ops = stack.root / "ops.yml"
    ops.write_text(OPS_GOOD)
    stack.overrides = (ops,)
    stack.deploy("v1")
    main_file = stack.compose_file.read_bytes()
    async with Harness(rollback_config(stack, tmp_path)) as h:
        good = await known_good(h)
        record = h.store.release(good)
        assert record is not None and str(ops) in record.release["config_files"]
        ops.write_text(OPS_GOOD.replace('NOTE: "good"', 'HEALTH_STATUS: "500"'))
        stack.deploy("v1")
        deploy = await h.wait_event("deploy")
        assert deploy.evidence["change"] == "config"
        done = await h.wait_event("rollback.succeeded", timeout=40)
        assert str(ops) in done.message
        plan = h.store.actions(kind="rollback")[0].plan
        assert str(ops) in plan["config_files"]
        assert plan["up"]["files"] == [str(stack.compose_file), str(ops)]
        assert ops.read_text() == OPS_GOOD and stack.compose_file.read_bytes() == main_file
        assert stack.running_images() == stack.all_on("v1")
        backend = stack.client.containers.list(filters={"label": [
            f"com.docker.compose.project={stack.project}", "com.docker.compose.service=backend"]})
        env = backend[0].attrs["Config"]["Env"]
        assert "NOTE=good" in env and not any(e.startswith("HEALTH_STATUS=") for e in env)
