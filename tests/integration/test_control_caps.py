"""The control socket's caps against real clients: a member of the socket's group (uid nobody,
a real non-root process) floods it while the daemon's file descriptors are as scarce as under a
default 1024 limit, and root is still answered; blank lines and dribbled bytes do not keep a
connection open past its request deadline; running out of descriptors is reported once, not
once per accept attempt."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.integration.control_helpers import (
    NOBODY,
    control_server,
    read_until_result,
    read_while_sending,
    result,
)

NOBODY_UID = 65534
OTHER_UID = 65533  # a uid with no role and no passwd entry, in the socket's group
# The behaviour under test is "root is served promptly during a flood"; 1 s is generous for a
# status answer that takes milliseconds when the daemon is not flooded.
ROOT_SERVED_WITHIN = 1.0
SPARE_FDS = 100  # descriptors left to the daemon beyond those it already holds
FLOOD = r"""
import resource, socket, sys, time
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # not the daemon's scarcity: ours is ample
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
path, want = sys.argv[1], int(sys.argv[2])
held, announced = [], False
while True:  # until the test terminates us: keep `want` connections, each sending blank lines
    while len(held) < want:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(0.2)
        try:
            s.connect(path)
            s.sendall(b"\n")
            held.append(s)
        except OSError:
            s.close()
    if not announced:
        print("flooding", flush=True)
        announced = True
    for s in list(held):
        try:
            s.setblocking(False)
            s.recv(4096)  # returns only with an answer ("busy", a timeout) or EOF: let go
            raise OSError
        except BlockingIOError:
            try:
                s.send(b"\n")
                continue
            except OSError:
                pass
        except OSError:
            pass
        held.remove(s)
        s.close()
    time.sleep(0.05)
"""


# Opens N connections one after another, each asking for `status` and reading its first answer
# (a result, or `busy` before the close); prints the error codes ("ok" when served), then keeps
# the served connections open until its stdin closes.
HOLD = r"""
import json, socket, sys
held, codes = [], []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(120)
    s.connect(sys.argv[1])
    try:
        s.sendall(b'{"v":1,"id":1,"cmd":"status"}\n')
    except OSError:  # refused and closed first: its "busy" line is still there to read
        pass
    answer = json.loads(s.makefile("rb").readline())
    codes.append("ok" if answer.get("ok") else answer["error"]["code"])
    held.append(s)
print(json.dumps(codes), flush=True)
sys.stdin.readline()
"""


async def _hold(uid: int, socket_path: Path, connections: int
                ) -> tuple[asyncio.subprocess.Process, list[str]]:
    """Run :data:`HOLD` as ``uid`` (group nogroup, so it may connect); its answers' codes."""
    proc = await asyncio.create_subprocess_exec(
        "setpriv", "--reuid", str(uid), "--regid", str(NOBODY_UID), "--clear-groups",
        sys.executable, "-c", HOLD, str(socket_path), str(connections),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    assert line, await proc.stderr.read() if proc.stderr else b""
    codes: list[str] = json.loads(line)
    return proc, codes


async def test_total_connection_cap_counts_every_non_root_uid(tmp_path: Path) -> None:
    raw = {"control": {"group": "nogroup", "readers": ["nobody"], "max_clients": 4,
                       "max_clients_per_uid": 100, "idle_timeout_seconds": 600}}
    async with control_server(tmp_path, raw) as env:
        first, first_codes = await _hold(NOBODY_UID, env.socket, 3)
        second = None
        try:
            assert first_codes == ["ok"] * 3
            # another uid, far below its own cap: one more fits, then the total is reached
            second, second_codes = await _hold(OTHER_UID, env.socket, 3)
            assert second_codes == ["denied", "busy", "busy"], second_codes
            assert env.server._open_by_uid == {NOBODY_UID: 3, OTHER_UID: 1}
            reply = await result(env.socket, "status")  # root is never refused
            assert reply["ok"], reply
        finally:
            for proc in (first, second):
                if proc is not None:
                    await asyncio.wait_for(proc.communicate(b"\n"), 60)
        busy = [r for r in env.hub.store.audit_log(limit=100) if r["outcome"] == "busy"]
        assert busy and busy[-1]["uid"] == OTHER_UID
        assert "limit [control] max_clients = 4" in busy[-1]["detail"]


@asynccontextmanager
async def scarce_descriptors(spare: int) -> AsyncIterator[None]:
    """Lower this process's (the daemon's) soft RLIMIT_NOFILE to what it holds plus ``spare``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd")) - 1  # less the one listdir itself opened
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + spare, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _flood(socket_path: Path, connections: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        *NOBODY, sys.executable, "-c", FLOOD, str(socket_path), str(connections),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert line == b"flooding\n", (line, await proc.stderr.read() if proc.stderr else b"")
    return proc


async def test_group_member_flood_does_not_lock_root_out(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = {"control": {"group": "nogroup", "readers": ["nobody"], "max_clients": 16,
                       "max_clients_per_uid": 8, "request_timeout_seconds": 300}}
    caplog.set_level(logging.WARNING, logger="brace_watchdog.control")
    async with control_server(tmp_path, raw) as env:
        async with scarce_descriptors(SPARE_FDS):
            flood = await _flood(env.socket, 4 * SPARE_FDS)
            try:
                for _ in range(5):
                    reply = await asyncio.wait_for(result(env.socket, "status"),
                                                   ROOT_SERVED_WITHIN)
                    assert reply["ok"], reply
                    assert env.server._open_by_uid[NOBODY_UID] <= 8
                    await asyncio.sleep(0.2)
                assert flood.returncode is None  # it was flooding all along
            finally:
                flood.terminate()
                await asyncio.wait_for(flood.wait(), 60)
        refused = env.registry.get_sample_value(
            "brace_control_requests_total", {"command": "-", "outcome": "busy"}) or 0
        assert refused > 0
        busy_rows = [r for r in env.hub.store.audit_log(limit=10_000) if r["outcome"] == "busy"]
        assert busy_rows and busy_rows[-1]["uid"] == NOBODY_UID
        assert "max_clients_per_uid = 8" in busy_rows[-1]["detail"]
        # rate-limited: one report per minute, however many connections were refused
        reports = [r for r in caplog.records if "refused" in r.getMessage()]
        assert 1 <= len(reports) <= 2 < refused


async def test_blank_lines_do_not_extend_the_request_deadline(tmp_path: Path) -> None:
    raw = {"control": {"idle_timeout_seconds": 600, "request_timeout_seconds": 1}}
    async with control_server(tmp_path, raw) as env:
        reader, writer = await asyncio.open_unix_connection(str(env.socket))

        async def blank_lines_forever() -> None:
            # a steady stream, still arriving when the answer goes out: closing on unread input
            # would reset the connection and lose the answer
            for _ in range(60_000):  # 60 s, far past the 1 s deadline
                writer.write(b"\n" * 16)
                await writer.drain()
                await asyncio.sleep(0.001)

        reply = (await read_while_sending(reader, blank_lines_forever()))[-1]
        assert reply["error"]["code"] == "request_timeout"
        assert await reader.read() == b""  # and the connection is closed
        writer.close()
        row = env.hub.store.audit_log(limit=1)[0]
        assert row["outcome"] == "request_timeout"


async def test_dribbled_request_is_cut_off_but_a_prompt_one_is_served(tmp_path: Path) -> None:
    raw = {"control": {"idle_timeout_seconds": 600, "request_timeout_seconds": 1}}
    async with control_server(tmp_path, raw) as env:
        reader, writer = await asyncio.open_unix_connection(str(env.socket))
        writer.write(b'{"v":1,"id":1,"cmd":"status"}\n')
        assert (await read_until_result(reader))[-1]["ok"]

        async def dribble() -> None:
            for byte in b'{"v":1,"id":2,"cmd":"status"}' * 20:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.1)

        replies = await read_while_sending(reader, dribble())
        assert replies[-1]["error"]["code"] == "request_timeout"
        writer.close()


async def test_accept_errors_are_logged_rate_limited_and_serving_resumes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    async with control_server(tmp_path) as env:
        clients = [socket.socket(socket.AF_UNIX) for _ in range(3)]
        try:
            async with scarce_descriptors(0):  # not one descriptor left for accept()
                for client in clients:
                    client.connect(str(env.socket))  # queued in the listen backlog
                await asyncio.sleep(3.0)  # the accept loop retries every 0.1 s meanwhile
            complaints = [r for r in caplog.records if "accept" in r.getMessage()]
            assert len(complaints) == 1, [r.getMessage() for r in complaints]
            assert "Too many open files" in complaints[0].getMessage()
            for client in clients:  # descriptors are back: the queued clients are served
                reader, writer = await asyncio.open_unix_connection(sock=client)
                writer.write(b'{"v":1,"id":1,"cmd":"status"}\n')
                assert (await read_until_result(reader))[-1]["ok"]
                writer.close()
        finally:
            for client in clients:
                client.close()
