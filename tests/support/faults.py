"""Fault injection for tests: another process holding the state file's write lock, and a small
tmpfs that a test fills up and frees (a real "disk full", not a patched error).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.skips import skip_missing

__all__ = ["fill_up", "hold_write_lock", "small_tmpfs"]

_LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
conn.execute("INSERT INTO flags (name, value, updated_at) VALUES ('locker', 'true', ?) "
             "ON CONFLICT(name) DO UPDATE SET updated_at = excluded.updated_at", (time.time(),))
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


@contextmanager
def hold_write_lock(state_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process takes the state file's write lock (``BEGIN EXCLUSIVE`` plus a row) and
    holds it until the block ends; it commits then, as a real competing writer would."""
    proc = subprocess.Popen([sys.executable, "-c", _LOCKER, str(state_path)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.stdin is not None:
            proc.stdin.write("\n")
            proc.stdin.close()
        if proc.stdout is not None:
            proc.stdout.close()
        assert proc.wait(timeout=30) == 0


@contextmanager
def small_tmpfs(path: Path, size: str = "1m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (needs root), unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        skip_missing("root and mount(8), to mount a small tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_up(folder: Path) -> Path:
    """Write a file in ``folder`` until its filesystem is full; delete the file to free it."""
    filler = folder / "filler"
    chunk = b"\0" * 4096
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler
