"""SIGKILL of the daemon in the middle of a restore test, at each stage long enough to be caught
(``starting``, ``restoring``, ``cleaning``; ``verifying`` takes a tenth of a second): the restarted
daemon removes the throwaway server the killed one left (stopping its postmaster), records
nothing for the cut run, and its next restore test passes. Real PostgreSQL, real processes.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from brace_watchdog.adapters.postgres import LOCAL_PREFIX
from tests.support.daemon import Daemon
from tests.support.pg import PG_BIN, PgCluster, make_brace_dump
from tests.support.webserver import switchable_server

ROWS = 100_000  # a dump large enough that pg_restore runs for a moment


def _kill_at(daemon: Daemon, stage: str) -> int:
    """SIGKILL the daemon (only it) as soon as its restore test is in ``stage``; the killed
    pid."""
    daemon.wait_restore_stage(stage)
    pid = daemon.proc.pid
    daemon.restart()
    return pid


def _left_by(pid: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"{LOCAL_PREFIX}{pid}-*"))


def _count(state: Path, sql: str) -> int:
    with sqlite3.connect(state) as conn:
        return int(conn.execute(sql).fetchone()[0])


def _wait_count(daemon: Daemon, sql: str, at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _count(daemon.state_path, sql) < at_least:
        assert time.monotonic() < deadline, f"{sql} < {at_least}\n{daemon.output()[-3000:]}"
        daemon.drain(0.3)


def test_sigkill_at_each_restore_stage_leaves_nothing_behind(pg_cluster: PgCluster,
                                                              tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    name = datetime.now(UTC).strftime("brace_%Y%m%d_%H%M%S.dump")
    make_brace_dump(pg_cluster, backups / name, rows=ROWS)
    pre = "BRACE_WATCHDOG__RESTORE_TEST__"
    env = {f"{pre}ENABLED": "true", f"{pre}BACKEND": "local", f"{pre}LOCAL_BIN_DIR": str(PG_BIN),
           f"{pre}TIMEOUT_SECONDS": "300", "BRACE_WATCHDOG__BACKUPS__SETTLE_SECONDS": "0"}
    orphans = "SELECT count(*) FROM events WHERE kind = 'restore_test.orphans_removed'"
    with switchable_server() as server:
        daemon = Daemon(tmp_path, server, env=env)
        try:
            killed = []
            for number, stage in enumerate(("starting", "restoring", "cleaning"), start=1):
                killed.append(_kill_at(daemon, stage))
                _wait_count(daemon, orphans, number)
            _wait_count(daemon, "SELECT count(*) FROM restore_results", 1)
            assert daemon.proc.poll() is None, daemon.output()
        finally:
            daemon.close()
    for pid in killed:
        assert _left_by(pid) == [], pid
    assert _count(daemon.state_path, "SELECT count(*) FROM restore_results") == 1
    assert _count(daemon.state_path, "SELECT count(*) FROM restore_results WHERE passed") == 1
    assert _count(daemon.state_path, "SELECT count(*) FROM events WHERE kind = "
                  "'restore_test.started'") == 4
