"""Failpoints (``BRACE_WATCHDOG_FAILPOINTS``): a process that arms one is SIGKILLed right after
that journal entry is committed, and only then; a bad value stops the daemon at start."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from brace_watchdog.errors import ConfigError
from brace_watchdog.failpoints import ENV, parse
from tests.support.daemon import BIN

JOURNAL = """
import sys
from brace_watchdog.state import StateStore
store = StateStore(sys.argv[1])
store.open()
action = store.begin_action("pg_hba_rollback", origin="test", plan={})
for step in ("keeping_current", "keeping_current", "restoring", "reloading"):
    store.journal_step(action, step)
store.journal_step(action, "done", status="succeeded")
"""


def _journal(tmp_path: Path, armed: str | None) -> tuple[int, list[str], str]:
    env = {"PATH": "/usr/bin:/bin"} | ({ENV: armed} if armed is not None else {})
    state = tmp_path / "state.db"
    done = subprocess.run([sys.executable, "-c", JOURNAL, str(state)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    with contextlib.closing(sqlite3.connect(state)) as conn:
        steps = [str(row[0]) for row in conn.execute(
            "SELECT kind FROM events WHERE action_id IS NOT NULL ORDER BY id")]
    return done.returncode, [step.rsplit(".", 1)[1] for step in steps], done.stderr


@pytest.mark.parametrize(("armed", "steps"), [
    ("journal:begin", ["begin"]),
    ("journal:keeping_current", ["begin", "keeping_current"]),
    ("journal:keeping_current@2", ["begin", "keeping_current", "keeping_current"]),
    ("journal:nowhere, journal:restoring", ["begin", "keeping_current", "keeping_current",
                                            "restoring"]),
])
def test_an_armed_failpoint_kills_right_after_its_entry_is_committed(
        tmp_path: Path, armed: str, steps: list[str]) -> None:
    code, journaled, stderr = _journal(tmp_path, armed)
    assert code == -signal.SIGKILL, stderr
    assert journaled == steps


@pytest.mark.parametrize("armed", [None, "", "journal:smoke,journal:keeping_current@3"])
def test_unarmed_failpoints_change_nothing(tmp_path: Path, armed: str | None) -> None:
    code, journaled, stderr = _journal(tmp_path, armed)
    assert code == 0, stderr
    assert journaled == ["begin", "keeping_current", "keeping_current", "restoring",
                         "reloading", "done"]


def test_parse() -> None:
    assert parse("") == {}
    assert parse(" journal:a , journal:b@3,") == {"journal:a": 1, "journal:b": 3}
    for bad in ("journal:a@0", "journal:a@x", "@2", "journal:a@-1"):
        with pytest.raises(ConfigError, match=ENV):
            parse(bad)


def test_a_bad_value_stops_the_daemon_at_start(tmp_path: Path) -> None:
    config = tmp_path / "brace-watchdog.toml"
    config.write_text("")
    done = subprocess.run([str(BIN), "check-config", "--config", str(config)],
                          env={"PATH": "/usr/bin:/bin", ENV: "journal:begin@0"},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done
    assert f"invalid configuration in {ENV}" in done.stderr
    assert "'journal:begin@0': expected NAME or NAME@N with N >= 1" in done.stderr
