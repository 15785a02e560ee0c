"""The rollback's probe verification: ``verify_successes`` consecutive OK rounds, one round
starting every interval (the configured cadence), whatever each round's probes took.

Time is the test's (clock and sleep are parameters); the targets are getters on that clock, the
seam the daemon's HTTP prober plugs into: what is under test is the cadence and the rule, not
HTTP (the e2e rollback tests verify real services).
"""

from __future__ import annotations

import pytest

from brace_watchdog.actions.rollback_steps import verify_probes
from brace_watchdog.errors import ActionError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


class Target:
    """Answers ``status`` after ``takes`` seconds of the test's clock; remembers when each
    probe started."""

    def __init__(self, clock: Clock, status: int, takes: float) -> None:
        self.clock, self.status, self.takes = clock, status, takes
        self.started: list[float] = []

    async def get(self) -> int:
        self.started.append(self.clock.now)
        self.clock.now += self.takes
        return self.status


async def test_rounds_start_every_interval_and_three_ok_rounds_verify() -> None:
    clock = Clock()
    backend = Target(clock, 200, takes=0.125)
    streak = await verify_probes({"backend": backend}, successes=3, within=10.0, interval=0.25,
                                 ok_statuses=("2xx",), clock=clock, sleep=clock.sleep)
    assert (streak.rounds, streak.consecutive_ok) == (3, 3)
    assert backend.started == [0.0, 0.25, 0.5]  # not 0.25 after each round's end


async def test_a_slow_failing_target_is_probed_at_the_cadence_until_the_deadline() -> None:
    clock = Clock()
    backend = Target(clock, 500, takes=0.25)
    with pytest.raises(ActionError, match=r"\(9 rounds, last \{'backend': 'http_5xx 500'\}\)"):
        await verify_probes({"backend": backend}, successes=3, within=2.0, interval=0.25,
                            ok_statuses=("2xx",), clock=clock, sleep=clock.sleep)
    assert backend.started == [i * 0.25 for i in range(9)]
