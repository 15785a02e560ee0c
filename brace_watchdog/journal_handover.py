"""The shared action journal's values and its pure handover rule (no I/O).

With leadership on, every journal write of the leader (each ``begin``, step and end of an action)
is also written to PostgreSQL (:mod:`brace_watchdog.adapters.pg_journal`), keyed by the state
file it came from (its ``store_id``) and the action's id there. A new leader on another host
reads the open rows and decides here what each one needs (:func:`plan_handover`):

- an open action of **another** state file is *adopted*: copied into this instance's own journal
  (its plan, step and last evidence, with ``adopted_from`` naming the host that left it) and
  then reconciled by the same code a restarted daemon runs; its shared row is closed as adopted;
- one this instance adopted before (a crash between its local copy and the shared close) is only
  closed, never adopted twice;
- an action still open in **this** state file whose shared row another leader adopted (this
  instance was partitioned, and came back) is *handed over*: closed locally, never resumed —
  and, unless the adopter's copy ended ``succeeded``, automation freezes here too
  (:func:`handover_freezes`), with this host's reason (the newer freeze);
- an open action of this state file that nobody adopted is left to the ordinary restart path;
- a shared row still open for an action this state file has closed (the closing write never
  reached PostgreSQL: the lock was lost, or the daemon stopped first) is *settled* from the local
  record, so no other leader adopts a finished action.

The guards that keep automation from looping travel the same way (:class:`Guard`): the
``automation_frozen`` and ``escalation_pending`` flags, each release a rollback left (one
automatic rollback per bad release) and each rollback target that failed verification (no second
automatic attempt), and the start of each rollback within the rate limits' look-back
(``rollback_started``: the cooldown and ``max_per_day`` count every leader's rollbacks). The
leader writes every change of them through; a new leader reconciles its own with the shared
ones before it acts (:func:`plan_guards`): the newer of the two wins, so a freeze the old leader
set holds here, a freeze an operator lifted is lifted for every instance that leads later, and
what this state file set but never wrote goes out; rollback starts are a union (one per
rollback, keyed by where it began) of those still within the look-back.

Entries waiting to be written (a follower writes nothing) can be folded without changing what
they leave in PostgreSQL (:func:`coalesce`): per action its ``begin`` and one entry carrying the
latest step, status and result; per guard its latest setting.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ESCALATION_FLAG", "FROZEN_FLAG", "RATE_RECORD_SECONDS", "ROLLBACK_STARTED",
           "SHARED_FLAGS", "ActionStart", "Guard", "GuardKind", "GuardPlan", "Handover",
           "JournalEntry", "SharedAction", "adopted_from",
           "coalesce", "handover_freezes", "interrupted_by", "plan_guards", "plan_handover"]

OPEN_STATUSES = ("planned", "running")
ADOPTED = "adopted"  # a shared row's status once another state file took the action over
HANDED_OVER = "handed_over"  # a local action's status once another leader took it over
FROZEN_FLAG = "automation_frozen"
ESCALATION_FLAG = "escalation_pending"
SHARED_FLAGS = (FROZEN_FLAG, ESCALATION_FLAG)
GuardKind = Literal["flag", "rolled_back", "failed_verification", "rollback_started"]
ROLLBACK_STARTED: GuardKind = "rollback_started"
RATE_RECORD_SECONDS = 86400.0  # how far back the rollback rate limits count (max_per_day)


@dataclass(frozen=True)
class ActionStart:
    """What the ``begin`` of an action (or its adoption) says beyond the step."""

    kind: str
    origin: str
    requester: str
    plan: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class JournalEntry:
    """One journal write as the state store reports it (``status`` None: unchanged)."""

    action_id: int
    step: str
    ts: float
    status: str | None = None
    result: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    start: ActionStart | None = None


@dataclass(frozen=True)
class SharedAction:
    """A row of the shared journal: an action of state file ``store_id``, as last written."""

    store_id: str
    action_id: int
    host: str
    pid: int
    kind: str
    origin: str
    requester: str
    status: str
    step: str
    plan: dict[str, Any]
    evidence: dict[str, Any]
    updated_at: float
    adopted_by: str | None = None
    adopter_status: str | None = None
    """The status of the adopting copy (its own row), when this row was adopted."""

    @property
    def key(self) -> tuple[str, int]:
        return self.store_id, self.action_id

    def describe(self) -> str:
        return f"{self.kind} {self.action_id} of {self.host} (pid {self.pid})"

    def origin_note(self) -> dict[str, Any]:
        """What the adopting action keeps of where it came from (``plan["adopted_from"]``)."""
        return {"store_id": self.store_id, "action_id": self.action_id, "host": self.host,
                "pid": self.pid, "step": self.step}


@dataclass(frozen=True)
class Handover:
    """What a new leader does with the shared journal; see the module docstring."""

    adopt: tuple[SharedAction, ...] = ()
    close: tuple[SharedAction, ...] = ()
    handed_over: tuple[SharedAction, ...] = ()
    settle: tuple[SharedAction, ...] = ()


def plan_handover(store_id: str, rows: Sequence[SharedAction], *, local_open: Collection[int],
                  adopted: Collection[tuple[str, int]]) -> Handover:
    """``rows``: the open rows of every state file and this state file's rows of the actions
    still open here (``local_open``); ``adopted``: the keys this state file already adopted."""
    adopt: list[SharedAction] = []
    close: list[SharedAction] = []
    handed: list[SharedAction] = []
    settle: list[SharedAction] = []
    for row in rows:
        is_open = row.status in OPEN_STATUSES
        if row.store_id != store_id:
            if is_open:
                (close if row.key in adopted else adopt).append(row)
        elif row.action_id in local_open:
            if row.status == ADOPTED:
                handed.append(row)
        elif is_open:
            settle.append(row)
    return Handover(tuple(adopt), tuple(close), tuple(handed), tuple(settle))


def handover_freezes(row: SharedAction) -> bool:
    """Whether handing ``row`` over freezes automation here: unless its adopter completed it."""
    return row.adopter_status != "succeeded"


def adopted_from(plan: dict[str, Any]) -> dict[str, Any] | None:
    note = plan.get("adopted_from")
    return note if isinstance(note, dict) else None


def interrupted_by(plan: dict[str, Any]) -> str:
    """Who left an open action behind, for the operator: a restart here, or another host."""
    note = adopted_from(plan)
    if note is None:
        return "by a daemon restart"
    return (f"on {note.get('host', '?')} (pid {note.get('pid', '?')}), which stopped leading "
            f"(its action {note.get('action_id', '?')})")


@dataclass(frozen=True)
class Guard:
    """One loop-proofing guard as a state file (or the shared table) last set it.

    ``kind`` ``flag``: ``key`` is one of :data:`SHARED_FLAGS`, ``value`` the flag (None: lifted);
    ``rolled_back``: ``key`` is a release fingerprint a rollback left, ``value`` says which
    rollback (``{"release": ..., "action_id": ...}``); ``failed_verification``: ``key`` is a
    release a rollback to which failed verification (``{"release": ...}``; None: an operator
    cleared the mark); ``rollback_started``: ``key`` is ``STORE_ID/ACTION_ID`` of a rollback
    where it began (an adopted copy keeps its origin's), ``ts`` when it started, ``value`` ``{}``
    (:data:`RATE_RECORD_SECONDS` later it no longer counts, and is no longer shared). ``ts`` is
    when it was set: the newer of two sightings of one guard wins.
    """

    kind: GuardKind
    key: str
    value: dict[str, Any] | None
    ts: float

    @property
    def ident(self) -> tuple[str, str]:
        return self.kind, self.key


@dataclass(frozen=True)
class GuardPlan:
    """What a new leader does with the guards: ``apply`` shared ones here, ``push`` its own."""

    apply: tuple[Guard, ...] = ()
    push: tuple[Guard, ...] = ()


def plan_guards(local: Sequence[Guard], shared: Sequence[Guard], *, now: float) -> GuardPlan:
    """The newer of each guard wins (``ts``; a tie means both sides agree). A guard one side has
    never seen counts as unset: only a set one (a value) crosses over, an unset one is news to
    nobody. A rollback start older than :data:`RATE_RECORD_SECONDS` counts for no rate limit
    any more: it crosses neither way."""
    mine = {guard.ident: guard for guard in local if _current(guard, now)}
    theirs = {guard.ident: guard for guard in shared if _current(guard, now)}
    apply = [guard for ident, guard in theirs.items() if _newer(guard, mine.get(ident))]
    push = [guard for ident, guard in mine.items() if _newer(guard, theirs.get(ident))]
    return GuardPlan(tuple(apply), tuple(push))


def _current(guard: Guard, now: float) -> bool:
    return guard.kind != ROLLBACK_STARTED or now - guard.ts < RATE_RECORD_SECONDS


def _newer(guard: Guard, other: Guard | None) -> bool:
    if other is None:
        return guard.value is not None
    return guard.ts > other.ts


def coalesce(entries: Sequence[JournalEntry | Guard]) -> list[JournalEntry | Guard]:
    """Fold queued entries into fewer that leave the same rows when written in order.

    Per action: its start (a ``begin`` or an adoption, which inserts the row) is kept, and the
    steps after it fold into one entry with the last step, evidence and time, and the last
    status and result any of them set — up to the first that ends the action (later ones change
    nothing in a closed row). Per guard: its newest setting. Groups keep the order of their
    first entry.
    """
    groups: dict[object, list[JournalEntry | Guard]] = {}
    for entry in entries:
        key = entry.ident if isinstance(entry, Guard) else entry.action_id
        groups.setdefault(key, []).append(entry)
    folded: list[JournalEntry | Guard] = []
    for group in groups.values():
        first = group[0]
        if isinstance(first, Guard):  # the newest setting (the first of equals) is what stays
            folded.append(max(group, key=lambda guard: guard.ts))
            continue
        steps = [entry for entry in group if isinstance(entry, JournalEntry)]
        if any(entry.start is not None for entry in steps[1:]):
            folded += steps  # a second start under one id: never made so, never folded
            continue
        start = [steps.pop(0)] if first.start is not None else []
        folded += start + _fold(steps)
    return folded


def _fold(steps: Sequence[JournalEntry]) -> list[JournalEntry]:
    """Consecutive step entries of one action as one (see :func:`coalesce`)."""
    if not steps:
        return []
    end = next((n for n, e in enumerate(steps) if e.status not in (None, *OPEN_STATUSES)),
               len(steps) - 1)
    last = steps[end]
    status = next((e.status for e in reversed(steps[:end + 1]) if e.status is not None), None)
    result = next((e.result for e in reversed(steps[:end + 1]) if e.result is not None), None)
    return [JournalEntry(last.action_id, last.step, last.ts, status, result, last.evidence)]
