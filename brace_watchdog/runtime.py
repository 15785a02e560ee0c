"""The hub every component receives: config, state store, metrics, observations, notifier, and
the docker engine the stack runs on (``[rollback] driver``: compose host or Swarm manager).

It also owns the small cross-cutting verbs that several components need — record an event,
freeze and unfreeze automation, escalate to a human — so that they behave the same everywhere,
and the :class:`ActionLock` that lets one action at a time (automatic, manual or gated) change
the stack.
Construct it with explicit collaborators; tests pass an in-memory store and their own registry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from typing import Any, Protocol

from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.adapters.swarm import engine_for
from brace_watchdog.component import ProgressTracker
from brace_watchdog.config import Config
from brace_watchdog.errors import RefusedError
from brace_watchdog.journal_handover import ESCALATION_FLAG, FROZEN_FLAG
from brace_watchdog.leadership import LeadershipGate
from brace_watchdog.metrics import Metrics
from brace_watchdog.observations import Observations
from brace_watchdog.state import StateStore, StoreHealth

__all__ = ["ActionLock", "Hub", "Lease", "Notifier", "NullNotifier"]

log = logging.getLogger("brace_watchdog")



class Notifier(Protocol):
    """Sends a notification (webhook) without blocking the caller for long."""

    async def send(self, event: str, payload: dict[str, Any]) -> None: ...


class NullNotifier:
    """The notifier used when ``[notify]`` has no webhooks."""

    async def send(self, event: str, payload: dict[str, Any]) -> None:
        del event, payload


@dataclass(frozen=True)
class Lease:
    """Who holds the :class:`ActionLock`: the action's kind, its origin, since when."""

    kind: str
    origin: str
    since: float

    def describe(self) -> str:
        since = time.strftime("%H:%M:%S", time.gmtime(self.since))
        return f"{self.origin} {self.kind} (since {since} UTC)"


class ActionLock:
    """One action at a time: the app rollback (automatic, manual, recovery) and every gated action
    (DB, pg_hba, docker daemon) take it before they change anything, and release it when done.

    :meth:`acquire` is synchronous: the check and the set cannot be separated by an ``await``, so
    two coroutines can never both pass the check. ``guard`` (the leadership gate's ``check``)
    refuses every action on an instance that is not the leader: no lock, no action.
    """

    def __init__(self, clock: Callable[[], float] = time.time,
                 guard: Callable[[str], None] = lambda kind: None) -> None:
        self._clock = clock
        self._guard = guard
        self._lease: Lease | None = None
        self.released_at: float | None = None

    @property
    def holder(self) -> Lease | None:
        return self._lease

    def check(self, kind: str) -> None:
        """Raise :class:`RefusedError` naming the action that holds the lock, if any, or the
        leader when this instance is a follower."""
        self._guard(kind)
        if self._lease is not None:
            raise RefusedError(kind, f"{self._lease.describe()} is running; one action at a "
                               "time: wait for it to finish (see `status`) and try again")

    def acquire(self, kind: str, origin: str) -> Lease:
        """Take the lock (no ``await`` between check and set), or raise :class:`RefusedError`."""
        self.check(kind)
        self._lease = Lease(kind, origin, self._clock())
        return self._lease

    def release(self, lease: Lease) -> None:
        """Give the lock back (a stale lease is ignored)."""
        if self._lease is lease:
            self._lease = None
            self.released_at = self._clock()


@dataclass
class Hub:
    config: Config
    store: StateStore
    metrics: Metrics
    notifier: Notifier = field(default_factory=NullNotifier)
    clock: Callable[[], float] = time.time
    progress: ProgressTracker = field(default_factory=ProgressTracker)
    observations: Observations = field(default_factory=Observations)
    status: dict[str, str] = field(default_factory=dict)
    components: dict[str, Any] = field(default_factory=dict)
    leadership: LeadershipGate = field(init=False)
    action_lock: ActionLock = field(init=False)
    store_trouble: Callable[[], None] = lambda: None
    """Called (from any thread) after a state-store write failed: the supervisor wakes its flush
    task, which otherwise sleeps while the store is writable."""
    _dropped_seen: int = 0
    engine: DockerAdapter = field(init=False)
    """The docker engine as ``[rollback] driver`` runs the stack (a ``SwarmAdapter`` for
    ``swarm``): the app rollback and the DB rollback's writers share it."""
    docker: InitVar[DockerAdapter | None] = None
    """The engine to use instead of one built from the config (tests)."""

    def __post_init__(self, docker: DockerAdapter | None) -> None:
        self.engine = docker or engine_for(self.config.rollback.driver)
        self.leadership = LeadershipGate(self.clock)
        self.action_lock = ActionLock(self.clock, self.leadership.check)
        self.store.on_event = self._announce
        self.store.on_write_failure = self._store_write_failed
        self.metrics.state_store_up.set(1)
        self.observations.window_size = self.config.health.window_size
        self.guards_changed()
        self.metrics.dry_run.set(1 if self.config.daemon.dry_run else 0)

    # -- events ----------------------------------------------------------------------------
    def record(self, kind: str, source: str, message: str, *,
               evidence: dict[str, Any] | None = None, severity: str = "info",
               action_id: int | None = None) -> int:
        """Append to the event log; the store's hook logs and counts it."""
        return self.store.append_event(kind, source, message, evidence=evidence,
                                       severity=severity, action_id=action_id)

    def _announce(self, kind: str, source: str, severity: str, message: str,
                  event_id: int) -> None:
        """Every event, whoever wrote it (journal steps included): one log line, one count."""
        level = {"error": logging.ERROR, "warning": logging.WARNING}.get(severity, logging.INFO)
        log.log(level, "%s: %s", source, message, extra={"event_kind": kind, "event_id": event_id})
        self.metrics.events.labels(kind=kind).inc()

    def _store_write_failed(self, reason: str) -> None:
        self.metrics.state_write_failures.labels(reason=reason).inc()
        self.metrics.state_store_up.set(0)
        self.store_trouble()

    def flush_store(self) -> StoreHealth:
        """Write what the store queued while it was unavailable; export how it stands."""
        if self.store.health().pending:
            self.store.flush()
        health = self.store.health()
        self.metrics.state_store_up.set(1 if health.writable else 0)
        self.metrics.state_pending_writes.set(health.pending)
        self.metrics.state_writes_dropped.inc(max(0, health.dropped - self._dropped_seen))
        self._dropped_seen = health.dropped
        return health

    def set_status(self, component: str, line: str) -> None:
        self.status[component] = line

    def status_line(self) -> str:
        prefix = "FROZEN; " if self.frozen() else ""
        health = self.store.health()
        if not health.writable:
            prefix += (f"STATE STORE UNAVAILABLE ({health.reason}; {health.pending} writes "
                       "queued); ")
        return prefix + " | ".join(f"{k}: {v}" for k, v in sorted(self.status.items()))

    # -- automation guard ------------------------------------------------------------------
    def guards_changed(self) -> None:
        """Export the flags as the store has them (after another leader's were taken over)."""
        self.metrics.automation_frozen.set(1 if self.frozen() else 0)
        self.metrics.escalation_pending.set(1 if self.escalation() else 0)

    def frozen(self) -> dict[str, Any] | None:
        value = self.store.flag(FROZEN_FLAG)
        return value if isinstance(value, dict) else None

    def freeze(self, reason: str, *, by: str, evidence: dict[str, Any] | None = None) -> None:
        self.store.set_flag(FROZEN_FLAG, {"reason": reason, "by": by, "at": self.clock()})
        self.metrics.automation_frozen.set(1)
        self.record("automation.frozen", by, f"automatic actions frozen: {reason}",
                    evidence=evidence, severity="warning")

    def unfreeze(self, *, by: str) -> None:
        self.store.set_flag(FROZEN_FLAG, None)
        self.metrics.automation_frozen.set(0)
        self.record("automation.unfrozen", by, "automatic actions resumed")

    def escalation(self) -> dict[str, Any] | None:
        value = self.store.flag(ESCALATION_FLAG)
        return value if isinstance(value, dict) else None

    async def escalate(self, reason: str, message: str, *, source: str,
                       evidence: dict[str, Any] | None = None) -> int:
        """Ask a human: event, metric, flag (until acknowledged) and a notification."""
        event_id = self.record("escalation", source, message,
                               evidence={"reason": reason, **(evidence or {})}, severity="error")
        self.store.set_flag(ESCALATION_FLAG, {"reason": reason, "message": message,
                                              "event_id": event_id, "at": self.clock()})
        self.metrics.escalation_pending.set(1)
        self.metrics.escalations.labels(reason=reason).inc()
        await self.notifier.send("escalation", {"reason": reason, "message": message,
                                                "event_id": event_id, "evidence": evidence or {}})
        return event_id

    def acknowledge(self, *, by: str) -> None:
        self.store.set_flag(ESCALATION_FLAG, None)
        self.metrics.escalation_pending.set(0)
        self.record("escalation.acknowledged", by, f"escalation acknowledged by {by}")
