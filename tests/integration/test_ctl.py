"""brace-watchdogctl as operators run it: a real process talking to a real control socket.

Exit codes: 0 ok, 1 failed/refused/not confirmed, 2 usage, 3 denied, 4 daemon unreachable."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

from tests.integration.control_helpers import REPO, control_server, ctl, short_dir


async def test_help_via_the_console_script() -> None:
    script = REPO / ".venv" / "bin" / "brace-watchdogctl"
    proc = await asyncio.create_subprocess_exec(str(script), "--help",
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    text = out.decode()
    for word in ("status", "events", "explain", "timeline", "backups", "restore-test",
                 "rollback", "approve", "freeze", "unfreeze", "ack", "--json", "--socket",
                 "exit codes"):
        assert word in text


async def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert (await ctl()).code == 2
    assert (await ctl("--socket", "/x", "explain", "notanumber")).code == 2
    assert (await ctl("--socket", "/x", "rollback", "everything")).code == 2
    async with control_server(tmp_path) as env:
        run = await ctl("--socket", str(env.socket), "rollback", "db")
        assert run.code == 2 and "--dump" in run.err
        run = await ctl("--socket", str(env.socket), "events", "--limit", "0")
        assert run.code == 2 and "bad_args" in run.err and ">= 1" in run.err


async def test_unreachable_daemon_exits_4() -> None:
    folder = short_dir()
    try:
        run = await ctl("--socket", str(folder / "missing.sock"), "status")
        assert run.code == 4 and "no control socket" in run.err
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(folder / "stale.sock"))
        stale.close()
        run = await ctl("--socket", str(folder / "stale.sock"), "status")
        assert run.code == 4 and "cannot talk to" in run.err
    finally:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


async def test_denied_exits_3(tmp_path: Path) -> None:
    async with control_server(tmp_path, {"control": {"group": "nogroup"}}) as env:
        run = await ctl("--socket", str(env.socket), "events", as_nobody=True)
        assert run.code == 3 and "denied" in run.err


async def test_socket_path_comes_from_the_config(tmp_path: Path) -> None:
    async with control_server(tmp_path) as env:
        config = tmp_path / "watchdog.toml"
        config.write_text(f'[control]\nsocket = "{env.socket}"\n')
        run = await ctl("--config", str(config), "status")
        assert run.code == 0, run
        assert "automation: on" in run.out
        bad = tmp_path / "bad.toml"
        bad.write_text("[control]\nsocket = 5\n")
        run = await ctl("--config", str(bad), "status")
        assert run.code == 2 and "control.socket: must be a string" in run.err


async def test_tables_by_default_json_everywhere(tmp_path: Path) -> None:
    async with control_server(tmp_path) as env:
        sock = ["--socket", str(env.socket)]
        event_id = env.hub.record("health.failing", "health", "backend answers 503",
                                  severity="warning", evidence={"status": 503})
        run = await ctl(*sock, "events")
        assert run.code == 0 and run.out.splitlines()[0].split()[:4] == [
            "ID", "TIME", "(UTC)", "SEVERITY"]
        assert "backend answers 503" in run.out
        for argv in (["--json", "events"], ["events", "--json"]):
            data = (await ctl(*sock, *argv)).json()
            assert data["events"][-1]["message"] == "backend answers 503"
        run = await ctl(*sock, "explain", str(event_id))
        assert '"status": 503' in run.out
        run = await ctl(*sock, "backups")
        assert run.code == 0 and "NAME" in run.out
        run = await ctl(*sock, "timeline")
        assert run.out.startswith("# Post-mortem draft")
        run = await ctl(*sock, "freeze", "--reason", "maintenance")
        assert run.code == 0 and (await ctl(*sock, "status")).out.count("FROZEN: maintenance")
        assert json.loads((await ctl(*sock, "unfreeze", "--json")).out) == {"frozen": None}
        assert (await ctl(*sock, "ack")).code == 0


async def test_failed_and_unavailable_exit_1(tmp_path: Path) -> None:
    async with control_server(tmp_path) as env:
        run = await ctl("--socket", str(env.socket), "restore-test")
        assert run.code == 1 and "unavailable" in run.err
        run = await ctl("--socket", str(env.socket), "approve", "--yes",
                        stdin="bwt_not-a-token\n")
        assert run.code == 1 and "unknown token" in run.err


async def test_releases_lists_marks_and_clear_failed_is_audited(tmp_path: Path) -> None:
    async with control_server(tmp_path) as env:
        store, sock = env.hub.store, ["--socket", str(env.socket)]
        for fingerprint, seen in (("aaaa" * 16, 10.0), ("bbbb" * 16, 20.0), ("bbbc" * 16, 30.0)):
            store.upsert_release(fingerprint, release={"working_dir": "/srv"}, first_seen=seen)
        store.mark_known_good("aaaa" * 16, at=15.0, alembic_revision=None, compose_file="",
                              config_files=None)
        store.mark_release_failed_verification("aaaa" * 16, 40.0)
        store.set_release_pinned("aaaa" * 16, True)
        store.mark_release_rolled_back("bbbb" * 16, at=35.0, action_id=3)
        store.set_flag("rollback.current_release", {"release": {"fingerprint": "bbbc" * 16}})
        run = await ctl(*sock, "releases")
        assert run.code == 0, run
        lines = run.out.splitlines()
        assert lines[0].split() == ["RELEASE", "FIRST", "SEEN", "(UTC)", "STATE"]
        assert lines[1].startswith("bbbc" * 3) and lines[1].endswith("current")
        assert "rolled-back-from (#3" in lines[2]
        assert "known-good, newest-known-good, FAILED" in lines[3]
        assert lines[3].endswith(", pinned") and "pinned" not in lines[1] + lines[2]
        assert (await ctl(*sock, "releases", "clear-failed", "bbb")).code == 2  # too short
        run = await ctl(*sock, "releases", "clear-failed", "bbbb")
        assert run.code == 2 and "at least 6" in run.err
        run = await ctl(*sock, "releases", "clear-failed", "bbbbbbbbb")
        assert run.code == 1 and "not marked failed" in run.err
        assert (await ctl(*sock, "releases", "clear-failed")).code == 2
        run = await ctl(*sock, "--json", "releases", "clear-failed", "aaaaaaaa")
        assert run.code == 0 and run.json() == {"cleared": "aaaa" * 16, "failed_at": 40.0}
        assert store.release("aaaa" * 16).failed_verification_at is None  # type: ignore[union-attr]
        cleared = store.events(kinds=("release.failed_cleared",))
        assert cleared and "root (uid 0) cleared the failed mark" in cleared[0].message
        audit = [row for row in store.audit_log() if row["command"] == "release-clear-failed"]
        assert "ok" in [row["outcome"] for row in audit]
        assert "FAILED" not in (await ctl(*sock, "releases")).out
