"""What an instance does to keep the known-good images on its own node: load back, pin,
archive, nothing or missing — every combination of engine, tag and archive, with and without
loading back (Swarm vs compose); when the node counts as holding them; which pins go."""

from __future__ import annotations

import itertools

import pytest

from brace_watchdog.actions.image_archive import ImageCheck
from brace_watchdog.actions.image_upkeep import (
    NodeHoldings,
    Pin,
    Upkeep,
    held,
    plan_upkeep,
    releases_to_unpin,
)

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64
PIN_A = Pin("f1", A, "brace-watchdog/pin:brace-backend-f1")
PIN_A2 = Pin("f2", A, "brace-watchdog/pin:brace-backend-f2")  # a newer release, same image
PIN_B = Pin("f2", B, "brace-watchdog/pin:brace-frontend-f2")


def node(tags: dict[str, set[str]] | None = None, archived: set[str] | None = None
         ) -> NodeHoldings:
    return NodeHoldings({k: frozenset(v) for k, v in (tags or {}).items()},
                        frozenset(archived or ()))


@pytest.mark.parametrize(("in_engine", "tagged", "archived", "load"),
                         list(itertools.product([False, True], repeat=4)))
def test_one_image_every_combination(in_engine: bool, tagged: bool, archived: bool,
                                      load: bool) -> None:
    tags = {A: {PIN_A.ref} if tagged else {"other:tag"}} if in_engine else {}
    plan = plan_upkeep([PIN_A], node(tags, {A} if archived else set()), load=load)
    loads = not in_engine and archived and load
    assert plan.load == ((A,) if loads else ())
    there = in_engine or loads
    assert plan.pin == ((PIN_A,) if there and not (in_engine and tagged) else ())
    assert plan.archive == ((A,) if in_engine and not archived else ())
    assert plan.check.missing == ((A,) if not in_engine and not archived else ())
    assert plan.idle == (not (plan.load or plan.pin or plan.archive))


def test_a_lost_image_is_loaded_then_pinned_under_every_kept_release() -> None:
    plan = plan_upkeep([PIN_A, PIN_A2, PIN_B], node({B: {PIN_B.ref}}, {A, B}), load=True)
    assert plan == Upkeep(check=ImageCheck(present=(B,), archived_only=(A,)), load=(A,),
                          pin=(PIN_A, PIN_A2))


def test_compose_leaves_a_lost_image_in_its_archive_for_the_rollback() -> None:
    plan = plan_upkeep([PIN_A, PIN_B], node({B: {PIN_B.ref}}, {A, B}), load=False)
    assert plan == Upkeep(check=ImageCheck(present=(B,), archived_only=(A,)))
    assert plan.idle


def test_a_pin_tag_moved_to_another_image_is_pinned_again() -> None:
    plan = plan_upkeep([PIN_A], node({A: set(), B: {PIN_A.ref}}, {A}), load=True)
    assert plan.pin == (PIN_A,)


def test_an_image_named_by_digest_or_tag_is_left_to_the_registry() -> None:
    by_digest = Pin("f1", "registry.example/app@sha256:" + "c" * 64, "brace-watchdog/pin:x")
    by_tag = Pin("f1", "app:v1", "brace-watchdog/pin:y")
    plan = plan_upkeep([by_digest, by_tag, PIN_B], node({}, {B}), load=True)
    assert plan == Upkeep(check=ImageCheck(archived_only=(B,)), load=(B,), pin=(PIN_B,))
    assert held(plan, set(), archive_suffices=False)


def test_nothing_kept_nothing_to_do() -> None:
    plan = plan_upkeep([], node({A: {"x:y"}}, {B}), load=True)
    assert plan == Upkeep(check=ImageCheck()) and plan.idle


def test_all_in_place_is_idle() -> None:
    plan = plan_upkeep([PIN_A, PIN_B], node({A: {PIN_A.ref}, B: {PIN_B.ref, "app:v1"}},
                                            {A, B}), load=True)
    assert plan.idle and plan.check == ImageCheck(present=(A, B))


@pytest.mark.parametrize(("found", "failed", "archive_suffices", "expected"), [
    (node({A: {PIN_A.ref}}, {A}), set(), False, True),
    (node({A: {PIN_A.ref}}, {A}), {A}, False, False),  # a pin failed
    (node({}, {A}), set(), False, True),  # loaded back now
    (node({}, {A}), {A}, False, False),  # the load failed
    (node({}, {A}), set(), True, True),  # compose: the rollback loads it
    (node({}, set()), set(), True, False),  # missing
    (node({}, set()), set(), False, False),
])
def test_held(found: NodeHoldings, failed: set[str], archive_suffices: bool,
              expected: bool) -> None:
    plan = plan_upkeep([PIN_A], found, load=not archive_suffices)
    assert held(plan, failed, archive_suffices=archive_suffices) is expected


def test_held_without_a_known_good_release() -> None:
    assert held(plan_upkeep([], node(), load=True), set(), archive_suffices=False)


def test_archived_only_without_loading_is_not_held_unless_the_archive_suffices() -> None:
    plan = plan_upkeep([PIN_A], node({}, {A}), load=False)
    assert not held(plan, set(), archive_suffices=False)


def test_releases_to_unpin_are_those_pinned_but_no_longer_kept() -> None:
    assert releases_to_unpin(["f1", "f2", "f3"], {"f2", "f3", "f4"}) == ["f1"]
    assert releases_to_unpin([], {"f1"}) == []
    assert releases_to_unpin(["f2", "f1"], set()) == ["f1", "f2"]
