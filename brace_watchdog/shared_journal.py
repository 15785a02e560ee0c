"""The shared action journal: the leader's journal, written through to PostgreSQL, and takeover.

With leadership on, every journal write of the state store (``on_journal``) is queued here and
written to ``brace_watchdog.journal`` (:mod:`brace_watchdog.adapters.pg_journal`) through the
leadership session, in a transaction that first confirms the lock: a deposed leader writes
nothing. The queue is written at once (a background task), and at the latest by the confirmation
before the next action step (:meth:`SharedJournal.flush` *is* that confirmation), so no step
starts before PostgreSQL knows every step before it. A leader that cannot write stops acting.

:meth:`SharedJournal.take_over` runs when this instance has just won the lock, before it is
promoted: it reads the shared rows and carries out :func:`~brace_watchdog.journal_handover.
plan_handover` — actions another host left open are copied into the local journal, where the
restart path (the app rollback's and the gated actions' reconciliation) resolves them. In the
same transaction it reads the shared guards (automation frozen, an escalation pending, the
releases a rollback left) and reconciles them with its own
(:func:`~brace_watchdog.journal_handover.plan_guards`) before it acts: it never acts on a freeze
another leader set, nor rolls back a release another leader already rolled back once. A guard
changed while this instance does not lead is not queued: the next takeover compares it anyway.
A follower reads the shared guards now and then (:meth:`SharedJournal.follow`) and takes over
the newer ones, so its status and metrics (``brace_automation_frozen``) follow the leader's.

The queue is bounded: beyond ``MAX_PENDING`` entries (a follower, or a leader whose writes
fail, writes nothing) it is folded (:func:`~brace_watchdog.journal_handover.coalesce`: the same
rows once written); only if it is still too long are the oldest entries dropped — logged and
counted in ``brace_watchdog_shared_journal_dropped_total``. The local journal keeps every entry,
and the next takeover settles every shared row still open for an action closed here.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence

from brace_watchdog.adapters import pg_journal
from brace_watchdog.adapters.pg_lock import AdvisoryLockSession, Connection
from brace_watchdog.errors import PostgresError
from brace_watchdog.journal_handover import (
    FROZEN_FLAG,
    HANDED_OVER,
    ROLLBACK_STARTED,
    Guard,
    JournalEntry,
    SharedAction,
    coalesce,
    handover_freezes,
    plan_guards,
    plan_handover,
)
from brace_watchdog.runtime import Hub

__all__ = ["SharedJournal"]

log = logging.getLogger("brace_watchdog.leadership")
WHAT = "shared journal"
MAX_PENDING = 1000  # queued entries; beyond it they are folded, then the oldest dropped


class SharedJournal:
    """The leader's journal in PostgreSQL; see the module docstring."""

    def __init__(self, hub: Hub, session: AdvisoryLockSession, *, host: str, pid: int) -> None:
        self.hub = hub
        self.session = session
        self.host, self.pid = host, pid
        self._store_id = ""
        self._pending: deque[JournalEntry | Guard] = deque()
        self._lock = asyncio.Lock()
        self._eager: asyncio.Task[None] | None = None
        hub.store.on_journal = self.record

    @property
    def store_id(self) -> str:
        """This state file's id in the shared journal (read, or made, at first use)."""
        if not self._store_id:
            self._store_id = self.hub.store.store_identity()
        return self._store_id

    def record(self, entry: JournalEntry | Guard) -> None:
        """The store's hook: queue the entry; a leader writes it at once in the background."""
        held = self.hub.leadership.view.held
        if isinstance(entry, Guard) and not held:
            return  # the next takeover compares this state file's guards with the shared ones
        self._pending.append(entry)
        if len(self._pending) > MAX_PENDING:
            self._bound()
        if not held:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # written from a worker thread: the next confirmation writes it
        if self._eager is None or self._eager.done():
            self._eager = loop.create_task(self._write_soon(), name="leadership:journal")

    def _bound(self) -> None:
        """Fold the queue; keep at most half the bound (so folding is rare), dropping the
        oldest entries beyond it."""
        folded = coalesce(list(self._pending))
        drop = max(0, len(folded) - MAX_PENDING // 2)
        if drop:
            log.error("%s: %d entries wait to be written, even folded; the oldest %d are "
                      "dropped (the local journal keeps them)", WHAT, len(folded), drop)
            self.hub.metrics.shared_journal_dropped.inc(drop)
        self._pending = deque(folded[drop:])

    async def _write_soon(self) -> None:
        """Write the queue now. A write that fails (its session closed, which frees the lock)
        or finds the lock not ours demotes this leader at once, not at its next check."""
        try:
            while self._pending:
                if not await self.flush():
                    self.hub.leadership.demote("the lock is no longer ours")
                    return
        except PostgresError as exc:
            log.warning("%s not written (%s); not leading any more", WHAT, exc)
            self.hub.leadership.demote(str(exc))

    async def flush(self) -> bool:
        """Write what is queued in one transaction that confirms the lock first; False (nothing
        written) when the lock is not ours. Raises PostgresError when PostgreSQL fails."""
        if not self._pending and not self._lock.locked():  # nothing to write, none in flight:
            return await self.session.held()  # the plain lock check, one round trip
        return await self._write(())

    async def _write(self, close: Sequence[tuple[SharedAction, int]],
                     guards: Sequence[Guard] = ()) -> bool:
        """The queue, ``close``: (row, the id of its copy here) adopted rows to close, and
        ``guards`` this state file set newer than the shared table."""
        async with self._lock:
            entries = list(self._pending)  # taken out while written: record() may fold the rest
            self._pending.clear()

            async def work(conn: Connection) -> None:
                await pg_journal.write_entries(conn, [*entries, *guards], store_id=self.store_id,
                                               host=self.host, pid=self.pid)
                for row, copy in close:
                    await pg_journal.adopted(conn, row, by=f"{self.host} as {row.kind} {copy}",
                                             into=(self.store_id, copy), now=self.hub.clock())

            ok = False
            try:
                ok, _ = await self.session.run_locked(work, WHAT)
            finally:
                if not ok:
                    self._pending.extendleft(reversed(entries))
            return ok

    async def stop(self) -> None:
        if self._eager is not None:
            self._eager.cancel()
            await asyncio.gather(self._eager, return_exceptions=True)

    # -- takeover --------------------------------------------------------------------------
    async def take_over(self) -> None:
        """Just won the lock (not promoted yet): settle the shared journal with the local one."""
        store, store_id = self.hub.store, self.store_id  # SQLite first, outside the transaction
        local_open = [action.id for action in store.open_actions()]
        now = self.hub.clock()

        async def read(conn: Connection) -> tuple[list[SharedAction], list[Guard]]:
            await pg_journal.ensure_table(conn, now)
            return (await pg_journal.handover_rows(conn, store_id, local_open),
                    await pg_journal.guards(conn))

        try:
            ok, shared = await self.session.run_locked(read, WHAT)
        except PostgresError as exc:
            raise PostgresError(f"{exc}; not leading without the shared journal: see "
                                "docs/swarm.md, 'The shared journal', for its privileges") from None
        if not ok or shared is None:
            raise PostgresError("leadership: the lock was lost while reading the shared journal")
        rows, shared_guards = shared
        copies = store.adopted_keys()
        plan = plan_handover(store_id, rows, local_open=local_open, adopted=copies)
        for row in plan.handed_over:
            self._hand_over(row)
        for row in plan.settle:
            self._settle(row)
        close = [(row, copies[row.key]) for row in plan.close]
        close += [(row, self._adopt(row)) for row in plan.adopt]
        guards = plan_guards(store.guards(), shared_guards, now=now)
        for guard in guards.apply:
            self._take_guard(guard)
        if not await self._write(close, guards.push):
            raise PostgresError("leadership: the lock was lost while writing the shared journal")

    async def follow(self) -> None:
        """A follower: take over the guards a leader set (or lifted) since; never write any."""
        try:
            shared = await self.session.read(pg_journal.guards, f"{WHAT} (guards)")
        except PostgresError as exc:
            log.warning("%s; tried again later", exc)
            return
        for guard in plan_guards(self.hub.store.guards(), shared, now=self.hub.clock()).apply:
            self._take_guard(guard)

    def _adopt(self, row: SharedAction) -> int:
        message = (f"{row.describe()} was left open at step '{row.step}' when {row.host} "
                   "stopped leading; adopted here and reconciled like after a restart (never "
                   "repeating a step)")
        action_id = self.hub.store.adopt_action(row, message)
        self.hub.metrics.actions_adopted.labels(kind=row.kind).inc()
        return action_id

    def _hand_over(self, row: SharedAction) -> None:
        """This instance's own open action, which another leader adopted meanwhile."""
        outcome = row.adopter_status or "unknown"
        message = (f"{row.kind} {row.action_id} was taken over by {row.adopted_by} while "
                   f"{self.host} did not lead (its state there: {outcome}); not resumed here")
        evidence = {"adopted_by": row.adopted_by, "adopter_status": row.adopter_status}
        self.hub.store.journal_step(row.action_id, HANDED_OVER, status=HANDED_OVER,
                                    evidence=evidence, result=message)
        if handover_freezes(row):  # also when frozen already (a follower took a freeze over)
            before = self.hub.frozen()
            also = f" (frozen before: {before.get('reason')})" if before else ""
            self.hub.freeze(f"{message}; check it on {row.adopted_by}, then unfreeze{also}",
                            by="leadership", evidence=evidence)

    def _settle(self, row: SharedAction) -> None:
        """A shared row left open for an action this state file has closed (or lost)."""
        local = self.hub.store.action(row.action_id)
        if local is not None and local.kind == row.kind:
            entry = JournalEntry(row.action_id, local.step, self.hub.clock(), local.status,
                                 local.result)
        else:
            entry = JournalEntry(row.action_id, row.step, self.hub.clock(), "interrupted",
                                 "not found in this instance's state file any more")
        self._pending.append(entry)

    def _take_guard(self, guard: Guard) -> None:
        """A guard the previous leader set (or an operator lifted) later than this state file."""
        if not self.hub.store.apply_guard(guard):
            log.warning("shared guard %s %s names a release unknown here; not taken over",
                        guard.kind, guard.key[:12])
            return
        self.hub.guards_changed()
        if guard.kind == "rolled_back":
            what = (f"release {guard.key[:12]} was rolled back by another leader; it is never "
                    "rolled back automatically again")
        elif guard.kind == "failed_verification":
            what = (f"a rollback to release {guard.key[:12]} failed verification on another "
                    "leader; no automatic rollback targets it again" if guard.value else
                    f"the failed mark of release {guard.key[:12]} was cleared on another leader")
        elif guard.kind == ROLLBACK_STARTED:
            what = (f"a rollback another leader started at {guard.ts:.0f} counts toward the "
                    "cooldown and max_per_day here")
        elif guard.key == FROZEN_FLAG:
            what = (f"automatic actions frozen by another leader: {guard.value['reason']}"
                    if guard.value else "automatic actions were resumed on another leader")
        else:
            what = ("an escalation is pending from another leader: "
                    f"{guard.value['message']}" if guard.value
                    else "the escalation was acknowledged on another leader")
        self.hub.record("leadership.guard", "leadership", f"taken over: {what}",
                        evidence={"kind": guard.kind, "key": guard.key, "value": guard.value,
                                  "set_at": guard.ts},
                        severity="warning" if guard.value else "info")
