"""The control socket's caps as pure decisions: admission, request deadlines, rate limiting."""

from __future__ import annotations

import pytest

from brace_watchdog.control.limits import ConnectionLimits, RateLimiter, RequestClock, admit

LIMITS = ConnectionLimits(total=4, per_uid=2)


@pytest.mark.parametrize(("uid", "open_by_uid", "fragment"), [
    (1000, {}, None),
    (1000, {1000: 1}, None),
    (1000, {1000: 2}, "max_clients_per_uid = 2"),
    (1000, {1001: 2, 1002: 2}, "max_clients = 4"),
    (1000, {0: 50, 1001: 1}, None),          # root's connections do not count against others
    (0, {0: 500, 1000: 2, 1001: 2}, None),   # root is never refused
    (0, {}, None),
])
def test_admission(uid: int, open_by_uid: dict[int, int], fragment: str | None) -> None:
    refusal = admit(uid, open_by_uid, LIMITS)
    if fragment is None:
        assert refusal is None
    else:
        assert refusal is not None and fragment in refusal


def test_idle_deadline_is_not_moved_by_received_bytes_only_by_answers() -> None:
    clock = RequestClock(100.0, idle_seconds=60, request_seconds=10)
    assert clock.deadline() == 160.0
    clock.received(105.0)  # a blank line or the start of a request
    assert clock.deadline() == 115.0
    clock.received(114.0)  # more bytes: no extension
    assert clock.deadline() == 115.0
    assert clock.expired_reason()[0] == "request_timeout"
    clock.answered(114.5, pending=False)
    assert clock.deadline() == 174.5
    assert clock.expired_reason()[0] == "idle_timeout"


def test_pipelined_partial_line_starts_its_own_request_deadline() -> None:
    clock = RequestClock(0.0, idle_seconds=60, request_seconds=10)
    clock.received(1.0)
    clock.answered(2.0, pending=True)
    assert clock.deadline() == 12.0


def test_idle_deadline_wins_when_it_comes_first() -> None:
    clock = RequestClock(0.0, idle_seconds=5, request_seconds=10)
    clock.received(1.0)
    assert clock.deadline() == 5.0
    assert clock.expired_reason()[0] == "idle_timeout"


def test_rate_limiter_counts_what_it_held_back() -> None:
    limiter = RateLimiter(60.0)
    assert limiter.allow("accept", 0.0) == 0
    assert limiter.allow("accept", 1.0) is None
    assert limiter.allow("accept", 59.0) is None
    assert limiter.allow("busy:7", 2.0) == 0  # keys are independent
    assert limiter.allow("accept", 60.0) == 2
    assert limiter.allow("accept", 61.0) is None
