"""The state store when its file is locked by another process or its disk is full: writes are
queued in order, never block a caller for long, never stop the daemon, and land once SQLite
accepts them again. Real files, a real competing process, a real full tmpfs.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from brace_watchdog.config import parse_config
from brace_watchdog.errors import StateError, StateUnavailableError
from brace_watchdog.metrics import Metrics
from brace_watchdog.runtime import Hub
from brace_watchdog.state import StateStore
from tests.support.faults import fill_up, hold_write_lock, small_tmpfs

# Old SQLite default busy wait was 10 s; a write that returns within this is not held by a lock.
NOT_HELD_SECONDS = 5.0


def _hub(store: StateStore) -> Hub:
    return Hub(config=parse_config({}), store=store,
               metrics=Metrics(CollectorRegistry(), process=False))


def _sample(hub: Hub, name: str, labels: dict[str, str] | None = None) -> float | None:
    return hub.metrics.registry.get_sample_value(name, labels or {})


def test_locked_file_queues_writes_in_order_then_flushes(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    hub = _hub(StateStore(path).open())
    store = hub.store
    action = store.begin_action("rollback", origin="auto", plan={})
    with hold_write_lock(path):
        started = time.monotonic()
        assert hub.record("health.transition", "health", "backend ok -> 500") == 0
        assert time.monotonic() - started < NOT_HELD_SECONDS
        store.journal_step(action, "compose_up", evidence={"exit": 0})
        hub.freeze("test", by="test")
        store.audit(uid=0, user="root", command="status", outcome="ok")
        health = store.health()
        assert not health.writable and "locked" in health.reason and health.pending == 5
        assert hub.frozen() is not None  # the process's own flags stay readable
        assert "STATE STORE UNAVAILABLE (database is locked; 5 writes queued)" in hub.status_line()
        with pytest.raises(StateUnavailableError, match="5 writes queued"):
            store.begin_action("rollback", origin="auto", plan={})
        assert not hub.flush_store().writable
        assert _sample(hub, "brace_watchdog_state_store_up") == 0.0
        assert _sample(hub, "brace_watchdog_state_pending_writes") == 5.0
        assert (_sample(hub, "brace_watchdog_state_write_failures_total", {"reason": "locked"})
                or 0) >= 2
    assert hub.flush_store().writable
    assert _sample(hub, "brace_watchdog_state_store_up") == 1.0
    assert _sample(hub, "brace_watchdog_state_pending_writes") == 0.0
    assert [e.kind for e in store.events()] == [
        "action.rollback.begin", "health.transition", "action.rollback.compose_up",
        "automation.frozen"]
    assert store.action(action).step == "compose_up"  # type: ignore[union-attr]
    assert store.audit_log()[0]["command"] == "status"
    assert store.flag("locker") is True  # the competing writer's row landed too
    assert "STATE STORE" not in hub.status_line()
    store.close()


def test_close_writes_what_is_queued(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = StateStore(path).open()
    with hold_write_lock(path):
        store.append_event("a", "x", "queued while locked")
    store.close()
    reopened = StateStore(path).open()
    assert [e.message for e in reopened.events()] == ["queued while locked"]
    reopened.close()


def test_a_full_queue_drops_the_oldest_and_counts_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    hub = _hub(StateStore(path, max_pending=2).open())
    with hold_write_lock(path):
        for n in range(3):
            hub.record("n", "x", str(n))
        assert hub.store.health().dropped == 1
        hub.flush_store()
    assert hub.flush_store().writable
    assert _sample(hub, "brace_watchdog_state_writes_dropped_total") == 1.0
    assert [e.message for e in hub.store.events()] == ["1", "2"]
    hub.store.close()


def test_full_disk_degrades_then_recovers_when_space_returns(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "fs") as fs:
        hub = _hub(StateStore(fs / "state.db").open())
        hub.record("before", "x", "written")
        filler = fill_up(fs)
        for n in range(200):  # the WAL grows a page per commit until the disk refuses one
            hub.record("during", "x", f"event {n}", evidence={"pad": "x" * 2000})
            if not hub.store.health().writable:
                break
        health = hub.store.health()
        assert not health.writable and "full" in health.reason, health
        assert _sample(hub, "brace_watchdog_state_write_failures_total", {"reason": "full"})
        assert not hub.flush_store().writable
        filler.unlink()
        assert hub.flush_store().writable
        kinds = [e.kind for e in hub.store.events(limit=500)]
        assert kinds[0] == "before" and kinds.count("during") == n + 1
        hub.store.close()


def test_other_sqlite_errors_stay_fatal(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db").open()
    with pytest.raises(StateError, match="no such table"):
        store.execute("INSERT INTO nowhere VALUES (1)")
    with pytest.raises(sqlite3.IntegrityError):
        store.execute("INSERT INTO flags (name, value, updated_at) VALUES ('x', NULL, 0)")
    assert store.health().writable
    store.close()
