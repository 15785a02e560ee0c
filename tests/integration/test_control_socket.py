"""The control socket against a real unix socket: permissions, peer credentials (a client really
running as another uid), protocol errors, audit, progress streaming and approvals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from brace_watchdog.control.server import ControlServer
from brace_watchdog.errors import FatalError
from brace_watchdog.runtime import Hub, Lease
from tests.integration.control_helpers import (
    NOBODY,
    Env,
    TouchAction,
    add_touch_planner,
    approve_touch_in_background,
    call,
    control_server,
    ctl,
    read_until_result,
    result,
    short_dir,
    with_login_uid,
)

NOGROUP = "nogroup"


async def test_socket_mode_and_group(tmp_path: Path) -> None:
    async with control_server(tmp_path, {"control": {"group": NOGROUP}}) as env:
        info = env.socket.stat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert info.st_gid == 65534
    assert not env.socket.exists()


async def test_status_as_root_is_served_audited_and_counted(tmp_path: Path) -> None:
    async with control_server(tmp_path) as env:
        reply = await result(env.socket, "status")
        assert reply["ok"] and reply["data"]["peer"] == {"uid": 0, "user": "root"}
        audit = env.hub.store.audit_log()
        assert (audit[0]["uid"], audit[0]["user"], audit[0]["command"], audit[0]["outcome"]) == (
            0, "root", "status", "ok")
        assert env.requests("status", "ok") == 1


async def test_errors_do_not_close_the_connection(tmp_path: Path) -> None:
    async with control_server(tmp_path) as env:
        reader, writer = await asyncio.open_unix_connection(str(env.socket))
        lines = [b"garbage\n", b'{"v": 1, "id": 2, "cmd": "nope"}\n',
                 b'{"v": 1, "id": 3, "cmd": "events", "args": {"limit": "ten"}}\n',
                 b'{"v": 7, "id": 4, "cmd": "status"}\n',
                 b"x" * 70_000 + b"\n",
                 b'{"v": 1, "id": 5, "cmd": "status"}\n']
        writer.write(b"".join(lines))
        await writer.drain()
        codes = []
        for _ in lines:
            reply = (await read_until_result(reader))[-1]
            codes.append((reply["id"], reply["ok"] or reply["error"]["code"]))
        assert codes == [(None, "invalid_json"), (2, "unknown_command"), (3, "bad_args"),
                         (4, "bad_request"), (None, "too_long"), (5, True)]
        writer.close()
        await writer.wait_closed()
        outcomes = [row["outcome"] for row in env.hub.store.audit_log()][::-1]
        assert outcomes == ["invalid_json", "unknown_command", "bad_args", "bad_request",
                            "too_long", "ok"]
        assert env.requests("unknown", "unknown_command") == 1
        assert env.requests("invalid", "too_long") == 1


async def test_idle_client_is_told_and_dropped_others_unaffected(tmp_path: Path) -> None:
    async with control_server(tmp_path, {"control": {"idle_timeout_seconds": 0.3}}) as env:
        reader, writer = await asyncio.open_unix_connection(str(env.socket))
        reply = json.loads(await asyncio.wait_for(reader.readline(), 5))
        assert reply["error"]["code"] == "idle_timeout"
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert (await result(env.socket, "status"))["ok"]


async def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    folder = short_dir()
    path = folder / "control.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    try:
        async with control_server(tmp_path, {"control": {"socket": str(path)}}) as env:
            assert (await result(env.socket, "status"))["ok"]
    finally:
        shutil.rmtree(folder)


async def test_live_socket_and_non_socket_are_startup_errors(tmp_path: Path) -> None:
    async with control_server(tmp_path) as env:
        intruder = ControlServer(env.hub)
        with pytest.raises(FatalError, match="another process is serving"):
            await intruder.start()
        await intruder.stop()
        assert (await result(env.socket, "status"))["ok"]
        other = env.socket.with_name("plain")
        other.write_text("x")
        with pytest.raises(FatalError, match="is not a socket"):
            await ControlServer(env.hub, socket_path=other).start()


async def test_unknown_group_is_a_startup_error(tmp_path: Path) -> None:
    with pytest.raises(FatalError, match="group 'no-such-group-x'"):
        async with control_server(tmp_path, {"control": {"group": "no-such-group-x"}}):
            pass


async def test_other_uid_is_refused_by_peer_credentials(tmp_path: Path) -> None:
    async with control_server(tmp_path, {"control": {"group": NOGROUP}}) as env:
        run = await ctl("--socket", str(env.socket), "status", as_nobody=True)
        assert run.code == 3, run
        assert "nobody (uid 65534) may not run status" in run.err
        row = env.hub.store.audit_log()[0]
        assert (row["uid"], row["user"], row["outcome"]) == (65534, "nobody", "denied")
        assert env.requests("status", "denied") == 1


async def test_reader_may_query_but_not_act(tmp_path: Path) -> None:
    raw = {"control": {"group": NOGROUP, "readers": ["nobody"]}}
    async with control_server(tmp_path, raw) as env:
        run = await ctl("--socket", str(env.socket), "status", "--json", as_nobody=True)
        assert run.code == 0, run
        assert run.json()["peer"]["uid"] == 65534
        run = await ctl("--socket", str(env.socket), "freeze", as_nobody=True)
        assert run.code == 3 and "needs the operator role" in run.err
        assert env.hub.frozen() is None


async def test_operator_commands_freeze_unfreeze_ack(tmp_path: Path) -> None:
    async with control_server(tmp_path) as env:
        assert (await result(env.socket, "freeze", {"reason": "testing"}))["ok"]
        frozen = env.hub.frozen()
        assert frozen is not None and frozen["reason"] == "testing"
        assert frozen["by"] == "root (uid 0)"
        await env.hub.escalate("test", "something broke", source="test")
        reply = await result(env.socket, "ack")
        assert reply["data"]["acknowledged"]["message"] == "something broke"
        assert env.hub.escalation() is None
        assert (await result(env.socket, "unfreeze"))["ok"]
        assert env.hub.frozen() is None
        kinds = [e["kind"] for e in (await result(env.socket, "events"))["data"]["events"]]
        assert {"automation.frozen", "escalation.acknowledged", "automation.unfrozen"} <= set(
            kinds)


async def test_explain_and_timeline(tmp_path: Path) -> None:
    async with control_server(tmp_path) as env:
        hub = env.hub
        hub.record("health.failing", "health", "backend 5xx", severity="warning",
                   evidence={"ratio": 0.8})
        action = hub.store.begin_action("rollback", origin="rollback", plan={"to": "v1"})
        hub.store.journal_step(action, "done", status="succeeded", result="rolled back")
        event_id = hub.record("decision", "rollback", "sustained 5xx", evidence={"ratio": 0.8},
                              action_id=action)
        reply = await result(env.socket, "explain", {"id": event_id})
        assert reply["data"]["event"]["evidence"] == {"ratio": 0.8}
        assert reply["data"]["action"]["id"] == action
        assert len(reply["data"]["journal"]) >= 2
        missing = await result(env.socket, "explain", {"id": 99999})
        assert missing["error"]["code"] == "bad_args"
        markdown = (await result(env.socket, "timeline", {"action_id": action}))["data"][
            "markdown"]
        assert markdown.startswith("# Post-mortem draft: rollback #")
        assert "First failure seen" in markdown and "backend 5xx" in markdown
        assert "## Root cause" in markdown


async def test_backups_list_scans_the_folder(tmp_path: Path) -> None:
    (tmp_path / "brace_20260101_000000.dump").write_bytes(b"PGDMP" + b"\0" * 100)
    (tmp_path / "brace_20260102_000000.dump").write_bytes(b"nope")
    os.utime(tmp_path / "brace_20260101_000000.dump", (1, 1))
    async with control_server(tmp_path) as env:
        env.hub.store.record_restore_result(started_at=1, finished_at=2,
                                            dump_name="brace_20260101_000000.dump", dump_size=105,
                                            passed=True)
        data = (await result(env.socket, "backups"))["data"]
        by_name = {b["name"]: b for b in data["backups"]}
        assert by_name["brace_20260101_000000.dump"]["valid"]
        assert by_name["brace_20260101_000000.dump"]["last_restore_test"]["passed"]
        assert not by_name["brace_20260102_000000.dump"]["valid"]


async def test_unconfigured_component_is_unavailable(tmp_path: Path) -> None:
    async with control_server(tmp_path) as env:
        for cmd in ("restore-test", "app_rollback"):
            reply = await result(env.socket, cmd)
            assert reply["error"]["code"] == "unavailable", reply


# -- approvals through the socket ----------------------------------------------------------
async def test_plan_approve_streams_progress_and_links_the_token(tmp_path: Path) -> None:
    action = TouchAction(tmp_path / "touched")
    async with control_server(tmp_path, gated={"touch": action}) as env:
        add_touch_planner(env.server)
        plan = (await result(env.socket, "plan-touch"))["data"]
        assert plan["steps"] == ["append a line"] and plan["target"] == "touch"
        assert not (tmp_path / "touched").exists()
        messages = await call(env.socket, "approve", {"token": plan["token"]})
        assert [m["event"] for m in messages] == ["progress", "progress", "result"]
        assert messages[0]["stage"] == "starting" and messages[-1]["ok"]
        assert (tmp_path / "touched").read_text() == "root->root\n"
        again = await result(env.socket, "approve", {"token": plan["token"]})
        assert again["error"]["code"] == "refused" and "already used" in again["error"]["message"]
        altered = await result(env.socket, "approve", {"token": plan["token"][:-2] + "zz"})
        assert altered["error"]["code"] == "refused"
        audit = json.dumps(env.hub.store.audit_log())
        assert plan["token"] not in audit
        assert env.registry.get_sample_value("brace_gated_actions_total",
                                             {"action": "touch", "result": "succeeded"}) == 1


async def test_expired_token_is_refused_over_the_socket(tmp_path: Path) -> None:
    now = [1_000_000.0]
    action = TouchAction(tmp_path / "touched")
    async with control_server(tmp_path, {"control": {"token_ttl_seconds": 60}},
                              gated={"touch": action}, clock=lambda: now[0]) as env:
        add_touch_planner(env.server)
        token = (await result(env.socket, "plan-touch"))["data"]["token"]
        now[0] += 61
        reply = await result(env.socket, "approve", {"token": token})
        assert reply["error"]["code"] == "refused" and "expired" in reply["error"]["message"]
        assert not (tmp_path / "touched").exists()


async def test_two_person_rule_over_the_socket(tmp_path: Path) -> None:
    action = TouchAction(tmp_path / "touched")
    raw = {"control": {"two_person_rule": True, "group": NOGROUP, "operators": ["nobody"]}}
    async with control_server(tmp_path, raw, gated={"touch": action}) as env:
        add_touch_planner(env.server)
        plan = (await result(env.socket, "plan-touch"))["data"]
        assert plan["two_person_rule"] is True
        own = await result(env.socket, "approve", {"token": plan["token"]})
        assert own["error"]["code"] == "refused" and "two-person" in own["error"]["message"]
        run = await ctl("--socket", str(env.socket), "approve", stdin=f"{plan['token']}\ntouch\n",
                        as_nobody=True)
        assert run.code == 0, run
        assert "Plan for touch (touch):\n  1. append a line" in run.out  # the stored plan
        assert (tmp_path / "touched").read_text() == "root->nobody\n"


async def test_token_on_the_command_line_is_a_usage_error(tmp_path: Path) -> None:
    async with control_server(tmp_path) as env:
        run = await ctl("--socket", str(env.socket), "approve", "bwt_from-argv", "--yes")
        assert run.code == 2 and "unrecognized arguments: bwt_from-argv" in run.err
        run = await ctl("--socket", str(env.socket), "approve", "--yes")
        assert run.code == 2 and "no token given" in run.err
        assert env.hub.store.audit_log() == []


async def test_inspect_shows_the_stored_plan_without_using_the_token(tmp_path: Path) -> None:
    action = TouchAction(tmp_path / "touched")
    async with control_server(tmp_path, gated={"touch": action}) as env:
        add_touch_planner(env.server)
        token = (await result(env.socket, "plan-touch"))["data"]["token"]
        run = await ctl("--socket", str(env.socket), "inspect", stdin=f"{token}\n")
        assert run.code == 0, run
        assert "touch planned by root (uid 0)" in run.out and "1. append a line" in run.out
        view = (await ctl("--socket", str(env.socket), "--json", "inspect",
                          stdin=f"{token}\n")).json()
        assert view["plan"]["steps"] == ["append a line"]
        assert (await result(env.socket, "approve", {"token": token}))["ok"]


PLAN_TOUCH = r"""
import json, socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
sock.sendall(b'{"v":1,"id":1,"cmd":"plan-touch"}\n')
print(json.loads(sock.makefile("rb").readline())["data"]["token"])
"""


async def _plan_touch_as_nobody(path: Path, *, login_uid: int) -> str:
    """``plan-touch`` from a process running as nobody whose login uid is ``login_uid``."""
    proc = await asyncio.create_subprocess_exec(
        *with_login_uid(login_uid), *NOBODY, sys.executable, "-c", PLAN_TOUCH, str(path),
        stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    return out.decode().strip()


async def test_sudo_does_not_make_a_second_person(tmp_path: Path) -> None:
    action = TouchAction(tmp_path / "touched")
    raw = {"control": {"two_person_rule": True, "group": NOGROUP, "operators": ["nobody"]}}
    async with control_server(tmp_path, raw, gated={"touch": action}) as env:
        add_touch_planner(env.server)
        token = await _plan_touch_as_nobody(env.socket, login_uid=4242)
        run = await ctl("--socket", str(env.socket), "approve", stdin=f"{token}\ntouch\n",
                        login_uid=4242)  # the same person, now root (as after `sudo -i`)
        assert run.code == 1 and "same person (login uid 4242)" in run.err, run
        assert not (tmp_path / "touched").exists()
        run = await ctl("--socket", str(env.socket), "approve", stdin=f"{token}\ntouch\n",
                        login_uid=4243)  # someone else
        assert run.code == 0, run
        assert (tmp_path / "touched").read_text() == "nobody->root\n"


async def test_hanging_up_does_not_cancel_a_running_action(tmp_path: Path) -> None:
    action = TouchAction(tmp_path / "touched", delay=0.5)
    async with control_server(tmp_path, gated={"touch": action}) as env:
        add_touch_planner(env.server)
        running = await approve_touch_in_background(env.socket)
        token2 = (await result(env.socket, "plan-touch"))["data"]["token"]
        busy = await result(env.socket, "approve", {"token": token2})
        assert busy["error"]["code"] == "refused" and "one action at a time" in busy[
            "error"]["message"]
        running.writer.close()
        await asyncio.wait_for(action.finished.wait(), 10)
        assert (tmp_path / "touched").read_text() == "root->root\n"


async def test_gated_action_cut_by_a_restart_is_escalated_at_start(tmp_path: Path) -> None:
    async with control_server(tmp_path) as env:
        action_id = env.hub.store.begin_action("db_rollback", origin="control", plan={})
        env.hub.store.journal_step(action_id, "restoring")
    async with control_server(tmp_path) as env:
        action = env.hub.store.action(action_id)
        assert action is not None and action.status == "interrupted"
        escalation = env.hub.escalation()
        assert escalation is not None and "interrupted at step 'restoring'" in escalation[
            "message"]


class LeftBehind(TouchAction):
    """A gated action an interrupted run of which left work behind, ended by ``end`` (its
    ``leftover`` is looked for only while the action lock is free: it notes the holder)."""

    def __init__(self, path: Path, name: str) -> None:
        super().__init__(path)
        self.name = name
        self.lock_at_look: list[object] = []
        self.hub: Hub | None = None
        self.end = asyncio.Event()
        self.ended = False

    def leftover(self) -> Any:
        assert self.hub is not None
        self.lock_at_look.append(self.hub.action_lock.holder)
        return None if self.ended else self._end_it

    async def _end_it(self) -> None:
        await self.end.wait()
        self.ended = True


async def test_leftovers_are_looked_for_only_while_the_lock_is_free_until_none_is_left(
        tmp_path: Path) -> None:
    """Another action holds the lock at start: no look; once free, one leftover is ended at a
    time (the next kind looked for only after it), and none is looked for once all ended."""
    first, second = LeftBehind(tmp_path / "a", "first"), LeftBehind(tmp_path / "b", "second")
    held: list[Lease] = []

    def hold(hub: Hub) -> None:
        first.hub = second.hub = hub
        held.append(hub.action_lock.acquire("rollback", "automatic"))

    async with control_server(tmp_path, gated={"first": first, "second": second},
                              before_start=hold) as env:
        lock, server = env.hub.action_lock, env.server
        await server.cycle()
        assert first.lock_at_look == second.lock_at_look == []
        lock.release(held[0])
        await server.cycle()
        assert len(first.lock_at_look) == 1 and second.lock_at_look == []
        assert lock.holder is not None and lock.holder.kind == "first"
        await server.cycle()
        assert len(first.lock_at_look) == 1 and second.lock_at_look == []  # first still runs
        first.end.set()
        await _until_free(env)
        await server.cycle()
        assert lock.holder is not None and lock.holder.kind == "second"
        second.end.set()
        await _until_free(env)
        await server.cycle()
        looks = (len(first.lock_at_look), len(second.lock_at_look))
        await server.cycle()
        assert (len(first.lock_at_look), len(second.lock_at_look)) == looks == (3, 2)
        assert set(first.lock_at_look) | set(second.lock_at_look) == {None}


async def _until_free(env: Env) -> None:
    for _ in range(500):
        if env.hub.action_lock.holder is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the lock is still held: {env.hub.action_lock.holder}")


async def test_dry_run_approves_without_executing(tmp_path: Path) -> None:
    action = TouchAction(tmp_path / "touched")
    async with control_server(tmp_path, {"daemon": {"dry_run": True}},
                              gated={"touch": action}) as env:
        add_touch_planner(env.server)
        token = (await result(env.socket, "plan-touch"))["data"]["token"]
        reply = await result(env.socket, "approve", {"token": token})
        assert reply["data"] == {"dry_run": True, "would_run": ["append a line"]}
        assert not (tmp_path / "touched").exists()


async def test_operator_request_is_audited_on_arrival_before_it_finishes(tmp_path: Path) -> None:
    action = TouchAction(tmp_path / "touched", delay=1.0)
    async with control_server(tmp_path, gated={"touch": action}) as env:
        add_touch_planner(env.server)
        running = await approve_touch_in_background(env.socket)
        # what a SIGKILL now would leave behind: the committed rows, read by another connection
        with contextlib.closing(sqlite3.connect(tmp_path / "s.db")) as db:
            rows = db.execute("SELECT command, outcome, detail FROM audit ORDER BY id").fetchall()
        assert rows[-1][:2] == ("approve", "received") and running.token not in rows[-1][2]
        assert (await read_until_result(running.reader))[-1]["ok"]
        running.writer.close()
        outcomes = [(r["command"], r["outcome"]) for r in env.hub.store.audit_log(limit=2)]
        assert outcomes == [("approve", "ok"), ("approve", "received")]


STILL_ASKING = r"""
import json, socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
stream = sock.makefile("rb")
for _ in range(2):
    sock.sendall(b'{"v":1,"id":1,"cmd":"status"}\n')
    reply = json.loads(stream.readline())
    print(reply["error"]["code"] if not reply["ok"] else "ok", flush=True)
    sys.stdin.readline()
"""


async def test_removed_group_member_loses_rights_on_an_open_connection(tmp_path: Path) -> None:
    group = f"bwgs{os.getpid()}"
    subprocess.run(["groupadd", group], check=True)
    try:
        subprocess.run(["gpasswd", "-a", "nobody", group], check=True, capture_output=True)
        raw = {"control": {"group": NOGROUP, "readers": [f"@{group}"]}}
        async with control_server(tmp_path, raw) as env:
            proc = await asyncio.create_subprocess_exec(
                *NOBODY, sys.executable, "-c", STILL_ASKING, str(env.socket),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            assert proc.stdin is not None and proc.stdout is not None
            assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"ok\n"
            subprocess.run(["gpasswd", "-d", "nobody", group], check=True,
                           capture_output=True)
            proc.stdin.write(b"next\n")
            assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"denied\n"
            proc.stdin.write(b"done\n")
            await asyncio.wait_for(proc.wait(), 60)
    finally:
        subprocess.run(["groupdel", group], check=False)
