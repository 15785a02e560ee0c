"""The control socket's resource caps, as pure decisions: who may open another connection, when
a connection has waited too long for its next request, and how often a repeated complaint is
logged. No I/O here; :mod:`brace_watchdog.control.server` applies them.

* :func:`admit` — ``[control] max_clients`` connections in total and ``max_clients_per_uid`` per
  uid; root (uid 0) is never refused, so a flood by a group member cannot lock the operator out.
* :class:`RequestClock` — a connection must deliver its next complete, non-blank request line
  within ``idle_timeout_seconds`` of connecting or of its last answer, and within
  ``request_timeout_seconds`` of the first byte it sent after that. Only an answered request
  moves the deadlines: blank lines and dribbled bytes do not.
* :class:`RateLimiter` — at most one message per key per interval, counting what it held back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ConnectionLimits", "RateLimiter", "RequestClock", "admit"]

ROOT_UID = 0


@dataclass(frozen=True)
class ConnectionLimits:
    total: int
    per_uid: int


def admit(uid: int, open_by_uid: Mapping[int, int], limits: ConnectionLimits) -> str | None:
    """``None`` if ``uid`` may open one more connection, else why not (shown to the client)."""
    if uid == ROOT_UID:
        return None
    mine = open_by_uid.get(uid, 0)
    if mine >= limits.per_uid:
        return (f"uid {uid} already has {mine} open control connections (limit "
                f"[control] max_clients_per_uid = {limits.per_uid}); close one and retry")
    others = sum(n for u, n in open_by_uid.items() if u != ROOT_UID)
    if others >= limits.total:
        return (f"{others} control connections are open (limit [control] max_clients = "
                f"{limits.total}); retry in a moment")
    return None


class RequestClock:
    """Deadlines of one connection, driven by the caller's clock readings."""

    def __init__(self, now: float, *, idle_seconds: float, request_seconds: float) -> None:
        self.idle_seconds = idle_seconds
        self.request_seconds = request_seconds
        self._idle_deadline = now + idle_seconds
        self._line_deadline: float | None = None

    def received(self, now: float) -> None:
        """Bytes arrived: the request they start must be complete within the request time."""
        if self._line_deadline is None:
            self._line_deadline = now + self.request_seconds

    def answered(self, now: float, *, pending: bool) -> None:
        """A request line was answered; the next one may take the full idle time."""
        self._idle_deadline = now + self.idle_seconds
        self._line_deadline = now + self.request_seconds if pending else None

    def deadline(self) -> float:
        if self._line_deadline is None:
            return self._idle_deadline
        return min(self._idle_deadline, self._line_deadline)

    def expired_reason(self) -> tuple[str, str]:
        """The error code and message for a connection whose deadline passed."""
        if self._line_deadline is not None and self._line_deadline <= self._idle_deadline:
            return ("request_timeout", f"request line not completed within "
                    f"{self.request_seconds:g}s; closing")
        return ("idle_timeout", f"no complete request within {self.idle_seconds:g}s; closing")


class RateLimiter:
    """One message per key per ``interval`` seconds; :meth:`allow` returns how many were held
    back since the last one let through, or ``None`` to hold this one back."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str, now: float) -> int | None:
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)
