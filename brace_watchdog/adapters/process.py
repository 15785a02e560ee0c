"""The one way brace-watchdog runs a subprocess.

argv lists only (never a shell string), secrets masked in logs and errors, a timeout that kills
the whole process group, output captured, and failures turned into
:class:`~brace_watchdog.errors.CommandError`. Cancelling the awaiting task kills the process too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from brace_watchdog.errors import CommandError

__all__ = ["CommandResult", "mask", "run_command"]

log = logging.getLogger("brace_watchdog.process")
OUTPUT_LIMIT = 64 * 1024


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_seconds: float


def mask(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


async def run_command(argv: Sequence[str], *, timeout: float, check: bool = True,
                      cwd: Path | str | None = None, env: Mapping[str, str] | None = None,
                      secrets: Iterable[str] = (), stdin: bytes | None = None) -> CommandResult:
    """Run ``argv``; raise CommandError on a non-zero exit (when ``check``) or on timeout."""
    secret_list = [s for s in secrets if s]
    shown = [mask(a, secret_list) for a in argv]
    full_env = {**os.environ, **env} if env is not None else None
    started = time.monotonic()
    log.debug("running %s", " ".join(shown))
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=full_env, start_new_session=True,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise CommandError(f"cannot run {shown[0]}: {exc.strerror}", argv=shown) from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        await _kill(proc)
        raise CommandError(f"{shown[0]} timed out after {timeout:.0f}s", argv=shown,
                           timed_out=True) from None
    except asyncio.CancelledError:
        await _kill(proc)
        raise
    result = CommandResult(tuple(shown), proc.returncode or 0,
                           mask(_text(out), secret_list), mask(_text(err), secret_list),
                           time.monotonic() - started)
    if check and result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-2000:]
        raise CommandError(f"{' '.join(shown)} exited {result.returncode}: {tail}", argv=shown,
                           returncode=result.returncode, output=tail)
    return result


def _text(data: bytes) -> str:
    return data[-OUTPUT_LIMIT:].decode("utf-8", errors="replace")


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
