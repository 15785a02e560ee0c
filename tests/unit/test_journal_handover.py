"""The shared journal's handover rules (pure): adopt, close, hand over, settle — and the guards'
newest-wins reconciliation — every case."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from brace_watchdog.journal_handover import (
    ADOPTED,
    FROZEN_FLAG,
    HANDED_OVER,
    RATE_RECORD_SECONDS,
    ROLLBACK_STARTED,
    ActionStart,
    Guard,
    GuardPlan,
    Handover,
    JournalEntry,
    SharedAction,
    adopted_from,
    coalesce,
    handover_freezes,
    interrupted_by,
    plan_guards,
    plan_handover,
)

ME, OTHER = "store-me", "store-other"
NOW = 1_000_000.0
STATUSES = ("planned", "running", "succeeded", "failed", "interrupted", ADOPTED, HANDED_OVER)


def row(store: str, action_id: int, status: str = "running") -> SharedAction:
    return SharedAction(store_id=store, action_id=action_id, host=f"host-{store}", pid=42,
                        kind="rollback", origin="automatic", requester="", status=status,
                        step="retagged", plan={"mode": "retag"}, evidence={}, updated_at=1.0)


@pytest.mark.parametrize(("status", "already", "expected"), [
    ("running", False, "adopt"), ("planned", False, "adopt"), ("running", True, "close"),
    ("planned", True, "close"), *[(s, a, None) for s in STATUSES[2:] for a in (False, True)]])
def test_another_state_files_row(status: str, already: bool, expected: str | None) -> None:
    shared = row(OTHER, 7, status)
    plan = plan_handover(ME, [shared], local_open={7},  # the same id here means nothing
                         adopted={(OTHER, 7)} if already else {(OTHER, 8), (ME, 7)})
    assert plan == Handover(**({expected: (shared,)} if expected else {}))


@pytest.mark.parametrize(("status", "local_open", "expected"), [
    (ADOPTED, True, "handed_over"),  # partitioned, came back: another leader took it
    ("running", True, None),  # nobody adopted it: the restart path resolves it here
    ("planned", True, None),
    ("running", False, "settle"),  # closed here, but the close never reached PostgreSQL
    ("planned", False, "settle"),
    *[(s, o, None) for s in ("succeeded", "failed", "interrupted", HANDED_OVER)
      for o in (False, True)],
    (ADOPTED, False, None)])
def test_this_state_files_row(status: str, local_open: bool, expected: str | None) -> None:
    shared = row(ME, 3, status)
    plan = plan_handover(ME, [shared], local_open={3} if local_open else {9},
                         adopted={(ME, 3), (OTHER, 3)})
    assert plan == Handover(**({expected: (shared,)} if expected else {}))


def test_every_row_lands_in_at_most_one_list_and_order_is_kept() -> None:
    rows = [row(store, n, status) for store, n, status in
            itertools.product((ME, OTHER, "store-third"), (1, 2, 3), STATUSES)]
    plan = plan_handover(ME, rows, local_open={1, 2}, adopted={(OTHER, 2)})
    chosen = [id(r) for r in (*plan.adopt, *plan.close, *plan.handed_over, *plan.settle)]
    assert len(chosen) == len(set(chosen))
    assert list(plan.adopt) == [r for r in rows if any(r is a for a in plan.adopt)]
    assert {r.key for r in plan.close} == {(OTHER, 2)}
    assert {r.key for r in plan.adopt} == {(s, n) for s in (OTHER, "store-third")
                                           for n in (1, 2, 3)} - {(OTHER, 2)}
    assert {r.key for r in plan.handed_over} == {(ME, 1), (ME, 2)}
    assert {r.key for r in plan.settle} == {(ME, 3)}


@pytest.mark.parametrize(("adopter", "freezes"), [
    ("succeeded", False), ("failed", True), ("interrupted", True), ("running", True),
    (None, True)])  # the adopter's copy gone from the table, or never written
def test_a_hand_over_freezes_unless_the_adopter_completed_the_action(adopter: str | None,
                                                                    freezes: bool) -> None:
    shared = replace(row(ME, 3, ADOPTED), adopted_by="b as rollback 5", adopter_status=adopter)
    assert handover_freezes(shared) is freezes


def test_nothing_shared_nothing_to_do() -> None:
    assert plan_handover(ME, [], local_open={1}, adopted=set()) == Handover()


def test_who_left_an_action_open() -> None:
    shared = row(OTHER, 7)
    plan = {"mode": "retag", "adopted_from": shared.origin_note()}
    assert adopted_from(plan) == {"store_id": OTHER, "action_id": 7, "host": "host-store-other",
                                  "pid": 42, "step": "retagged"}
    assert interrupted_by(plan) == ("on host-store-other (pid 42), which stopped leading (its "
                                    "action 7)")
    assert interrupted_by({"mode": "retag"}) == "by a daemon restart"
    assert adopted_from({"adopted_from": "garbage"}) is None
    assert interrupted_by({"adopted_from": "garbage"}) == "by a daemon restart"
    assert shared.describe() == "rollback 7 of host-store-other (pid 42)"


# -- guards ----------------------------------------------------------------------------------
FROZEN = {"reason": "rollback 3 failed verification", "by": "rollback", "at": 1.0}
OTHER_FREEZE = {"reason": "frozen by an operator", "by": "ops", "at": 2.0}
# one side's sighting of a guard: never seen (None), or a value (None: lifted) set at a time
SIGHTINGS: list[tuple[dict[str, object] | None, float] | None] = [
    None, *[(value, ts) for value in (None, FROZEN, OTHER_FREEZE) for ts in (10.0, 20.0)]]


def _guard(sighting: tuple[dict[str, object] | None, float] | None) -> list[Guard]:
    return [] if sighting is None else [Guard("flag", FROZEN_FLAG, sighting[0], sighting[1])]


@pytest.mark.parametrize(("mine", "theirs"), list(itertools.product(SIGHTINGS, SIGHTINGS)))
def test_the_newer_setting_of_a_guard_wins_on_both_sides(
        mine: tuple[dict[str, object] | None, float] | None,
        theirs: tuple[dict[str, object] | None, float] | None) -> None:
    local, shared = _guard(mine), _guard(theirs)
    plan = plan_guards(local, shared, now=NOW)
    assert not (plan.apply and plan.push)  # one direction per guard
    after_local = plan.apply[0].value if plan.apply else (mine[0] if mine else None)
    after_shared = plan.push[0].value if plan.push else (theirs[0] if theirs else None)
    newest = max((s for s in (mine, theirs) if s is not None), key=lambda s: s[1], default=None)
    if mine is None or theirs is None or mine[1] != theirs[1]:
        assert after_local == after_shared == (newest[0] if newest else None)
    else:  # the same write, seen on both sides: nothing crosses
        assert plan == GuardPlan()
    # nothing crosses that changes nothing: an unset guard the other side never saw
    assert all(g.value is not None for g in plan.apply if mine is None)
    assert all(g.value is not None for g in plan.push if theirs is None)


def test_a_freeze_the_old_leader_set_holds_here_and_an_operators_unfreeze_lifts_mine() -> None:
    frozen_there = Guard("flag", FROZEN_FLAG, FROZEN, 20.0)
    assert plan_guards([], [frozen_there], now=NOW) == GuardPlan(apply=(frozen_there,))
    lifted_there = Guard("flag", FROZEN_FLAG, None, 30.0)  # unfrozen on the leader after it
    mine = Guard("flag", FROZEN_FLAG, OTHER_FREEZE, 20.0)
    assert plan_guards([mine], [lifted_there], now=NOW) == GuardPlan(apply=(lifted_there,))
    later = Guard("flag", FROZEN_FLAG, OTHER_FREEZE, 40.0)  # frozen here, never written out
    assert plan_guards([later], [lifted_there], now=NOW) == GuardPlan(push=(later,))


def test_guards_are_reconciled_one_by_one() -> None:
    left_here = Guard("rolled_back", "f" * 64, {"action_id": 3}, 5.0)
    left_there = Guard("rolled_back", "e" * 64, {"action_id": 9}, 6.0)
    escalated = Guard("flag", "escalation_pending", {"message": "m"}, 7.0)
    lifted = Guard("flag", FROZEN_FLAG, None, 8.0)  # never frozen anywhere: nothing to say
    plan = plan_guards([left_here, lifted], [left_there, escalated], now=NOW)
    assert plan == GuardPlan(apply=(left_there, escalated), push=(left_here,))
    same = Guard("flag", "rolled_back", {"x": 1}, 1.0)  # a flag is not a release: both kept
    assert plan_guards([same], [replace(same, kind="rolled_back")], now=NOW) == GuardPlan(
        apply=(replace(same, kind="rolled_back"),), push=(same,))


def _started(key: str, ago: float) -> Guard:
    return Guard(ROLLBACK_STARTED, key, {}, NOW - ago)


AGES = (0.0, 1.0, RATE_RECORD_SECONDS - 1.0, RATE_RECORD_SECONDS, RATE_RECORD_SECONDS + 1.0)


@pytest.mark.parametrize(("here", "there"), list(itertools.product((None, *AGES), repeat=2)))
def test_rollback_starts_are_a_union_of_those_the_rate_limits_still_count(
        here: float | None, there: float | None) -> None:
    """The rate limits' record: every leader's rollback start within the look-back crosses to
    the side that lacks it; one rollback (its key: where it began) counts once, at the later of
    two sightings (an adopted copy's); older ones cross neither way."""
    local = [] if here is None else [_started(f"{ME}/1", here)]
    shared = [] if there is None else [_started(f"{ME}/1", there)]
    plan = plan_guards(local, shared, now=NOW)
    counted = [age for age in (here, there) if age is not None and age < RATE_RECORD_SECONDS]
    if not counted:
        assert plan == GuardPlan()
        return
    latest = _started(f"{ME}/1", min(counted))
    after_local = plan.apply[0] if plan.apply else (local[0] if here in counted else None)
    after_shared = plan.push[0] if plan.push else (shared[0] if there in counted else None)
    assert after_local == after_shared == latest


def test_rollback_starts_of_different_rollbacks_all_count() -> None:
    mine, theirs = _started(f"{ME}/1", 60.0), _started(f"{OTHER}/7", 30.0)
    assert plan_guards([mine], [theirs], now=NOW) == GuardPlan(apply=(theirs,), push=(mine,))
    expired = _started(f"{OTHER}/2", RATE_RECORD_SECONDS)
    frozen = Guard("flag", FROZEN_FLAG, FROZEN, NOW - 2 * RATE_RECORD_SECONDS)  # flags never age
    assert plan_guards([], [expired, frozen], now=NOW) == GuardPlan(apply=(frozen,))


# -- folding the queue -----------------------------------------------------------------------
Row = dict[str, object]


def _written(entries: list[JournalEntry | Guard], rows: dict[object, Row]) -> dict[object, Row]:
    """What writing ``entries`` in order leaves in the shared tables (pg_journal's SQL, as a
    model: a start inserts unless the row exists, a step changes an open row only, a guard
    replaces an older setting only)."""
    rows = {key: dict(row) for key, row in rows.items()}
    for entry in entries:
        if isinstance(entry, Guard):
            old = rows.get(entry.ident)
            if old is None or float(old["ts"]) < entry.ts:  # type: ignore[arg-type]
                rows[entry.ident] = {"value": entry.value, "ts": entry.ts}
            continue
        if entry.start is not None and entry.action_id not in rows:
            rows[entry.action_id] = {"status": entry.status or "running",
                                     "result": entry.result or "", "plan": entry.start.plan}
        row = rows.get(entry.action_id)
        if row is not None and row["status"] in ("planned", "running"):
            row.update(step=entry.step, ts=entry.ts, evidence=entry.evidence,
                       status=entry.status or row["status"],
                       result=row["result"] if entry.result is None else entry.result)
    return rows


def _step(n: int, kind: str) -> JournalEntry:
    status, result = {"step": (None, None), "running": ("running", None),
                      "noted": (None, f"note {n}"), "succeeded": ("succeeded", "done"),
                      "interrupted": ("interrupted", "cut")}[kind]
    return JournalEntry(1, f"step{n}", float(n), status, result, {"n": n})


START = JournalEntry(1, "begin", 0.0, "running", evidence={"requester": ""},
                     start=ActionStart("rollback", "automatic", "", {"mode": "retag"}, 0.0))
KINDS = ("step", "running", "noted", "succeeded", "interrupted")
BEFORE: list[dict[object, Row]] = [  # the shared row before: none, open, closed
    {}, *({1: {"status": status, "result": "", "step": "x", "ts": -1.0, "evidence": {}}}
          for status in ("planned", "running", "adopted"))]


@pytest.mark.parametrize("length", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("start", [None, "running", "planned", "succeeded"])
def test_folding_an_actions_entries_leaves_the_same_row(length: int, start: str | None) -> None:
    begin = [replace(START, status=start)] if start else []
    for kinds in itertools.product(KINDS, repeat=length):
        queue: list[JournalEntry | Guard] = [*begin,
                                             *(_step(n + 1, k) for n, k in enumerate(kinds))]
        folded = coalesce(queue)
        assert len(folded) <= 1 + len(begin)
        for before in BEFORE:
            assert _written(folded, before) == _written(queue, before), (kinds, before)


def test_folding_keeps_each_action_and_guard_apart_and_in_first_seen_order() -> None:
    other = [replace(_step(n, "step"), action_id=2) for n in (1, 2)]
    frozen = Guard("flag", FROZEN_FLAG, FROZEN, 5.0)
    lifted = Guard("flag", FROZEN_FLAG, None, 9.0)
    late = Guard("flag", FROZEN_FLAG, OTHER_FREEZE, 7.0)  # older than lifted: loses in SQL too
    queue: list[JournalEntry | Guard] = [START, other[0], frozen, _step(1, "noted"), lifted,
                                         other[1], late, _step(2, "succeeded"), _step(3, "step")]
    folded = coalesce(queue)
    assert folded == [START, JournalEntry(1, "step2", 2.0, "succeeded", "done", {"n": 2}),
                      other[1], lifted]
    for before in ({}, {FROZEN_FLAG: {"value": None, "ts": 8.0}}):
        assert _written(folded, before) == _written(queue, before)
    twice = [START, _step(1, "step"), replace(START, ts=5.0)]  # never made so: left alone
    assert coalesce(twice) == twice
