"""App rollback through the real daemon process: ``brace-watchdog run`` against a real compose
stack, driven by ``brace-watchdogctl`` over its real control socket."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from brace_watchdog.state import StateStore
from tests.integration.control_helpers import ctl
from tests.support.stack import (
    BOTH_COMPOSES,
    Stack,
    daemon_event,
    kill_daemon,
    slow_compose,
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
        assert "newest-known-good" in (await ctl(*sock, "releases")).out
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
            "unfreeze", "ack", "release-clear-failed", "restore-test", "rollback-db",
            "rollback-pg-hba", "rollback-docker-daemon", "inspect"} <= audited


# (journal step to SIGKILL at, compose ``up`` delay so the step is caught before compose runs,
#  what the restarted daemon must conclude)
KILL_STEPS = [("action.rollback.begin", 60, "interrupted"),
              ("action.rollback.retagged", 60, "interrupted"),
              ("action.rollback.compose_done", 0, "succeeded"),
              ("action.rollback.images_verified", 0, "succeeded")]


@pytest.mark.parametrize(("step", "delay", "outcome"), KILL_STEPS,
                         ids=[s.rsplit(".", 1)[1] for s, _, _ in KILL_STEPS])
async def test_sigkill_at_each_journal_step_reconciles(stack: Stack, tmp_path: Path, step: str,
                                                       delay: int, outcome: str) -> None:
    """SIGKILL the daemon (and its compose run) right after ``step`` is journalled: the
    restarted daemon completes the rollback (verification only) or marks it interrupted,
    freezes and escalates — and never repeats a retag or a compose run."""
    state = tmp_path / "state.db"
    stack.deploy("v1")
    slow = {"compose_command": slow_compose(delay, stack.compose_command)} if delay else {}
    # a long verification, so a kill after images_verified lands before probes_verified
    config = write_daemon_config(stack, tmp_path, verify_successes=12, **slow)
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        await daemon_event(state, "release.known_good")
        stack.deploy("v2")
        await daemon_event(state, step, timeout=60)
    finally:
        kill_daemon(daemon)
    restarted = start_daemon(write_daemon_config(stack, tmp_path, verify_successes=12),
                             tmp_path / "daemon.log")
    try:
        end = await daemon_event(state, "action.rollback.interrupted", "rollback.succeeded",
                                 timeout=60)
        await asyncio.sleep(2)
    finally:
        assert stop_daemon(restarted) == 0
    store = StateStore(state).open()
    try:
        actions = store.actions(kind="rollback")
        assert [a.status for a in actions] == [outcome], (end, actions)
        for once in ("action.rollback.retagged", "action.rollback.compose_done"):
            assert len(store.events(kinds=(once,))) <= 1, once
        if outcome == "interrupted":
            assert store.flag("automation_frozen") is not None
            assert store.events(kinds=("action.rollback.compose_done",)) == []
            escalation = store.events(kinds=("escalation",))[-1]
            assert escalation.evidence["reason"] == "rollback_interrupted"
        else:
            assert store.events(kinds=("action.rollback.resumed",))
    finally:
        store.close()
    expected = "v2" if outcome == "interrupted" else "v1"
    assert stack.running_images()["backend"] == stack.images[expected]
