"""Per-test time limit, so one hung test fails fast instead of stalling CI for 90 minutes.

Soft limit: SIGALRM raises :class:`TestTimeout` in the main thread (also wakes an asyncio loop
blocked in select), the test fails with a traceback and the session goes on. Hard limit, a
minute later: ``faulthandler`` dumps every thread's stack and exits the process, for hangs the
soft limit cannot interrupt (a test that swallows the exception, a stuck C call).
The limit is ``$BRACE_TEST_TIMEOUT`` seconds (default 300; 0 switches it off).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import pytest

try:
    from _pytest.faulthandler import fault_handler_stderr_fd_key as _STDERR_FD_KEY
except ImportError:  # pragma: no cover - older/newer pytest: fall back to sys.stderr
    _STDERR_FD_KEY = None  # type: ignore[assignment]

__all__ = ["TestTimeout", "default_timeout", "report_fd", "time_limit"]

HARD_GRACE_SECONDS = 60.0


class TestTimeout(BaseException):
    """The test ran past its time limit.

    A BaseException (like KeyboardInterrupt) so code under test that catches ``Exception`` to
    survive its own errors (the daemon's supervisor does) cannot swallow it.
    """

    __test__ = False  # not a test class, despite the name


def default_timeout() -> float:
    return float(os.environ.get("BRACE_TEST_TIMEOUT", "300"))


def report_fd(config: pytest.Config) -> int | None:
    """The un-captured stderr that pytest's faulthandler plugin keeps (private API: best effort;
    while a test runs, fd 2 points at pytest's capture file, which dies with the process)."""
    if _STDERR_FD_KEY is None:
        return None
    return config.stash.get(_STDERR_FD_KEY, None)


@contextmanager
def time_limit(seconds: float, what: str, *, report_fd: int | None = None) -> Iterator[None]:
    """Enforce ``seconds`` on the enclosed block (main thread only; no-op when 0 or elsewhere).

    Not re-entrant: an inner limit ends the outer one (fine for the one per-test use).
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        raise TestTimeout(f"{what} exceeded {seconds:g}s (BRACE_TEST_TIMEOUT)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(seconds + HARD_GRACE_SECONDS, exit=True,
                                      file=sys.stderr if report_fd is None else report_fd)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()
