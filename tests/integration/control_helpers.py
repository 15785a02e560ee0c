"""Helpers for the control-socket tests: a ControlServer in the test's own loop, an async
JSON-lines client, and running ``brace-watchdogctl`` as another uid (``setpriv``)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from brace_watchdog.actions.gated import GatedAction, Plan
from brace_watchdog.config import parse_config
from brace_watchdog.control.commands.base import Command
from brace_watchdog.control.commands.gated import _planner
from brace_watchdog.control.server import ControlServer
from brace_watchdog.metrics import Metrics
from brace_watchdog.runtime import Hub
from brace_watchdog.state import StateStore
from tests.support.ctl_coverage import CTL_RUNS

NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Env:
    hub: Hub
    server: ControlServer
    socket: Path
    registry: CollectorRegistry

    def requests(self, command: str, outcome: str) -> float:
        value = self.registry.get_sample_value(
            "brace_control_requests_total", {"command": command, "outcome": outcome})
        return value or 0.0


def short_dir() -> Path:
    """A world-traversable folder with a short path (unix socket paths must be < 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="bwctl-", dir="/tmp"))
    path.chmod(0o755)
    return path


@asynccontextmanager
async def control_server(tmp_path: Path, raw: Mapping[str, Any] | None = None, *,
                         gated: Mapping[str, GatedAction] | None = None,
                         clock: Callable[[], float] | None = None,
                         before_start: Callable[[Hub], object] | None = None
                         ) -> AsyncIterator[Env]:
    """A ControlServer on a short socket path (``before_start(hub)`` runs before it starts)."""
    folder = short_dir()
    sock = folder / "control.sock"
    config = {"control": {"socket": str(sock)}, "backups": {"directory": str(tmp_path)}}
    for section, values in (raw or {}).items():
        config.setdefault(section, {}).update(values)
    registry = CollectorRegistry()
    extra = {"clock": clock} if clock else {}
    hub = Hub(config=parse_config(config), store=StateStore(tmp_path / "s.db").open(),
              metrics=Metrics(registry, process=False), **extra)
    server = ControlServer(hub, gated=gated) if gated is not None else ControlServer(hub)
    try:
        if before_start is not None:
            before_start(hub)
        await server.start()
        yield Env(hub, server, hub.config.control.socket, registry)
    finally:
        await server.stop()
        hub.store.close()
        shutil.rmtree(folder, ignore_errors=True)


async def call(path: Path, cmd: str, args: dict[str, Any] | None = None, *,
               request_id: Any = 1) -> list[dict[str, Any]]:
    """Send one request; return every message up to and including the result."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(request_line(cmd, args, request_id=request_id))
        await writer.drain()
        return await read_until_result(reader)
    finally:
        writer.close()
        await writer.wait_closed()


def request_line(cmd: str, args: dict[str, Any] | None = None, *, request_id: Any = 1) -> bytes:
    """One protocol request, newline-terminated."""
    return json.dumps({"v": 1, "id": request_id, "cmd": cmd, "args": args or {}}).encode() + b"\n"


async def read_until_result(reader: asyncio.StreamReader) -> list[dict[str, Any]]:
    messages = []
    while True:
        raw = await asyncio.wait_for(reader.readline(), 60)
        assert raw, f"connection closed before a result; got {messages}"
        messages.append(json.loads(raw))
        if messages[-1]["event"] == "result":
            return messages


async def result(path: Path, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    return (await call(path, cmd, args))[-1]


async def read_while_sending(reader: asyncio.StreamReader,
                             sender: Coroutine[Any, Any, None]) -> list[dict[str, Any]]:
    """Read up to the result while ``sender`` keeps writing; the sender is stopped after."""
    task = asyncio.create_task(sender)
    try:
        return await read_until_result(reader)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@dataclass
class Ctl:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def with_login_uid(login_uid: int) -> list[str]:
    """An argv prefix that sets the audit login uid (as a login would) and then execs the rest;
    it survives the uid change of ``setpriv`` as it survives ``sudo``."""
    return ["sh", "-c", f'echo {login_uid} > /proc/self/loginuid && exec "$@"', "sh"]


async def ctl(*argv: str, as_nobody: bool = False, stdin: str = "",
              env: Mapping[str, str] | None = None, login_uid: int | None = None) -> Ctl:
    """Run ``brace-watchdogctl`` (as ``python -m brace_watchdog.ctl``) without blocking the loop;
    the argv is recorded in :data:`~tests.support.ctl_coverage.CTL_RUNS`."""
    CTL_RUNS.append(argv)
    prefix = [*(with_login_uid(login_uid) if login_uid is not None else []),
              *(NOBODY if as_nobody else [])]
    proc = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-m", "brace_watchdog.ctl", *argv, cwd=str(REPO),
        env={**os.environ, **(env or {})}, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 120)
    return Ctl(proc.returncode or 0, out.decode(), err.decode())


class TouchAction:
    """A real, harmless gated action for protocol tests: appends its args to a file, streaming
    progress; ``delay`` keeps it running so a test can hang up mid-action."""

    name = "touch"

    def __init__(self, path: Path, *, delay: float = 0.0) -> None:
        self.path = path
        self.delay = delay
        self.finished = asyncio.Event()

    async def plan(self, args: dict[str, Any]) -> Plan:
        return Plan(self.name, {"target": "touch"}, "touch", ("append a line",))

    def leftover(self) -> None:
        return None

    async def execute(self, args: dict[str, Any], *, requester: str, approver: str,
                      progress: Any) -> dict[str, Any]:
        await progress("starting", "about to write")
        await asyncio.sleep(self.delay)
        with self.path.open("a") as out:
            out.write(f"{requester}->{approver}\n")
        await progress("written", "done writing")
        self.finished.set()
        return {"written": str(self.path)}


@dataclass
class RunningApproval:
    """An approval left running on its own connection (see :func:`approve_touch_in_background`)."""

    token: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


async def approve_touch_in_background(path: Path) -> RunningApproval:
    """Plan a touch and approve it on a connection kept open; returns once the action has started
    (its first progress event is read)."""
    token = (await result(path, "plan-touch"))["data"]["token"]
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(request_line("approve", {"token": token}))
    await writer.drain()
    first = json.loads(await asyncio.wait_for(reader.readline(), 60))
    assert first["event"] == "progress", first
    return RunningApproval(token, reader, writer)


def add_touch_planner(server: ControlServer) -> None:
    """Serve ``plan-touch``: the planning half of :class:`TouchAction`."""
    server.commands = {**server.commands,
                       "plan-touch": Command("plan-touch", "operator", _planner("touch"))}
