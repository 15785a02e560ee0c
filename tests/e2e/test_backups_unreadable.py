"""The backups folder unreadable by the daemon's user: a real ``brace-watchdog run`` as ``nobody``
(as root it could read any folder), the folder root's with mode 0700. The daemon says so in a
metric, in ``STATUS=`` and in one event, keeps probing and pinging, and recovers when the folder
becomes readable.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from brace_watchdog.dumps import MAGIC
from tests.support.daemon import Daemon
from tests.support.skips import skip_missing
from tests.support.webserver import switchable_server

USER = "nobody"
PROBES = "brace_health_probes_total{"


@contextmanager
def _folder_of(user: str) -> Iterator[Path]:
    """A folder ``user`` owns, outside pytest's root-only temp tree (removed afterwards)."""
    entry = pwd.getpwnam(user)
    work = Path(tempfile.mkdtemp(prefix="brace-unreadable-"))
    try:
        os.chown(work, entry.pw_uid, entry.pw_gid)
        os.chmod(work, 0o755)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _until(daemon: Daemon, what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {timeout}s\n{daemon.output()}"
        daemon.drain(0.3)


def _events(state: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(state) as conn:
        return list(conn.execute("SELECT kind, message FROM events "
                                 "WHERE kind LIKE 'backup.%' ORDER BY id"))


def test_unreadable_backups_folder(tmp_path: Path) -> None:
    del tmp_path  # root-only: the daemon's user could not reach it
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        skip_missing("root and setpriv(1), to run the daemon as an unprivileged user")
    with _folder_of(USER) as work, switchable_server() as server:
        backups = work / "backups"
        backups.mkdir(mode=0o700)  # root's: the daemon's user cannot list it
        dump = backups / datetime.now(UTC).strftime("brace_%Y%m%d_%H%M%S.dump")
        dump.write_bytes(MAGIC + b"\0" * 64)
        settled = time.time() - 600
        os.utime(dump, (settled, settled))
        daemon = Daemon(work, server, user=USER,
                        env={"BRACE_WATCHDOG__BACKUPS__INTERVAL_SECONDS": "0.5"})
        try:
            daemon.wait_for("READY=1")
            _until(daemon, "scan error", lambda: daemon.sample("brace_backup_scan_up") == 0.0)
            probes = daemon.total(PROBES)
            seen = daemon.drain(6.0)  # STATUS= goes out every 5 s; 12 scans fail meanwhile
            assert any(f"backups: ERROR: backup directory {backups} is not readable by the "
                       "daemon; fix its permissions" in m for m in seen), seen
            assert "WATCHDOG=1" in seen
            assert daemon.total(PROBES) > probes
            assert daemon.sample("brace_backup_fresh") == 0.0
            assert daemon.sample('brace_watchdog_component_up{component="backups"}') == 1.0
            backups.chmod(0o755)
            _until(daemon, "readable again", lambda: daemon.sample("brace_backup_scan_up") == 1.0
                   and daemon.sample("brace_backup_fresh") == 1.0)
        finally:
            daemon.close()
        events = _events(daemon.state_path)
    assert [kind for kind, _ in events] == ["backup.error", "backup.fresh"], events
    assert "is not readable by the daemon" in events[0][1]
