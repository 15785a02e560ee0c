"""Fuzz the control socket with >10,000 hostile payloads over a real unix socket.

Random bytes, truncated JSON, wrong types, unknown commands, huge and deeply nested lines,
integers of thousands of digits, lone surrogates, non-finite numbers — each must get exactly one
clear error (or a normal answer) and an audit row, and the daemon must keep serving: a bystander
connection opened before the storm still works afterwards, and so do new ones. The storm runs as
root and, on the denied path, as a real non-root peer (uid nobody); a flood client and a
slow-dribble client run beside it.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from collections import Counter
from pathlib import Path

from tests.integration.control_helpers import (
    NOBODY,
    control_server,
    read_until_result,
    read_while_sending,
    result,
)

SEED = 20261125
KNOWN = ["status", "events", "explain", "timeline", "backups", "restore-test", "app_rollback",
         "freeze", "unfreeze", "ack", "db_rollback", "pg_hba_rollback",
         "docker_daemon_rollback", "inspect", "approve"]
JUNK_VALUES: list[object] = [None, True, False, 0, -1, 2 ** 70, 1.5, "", "x" * 5000, [], [1],
                             {}, {"a": {"b": []}}, "../../etc/shadow", "/etc/passwd",
                             "$(reboot)", "a;rm -rf /", "\u0000", "\udcff"[:0] + "\u2028"]


HUGE_INT = b"9" * 5000
HOSTILE = [  # each was once answered with "internal" or a dropped connection
    b'{"v":1,"id":' + HUGE_INT + b',"cmd":"status"}',
    b'{"v":' + HUGE_INT + b',"cmd":"status"}',
    b'{"v":1,"cmd":"events","args":{"limit":' + HUGE_INT + b'}}',
    b'{"v":1,"cmd":"explain","args":{"id":1' + b"0" * 30 + b'}}',
    b'{"v":1,"cmd":"\\ud800"}',
    b'{"v":1,"cmd":"status\\udfff"}',
    b'{"v":1,"cmd":"freeze","args":{"reason":"\\ud800"}}',
    b'{"v":1,"cmd":"restore-test","args":{"dump":"a\\udc00.dump"}}',
    b'{"v":1,"id":"\\ud800","cmd":"status"}',
    b'{"v":1,"cmd":"events","args":{"limit":NaN}}',
    b'{"v":1,"cmd":"events","args":{"limit":1e999}}',
    b'{"v":1,"cmd":"st\xed\xa0\x80"}',
]


def _line(rng: random.Random) -> bytes:
    kind = rng.randrange(7)
    if kind == 6:
        return rng.choice(HOSTILE)
    if kind == 0:  # random bytes
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        data = data.replace(b"\n", b" ")
        return data if data.strip() else b"x" + data
    if kind == 1:  # truncated request
        full = json.dumps({"v": 1, "id": rng.randrange(1000), "cmd": rng.choice(KNOWN),
                           "args": {"limit": 5}})
        return full[:rng.randrange(1, len(full) - 1)].encode() or b"{"
    if kind == 2:  # wrong envelope types
        envelope: dict[str, object] = {"v": rng.choice([1, 1, "1", 2, None, 1.0]),
                                       "id": rng.choice(JUNK_VALUES),
                                       "cmd": rng.choice([*KNOWN, *JUNK_VALUES]),
                                       "args": rng.choice([{}, [], "x", None, 3])}
        return json.dumps(envelope).encode()
    if kind == 3:  # unknown commands
        name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz-_$;|&") for _ in
                       range(rng.randrange(1, 40)))
        return json.dumps({"v": 1, "id": 1, "cmd": name}).encode()
    if kind == 4:  # known commands, hostile args
        args = {rng.choice(["limit", "id", "dump", "token", "hours", "kind", "reason", "zz"]):
                rng.choice(JUNK_VALUES) for _ in range(rng.randrange(0, 4))}
        cmd = rng.choice([c for c in KNOWN if c not in ("freeze", "unfreeze", "ack")])
        return json.dumps({"v": 1, "id": 2, "cmd": cmd, "args": args}).encode()
    return (b"[" * rng.randrange(1, 50_000)) if rng.random() < 0.5 else b'{"v":1,' * 3


async def _storm(path: Path, lines: list[bytes]) -> list[dict[str, object]]:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)

    async def send() -> None:
        for start in range(0, len(lines), 200):
            writer.write(b"".join(line + b"\n" for line in lines[start:start + 200]))
            await writer.drain()

    sender = asyncio.create_task(send())
    replies = [(await read_until_result(reader))[-1] for _ in lines]
    await sender
    writer.close()
    await writer.wait_closed()
    return replies


async def test_ten_thousand_hostile_payloads(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    lines = [_line(rng) for _ in range(10_200)]
    lines += [b"x" * rng.randrange(65_536, 300_000) for _ in range(20)]
    async with control_server(tmp_path) as env:
        bystander_r, bystander_w = await asyncio.open_unix_connection(str(env.socket))
        replies: list[dict[str, object]] = []
        for chunk in range(0, len(lines), 2600):
            replies += await _storm(env.socket, lines[chunk:chunk + 2600])
        assert len(replies) == len(lines) >= 10_000
        assert all(r["v"] == 1 and r["event"] == "result" for r in replies)
        codes = {r["error"]["code"] if not r["ok"] else "ok" for r in replies}  # type: ignore[index]
        assert "internal" not in codes, [r for r in replies if not r["ok"] and
                                         r["error"]["code"] == "internal"][:3]  # type: ignore[index]
        assert {"invalid_json", "bad_request", "unknown_command", "bad_args",
                "too_long"} <= codes
        bystander_w.write(b'{"v":1,"id":"b","cmd":"status"}\n')
        await bystander_w.drain()
        assert (await read_until_result(bystander_r))[-1]["ok"]
        bystander_w.close()
        assert (await result(env.socket, "status"))["ok"]
        assert len(env.hub.store.audit_log(limit=30_000)) >= len(lines)


async def test_every_hostile_payload_gets_an_error_and_an_audit_row(tmp_path: Path) -> None:
    async with control_server(tmp_path) as env:
        replies = await _storm(env.socket, HOSTILE)
        assert [r["error"]["code"] for r in replies] == (  # type: ignore[index]
            ["invalid_json"] * 3 + ["bad_args"] + ["invalid_json"] * 8)
        rows = env.hub.store.audit_log(limit=100)
        assert len(rows) == len(HOSTILE)
        assert {r["outcome"] for r in rows} <= {"invalid_json", "bad_args"}
        status = (await result(env.socket, "status"))["data"]
        assert not status["frozen"], status  # the surrogate freeze reason froze nothing


STORM_AS_PEER = r"""
import json, socket, sys
lines = sys.stdin.buffer.read().split(b"\n")[:-1]
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
stream = sock.makefile("rb")
codes = {}
for start in range(0, len(lines), 100):
    batch = lines[start:start + 100]
    sock.sendall(b"".join(line + b"\n" for line in batch))
    for _ in batch:
        reply = json.loads(stream.readline())
        code = reply["error"]["code"] if not reply["ok"] else "ok"
        codes[code] = codes.get(code, 0) + 1
print(json.dumps(codes))
"""


async def test_hostile_payloads_from_a_non_root_peer_are_denied_cleanly(tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    lines = [_line(rng) for _ in range(2000)] + HOSTILE
    async with control_server(tmp_path, {"control": {"group": "nogroup"}}) as env:
        proc = await asyncio.create_subprocess_exec(
            *NOBODY, sys.executable, "-c", STORM_AS_PEER, str(env.socket),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(b"".join(
            line + b"\n" for line in lines)), 300)
        assert proc.returncode == 0, err.decode()
        codes = Counter(json.loads(out))
        assert sum(codes.values()) == len(lines)
        assert "internal" not in codes and "ok" not in codes, codes
        assert codes["denied"] > 0 and codes["invalid_json"] > 0
        rows = env.hub.store.audit_log(limit=30_000)
        assert {r["uid"] for r in rows} == {65534}
        assert len([r for r in rows if r["outcome"] != "received"]) == len(lines)


async def test_storm_beside_a_flood_and_a_slow_dribble(tmp_path: Path) -> None:
    raw = {"control": {"max_clients_per_uid": 8, "request_timeout_seconds": 2}}
    rng = random.Random(SEED + 2)
    lines = [_line(rng) for _ in range(1500)] + HOSTILE
    async with control_server(tmp_path, raw) as env:
        path = str(env.socket)
        stop = asyncio.Event()

        async def flood() -> int:
            opened = 0
            while not stop.is_set():
                try:
                    _, writer = await asyncio.open_unix_connection(path)
                except OSError:
                    await asyncio.sleep(0.01)
                    continue
                opened += 1
                writer.write(b"\n")
                writer.close()
                await asyncio.sleep(0)
            return opened

        async def dribble() -> list[dict[str, object]]:
            reader, writer = await asyncio.open_unix_connection(path)

            async def one_byte_at_a_time() -> None:
                for byte in b'{"v":1,"id":"d","cmd":"status"}' * 100:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.05)

            try:
                return await read_while_sending(reader, one_byte_at_a_time())
            finally:
                writer.close()

        flooding = asyncio.create_task(flood())
        dribbling = asyncio.create_task(dribble())
        replies = await _storm(env.socket, lines)
        cut_off = (await asyncio.wait_for(dribbling, 120))[-1]
        stop.set()
        opened = await flooding
        assert len(replies) == len(lines) and opened > 0
        assert "internal" not in {r["error"]["code"] for r in replies  # type: ignore[index]
                                  if not r["ok"]}
        assert cut_off["error"]["code"] == "request_timeout"  # type: ignore[index]
        assert (await result(env.socket, "status"))["ok"]


async def test_per_connection_abuse(tmp_path: Path) -> None:
    async with control_server(tmp_path) as env:
        path = str(env.socket)

        async def hang_up_mid_line() -> None:
            _, writer = await asyncio.open_unix_connection(path)
            writer.write(b'{"v":1,"cmd":"sta')
            await writer.drain()
            writer.close()

        async def send_and_never_read() -> None:
            _, writer = await asyncio.open_unix_connection(path)
            writer.write(b"garbage\n" * 5000)
            await writer.drain()
            writer.close()

        async def huge_then_close() -> None:
            _, writer = await asyncio.open_unix_connection(path)
            writer.write(b"y" * 500_000)
            writer.close()

        async def empty() -> None:
            _, writer = await asyncio.open_unix_connection(path)
            writer.close()

        jobs = [f() for f in (hang_up_mid_line, send_and_never_read, huge_then_close, empty)
                for _ in range(25)]
        await asyncio.gather(*jobs, return_exceptions=True)
        statuses = await asyncio.gather(*(result(env.socket, "status") for _ in range(20)))
        assert all(s["ok"] for s in statuses)
        await asyncio.sleep(0.2)
        assert len(env.server._clients) <= 1
