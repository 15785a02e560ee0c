"""Leadership end to end: several real ``brace-watchdog run`` processes, one real PostgreSQL, one
real compose stack, one shared state file — exactly one instance acts, a killed, stopped or
cut-off leader is replaced within the lease, and a rollback is never carried out twice. With a
state file each (two hosts), the new leader adopts the rollback the killed one left open from
the shared journal in PostgreSQL, and keeps the killed one's freeze and its record of the
release it rolled back (the shared guards)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from brace_watchdog.failpoints import ENV as FAILPOINTS
from brace_watchdog.state import Event, StateStore
from tests.integration.control_helpers import ctl
from tests.support.pg import PgCluster
from tests.support.stack import (
    Stack,
    daemon_event,
    kill_daemon,
    slow_compose,
    start_daemon,
    stop_daemon,
    wait_for_event,
    write_daemon_config,
)

pytestmark = pytest.mark.docker

LEASE = 7.0  # check 0.5 s, timeout 2 s: at least 6.5 s (leadership.split_brain_problem)
LEADERSHIP = f"""
[database]
dsn = "{{dsn}}"
interval_seconds = 1.0

[leadership]
enabled = true
name = "{{name}}"
check_interval_seconds = 0.5
check_timeout_seconds = 2.0
lease_seconds = {LEASE}
"""
TAKEOVER = LEASE + 30.0  # the lease, plus a generous margin for a loaded machine


@dataclass
class Instance:
    name: str
    root: Path
    metrics_port: int
    proc: subprocess.Popen[bytes]
    state: Path

    @property
    def socket(self) -> str:
        return str(self.root / "control.sock")

    def leader(self) -> float | None:
        """``brace_watchdog_leader`` (None while the exporter does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                        timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return None
        found = re.search(r"^brace_watchdog_leader (\S+)$", text, re.M)
        return float(found.group(1)) if found else None

    def log(self) -> str:
        path = self.root / "daemon.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _configure(stack: Stack, root: Path, name: str, shared: Path | None, dsn: str,
               env: dict[str, str], rollback: dict[str, object]) -> Instance:
    root.mkdir(parents=True)
    config = write_daemon_config(stack, root, max_per_day=5, on_schema_change="app_only",
                                 **rollback)
    state = shared or root / "state.db"
    text = config.read_text().replace(f'state_path = "{root}/state.db"',
                                      f'state_path = "{state}"')
    config.write_text(text + LEADERSHIP.format(dsn=dsn, name=name))
    port = int(re.search(r'listen = "127\.0\.0\.1:(\d+)"', text).group(1))  # type: ignore[union-attr]
    return Instance(name, root, port, start_daemon(config, root / "daemon.log", env=env),
                    state)


@dataclass
class Group:
    """Instances, one of them the ``leader``; ``shared`` is the leader's state file (the one
    they all share, unless they run as separate hosts)."""

    members: list[Instance]
    leader: Instance
    shared: Path

    def others(self) -> list[Instance]:
        return [i for i in self.members if i is not self.leader]


@asynccontextmanager
async def instances(stack: Stack, tmp_path: Path, cluster: PgCluster, count: int, *,
                    hosts: bool = False, env: dict[str, str] | None = None,
                    rollback: dict[str, object] | None = None,
                    dsn: Callable[[str], str] | None = None) -> AsyncIterator[Group]:
    """``count`` instances watching ``stack`` deployed at v1 — sharing one state file, or
    (``hosts``) each with its own; ``env`` added to their environment, ``rollback`` to their
    ``[rollback]``, ``dsn(name)`` their DSN; yielded once one of them leads and v1 is known
    good."""
    shared = None if hosts else tmp_path / "shared-state.db"
    stack.deploy("v1")
    started: list[Instance] = []
    try:
        for n in range(count):
            started.append(_configure(stack, tmp_path / f"node{n}", f"node{n}", shared,
                                      (dsn or (lambda _: cluster.dsn()))(f"node{n}"),
                                      env or {}, rollback or {}))
        leader = await the_leader(started)
        await daemon_event(leader.state, "release.known_good", timeout=40)
        yield Group(started, leader, leader.state)
    finally:
        for inst in started:
            with suppress(ProcessLookupError):
                os.kill(inst.proc.pid, signal.SIGCONT)
            stop_daemon(inst.proc)


async def the_leader(group: list[Instance], timeout: float = TAKEOVER) -> Instance:
    """Wait until exactly one live instance reports ``brace_watchdog_leader 1``."""
    deadline = time.monotonic() + timeout
    seen: list[float | None] = []
    while time.monotonic() < deadline:
        seen = await asyncio.gather(*(asyncio.to_thread(i.leader) for i in group))
        leaders = [i for i, value in zip(group, seen, strict=True) if value == 1.0]
        if len(leaders) == 1 and all(v is not None for v in seen):
            return leaders[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"no single leader within {timeout}s: {seen}\n"
                         + "\n".join(i.log() for i in group))


def rollback_actions(shared: Path) -> list[tuple[int, str, str]]:
    store = StateStore(shared).open()
    try:
        return [(a.id, a.status, a.step) for a in store.actions(kind="rollback")]
    finally:
        store.close()


def journal_steps(shared: Path, action_id: int) -> list[str]:
    store = StateStore(shared).open()
    try:
        return [e.kind for e in store.events(limit=100000) if e.action_id == action_id
                and e.kind.startswith("action.rollback.")]
    finally:
        store.close()


async def test_three_daemons_exactly_one_rolls_back_a_bad_deploy(
        stack: Stack, tmp_path: Path, pg_cluster: PgCluster) -> None:
    """Three hosts (a state file each, so no instance's local guards hide another's act): the
    followers watch the bad deploy, refuse gated requests naming the leader, and decide, escalate
    and journal nothing; the leader's one rollback is the only row in the shared journal."""
    async with instances(stack, tmp_path, pg_cluster, 3, hosts=True) as group:
        leader = group.leader
        follower = group.others()[0]
        for other in group.others():  # each follower has a rollback target of its own
            await daemon_event(other.state, "release.known_good", timeout=60)
        status = json.loads((await ctl("--socket", follower.socket, "--json", "status")).out)
        assert status["leadership"]["leader"]["host"] == leader.name
        assert not status["leadership"]["acts"]
        text = (await ctl("--socket", follower.socket, "status")).out
        assert f"leader: {leader.name} (pid {leader.proc.pid})" in text
        held = status["leadership"]["held_seconds"]
        assert isinstance(held, float) and held >= 0, status["leadership"]
        assert re.search(r", holding the lock for \d+s — another;", text), text
        for gated in ("app", "pg-hba"):  # an app rollback and a gated plan: ask the leader
            refused = await ctl("--socket", follower.socket, "rollback", gated, "--yes")
            assert refused.code == 1 and f"the leader is {leader.name}" in refused.err, refused
        stack.deploy("v2")
        await daemon_event(leader.state, "rollback.succeeded", timeout=60)
        await asyncio.sleep(3)  # time for a second instance to (wrongly) act too
        assert [status for _, status, _ in rollback_actions(leader.state)] == ["succeeded"]
        for other in group.others():
            assert await daemon_event(other.state, "deploy")  # it saw the bad deploy
            acted = [(e.kind, e.message) for e in events_of(other.state) if e.kind in (
                "escalation", "rollback.decision", "rollback.started", "action.rollback.begin")]
            assert acted == [] and rollback_actions(other.state) == [], (acted, other.log())
        rows = pg_cluster.psql("select host || '|' || kind || '|' || status "
                               "from brace_watchdog.journal")
        assert rows.splitlines() == [f"{leader.name}|rollback|succeeded"], rows
        assert await the_leader(group.members) is leader
    assert stack.running_images() == stack.all_on("v1")


def events_of(state: Path) -> list[Event]:
    store = StateStore(state).open()
    try:
        return store.events(limit=100000)
    finally:
        store.close()


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
async def test_a_dead_or_stopped_leader_is_replaced_within_the_lease_and_acts_once(
        stack: Stack, tmp_path: Path, pg_cluster: PgCluster, how: str) -> None:
    async with instances(stack, tmp_path, pg_cluster, 2) as group:
        old, shared = group.leader, group.shared
        if how == "SIGKILL":
            kill_daemon(old.proc)
        else:
            os.kill(old.proc.pid, signal.SIGSTOP)
        survivor = group.others()[0]
        assert await the_leader([survivor]) is survivor
        stack.deploy("v2")
        await daemon_event(shared, "rollback.succeeded", timeout=60)
        if how == "SIGSTOP":
            os.kill(old.proc.pid, signal.SIGCONT)  # it wakes up believing it leads
            await asyncio.sleep(LEASE)
            assert old.leader() == 0.0, old.log()
            assert await the_leader(group.members) is survivor
        await asyncio.sleep(2)
        assert [status for _, status, _ in rollback_actions(shared)] == ["succeeded"]
    assert stack.running_images() == stack.all_on("v1")


async def test_the_leaders_session_terminated_mid_rollback_stops_it_and_no_step_repeats(
        stack: Stack, tmp_path: Path, pg_cluster: PgCluster) -> None:
    async with instances(stack, tmp_path, pg_cluster, 2) as group:
        leader, shared = group.leader, group.shared
        stack.deploy("v2")
        await daemon_event(shared, "rollback.started", timeout=60)
        pg_cluster.psql("select pg_terminate_backend(pid) from pg_stat_activity "
                        f"where application_name like 'brace-watchdog@{leader.name}:%/%'")
        ended = await daemon_event(shared, "rollback.succeeded", "escalation", timeout=90)
        await asyncio.sleep(3)
        actions = rollback_actions(shared)
        assert len(actions) == 1, actions
        steps = journal_steps(shared, actions[0][0])
        assert "action.rollback.leadership_lost" in steps, (steps, leader.log())
        for step in ("retagged", "compose_done", "images_verified"):
            assert steps.count(f"action.rollback.{step}") <= 1, steps  # never repeated
        assert actions[0][1] in ("succeeded", "interrupted"), (actions, ended.message)
        await the_leader(group.members)



async def test_a_follower_on_another_host_keeps_its_own_known_good_for_after_a_takeover(
        stack: Stack, tmp_path: Path, pg_cluster: PgCluster) -> None:
    """Two hosts (a state file each), one PostgreSQL, one stack: the follower watches v1 itself
    and marks it known-good in its own state file, with its own image archives, while the other
    leads. The leader is SIGKILLed, a bad v2 follows, and the new leader rolls back to v1 and
    verifies it — once."""
    pg_cluster.psql("drop schema if exists brace_watchdog cascade")
    async with instances(stack, tmp_path, pg_cluster, 2, hosts=True) as group:
        old, new = group.leader, group.others()[0]
        promoted = await daemon_event(new.state, "release.known_good", timeout=60)
        v1 = promoted.evidence["release"]["fingerprint"]
        assert promoted.evidence["archived"], promoted
        assert list((new.state.parent / "images").glob("*.tar")), new.log()
        kill_daemon(old.proc)
        assert await the_leader([new]) is new
        stack.deploy("v2")
        started = await daemon_event(new.state, "rollback.started", "escalation", timeout=60)
        assert started.evidence["decision"]["known_good_release"] == v1, (started, new.log())
        await daemon_event(new.state, "rollback.succeeded", timeout=60)
        await asyncio.sleep(2)  # time for a second rollback (wrongly) to start
        assert [status for _, status, _ in rollback_actions(new.state)] == ["succeeded"]
        assert rollback_actions(old.state) == []
    assert stack.running_images() == stack.all_on("v1")


# (the failpoint that SIGKILLs the leader right after that journal entry, what the new leader
#  on the other host must conclude)
HANDOVER_STEPS = [("journal:retagged", "interrupted"), ("journal:compose_done", "succeeded")]


@pytest.mark.parametrize(("failpoint", "outcome"), HANDOVER_STEPS,
                         ids=[point.split(":")[1] for point, _ in HANDOVER_STEPS])
async def test_a_leader_on_another_host_adopts_the_rollback_the_killed_one_left_open(
        stack: Stack, tmp_path: Path, pg_cluster: PgCluster, failpoint: str,
        outcome: str) -> None:
    """Two hosts (a state file each), one PostgreSQL: the leader is SIGKILLed right after a
    journal step of its rollback; the other takes over within the lease, adopts the open
    rollback from the shared journal (the event names the host that left it) and completes it by
    verification or marks it interrupted and escalates — never retagging or running compose
    again. (Both instances are armed: only a rollback's own steps hit the failpoint, and the
    new leader only reconciles.)"""
    pg_cluster.psql("drop schema if exists brace_watchdog cascade")
    async with instances(stack, tmp_path, pg_cluster, 2, hosts=True,
                         env={FAILPOINTS: failpoint}) as group:
        old, new = group.leader, group.others()[0]
        stack.deploy("v2")
        assert await asyncio.to_thread(old.proc.wait, 90) == -signal.SIGKILL, old.log()
        assert await the_leader([new]) is new
        adopted = await daemon_event(new.state, "action.rollback.adopted", timeout=TAKEOVER)
        assert f"of {old.name} (pid {old.proc.pid})" in adopted.message, adopted
        left_at = adopted.evidence["adopted_from"]  # a step the old leader had journalled
        old_steps = journal_steps(old.state, left_at["action_id"])
        assert f"action.rollback.{left_at['step']}" in old_steps, (left_at, old_steps)
        await daemon_event(new.state, "action.rollback.interrupted", "rollback.succeeded",
                           timeout=90)
        await asyncio.sleep(2)
        assert [status for _, status, _ in rollback_actions(new.state)] == [outcome], new.log()
        redone = {"action.rollback.retagged", "action.rollback.compose_done"}
        assert not redone & set(journal_steps(new.state, adopted.action_id or 0))
        left = pg_cluster.psql("select count(*) from brace_watchdog.journal "
                               "where status in ('planned', 'running')")
        assert left == "0", pg_cluster.psql("table brace_watchdog.journal")
        store = StateStore(new.state).open()
        try:  # the adopter marks the release the rollback set out to leave: one attempt
            action = store.action(adopted.action_id or 0)
            assert action is not None
            left = store.release(action.plan["current"]["fingerprint"])
            assert left is not None and left.rolled_back_by == action.id, left
        finally:
            store.close()
        if outcome == "interrupted":
            store = StateStore(new.state).open()
            try:
                escalation = store.events(kinds=("escalation",))[-1]
                assert f"on {old.name} (pid {old.proc.pid}), which stopped leading" \
                    in escalation.message
                assert store.flag("automation_frozen") is not None
            finally:
                store.close()
    expected = "v2" if outcome == "interrupted" else "v1"
    assert stack.running_images()["backend"] == stack.images[expected]


async def test_a_partitioned_leader_stops_and_later_hands_its_open_rollback_over(
        stack: Stack, tmp_path: Path, pg_cluster: PgCluster) -> None:
    """Two hosts, each its own database role: the leader is cut off from PostgreSQL mid-rollback
    (its role may no longer log in, its session is ended) but keeps running. It stops before its
    next step; the other host adopts the rollback and escalates it. Back on the network and
    leading again, the old leader closes its copy as handed over and, as the adopter could not
    complete it, freezes automation too — no second recovery, escalation or rollback."""
    pg_cluster.psql("drop schema if exists brace_watchdog cascade;"
                    "create role node0 superuser login password 'pw';"
                    "create role node1 superuser login password 'pw'")
    # compose's up waits: the leader is caught in its compose step (killed on demotion)
    async with instances(stack, tmp_path, pg_cluster, 2, hosts=True,
                         rollback={"compose_command": slow_compose(600, stack.compose_command)},
                         dsn=lambda name: pg_cluster.dsn(user=name, password="pw")) as group:
        old, new = group.leader, group.others()[0]
        stack.deploy("v2")
        await daemon_event(old.state, "rollback.started", timeout=60)
        await asyncio.sleep(1)  # into the compose step
        pg_cluster.psql(f"alter role {old.name} nologin; select pg_terminate_backend(pid) "
                        f"from pg_stat_activity where usename = '{old.name}'")
        lost = await daemon_event(old.state, "action.rollback.leadership_lost", timeout=30)
        assert await the_leader(group.members) is new
        adopted = await daemon_event(new.state, "action.rollback.adopted", timeout=TAKEOVER)
        assert adopted.evidence["adopted_from"]["action_id"] == lost.action_id
        await daemon_event(new.state, "action.rollback.interrupted", timeout=60)
        pg_cluster.psql(f"alter role {old.name} login")
        stop_daemon(new.proc)  # the old leader, reconnected, leads again
        assert await the_leader([old]) is old
        await daemon_event(old.state, "action.rollback.handed_over", timeout=30)
        await asyncio.sleep(5)  # time to (wrongly) recover or roll back again
        assert [(s, step) for _, s, step in rollback_actions(old.state)] == [
            ("handed_over", "handed_over")], old.log()
        store = StateStore(old.state).open()
        try:
            assert store.events(kinds=("escalation",)) == []
            frozen = store.flag("automation_frozen")
            assert "its state there: interrupted" in frozen["reason"], frozen
        finally:
            store.close()
    assert stack.running_images()["backend"] == stack.images["v2"]


async def event_after(state: Path, since_id: int, *kinds: str, timeout: float = 60) -> Event:
    """The first event of ``kinds`` newer than event ``since_id`` (fails the test without)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        store = StateStore(state).open()
        try:
            found = store.events(since_id=since_id, kinds=kinds, limit=100000)
        finally:
            store.close()
        if found:
            return found[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"no {kinds} event after #{since_id} in {timeout}s")


def last_event_id(state: Path) -> int:
    store = StateStore(state).open()
    try:
        events = store.events(limit=1)
        return events[-1].id if events else 0
    finally:
        store.close()


@pytest.mark.parametrize(("redeploy", "reason"), [
    ({}, "rolled_back_before"),  # the same bad release again
    ({"NEXT": "1"}, "cooldown"),  # a new bad release, inside the cooldown of the old rollback
])
async def test_after_the_killed_leaders_rollback_the_next_escalates_a_bad_deploy_not_rolls_back(
        stack: Stack, tmp_path: Path, pg_cluster: PgCluster, redeploy: dict[str, str],
        reason: str) -> None:
    """Two hosts: the leader rolls back bad release v2 and is SIGKILLed; the other takes over
    the shared record of it — the release it left and when it rolled back — so when v2 is
    deployed again, or a new bad release within the cooldown (its own state file has no
    rollback), it escalates: no second rollback."""
    pg_cluster.psql("drop schema if exists brace_watchdog cascade")
    async with instances(stack, tmp_path, pg_cluster, 2, hosts=True) as group:
        old, new = group.leader, group.others()[0]
        await daemon_event(new.state, "release.known_good", timeout=60)
        stack.deploy("v2")
        await daemon_event(old.state, "rollback.succeeded", timeout=60)
        bad = rollback_plans(old.state)[0]["current"]["fingerprint"]
        await shared_says(pg_cluster, OPEN_SHARED, "0")  # its end reached PostgreSQL too
        kill_daemon(old.proc)
        assert await the_leader([new]) is new
        since = last_event_id(new.state)
        stack.deploy("v2", redeploy)
        escalation = await event_after(new.state, since, "escalation", "rollback.started")
        assert escalation.kind == "escalation", (escalation, new.log())
        assert escalation.evidence["reason"] == reason, escalation
        assert (escalation.evidence["current_release"] == bad) == (not redeploy)
        await asyncio.sleep(2)  # time for a rollback (wrongly) to start
        assert rollback_actions(new.state) == []
    assert stack.running_images()["backend"] == stack.images["v2"]


async def test_a_freeze_the_killed_leader_set_holds_on_the_next_until_an_operator_lifts_it(
        stack: Stack, tmp_path: Path, pg_cluster: PgCluster) -> None:
    """Two hosts: the leader's rollback to v1 fails verification, which freezes automation and
    marks v1 failed; then the leader is SIGKILLed. The other host leads frozen: a new bad
    release is held, not rolled back, until an operator unfreezes — there, and in PostgreSQL
    for every later leader; then it escalates (v1 failed verification) until the operator
    clears that mark too, and only then rolls back (no cooldown here: the old leader's failed
    rollback counts on the new one too, see the test above)."""
    pg_cluster.psql("drop schema if exists brace_watchdog cascade")
    async with instances(stack, tmp_path, pg_cluster, 2, hosts=True,
                         rollback={"verify_timeout_seconds": 5.0,
                                   "cooldown_seconds": 0.0}) as group:
        old, new = group.leader, group.others()[0]
        promoted = await daemon_event(new.state, "release.known_good", timeout=60)
        v1 = promoted.evidence["release"]["fingerprint"]
        stack.deploy("v2")
        stack.break_health(500)  # v1 fails too once it is back (not before the deploy: that
        # would not be the deploy's doing, and nothing would be rolled back)
        frozen = await asyncio.to_thread(wait_for_event, old.state, ("automation.frozen",), 90)
        assert frozen is not None, old.log()
        await shared_says(pg_cluster, FROZEN_SHARED, "1")
        kill_daemon(old.proc)
        stack.break_health(None)
        assert await the_leader([new]) is new
        since = last_event_id(new.state)
        stack.deploy("v2", {"NEXT": "1"})  # a new bad release
        held = await event_after(new.state, since, "rollback.decision", "rollback.started")
        assert held.evidence.get("reason") == "frozen", (held, new.log())
        await asyncio.sleep(2)
        assert rollback_actions(new.state) == []
        unfrozen = await ctl("--socket", new.socket, "unfreeze")
        assert unfrozen.code == 0, unfrozen
        await shared_says(pg_cluster, FROZEN_SHARED, "0")  # lifted for every later leader
        failed = await event_after(new.state, held.id, "rollback.decision", "rollback.started")
        assert failed.evidence.get("reason") == "target_failed_before", (failed, new.log())
        cleared = await ctl("--socket", new.socket, "releases", "clear-failed", v1[:12])
        assert cleared.code == 0, cleared
        await event_after(new.state, since, "rollback.succeeded", timeout=90)
        assert [status for _, status, _ in rollback_actions(new.state)] == ["succeeded"]
    assert stack.running_images() == stack.all_on("v1")


FROZEN_SHARED = ("select count(*) from brace_watchdog.guards where kind = 'flag' "
                 "and key = 'automation_frozen' and value is not null")
OPEN_SHARED = ("select count(*) from brace_watchdog.journal "
               "where status in ('planned', 'running')")


async def shared_says(cluster: PgCluster, sql: str, want: str, timeout: float = 30) -> None:
    """Until ``sql`` answers ``want`` in the shared tables (the leader writes them at once,
    but a moment after its own state file)."""
    deadline = time.monotonic() + timeout
    found = ""
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(cluster.psql, sql)
        if found == want:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{sql!r} answers {found!r}, not {want!r}, after {timeout}s")


def rollback_plans(state: Path) -> list[dict[str, Any]]:
    store = StateStore(state).open()
    try:
        return [a.plan for a in store.actions(kind="rollback")]
    finally:
        store.close()
