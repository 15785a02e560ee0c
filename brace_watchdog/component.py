"""The component contract and the progress tracker that gates systemd's watchdog.

A component is one concern with its own task: the supervisor calls :meth:`Component.cycle` on a
deadline schedule, catches everything but :class:`~brace_watchdog.errors.FatalError`, and records
progress after each cycle. A component whose cycle hangs stops making progress; once it has been
silent longer than its :meth:`Component.progress_deadline`, the watchdog pings stop and systemd
restarts the daemon. Long work (a restore test, a rollback) therefore runs in a task of its own and
calls :meth:`ProgressTracker.beat` while it works, keeping the component's cycles short.

Between two cycles the supervisor awaits :meth:`Component.pause`: a plain sleep until the next
cycle is due, unless the component overrides it to be woken earlier by news it must act on at
once (the rollback, by a failing probe); a woken cycle does not move the schedule.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from brace_watchdog.config import Config

__all__ = ["Component", "ProgressTracker", "Stall"]


class Component(ABC):
    """One concern of the daemon. Subclasses set ``name`` and implement :meth:`cycle`."""

    name: str = "component"

    @abstractmethod
    def interval(self) -> float:
        """Seconds between the starts of two cycles."""

    def progress_deadline(self) -> float:
        """Longest silence (seconds) before this component counts as hung."""
        return max(3 * self.interval(), self.interval() + 30.0)

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare (open clients, clean orphans). Runs before READY=1."""

    @abstractmethod
    async def cycle(self) -> str:
        """Do one round of work; return a one-line status for logs and ``STATUS=``."""

    async def pause(self, seconds: float) -> bool:
        """Wait ``seconds``, until the next scheduled cycle. True when the component was woken
        earlier (the supervisor then runs one extra cycle and keeps the schedule)."""
        await asyncio.sleep(seconds)
        return False

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Release resources; called once on shutdown, even after errors."""

    def reconfigure(self, config: Config) -> None:  # noqa: B027 - optional hook
        """Adopt a reloaded configuration (SIGHUP); takes effect from the next cycle."""


@dataclass(frozen=True)
class Stall:
    component: str
    silent_seconds: float
    deadline_seconds: float


class ProgressTracker:
    """Remembers when each component last made progress; pure bookkeeping, clock injected."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}
        self._deadline: dict[str, float] = {}

    def register(self, name: str, deadline_seconds: float) -> None:
        self._deadline[name] = deadline_seconds
        self._last[name] = self._clock()

    def beat(self, name: str) -> None:
        if name in self._deadline:
            self._last[name] = self._clock()

    def stalls(self) -> list[Stall]:
        now = self._clock()
        return [Stall(name, now - self._last[name], deadline)
                for name, deadline in self._deadline.items() if now - self._last[name] > deadline]
