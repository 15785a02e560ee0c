"""Leadership: several instances watch, exactly one acts — "no lock, no action" (Patroni's rule).

The pure part is :func:`may_act`: from a :class:`LeaderView` (do we hold the PostgreSQL advisory
lock, since when, when did we last confirm it) it returns a :class:`LeaderDecision` that says
whether this instance may act now, and why. :class:`LeadershipGate` is what the rest of the daemon
sees through the hub: :meth:`LeadershipGate.check` (synchronous, for the action lock — a follower
refuses every action, naming the leader) and :meth:`LeadershipGate.confirm` (asynchronous, before
every action step: asks PostgreSQL whether the lock is still ours, with a short timeout; a lost
connection or lock demotes this instance at once and raises :class:`LeadershipLostError`).

Without ``[leadership] enabled`` (or without a database) the gate stays disabled and every
action is allowed, as for a single instance. The PostgreSQL side is
:mod:`brace_watchdog.adapters.pg_lock`; the component that keeps trying and confirming the lock
is :mod:`brace_watchdog.leader_election`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal

from brace_watchdog.errors import RefusedError

__all__ = ["LeaderDecision", "LeaderInfo", "LeaderView", "LeadershipGate",
           "LeadershipLostError", "locked_deadline", "may_act", "new_leader_acts_after",
           "old_leader_stops_within", "query_deadline", "settle_seconds", "split_brain_problem"]

Reason = Literal["single", "leader", "follower", "stale", "settling"]


@dataclass(frozen=True)
class LeaderInfo:
    """Who holds the lock, as PostgreSQL tells it (``application_name`` of the holder)."""

    host: str
    pid: int
    since: float | None = None

    def describe(self) -> str:
        return f"{self.host} (pid {self.pid})"


@dataclass(frozen=True)
class LeaderView:
    """What this instance knows about the lock; plain values, no clients."""

    enabled: bool = False
    held: bool = False
    acquired_at: float | None = None
    confirmed_at: float | None = None
    leader: LeaderInfo | None = None
    lease_seconds: float = 10.0
    settle_seconds: float = 3.0


@dataclass(frozen=True)
class LeaderDecision:
    acts: bool
    reason: Reason
    message: str


def may_act(view: LeaderView, now: float) -> LeaderDecision:
    """Whether this instance may act now: it holds the lock, confirmed it within the lease, and
    the previous leader has had ``settle_seconds`` to notice it lost it."""
    if not view.enabled:
        return LeaderDecision(True, "single", "leadership disabled: this instance acts")
    if not view.held or view.acquired_at is None or view.confirmed_at is None:
        who = view.leader.describe() if view.leader else "no instance (lock free)"
        return LeaderDecision(False, "follower", f"follower: the leader is {who}; ask it")
    silent = now - view.confirmed_at
    if silent > view.lease_seconds:
        return LeaderDecision(False, "stale", f"lock not confirmed for {silent:.1f}s (lease "
                              f"{view.lease_seconds:.0f}s): not acting until it is")
    waited = now - view.acquired_at
    if waited < view.settle_seconds:
        return LeaderDecision(False, "settling", f"leader for {waited:.1f}s: waiting "
                              f"{view.settle_seconds:.1f}s for the previous leader to stop")
    return LeaderDecision(True, "leader", "leader: this instance acts")


QUERY_MARGIN_SECONDS = 0.5  # a lock query's round trip beyond its statement_timeout


def query_deadline(timeout: float) -> float:
    """How long one lock query (take the lock, confirm it, name the holder) may take."""
    return timeout + QUERY_MARGIN_SECONDS


def locked_deadline(timeout: float) -> float:
    """How long a locked transaction (check the lock, write, commit) may take: the longest
    confirmation of the lock."""
    return 2 * timeout + QUERY_MARGIN_SECONDS


def settle_seconds(check_interval: float, check_timeout: float) -> float:
    """How long a new leader waits before acting: the old one's check interval + timeout."""
    return check_interval + check_timeout


def old_leader_stops_within(check_interval: float, check_timeout: float) -> float:
    """Seconds after PostgreSQL last answered the leader (it is cut off, or stopped) by which it
    has stopped acting: a confirmation answered then returns within C = :func:`locked_deadline`
    (its step starts then at the latest); the next query starts once that one is done, or at
    the next check (one ``check_interval`` later), and fails within C; any failed lock query
    demotes it, cancelling its running step."""
    confirm = locked_deadline(check_timeout)
    return max(check_interval, confirm) + confirm


def new_leader_acts_after(check_interval: float, check_timeout: float, lease: float) -> float:
    """Seconds after PostgreSQL last answered the old leader before another may act: the server
    ends the silent session after the lease; a follower may take the lock at once, and acts
    after the settle time."""
    return lease + settle_seconds(check_interval, check_timeout)


def split_brain_problem(check_interval: float, check_timeout: float,
                        lease: float) -> str | None:
    """Why these timings let a cut-off old leader still act when a new one may, or None."""
    stops = old_leader_stops_within(check_interval, check_timeout)
    acts = new_leader_acts_after(check_interval, check_timeout, lease)
    if stops <= acts:
        return None
    confirm = locked_deadline(check_timeout)
    return (f"two leaders could act at once: with check_interval_seconds = {check_interval:g}, "
            f"check_timeout_seconds = {check_timeout:g} and lease_seconds = {lease:g}, a "
            f"leader cut off from PostgreSQL may act for max(check_interval_seconds, C) + C = "
            f"{stops:g} s after its last answer (C = 2 x check_timeout_seconds + "
            f"{QUERY_MARGIN_SECONDS:g} = {confirm:g} s, its longest lock confirmation), but "
            f"another may act lease_seconds + check_interval_seconds + check_timeout_seconds "
            f"= {acts:g} s after it; raise lease_seconds to at least "
            f"{stops - settle_seconds(check_interval, check_timeout):g} or lower "
            "check_timeout_seconds (docs/swarm.md, 'Timings')")


class LeadershipLostError(RefusedError):
    """The lock was lost (or could not be confirmed) before an action step: stop acting."""


Confirm = Callable[[], Awaitable[bool]]


class LeadershipGate:
    """The hub's view of leadership; disabled (always acts) until the election enables it."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.view = LeaderView()
        self._confirm: Confirm | None = None
        self.generation = 0
        """Bumped on every change of leadership, so components notice a promotion."""
        self.on_lost: list[Callable[[str], None]] = []

    def enable(self, confirm: Confirm, *, lease_seconds: float, settle_seconds: float) -> None:
        self._confirm = confirm
        self.view = LeaderView(enabled=True, lease_seconds=lease_seconds,
                               settle_seconds=settle_seconds)

    def decision(self) -> LeaderDecision:
        return may_act(self.view, self._clock())

    def check(self, kind: str) -> None:
        """Raise :class:`RefusedError` naming the leader when this instance may not act."""
        decision = self.decision()
        if not decision.acts:
            raise RefusedError(kind, f"this instance may not act: {decision.message}")

    def promoted(self, now: float, leader: LeaderInfo) -> None:
        self.view = replace(self.view, held=True, acquired_at=now, confirmed_at=now,
                            leader=leader)
        self.generation += 1

    def confirmed(self, now: float) -> None:
        self.view = replace(self.view, confirmed_at=now)

    def observed(self, leader: LeaderInfo | None) -> None:
        self.view = replace(self.view, leader=leader)

    def demote(self, reason: str) -> bool:
        """Stop acting at once; True when this instance was the leader until now."""
        was = self.view.held
        self.view = replace(self.view, held=False, acquired_at=None, confirmed_at=None,
                            leader=None if was else self.view.leader)
        if was:
            self.generation += 1
            for listener in list(self.on_lost):
                listener(reason)
        return was

    async def confirm(self, step: str) -> None:
        """Before an action step: the lock must still be ours (asked of PostgreSQL)."""
        if not self.view.enabled:
            return
        decision = self.decision()
        ok = decision.acts and self._confirm is not None and await self._confirm()
        if not ok:
            reason = decision.message if not decision.acts else "lock lost or not confirmable"
            self.demote(reason)
            raise LeadershipLostError(step, f"leadership lost before step {step!r} ({reason}); "
                                      "stopping here — the new leader reconciles the journal")
        self.confirmed(self._clock())
