"""Stopping a helper process the tests started: SIGTERM, then SIGKILL if it lingers."""

from __future__ import annotations

import subprocess

__all__ = ["terminate"]


def terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Ask ``proc`` to stop, wait ``timeout`` seconds, then kill it; a no-op once it exited."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
