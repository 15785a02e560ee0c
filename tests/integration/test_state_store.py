"""The SQLite state store on a real file: migrations, restarts, concurrency, start-up errors."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from brace_watchdog.actions.config_snapshot import ConfigSnapshot
from brace_watchdog.actions.promotion_policy import ReleaseHealth
from brace_watchdog.config import parse_config
from brace_watchdog.errors import StateError
from brace_watchdog.journal_handover import Guard, JournalEntry, SharedAction
from brace_watchdog.metrics import Metrics
from brace_watchdog.observations import Observations, ProbeSample
from brace_watchdog.runtime import Hub
from brace_watchdog.state import _MIGRATIONS, SCHEMA_VERSION, StateStore


def schema_script(version: int) -> str:
    """The SQL that made a state file of schema ``version`` (those versions are plain SQL)."""
    scripts = [m for m in _MIGRATIONS[:version] if isinstance(m, str)]
    assert len(scripts) == version
    return ";".join(scripts) + f"; PRAGMA user_version = {version};"


_MIGRATIONS_V1 = schema_script(1)


def _open_and_write(path: str) -> None:
    store = StateStore(path).open()
    store.append_event("test.opened", "worker", f"pid {os.getpid()}")
    store.close()


def test_history_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = StateStore(path).open()
    action = store.begin_action("app_rollback", origin="auto", plan={"to": "v1"})
    store.journal_step(action, "compose", evidence={"exit": 0})
    store.set_flag("automation_frozen", {"reason": "test"})
    store.close()

    reopened = StateStore(path).open()
    assert reopened.schema_version == SCHEMA_VERSION
    assert [e.kind for e in reopened.events()] == ["action.app_rollback.begin",
                                                   "action.app_rollback.compose"]
    assert [a.id for a in reopened.open_actions()] == [action]
    assert reopened.flag("automation_frozen") == {"reason": "test"}
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reopened.close()


def test_a_version_1_file_is_migrated_and_keeps_its_releases(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.executescript(schema_script(1))
    conn.execute("INSERT INTO releases (fingerprint, first_seen, services) VALUES ('f1', 5, '{}')")
    conn.commit()
    conn.close()
    store = StateStore(path).open()
    assert store.schema_version == SCHEMA_VERSION
    record = store.release("f1")
    assert record is not None and record.rolled_back_at is None and record.first_seen == 5
    store.mark_release_rolled_back("f1", at=42.0, action_id=7)
    store.close()
    again = StateStore(path).open()
    record = again.release("f1")
    assert record is not None and (record.rolled_back_at, record.rolled_back_by) == (42.0, 7)
    again.close()


def test_a_version_5_file_names_its_rollback_requests_as_the_actions(tmp_path: Path) -> None:
    """Audit rows of the old command names (``rollback-db``…) carry the action's name after the
    upgrade, like the rows written since (approvals always stored the action's name)."""
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.executescript(schema_script(5))
    old = ["rollback-db", "rollback-pg-hba", "rollback-docker-daemon", "rollback-app", "status"]
    conn.executemany("INSERT INTO audit (ts, uid, user, command, outcome) "
                     "VALUES (1, 0, 'root', ?, 'ok')", [(c,) for c in old])
    conn.commit()
    conn.close()
    store = StateStore(path).open()
    assert [r["command"] for r in store.audit_log(10)][::-1] == [
        "db_rollback", "pg_hba_rollback", "docker_daemon_rollback", "app_rollback", "status"]
    store.close()


def test_a_version_6_file_keeps_each_release_config_once_in_config_files(
        tmp_path: Path) -> None:
    """A release kept before version 5 (compose file and .env only) gets them as its
    config_files, at the paths they were read from; a newer row keeps its own; the two old
    columns are gone."""
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.executescript(schema_script(6))
    full = ConfigSnapshot((("/srv/b/dc.yml", b"new"), ("/srv/b/.env", None)))
    rows = [("old", "/srv/a", "/srv/a/infra/dc.yml", b"services: {}\n", b"TAG=1\n", None),
            ("nodir", "", "/srv/c/dc.yml", b"c", None, None),
            ("new", "/srv/b", "/srv/b/dc.yml", b"new", None, full.to_blob()),
            ("none", "", "", None, None, None)]
    conn.executemany("INSERT INTO releases (fingerprint, first_seen, services, working_dir, "
                     "compose_file, compose_snapshot, env_snapshot, config_files) "
                     "VALUES (?, 1, '{}', ?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()
    store = StateStore(path).open()
    try:
        def files(fingerprint: str) -> ConfigSnapshot | None:
            record = store.release(fingerprint)
            assert record is not None
            return ConfigSnapshot.from_blob(record.config_files)

        assert files("old") == ConfigSnapshot((("/srv/a/infra/dc.yml", b"services: {}\n"),
                                                ("/srv/a/.env", b"TAG=1\n")))
        assert files("nodir") == ConfigSnapshot((("/srv/c/dc.yml", b"c"),
                                                  ("/srv/c/.env", None)))
        assert files("new") == full and files("none") is None
        columns = {row[1] for row in store.query("PRAGMA table_info(releases)")}
        assert "config_files" in columns and not columns & {"compose_snapshot", "env_snapshot"}
    finally:
        store.close()


def test_concurrent_first_opens_migrate_once(tmp_path: Path) -> None:
    """The daemon and a one-shot command opening a new file at the same moment."""
    context = multiprocessing.get_context("spawn")
    for round_number in range(5):
        path = str(tmp_path / f"state{round_number}.db")
        workers = [context.Process(target=_open_and_write, args=(path,)) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        assert [w.exitcode for w in workers] == [0, 0, 0, 0]
        store = StateStore(path).open()
        assert len(store.events()) == 4
        store.close()


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"definitely not sqlite " * 200)
    with pytest.raises(StateError, match=r"unusable .* move it aside"):
        StateStore(path).open()


def test_schema_from_the_future_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(StateError, match="newer than this daemon"):
        StateStore(path).open()


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StateError, match="cannot create state folder"):
        StateStore(blocker / "sub" / "state.db").open()


def test_event_filters(tmp_path: Path) -> None:
    clock = iter(range(100, 200)).__next__
    store = StateStore(tmp_path / "s.db", clock=lambda: float(clock())).open()
    first = store.append_event("a", "x", "one")
    store.append_event("b", "x", "two")
    action = store.begin_action("k", origin="operator", plan={}, requester="alice")
    assert [e.message for e in store.events(kinds=("b",))] == ["two"]
    assert [e.message for e in store.events(since_id=first, kinds=("a", "b"))] == ["two"]
    assert [e.kind for e in store.events(action_id=action)] == ["action.k.begin"]
    assert len(store.events(since_ts=101)) == 2
    assert len(store.events(limit=1)) == 1
    assert [a.requester for a in store.actions(kind="k", statuses=("running",))] == ["alice"]
    store.close()


def test_journal_events_are_logged_and_counted_like_recorded_ones(tmp_path: Path) -> None:
    hub = Hub(config=parse_config({}), store=StateStore(tmp_path / "s.db").open(),
              metrics=Metrics(CollectorRegistry(), process=False))
    action = hub.store.begin_action("db_rollback", origin="operator", plan={})
    hub.store.journal_step(action, "restoring")
    hub.record("backup.stale", "backups", "stale")
    for kind in ("action.db_rollback.begin", "action.db_rollback.restoring", "backup.stale"):
        assert hub.metrics.registry.get_sample_value(
            "brace_watchdog_events_total", {"kind": kind}) == 1.0
    hub.store.close()


def test_window_resize_keeps_the_newest_samples() -> None:
    observations = Observations(window_size=5)
    for i in range(5):
        observations.add_probe(ProbeSample(ts=float(i), target="backend", result="ok"))
    observations.resize(3)
    assert [s.ts for s in observations.samples("backend")] == [2.0, 3.0, 4.0]
    observations.add_probe(ProbeSample(ts=5.0, target="backend", result="ok"))
    assert len(observations.samples("backend")) == 3


def test_release_health_evidence_survives_a_restart_and_a_v1_file_migrates(
        tmp_path: Path) -> None:
    """A state file of schema v1 (before release_health) gains the table; evidence written by
    one process is read back, exactly, by the next."""
    path = tmp_path / "state.db"
    old = sqlite3.connect(path)
    old.executescript(_MIGRATIONS_V1)
    old.execute("PRAGMA user_version = 1")
    old.close()
    store = StateStore(path).open()
    evidence = ReleaseHealth("f" * 64, observed_until=12.5, healthy_seconds=3.25,
                             watched_seconds=4.0, ok_samples=9, failing_samples=1,
                             last_bad_at=8.0, last_failing_at=8.0)
    store.save_release_health(evidence.to_dict())
    store.save_release_health(replace(evidence, ok_samples=10).to_dict())  # replaces
    store.close()
    reopened = StateStore(path).open()
    assert reopened.schema_version == SCHEMA_VERSION
    saved = reopened.release_health("f" * 64)
    assert saved is not None
    assert ReleaseHealth.from_dict(saved) == replace(evidence, ok_samples=10)
    assert reopened.release_health("0" * 64) is None
    reopened.close()


def test_the_journal_hook_sees_every_write_and_an_adopted_action_keeps_where_it_came_from(
        tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store, other = StateStore(path).open(), StateStore(path).open()
    written: list[JournalEntry | Guard] = []
    store.on_journal = written.append
    try:
        identity = store.store_identity()
        assert len(identity) == 32 and other.store_identity() == identity
        action = store.begin_action("rollback", origin="automatic", plan={"mode": "retag"})
        store.journal_step(action, "retagged", evidence={"retags": 1})
        store.journal_step(action, "succeeded", status="succeeded", result="done")
        assert written[1] == Guard("rollback_started", f"{identity}/{action}", {},
                                   written[0].ts)  # the rate limits' record, shared
        seen = [entry for entry in written if isinstance(entry, JournalEntry)]
        assert [(e.action_id, e.step, e.status) for e in seen] == [
            (action, "begin", "running"), (action, "retagged", None),
            (action, "succeeded", "succeeded")]
        assert seen[0].start is not None and seen[0].start.plan == {"mode": "retag"}
        assert seen[1].evidence == {"retags": 1} and seen[2].result == "done"
        shared = SharedAction(store_id="elsewhere", action_id=7, host="db-1", pid=42,
                              kind="db_rollback", origin="control", requester="root",
                              status="running", step="writers_stopped", plan={"dump": "x"},
                              evidence={"state": {"writers": "stopped"}}, updated_at=1.0)
        adopted = store.adopt_action(shared, "left open by db-1")
        record = store.action(adopted)
        assert record is not None and (record.status, record.step) == ("running",
                                                                       "writers_stopped")
        assert record.plan == {"dump": "x", "adopted_from": shared.origin_note()}
        assert store.last_journal_evidence(adopted)["state"] == {"writers": "stopped"}
        assert store.events(kinds=("action.db_rollback.adopted",))[0].message == \
            "left open by db-1"
        last = written[-1]  # an adoption adds no guard: only a rollback's own begin does
        assert isinstance(last, JournalEntry) and last.start is not None
        assert last.step == "writers_stopped"
        assert store.adopted_keys() == {("elsewhere", 7): adopted}
    finally:
        store.close()
        other.close()
    reopened = StateStore(path).open()
    writer = sqlite3.connect(path, isolation_level=None)
    try:  # once made, it is read: no write transaction, so a writer elsewhere does not stop it
        writer.execute("BEGIN IMMEDIATE")
        assert reopened.store_identity() == identity
    finally:
        writer.close()
        reopened.close()


def _mark(store: StateStore, fingerprint: str, *, at: float, since: float, who: str) -> bool:
    return store.mark_known_good(fingerprint, at=at, alembic_revision=None, compose_file="",
                                 config_files=None, extra={"by": who}, since=since)


def test_a_version_8_file_gains_kept_service_specs(tmp_path: Path) -> None:
    """Version 9 keeps a Swarm release's container specs with its known-good mark: a file from
    before has none (a rollback then refuses what only the spec could restore); a later mark
    without specs keeps those kept."""
    path = tmp_path / "state.db"
    StateStore(path).open().close()
    conn = sqlite3.connect(path)
    conn.executescript("ALTER TABLE releases DROP COLUMN service_specs; "
                       "INSERT INTO releases (fingerprint, first_seen, services) "
                       "VALUES ('old', 1, '{}'); PRAGMA user_version = 8;")
    conn.close()
    store = StateStore(path).open()
    try:
        assert store.schema_version == SCHEMA_VERSION == 9
        record = store.release("old")
        assert record is not None and record.service_specs is None
        assert store.mark_known_good("old", at=2.0, alembic_revision=None, compose_file="",
                                     config_files=None, service_specs=b'{"api": {}}')
        assert _mark(store, "old", at=3.0, since=2.5, who="again")
        record = store.release("old")
        assert record is not None and record.service_specs == b'{"api": {}}'
    finally:
        store.close()


def test_two_instances_sharing_a_state_file_promote_a_release_once(tmp_path: Path) -> None:
    """Leader and follower on one state file both watch a release (seen at 100 and 101); the
    first to mark it known-good wins, the other's mark is refused. A later sighting (a redeploy
    of it, seen at 500) is promoted anew."""
    path = tmp_path / "state.db"
    leader, follower = StateStore(path).open(), StateStore(path).open()
    fingerprint = "e" * 64
    leader.upsert_release(fingerprint, release={"fingerprint": fingerprint}, first_seen=100.0)
    assert _mark(leader, fingerprint, at=160.0, since=100.0, who="leader")
    assert not _mark(follower, fingerprint, at=161.0, since=101.0, who="follower")
    record = follower.release(fingerprint)
    assert record is not None and record.known_good_at == 160.0
    assert record.extra["by"] == "leader"
    assert _mark(follower, fingerprint, at=560.0, since=500.0, who="follower")
    assert [r.known_good_at for r in leader.known_good_releases()] == [560.0]
    leader.close()
    follower.close()


def test_each_rollback_counts_once_for_the_rate_limits_wherever_it_began(tmp_path: Path) -> None:
    """A rollback here, one another leader shared, and one adopted from a third host (shared
    too, earlier): three starts, the adopted one at its adoption here (the later sighting);
    each is a shared guard of this state file."""
    now = [100.0]
    store = StateStore(tmp_path / "state.db", clock=lambda: now[0]).open()
    try:
        own = store.begin_action("rollback", origin="automatic", plan={})
        store.begin_action("db_rollback", origin="control", plan={})  # not rate-limited
        assert store.apply_guard(Guard("rollback_started", "there/3", {}, 95.0))
        assert store.apply_guard(Guard("rollback_started", "third/5", {}, 90.0))
        now[0] = 120.0
        store.adopt_action(SharedAction(
            store_id="third", action_id=5, host="db-3", pid=1, kind="rollback",
            origin="automatic", requester="", status="running", step="retagged", plan={},
            evidence={}, updated_at=90.0), "adopted")
        starts = {f"{store.store_identity()}/{own}": 100.0, "there/3": 95.0, "third/5": 120.0}
        assert store.rollback_starts(since=0.0) == starts
        assert store.rollback_starts(since=96.0) == {k: v for k, v in starts.items() if v > 96}
        assert {g.key: g.ts for g in store.guards() if g.kind == "rollback_started"} == starts
    finally:
        store.close()
