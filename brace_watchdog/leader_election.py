"""The leadership component: keeps trying (follower) or confirming (leader) the advisory lock.

Every ``check_interval_seconds`` a follower tries ``pg_try_advisory_lock``; the leader asks
PostgreSQL whether the lock is still its own. Winning bumps ``brace_watchdog_leader`` and
``brace_watchdog_leadership_changes_total{change="acquired"}``; a lost connection or lock demotes
at once (:meth:`~brace_watchdog.leadership.LeadershipGate.demote` tells the acting components,
which stop their action and journal it as interrupted). The leader's journal is written through to
PostgreSQL (:mod:`brace_watchdog.shared_journal`); confirming the lock *is* writing it. On
winning the lock, before it is promoted, an instance takes over what other hosts' leaders left
open in it; then it reconciles its journal the way a restarted daemon does: each acting component
notices the gate's new ``generation``. A follower takes over the leader's shared guards (a
freeze, its lifting, …) once per lease.
"""

from __future__ import annotations

import logging
import os
import socket

from brace_watchdog.adapters.pg_lock import AdvisoryLockSession
from brace_watchdog.component import Component
from brace_watchdog.config import Config, LeadershipConfig
from brace_watchdog.errors import PostgresError
from brace_watchdog.leadership import LeaderInfo
from brace_watchdog.runtime import Hub
from brace_watchdog.shared_journal import SharedJournal

__all__ = ["LeaderElection", "leadership_active", "leadership_unused"]

log = logging.getLogger("brace_watchdog.leadership")


def leadership_active(config: Config) -> bool:
    return config.leadership.enabled and config.database.enabled


def leadership_unused(config: Config) -> str | None:
    """Why ``[leadership] enabled = true`` elects nothing (no ``[database] dsn``), or None."""
    if not config.leadership.enabled or config.database.enabled:
        return None
    return ("[leadership] enabled = true but [database] dsn is empty: no election, this "
            "instance acts alone (instances elect one leader only through the PostgreSQL "
            "they all share: give each its dsn)")


class LeaderElection(Component):
    name = "leadership"

    def __init__(self, hub: Hub, *, session: AdvisoryLockSession | None = None,
                 host: str | None = None, pid: int | None = None) -> None:
        self.hub = hub
        self.cfg: LeadershipConfig = hub.config.leadership
        self.me = LeaderInfo(host or self.cfg.name or socket.gethostname(), pid or os.getpid())
        db = hub.config.database
        self.session = session or AdvisoryLockSession(
            db.dsn.reveal(), password=db.password.reveal(), key=self.cfg.lock_key,
            host=self.me.host, pid=self.me.pid, lease_seconds=self.cfg.lease_seconds,
            timeout_seconds=self.cfg.check_timeout_seconds)
        self.journal = SharedJournal(hub, self.session, host=self.me.host, pid=self.me.pid)
        hub.leadership.enable(self._still_ours, lease_seconds=self.cfg.lease_seconds,
                              settle_seconds=self.cfg.settle_seconds)
        hub.leadership.on_lost.append(self._lost)
        hub.metrics.leader.set(0)
        self._next_follow = 0.0

    def interval(self) -> float:
        return self.cfg.check_interval_seconds

    async def start(self) -> None:
        await self.cycle()

    async def cycle(self) -> str:
        gate = self.hub.leadership
        try:
            if not self.session.connected:
                await self.session.connect()
            if gate.view.held:
                if not await self.journal.flush():
                    gate.demote("the lock is no longer ours")
            elif await self.session.try_acquire(self.hub.clock()):
                await self._take_over()
            gate.observed(await self.session.holder())
            if not gate.view.held:
                await self._follow()
        except PostgresError as exc:
            gate.demote(str(exc))
            gate.observed(None)
            raise
        if gate.view.held:
            gate.confirmed(self.hub.clock())
        return gate.decision().message

    async def stop(self) -> None:
        await self.journal.stop()
        await self.session.close()  # closing the session releases the lock

    async def _take_over(self) -> None:
        """Settle the shared journal, then lead; when that fails, let the lock go."""
        try:
            await self.journal.take_over()
        except BaseException:
            await self.session.close()
            raise
        self._won()

    async def _follow(self) -> None:
        """A follower takes over the leader's shared guards once per lease."""
        now = self.hub.clock()
        if now >= self._next_follow:
            self._next_follow = now + self.cfg.lease_seconds
            await self.journal.follow()

    async def _still_ours(self) -> bool:
        """Before an action step: the journal so far written, in a transaction that found the
        lock ours."""
        try:
            return await self.journal.flush()
        except PostgresError:
            return False

    def _won(self) -> None:
        now = self.hub.clock()
        self.hub.leadership.promoted(now, LeaderInfo(self.me.host, self.me.pid, now))
        self.hub.metrics.leader.set(1)
        self.hub.metrics.leadership_changes.labels(change="acquired").inc()
        self.hub.record("leadership.acquired", self.name,
                        f"{self.me.describe()} is the leader now; acting after "
                        f"{self.cfg.settle_seconds:.1f}s")

    def _lost(self, reason: str) -> None:
        self.hub.metrics.leader.set(0)
        self.hub.metrics.leadership_changes.labels(change="lost").inc()
        self.hub.record("leadership.lost", self.name,
                        f"{self.me.describe()} lost the leadership ({reason}); stopped acting",
                        severity="warning")
