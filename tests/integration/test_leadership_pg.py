"""The leadership lock adapter and component against a real PostgreSQL: one session wins, every
session names the holder, a terminated or silent holder loses the lock, the gate follows."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest
from prometheus_client import CollectorRegistry

from brace_watchdog.actions.gated import resolve_interrupted
from brace_watchdog.adapters.pg_lock import AdvisoryLockSession
from brace_watchdog.config import parse_config
from brace_watchdog.errors import PostgresError, RefusedError
from brace_watchdog.leader_election import LeaderElection
from brace_watchdog.leadership import LeadershipLostError
from brace_watchdog.metrics import Metrics
from brace_watchdog.runtime import Hub
from brace_watchdog.shared_journal import MAX_PENDING
from brace_watchdog.state import StateStore
from tests.support.pg import PgCluster, start_cluster

KEY = 4242424242424242


@pytest.fixture(scope="module")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    """One server for the module (each test closes its sessions): ~10 s saved per test."""
    cluster = start_cluster(tmp_path_factory.mktemp("pg-leadership"))
    yield cluster
    cluster.stop()


async def _acquire_soon(session: AdvisoryLockSession, now: float) -> bool:
    """The old holder's backend exits a moment after its client went away: try for a while."""
    for _ in range(100):
        if await session.try_acquire(now):
            return True
        await asyncio.sleep(0.1)
    return False


def _session(cluster: PgCluster, host: str, *, lease: float = 30.0) -> AdvisoryLockSession:
    return AdvisoryLockSession(cluster.dsn(), key=KEY, host=host, pid=os.getpid(),
                               lease_seconds=lease, timeout_seconds=2.0)


async def test_one_session_wins_and_every_session_names_it(pg_cluster: PgCluster) -> None:
    a, b = _session(pg_cluster, "node-a"), _session(pg_cluster, "node-b")
    await a.connect()
    await b.connect()
    try:
        assert await b.holder() is None
        assert await a.try_acquire(1733100000.0)
        assert not await b.try_acquire(1733100001.0)
        assert await a.held() and not await b.held()
        for session in (a, b):
            holder = await session.holder()
            assert holder is not None
            assert (holder.host, holder.pid, holder.since) == ("node-a", os.getpid(),
                                                               1733100000.0)
        await a.close()  # closing the session frees the lock
        assert await _acquire_soon(b, 1733100002.0)
        assert (await b.holder()).host == "node-b"  # type: ignore[union-attr]
    finally:
        await a.close()
        await b.close()


async def test_a_terminated_session_is_noticed_and_the_lock_is_free(
        pg_cluster: PgCluster) -> None:
    a, b = _session(pg_cluster, "node-a"), _session(pg_cluster, "node-b")
    await a.connect()
    await b.connect()
    try:
        assert await a.try_acquire(1.0)
        pg_cluster.psql("select pg_terminate_backend(pid) from pg_stat_activity "
                        "where application_name like 'brace-watchdog@node-a:%'")
        with pytest.raises(PostgresError, match="leadership"):
            await a.held()
        assert not a.connected
        assert await _acquire_soon(b, 2.0)
    finally:
        await a.close()
        await b.close()


async def test_a_silent_holder_loses_its_session_after_the_lease(pg_cluster: PgCluster) -> None:
    a, b = _session(pg_cluster, "node-a", lease=1.0), _session(pg_cluster, "node-b")
    await a.connect()
    await b.connect()
    try:
        assert await a.try_acquire(1.0)
        # as a SIGSTOPped leader would: say nothing; PostgreSQL ends the idle session
        assert await _acquire_soon(b, 2.0)
    finally:
        await a.close()
        await b.close()


# A leader process that takes the lock and stops (hangs) inside run_locked's transaction.
_HOLDER_INSIDE = """
import asyncio, sys
from brace_watchdog.adapters.pg_lock import AdvisoryLockSession

async def main():
    session = AdvisoryLockSession(sys.argv[1], key=int(sys.argv[2]), host="stopped", pid=1,
                                  lease_seconds=float(sys.argv[3]), timeout_seconds=60)
    await session.connect()
    assert await session.try_acquire(1.0)

    async def work(conn):
        print("inside", flush=True)
        await asyncio.sleep(3600)

    await session.run_locked(work, "hang")

asyncio.run(main())
"""


async def test_a_holder_stopped_inside_its_locked_transaction_loses_the_lock_after_the_lease(
        pg_cluster: PgCluster) -> None:
    """SIGSTOPped (a hung VM) while its session is idle *in transaction*: PostgreSQL still ends
    the session after the lease and another one takes the lock."""
    lease = 1.0
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER_INSIDE, pg_cluster.dsn(), str(KEY),
                               str(lease)], stdout=subprocess.PIPE)
    other = _session(pg_cluster, "node-b")
    try:
        assert holder.stdout is not None
        line = await asyncio.to_thread(holder.stdout.readline)
        assert line == b"inside\n", (line, holder.poll())
        os.kill(holder.pid, signal.SIGSTOP)
        state = pg_cluster.psql("select state from pg_stat_activity "
                                "where application_name like 'brace-watchdog@stopped:%'")
        assert state == "idle in transaction"
        await other.connect()
        assert await _acquire_soon(other, 2.0)  # within lease + 10 s
    finally:
        holder.kill()
        holder.communicate()
        await other.close()


async def test_a_connection_refused_is_a_postgres_error(pg_cluster: PgCluster) -> None:
    session = AdvisoryLockSession(pg_cluster.dsn(password="wrong"), key=KEY, host="h", pid=1,
                                  lease_seconds=5, timeout_seconds=2)
    with pytest.raises(PostgresError, match="cannot connect"):
        await session.connect()
    with pytest.raises(PostgresError, match="no connection"):
        await session.held()


def _hub(cluster: PgCluster, tmp: str, name: str, dsn: str = "") -> Hub:
    config = parse_config({
        "daemon": {"state_path": f"{tmp}/{name}.db"}, "database": {"dsn": dsn or cluster.dsn()},
        "leadership": {"enabled": True, "name": name, "check_interval_seconds": 0.2,
                       "check_timeout_seconds": 1.0, "lease_seconds": 4.0, "lock_key": KEY}})
    return Hub(config=config, store=StateStore(config.daemon.state_path).open(),
               metrics=Metrics(CollectorRegistry(), process=False))


class Hosts:
    """Two hosts (a state file each, ``a`` and ``b``) on one PostgreSQL with an empty shared
    journal; every election made through :meth:`elect` is stopped at the end."""

    def __init__(self, cluster: PgCluster, tmp: str) -> None:
        cluster.psql("drop schema if exists brace_watchdog cascade")
        self.first, self.second = _hub(cluster, tmp, "a"), _hub(cluster, tmp, "b")
        self._elections: list[LeaderElection] = []

    def elect(self, hub: Hub) -> LeaderElection:
        """A (new, or restarted) daemon's election on ``hub``."""
        self._elections.append(LeaderElection(hub))
        return self._elections[-1]

    async def close(self) -> None:
        for election in self._elections:
            await election.stop()
        self.first.store.close()
        self.second.store.close()


@pytest.fixture
async def hosts(pg_cluster: PgCluster, tmp_path: object) -> AsyncIterator[Hosts]:
    made = Hosts(pg_cluster, str(tmp_path))
    yield made
    await made.close()


async def test_election_gates_actions_and_a_lost_lock_demotes_before_the_step(
        pg_cluster: PgCluster, tmp_path: object) -> None:
    first, second = _hub(pg_cluster, str(tmp_path), "a"), _hub(pg_cluster, str(tmp_path), "b")
    one, two = LeaderElection(first), LeaderElection(second)
    try:
        await one.start()
        await two.start()
        assert first.metrics.leader._value.get() == 1  # type: ignore[attr-defined]
        assert second.metrics.leader._value.get() == 0  # type: ignore[attr-defined]
        with pytest.raises(RefusedError, match="the leader is a "):
            second.action_lock.acquire("rollback", "manual")
        with pytest.raises(RefusedError, match=r"settling|waiting"):
            first.action_lock.check("rollback")
        await asyncio.sleep(first.config.leadership.settle_seconds + 0.1)
        await one.cycle()
        first.action_lock.check("rollback")
        await first.leadership.confirm("retag")
        lost: list[str] = []
        first.leadership.on_lost.append(lost.append)
        pg_cluster.psql("select pg_terminate_backend(pid) from pg_stat_activity "
                        "where application_name like 'brace-watchdog@a:%/%'")
        with pytest.raises(LeadershipLostError, match="before step 'compose'"):
            await first.leadership.confirm("compose")
        assert lost and first.metrics.leader._value.get() == 0  # type: ignore[attr-defined]
        for _ in range(100):
            await two.cycle()
            if second.leadership.view.held:
                break
            await asyncio.sleep(0.1)
        assert second.leadership.view.held
        changes = second.metrics.leadership_changes.labels(change="acquired")
        assert changes._value.get() == 1  # type: ignore[attr-defined]
        kinds = [e.kind for e in first.store.events(limit=100)]
        assert "leadership.lost" in kinds
    finally:
        await one.stop()
        await two.stop()
        first.store.close()
        second.store.close()


def _shared(cluster: PgCluster, where: str) -> list[str]:
    return cluster.psql("select host || '|' || action_id || '|' || status || '|' || step || '|' "
                        f"|| coalesce(adopted_by, '') from brace_watchdog.journal where {where} "
                        "order by updated_at").splitlines()


async def _lead(election: LeaderElection) -> None:
    for _ in range(100):
        with contextlib.suppress(PostgresError):
            await election.cycle()
        if election.hub.leadership.view.held:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{election.me.host} never took the lock")


async def test_a_failed_journal_write_demotes_the_leader_at_once(hosts: Hosts,
                                                                pg_cluster: PgCluster) -> None:
    """A write-through that fails closed the session (freeing the lock): the leader stops
    acting then, not at its next check (the split-brain margin counts on it)."""
    one = hosts.elect(hosts.first)
    await _lead(one)
    pg_cluster.psql("select pg_terminate_backend(pid) from pg_stat_activity "
                    "where application_name like 'brace-watchdog@a:%/%'")
    hosts.first.freeze("frozen by an operator", by="ops")  # written through at once, fails
    for _ in range(100):  # no election cycle runs here: only the write can demote
        if not hosts.first.leadership.view.held:
            break
        await asyncio.sleep(0.1)
    assert not hosts.first.leadership.view.held
    assert hosts.first.metrics.leader._value.get() == 0  # type: ignore[attr-defined]


async def test_a_leader_on_another_host_adopts_what_the_old_one_left_open(
        pg_cluster: PgCluster, hosts: Hosts) -> None:
    """Two state files (two hosts), one PostgreSQL: the leader's journal reaches the shared
    table under the lock; cut off, it writes nothing more; the new leader adopts its open
    action, escalates it as the restart path does (naming the old host), and the old leader,
    leading again later, hands it over instead of resuming it."""
    first, second = hosts.first, hosts.second
    one, two = hosts.elect(first), hosts.elect(second)
    await one.start()
    await two.start()
    assert first.leadership.view.held and not second.leadership.view.held
    action = first.store.begin_action("db_rollback", origin="manual", plan={"dump": "x"})
    first.store.journal_step(action, "writers_stopped", evidence={
        "state": {"writers": "stopped"}, "next_steps": ["start the writers"]})
    assert await one.journal.flush()
    assert _shared(pg_cluster, "true") == [f"a|{action}|running|writers_stopped|"]
    pg_cluster.psql("select pg_terminate_backend(pid) from pg_stat_activity "
                    "where application_name like 'brace-watchdog@a:%/%'")
    first.store.journal_step(action, "leadership_lost")  # partitioned: local only
    with pytest.raises(PostgresError):
        await one.journal.flush()
    first.leadership.demote("cut off")
    await _lead(two)
    adopted = second.store.open_actions()
    assert [(a.kind, a.step) for a in adopted] == [("db_rollback", "writers_stopped")]
    assert adopted[0].plan["adopted_from"]["host"] == "a"
    event = second.store.events(kinds=("action.db_rollback.adopted",))[0]
    assert f"db_rollback {action} of a (pid {os.getpid()})" in event.message
    assert second.metrics.actions_adopted.labels(  # type: ignore[attr-defined]
        kind="db_rollback")._value.get() == 1
    assert _shared(pg_cluster, "host = 'a'") == [
        f"a|{action}|adopted|writers_stopped|b as db_rollback {adopted[0].id}"]
    assert await resolve_interrupted(second) == [adopted[0].id]
    escalation = second.store.events(kinds=("escalation",))[-1]
    assert f"on a (pid {os.getpid()}), which stopped leading" in escalation.message
    assert "writers: stopped" in escalation.message
    assert await two.journal.flush()
    assert _shared(pg_cluster, "host = 'b'") == [
        f"b|{adopted[0].id}|interrupted|writers_stopped|"]
    await two.stop()  # b goes away; a, back from its partition, leads again
    await one.session.connect()
    await one.journal.follow()  # as a follower: b's freeze (of the adopted copy) holds here
    assert "was interrupted on a" in first.frozen()["reason"]  # type: ignore[index]
    await _lead(one)
    assert first.store.action(action).status == "handed_over"  # type: ignore[union-attr]
    frozen = first.frozen()  # with this host's reason, newer, and the one before it
    assert frozen is not None and "its state there: interrupted" in frozen["reason"], frozen
    assert f"(frozen before: db_rollback #{adopted[0].id} was interrupted" in frozen["reason"]
    assert await one.journal.flush()
    assert _shared(pg_cluster, "status in ('planned', 'running')") == []
    assert await resolve_interrupted(first) == []  # nothing left for the restart path


async def test_a_restarted_leader_settles_a_shared_row_its_closing_entry_never_reached(
        pg_cluster: PgCluster, tmp_path: object) -> None:
    """The close of an action was written locally but not to PostgreSQL (the daemon stopped
    first): on taking the lock again, the shared row is closed from the local record, so no
    other leader adopts a finished action."""
    pg_cluster.psql("drop schema if exists brace_watchdog cascade")
    hub = _hub(pg_cluster, str(tmp_path), "a")
    first = LeaderElection(hub)
    again: LeaderElection | None = None
    try:
        await first.start()
        action = hub.store.begin_action("rollback", origin="automatic", plan={"mode": "retag"})
        assert await first.journal.flush()
        hub.store.on_journal = None  # as if the process ended before the close went out
        hub.store.journal_step(action, "succeeded", status="succeeded", result="done")
        await first.stop()
        assert _shared(pg_cluster, "true") == [f"a|{action}|running|begin|"]
        again = LeaderElection(hub)  # the restarted daemon
        await _lead(again)
        assert _shared(pg_cluster, "true") == [f"a|{action}|succeeded|succeeded|"]
    finally:
        await first.stop()
        if again is not None:
            await again.stop()
        hub.store.close()


async def test_without_the_privilege_to_create_the_shared_journal_nobody_leads(
        pg_cluster: PgCluster, tmp_path: object) -> None:
    """A user that may not create the schema: a clear error, and the lock let go at once."""
    pg_cluster.psql("drop schema if exists brace_watchdog cascade;"
                    "drop role if exists weak; create role weak login password 'pw'")
    hub = _hub(pg_cluster, str(tmp_path), "weak",
               dsn=pg_cluster.dsn(user="weak", password="pw"))
    election = LeaderElection(hub)
    other = _session(pg_cluster, "node-b")
    try:
        with pytest.raises(PostgresError, match=r"shared journal: permission denied .*"
                                                r"docs/swarm\.md"):
            await election.start()
        assert not hub.leadership.view.held
        assert hub.metrics.leader._value.get() == 0  # type: ignore[attr-defined]
        await other.connect()
        assert await _acquire_soon(other, 1.0)  # the lock was let go
    finally:
        await other.close()
        await election.stop()
        hub.store.close()


def _guard_rows(cluster: PgCluster) -> list[str]:
    return cluster.psql("select kind || '|' || left(key, 12) || '|' || coalesce(value::text, '-') "
                        "|| '|' || host from brace_watchdog.guards order by kind, key").splitlines()


async def test_a_new_leader_on_another_host_keeps_the_old_ones_freeze_and_release_marks(
        pg_cluster: PgCluster, hosts: Hosts) -> None:
    """Two hosts: what the leader froze, which release its rollback left and which target
    failed verification reach PostgreSQL under the lock; the next leader takes them over
    before it acts (it never rolls that release back again nor targets that one, it acts on
    nothing while frozen); the operator's unfreeze and cleared mark there are written through,
    so the first host, leading again later, is neither frozen nor holding the mark."""
    first, second = hosts.first, hosts.second
    one, two = hosts.elect(first), hosts.elect(second)
    bad, good = "b" * 64, "9" * 64
    await one.start()
    await two.start()
    for fingerprint in (bad, good):
        first.store.upsert_release(fingerprint, first_seen=1.0, release={
            "fingerprint": fingerprint, "services": {}})
    action = first.store.begin_action("rollback", origin="automatic", plan={})
    first.store.mark_release_rolled_back(bad, at=100.0, action_id=action)
    first.store.mark_release_failed_verification(good, 110.0)
    first.store.journal_step(action, "failed", status="failed")  # nothing left to adopt
    first.freeze("rollback 1 failed verification", by="rollback")
    assert await one.journal.flush()
    await one.stop()  # a goes away; b (which never saw either release) leads
    await _lead(two)
    frozen = second.frozen()
    assert frozen is not None and frozen["reason"] == "rollback 1 failed verification"
    assert second.metrics.automation_frozen._value.get() == 1  # type: ignore[attr-defined]
    left, target = second.store.release(bad), second.store.release(good)
    assert left is not None and (left.rolled_back_at, left.rolled_back_by) == (100.0, None)
    assert target is not None and target.failed_verification_at == 110.0
    taken = [e.message for e in second.store.events(kinds=("leadership.guard",))]
    assert any("frozen by another leader" in m for m in taken), taken
    assert [row.split("|")[::3] for row in _guard_rows(pg_cluster)] == [
        ["failed_verification", "a"], ["flag", "a"], ["rollback_started", "a"],
        ["rolled_back", "a"]]
    started = first.store.action(action).created_at  # type: ignore[union-attr]
    assert list(second.store.rollback_starts(since=0.0).values()) == [started]  # rate limits
    second.unfreeze(by="ops")  # the operator, on the leader
    second.store.clear_release_failed(good)
    assert await two.journal.flush()
    rows = _guard_rows(pg_cluster)
    assert "flag|automation_f|-|b" in rows and "failed_verification|999999999999|-|b" in rows
    await two.stop()
    one = hosts.elect(first)  # a, restarted, leads again: both hold there too
    await _lead(one)
    assert first.frozen() is None
    assert first.metrics.automation_frozen._value.get() == 0  # type: ignore[attr-defined]
    assert first.store.release(good).failed_verification_at is None  # type: ignore[union-attr]


async def test_a_follower_changes_no_guard_and_a_newer_local_one_goes_out_at_takeover(
        pg_cluster: PgCluster, tmp_path: object) -> None:
    """A guard set while an instance does not lead is not queued; taking the lock later, the
    newer setting of it there is written out (and an older one there gives way)."""
    pg_cluster.psql("drop schema if exists brace_watchdog cascade")
    hub = _hub(pg_cluster, str(tmp_path), "a")
    election = LeaderElection(hub)
    try:
        hub.freeze("frozen while following", by="ops")
        assert not election.journal._pending  # a follower queues no guard
        await _lead(election)
        assert [row.split("|")[:2] for row in _guard_rows(pg_cluster)] == [
            ["flag", "automation_f"]]
        assert hub.frozen() is not None
    finally:
        await election.stop()
        hub.store.close()


async def test_more_than_a_hundred_open_actions_are_all_handed_over(
        pg_cluster: PgCluster, hosts: Hosts) -> None:
    """Every open action of this state file counts at takeover, not the newest hundred: the
    other host adopted all 120, so all 120 are handed over here — none resumed."""
    first, second = hosts.first, hosts.second
    one, two = hosts.elect(first), hosts.elect(second)
    await _lead(one)
    ids = [first.store.begin_action("rollback", origin="automatic", plan={})
           for _ in range(120)]
    assert await one.journal.flush()
    await one.stop()
    await _lead(two)
    assert len(second.store.open_actions()) == 120
    await two.stop()
    one = hosts.elect(first)
    await _lead(one)
    # (b's copies, never reconciled here as no component runs, are adopted back)
    assert {first.store.action(i).status for i in ids} == {  # type: ignore[union-attr]
        "handed_over"}


async def test_a_followers_queue_is_folded_and_written_the_same_once_it_leads(
        pg_cluster: PgCluster, hosts: Hosts, caplog: pytest.LogCaptureFixture) -> None:
    """A follower writes nothing, so its queue of journal entries is bounded: folded into one
    entry per action past MAX_PENDING (what it leaves in PostgreSQL once it leads is the same),
    and only when even that is too long are the oldest dropped — logged and counted."""
    first, second = hosts.first, hosts.second
    one, two = hosts.elect(first), hosts.elect(second)
    await _lead(two)
    await one.start()
    assert not first.leadership.view.held
    store = first.store
    kept = store.begin_action("db_rollback", origin="manual", plan={})
    ended = store.begin_action("rollback", origin="automatic", plan={})
    for n in range(MAX_PENDING):
        store.journal_step(kept, f"step{n}", evidence={"n": n})
    store.journal_step(ended, "succeeded", status="succeeded", result="done")
    assert len(one.journal._pending) <= MAX_PENDING
    assert first.metrics.shared_journal_dropped._value.get() == 0  # type: ignore[attr-defined]
    await two.stop()
    await _lead(one)
    assert _shared(pg_cluster, "host = 'a'") == [
        f"a|{kept}|running|step{MAX_PENDING - 1}|", f"a|{ended}|succeeded|succeeded|"]
    await one.stop()  # a follows again (b leads), and begins far too many actions
    two = hosts.elect(second)
    await _lead(two)
    one = hosts.elect(first)
    await one.start()
    for _ in range(MAX_PENDING + 1):
        store.begin_action("rollback", origin="automatic", plan={})
    assert len(one.journal._pending) <= MAX_PENDING
    assert first.metrics.shared_journal_dropped._value.get() > 0  # type: ignore[attr-defined]
    assert "the oldest" in caplog.text and "are dropped" in caplog.text


async def test_a_follower_takes_the_leaders_guards_over_without_leading(
        pg_cluster: PgCluster, hosts: Hosts) -> None:
    """Once per lease a follower reads the shared guards, so its status and
    brace_automation_frozen follow the leader's: frozen there, frozen here; lifted there (by
    an operator), lifted here — without it ever leading or writing a guard."""
    first, second = hosts.first, hosts.second
    one, two = hosts.elect(first), hosts.elect(second)
    await _lead(one)
    first.freeze("frozen by an operator", by="ops")
    assert await one.journal.flush()
    await two.start()
    assert not second.leadership.view.held
    frozen = second.frozen()
    assert frozen is not None and frozen["reason"] == "frozen by an operator"
    assert second.metrics.automation_frozen._value.get() == 1  # type: ignore[attr-defined]
    first.unfreeze(by="ops")
    assert await one.journal.flush()
    for _ in range(100):  # the next look comes within the lease (4 s here)
        await one.cycle()  # (a idle for the lease would lose its session, and the lock)
        await two.cycle()
        if second.frozen() is None:
            break
        await asyncio.sleep(0.1)
    assert second.frozen() is None and not second.leadership.view.held
    assert second.metrics.automation_frozen._value.get() == 0  # type: ignore[attr-defined]
    assert _guard_rows(pg_cluster) == ["flag|automation_f|-|a"]
