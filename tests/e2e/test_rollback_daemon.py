"""App rollback through the real daemon process: ``brace-watchdog run`` against a real compose
stack, driven by ``brace-watchdogctl`` over its real control socket."""

from __future__ import annotations

import ast
import asyncio
import json
import signal
import subprocess
from pathlib import Path

import pytest

from brace_watchdog import failpoints
from brace_watchdog.actions import rollback_run, rollback_steps
from brace_watchdog.ctl import EXIT_UNREACHABLE
from brace_watchdog.state import Event, StateStore
from tests.integration.control_helpers import ctl
from tests.support.stack import (
    BOTH_COMPOSES,
    Stack,
    daemon_event,
    kill_daemon,
    start_daemon,
    stop_daemon,
    write_daemon_config,
)

pytestmark = pytest.mark.docker


def operated_daemon(stack: Stack, tmp_path: Path) -> tuple[Path, str, subprocess.Popen[bytes]]:
    """v1 deployed and the real daemon watching it: (state file, control socket, process).
    max_per_day = 0: the automatic path only escalates; an operator's request rolls back."""
    stack.deploy("v1")
    daemon = start_daemon(write_daemon_config(stack, tmp_path, max_per_day=0),
                          tmp_path / "daemon.log")
    return tmp_path / "state.db", str(tmp_path / "control.sock"), daemon


@BOTH_COMPOSES
@pytest.mark.daemon_ctl("rollback app", "status")
async def test_manual_rollback_through_the_socket_succeeds(stack: Stack, tmp_path: Path) -> None:
    state, sock, daemon = operated_daemon(stack, tmp_path)
    try:
        good = (await daemon_event(state, "release.known_good")).evidence["release"]
        stack.deploy("v2")
        await daemon_event(state, "deploy")
        plan = (await ctl("--socket", sock, "--json", "rollback", "app", "--plan")).json()
        assert plan["plan"]["manual"]["action"] == "rollback", plan
        run = await ctl("--socket", sock, "rollback", "app")
        assert run.code == 0, (run, (tmp_path / "daemon.log").read_text()[-3000:])
        assert f"running: {' '.join(stack.compose_command)} " in run.err  # streamed live
        assert "succeeded" in run.out
        again = await ctl("--socket", sock, "rollback", "app")
        assert again.code == 1 and "refused" in again.err and "known-good" in again.err
        status = json.loads((await ctl("--socket", sock, "--json", "status")).out)
        assert status["frozen"] is None
        assert status["rollback"]["current"]["fingerprint"] == good["fingerprint"]
    finally:
        assert stop_daemon(daemon) == 0
    assert stack.running_images() == stack.all_on("v1")
    store = StateStore(state).open()
    try:
        action = store.actions(kind="rollback")[0]
        assert (action.status, action.origin) == ("succeeded", "manual")
        assert action.requester.startswith("root")
        assert store.events(kinds=("rollback.succeeded",))
    finally:
        store.close()


def _known_good(state: Path) -> list[str]:
    store = StateStore(state).open()
    try:
        return [r.fingerprint for r in store.known_good_releases()]
    finally:
        store.close()


@pytest.mark.daemon_ctl("rollback app", "status")
async def test_rollback_to_a_chosen_release_plans_confirms_and_runs(stack: Stack,
                                                                    tmp_path: Path) -> None:
    state, sock, daemon = operated_daemon(stack, tmp_path)
    try:
        older = (await daemon_event(state, "release.known_good")).evidence["release"]
        stack.deploy("v1", {"RELEASE": "2"})  # a second healthy release becomes known-good
        for _ in range(300):
            if len(_known_good(state)) == 2:
                break
            await asyncio.sleep(0.1)
        assert len(_known_good(state)) == 2
        stack.deploy("v2")
        await daemon_event(state, "deploy")
        short = older["fingerprint"][:12]
        plan = (await ctl("--socket", sock, "--json", "rollback", "app", "--to", short,
                          "--plan")).json()
        assert plan["plan"]["target"] == older["fingerprint"], plan
        unknown = await ctl("--socket", sock, "rollback", "app", "--to", "c0ffee00", "--yes")
        assert unknown.code == 1 and "no known-good release starts with c0ffee00" in unknown.err
        declined = await ctl("--socket", sock, "rollback", "app", "--to", short, stdin="no\n")
        assert declined.code == 1 and "not confirmed" in declined.err
        run = await ctl("--socket", sock, "rollback", "app", "--to", short, stdin=short + "\n")
        assert run.code == 0, (run, (tmp_path / "daemon.log").read_text()[-3000:])
        assert f"Plan for the app rollback to {short}" in run.out and "succeeded" in run.out
        status = json.loads((await ctl("--socket", sock, "--json", "status")).out)
        assert status["rollback"]["current"]["fingerprint"] == older["fingerprint"]
    finally:
        assert stop_daemon(daemon) == 0
    assert stack.running_images() == stack.all_on("v1")


@pytest.mark.daemon_ctl("status", "events", "explain", "timeline", "backups", "releases",
                        "freeze", "unfreeze", "ack", "releases clear-failed", "restore-test",
                        "rollback db", "rollback pg-hba", "rollback docker-daemon", "inspect",
                        "approve")
async def test_every_ctl_command_against_a_real_daemon(stack: Stack, tmp_path: Path) -> None:
    """Every command once through the socket of a real daemon (the gated rollbacks are refused
    at their pre-checks here; test_gated_kill and test_ctl_daemon run them through)."""
    state, sock = tmp_path / "state.db", ["--socket", str(tmp_path / "control.sock")]
    stack.deploy("v1")
    daemon = start_daemon(write_daemon_config(stack, tmp_path), tmp_path / "daemon.log")
    try:
        known = await daemon_event(state, "release.known_good")
        ok = {"status": ["status"], "events": ["events", "--kind", "release.known_good"],
              "explain": ["explain", str(known.id)], "timeline": ["timeline"],
              "backups": ["backups"], "releases": ["releases"],
              "freeze": ["freeze", "--reason", "maintenance"], "unfreeze": ["unfreeze"],
              "ack": ["ack"]}
        for name, argv in ok.items():
            run = await ctl(*sock, *argv)
            assert run.code == 0, (name, run)
        # the daemon pinned the known-good release's images when it promoted it
        assert "known-good, newest-known-good, pinned" in (await ctl(*sock, "releases")).out
        assert "is known-good" in (await ctl(*sock, "explain", str(known.id))).out
        failing = {"releases clear-failed": (["releases", "clear-failed", known.evidence[
                       "release"]["fingerprint"][:12]], "not marked failed"),
                   "restore-test": (["restore-test"], "unavailable"),
                   "rollback db": (["rollback", "db", "--dump", "x.dump", "--yes"],
                                   "no dump named 'x.dump'"),
                   "rollback pg-hba": (["rollback", "pg-hba", "--yes"], "error ("),
                   "rollback docker-daemon": (["rollback", "docker-daemon", "--yes"],
                                              "error ("),
                   "inspect": (["inspect"], "unknown token"),
                   "approve": (["approve", "--yes"], "unknown token")}
        for name, (argv, why) in failing.items():
            run = await ctl(*sock, *argv, stdin="bwt_not-a-token\n")
            assert run.code == 1 and why in run.err, (name, run)
    finally:
        assert stop_daemon(daemon) == 0
    store = StateStore(state).open()
    try:
        audited = {row["command"] for row in store.audit_log(limit=1000)}
    finally:
        store.close()
    assert {"status", "events", "explain", "timeline", "backups", "releases", "freeze",
            "unfreeze", "ack", "release-clear-failed", "restore-test", "db_rollback",
            "pg_hba_rollback", "docker_daemon_rollback", "inspect"} <= audited


def journalled_steps() -> set[str]:
    """Every step the compose app rollback journals on its way, read from its code: ``begin``
    and each ``_journal("STEP", …)`` / ``journal_step(id, "STEP", …)`` with a literal step and
    no ``status=`` (the endings), less the entries written only off the way."""
    found = {"begin"}
    for module in (rollback_run, rollback_steps):
        for node in ast.walk(ast.parse(Path(str(module.__file__)).read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            position = {"_journal": 0, "journal_step": 1}.get(node.func.attr)
            if position is None or len(node.args) <= position or any(
                    k.arg == "status" for k in node.keywords):
                continue
            step = node.args[position]
            if isinstance(step, ast.Constant) and isinstance(step.value, str):
                found.add(step.value)
    return found - set(OFF_THE_WAY)


OFF_THE_WAY = {"resumed": "written by the recovery after a restart",
               "leadership_lost": "a follower's hand-over (tests/e2e/test_leadership.py)"}
# (what the bad deploy changed, journal step to SIGKILL at, what the restarted daemon concludes)
KILL_STEPS = [("image", "begin", "interrupted"), ("image", "retagged", "interrupted"),
              ("pruned", "images_loaded", "interrupted"),
              ("config", "snapshot_written", "interrupted"),
              ("image", "compose_done", "succeeded"), ("image", "verifying", "succeeded"),
              ("image", "images_verified", "succeeded"),
              ("image", "probes_verified", "succeeded")]


def test_the_kill_steps_are_every_step_the_rollback_journals() -> None:
    assert {step for _, step, _ in KILL_STEPS} == journalled_steps()


async def _bad_deploy(stack: Stack, tmp_path: Path, change: str, state: Path) -> None:
    """Deploy what ``change`` names over the known-good v1: new images, a broken config, or new
    images while the known-good backend image was pruned (then an operator rolls back)."""
    if change == "config":
        stack.deploy("v1", {"HEALTH_STATUS": "500"})
    elif change == "image":
        stack.deploy("v2")
    else:
        good_backend = stack.running_images()["backend"]
        stack.deploy("v2")
        await daemon_event(state, "deploy")
        stack.client.images.remove(good_backend, force=True)  # as `docker image prune -a`
        run = await ctl("--socket", str(tmp_path / "control.sock"), "rollback", "app")
        assert run.code == EXIT_UNREACHABLE, run  # the daemon killed itself mid-answer


async def _resumed_after_the_interruption(tmp_path: Path, state: Path) -> None:
    """An operator unfreezes after the interrupted rollback; the bad release, never left, still
    fails: escalated once more, saying the rollback did not complete — not that the release was
    rolled back and deployed again — and no second rollback starts."""
    await daemon_event(state, "escalation")  # the interruption's own
    frozen = await ctl("--socket", str(tmp_path / "control.sock"), "--json", "status")
    assert json.loads(frozen.out)["frozen"], frozen
    unfrozen = await ctl("--socket", str(tmp_path / "control.sock"), "unfreeze")
    assert unfrozen.code == 0, unfrozen

    def again() -> Event | None:
        store = StateStore(state).open()
        try:
            return next((e for e in store.events(kinds=("escalation",), limit=100)
                         if e.evidence.get("reason") == "rolled_back_before"), None)
        finally:
            store.close()

    deadline = asyncio.get_running_loop().time() + 60
    while (escalation := await asyncio.to_thread(again)) is None:
        assert asyncio.get_running_loop().time() < deadline, (tmp_path / "daemon.log").read_text()
        await asyncio.sleep(0.3)
    assert "deployed again" not in escalation.message, escalation
    assert "did not complete (it is interrupted), so this is no redeploy" in escalation.message
    assert escalation.evidence["rollback_outcome"] == "interrupted"


@pytest.mark.parametrize(("change", "step", "outcome"), KILL_STEPS,
                         ids=[f"{c}-{s}" for c, s, _ in KILL_STEPS])
@pytest.mark.daemon_ctl("status")
async def test_sigkill_at_each_journal_step_reconciles(stack: Stack, tmp_path: Path, change: str,
                                                       step: str, outcome: str) -> None:
    """SIGKILL the daemon (its failpoint) right after ``step`` is journalled: the restarted
    daemon completes the rollback (verification only) when the known-good release runs —
    images and, for a config rollback, config — or else marks it interrupted, freezes and
    escalates, never marking the target failed; and never repeats a retag or a compose run."""
    state = tmp_path / "state.db"
    backend = stack.unique_image("v1") if change == "pruned" else "v1"
    stack.deploy(backend)
    config = write_daemon_config(stack, tmp_path, max_per_day=0 if change == "pruned" else 2)
    daemon = start_daemon(config, tmp_path / "daemon.log",
                          env={failpoints.ENV: f"journal:{step}"})
    try:
        good = (await daemon_event(state, "release.known_good")).evidence["release"]
        await _bad_deploy(stack, tmp_path, change, state)
        assert await asyncio.to_thread(daemon.wait, 120) == -signal.SIGKILL
    finally:
        kill_daemon(daemon)
    assert f"failpoint journal:{step}" in (tmp_path / "daemon.log").read_text()
    restarted = start_daemon(config, tmp_path / "daemon.log")
    try:
        end = await daemon_event(state, "action.rollback.interrupted", "rollback.succeeded",
                                 timeout=60)
        status = await ctl("--socket", str(tmp_path / "control.sock"), "--json", "status")
        assert status.code == 0, status
        if step == "retagged":
            await _resumed_after_the_interruption(tmp_path, state)
    finally:
        assert stop_daemon(restarted) == 0
    store = StateStore(state).open()
    try:
        actions = store.actions(kind="rollback")
        assert [a.status for a in actions] == [outcome], (end, actions)
        for once in ("action.rollback.retagged", "action.rollback.compose_done"):
            assert len(store.events(kinds=(once,))) <= 1, once
        target = store.release(good["fingerprint"])
        assert target is not None and target.failed_verification_at is None
        if outcome == "interrupted":
            assert store.events(kinds=("automation.frozen",))  # (unfrozen after retagged)
            assert store.events(kinds=("action.rollback.compose_done",)) == []
            escalation = store.events(kinds=("escalation",))[0]
            assert escalation.evidence["reason"] == "rollback_interrupted"
        else:
            assert store.events(kinds=("action.rollback.resumed",))
    finally:
        store.close()
    running = backend if outcome == "succeeded" or change == "config" else "v2"
    assert stack.running_images()["backend"] == stack.images[running]
    assert "HEALTH_STATUS" not in stack.compose_file.read_text()  # the good config on disk
