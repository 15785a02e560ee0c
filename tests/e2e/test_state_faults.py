"""The daemon as a process while its state file is locked by another process for 30 s, and while
the state file's disk (a small tmpfs) is full: it keeps probing, serving metrics and pinging the
watchdog, says so in a metric and in STATUS=, and every event lands once SQLite accepts writes.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from tests.support.daemon import Daemon
from tests.support.faults import fill_up, hold_write_lock, small_tmpfs
from tests.support.webserver import switchable_server

LOCK_SECONDS = 30.0
# The loop may lag under load; a blocked loop (SQLite's old 10 s busy wait) lags far more.
MAX_LOOP_LAG_SECONDS = 5.0
PROBES = "brace_health_probes_total{"


def _wait_until(daemon: Daemon, metric: str, value: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while daemon.sample(metric) != value:
        assert time.monotonic() < deadline, f"{metric} never became {value}\n{daemon.output()}"
        daemon.drain(0.5)


def _transitions(daemon: Daemon) -> list[tuple[float, str]]:
    with sqlite3.connect(daemon.state_path) as conn:
        return list(conn.execute("SELECT ts, message FROM events "
                                 "WHERE kind = 'health.transition' ORDER BY id"))


def test_state_file_locked_for_30s(tmp_path: Path) -> None:
    with switchable_server() as server:
        daemon = Daemon(tmp_path, server)
        try:
            daemon.wait_for("READY=1")
            _wait_until(daemon, 'brace_health_up{target="backend"}', 1.0)
            seen, probes, lags = [], [], []
            with hold_write_lock(daemon.state_path):
                locked_at = time.time()
                server.mode = "500"
                deadline = time.monotonic() + LOCK_SECONDS
                while time.monotonic() < deadline:
                    seen += daemon.drain(2.0)
                    probes.append(daemon.total(PROBES))
                    lags.append(daemon.sample("brace_watchdog_event_loop_lag_seconds") or 0.0)
                assert daemon.sample("brace_watchdog_state_store_up") == 0.0
            unlocked_at = time.time()
            _wait_until(daemon, "brace_watchdog_state_store_up", 1.0)
            assert daemon.sample("brace_watchdog_state_pending_writes") == 0.0
        finally:
            daemon.close()
    assert probes == sorted(probes) and probes[-1] > probes[0]
    assert max(lags) < MAX_LOOP_LAG_SECONDS, lags
    assert seen.count("WATCHDOG=1") >= LOCK_SECONDS / 4, seen
    assert any(m.startswith("STATUS=STATE STORE UNAVAILABLE (database is locked") for m in seen)
    assert [m for ts, m in _transitions(daemon) if locked_at <= ts <= unlocked_at]


def test_state_disk_full_then_freed(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "statefs", "2m") as fs, switchable_server() as server:
        daemon = Daemon(tmp_path, server, state_path="statefs/state.db")
        try:
            daemon.wait_for("READY=1")
            _wait_until(daemon, 'brace_health_up{target="backend"}', 1.0)
            filler = fill_up(fs)
            server.mode = "500"
            _wait_until(daemon, "brace_watchdog_state_store_up", 0.0)
            server.mode = "200"
            during = daemon.drain(6.0)
            assert "WATCHDOG=1" in during
            assert any(m.startswith("STATUS=STATE STORE UNAVAILABLE (database or disk is full")
                       for m in during), during
            assert daemon.total(PROBES) > 0
            filler.unlink()
            _wait_until(daemon, "brace_watchdog_state_store_up", 1.0)
            assert daemon.sample("brace_watchdog_state_pending_writes") == 0.0
            counted = daemon.total('brace_watchdog_events_total{kind="health.transition"}')
            assert counted >= 3 and len(_transitions(daemon)) == counted
        finally:
            daemon.close()
