"""The shared journal's handover rule (pure): adopt, close, hand over, settle — every case."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from brace_watchdog.journal_handover import (
    ADOPTED,
    HANDED_OVER,
    Handover,
    SharedAction,
    adopted_from,
    handover_freezes,
    interrupted_by,
    plan_handover,
)

ME, OTHER = "store-me", "store-other"
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
