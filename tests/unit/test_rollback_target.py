"""Choosing the rollback target, refusing conflicting retags, checking known-good images (pure)."""

from __future__ import annotations

import pytest

from brace_watchdog.actions.image_archive import ImageCheck, classify
from brace_watchdog.actions.rollback_target import (
    Candidate,
    choose_target,
    retag_conflicts,
)
from brace_watchdog.errors import RefusedError
from brace_watchdog.releases import TagUser

NEW, OLD, OLDER = "a1" * 32, "b2" * 32, "b3" * 32
RUNNING = "ff" * 32


def kg(fingerprint: str, at: float, failed: float | None = None) -> Candidate:
    return Candidate(fingerprint, at, failed)


CANDIDATES = [kg(NEW, 30), kg(OLD, 20), kg(OLDER, 10)]


def test_the_newest_known_good_release_by_default() -> None:
    choice = choose_target(CANDIDATES, RUNNING)
    assert choice.target == choice.newest == CANDIDATES[0]
    assert (choice.requested, choice.note) == (False, "")


def test_falls_back_to_the_previous_when_the_newest_failed_verification() -> None:
    choice = choose_target([kg(NEW, 30, failed=31), kg(OLD, 20), kg(OLDER, 10)], RUNNING)
    assert choice.target is not None and choice.target.fingerprint == OLD
    assert choice.newest is not None and choice.newest.fingerprint == NEW
    assert "failed a rollback verification" in choice.note and OLD[:12] in choice.note


def test_skips_every_failed_one_and_the_running_one() -> None:
    choice = choose_target([kg(NEW, 30, failed=31), kg(OLD, 20), kg(OLDER, 10)], OLD)
    assert choice.target is not None and choice.target.fingerprint == OLDER


def test_no_usable_one_returns_the_newest_for_the_guards_to_refuse() -> None:
    failed = [kg(NEW, 30, failed=31), kg(OLD, 20, failed=21)]
    choice = choose_target(failed, RUNNING)
    assert choice.target == failed[0] and choice.note == ""


def test_nothing_known_good() -> None:
    choice = choose_target([], RUNNING)
    assert choice.target is None and choice.newest is None


@pytest.mark.parametrize("spec", [OLD[:6], OLD[:12].upper(), f" {OLD[:16]} ", OLD])
def test_an_operator_names_a_target_by_fingerprint_prefix(spec: str) -> None:
    choice = choose_target(CANDIDATES, RUNNING, spec)
    assert choice.target is not None and choice.target.fingerprint == OLD
    assert choice.requested


def test_a_named_target_may_have_failed_before() -> None:
    choice = choose_target([kg(NEW, 30), kg(OLD, 20, failed=25)], RUNNING, OLD[:8])
    assert choice.target is not None and choice.target.fingerprint == OLD


@pytest.mark.parametrize(("spec", "says"), [
    ("b2b2b", "at least 6 hex digits"),
    ("zzzzzzzz", "at least 6 hex digits"),
    ("c0ffee", "no known-good release starts with c0ffee"),
    ("b", "at least 6"),
])
def test_a_bad_or_unknown_name_is_refused_with_the_choices(spec: str, says: str) -> None:
    with pytest.raises(RefusedError, match=says) as refused:
        choose_target(CANDIDATES, RUNNING, spec)
    assert NEW[:12] in str(refused.value)  # says which releases exist


def test_an_ambiguous_prefix_is_refused() -> None:
    with pytest.raises(RefusedError, match="matches 2 known-good releases"):
        choose_target([kg("abcdef01" + "0" * 56, 2), kg("abcdef02" + "0" * 56, 1)], RUNNING,
                      "abcdef")


# -- retag conflicts ------------------------------------------------------------------------------
SERVICES = ("backend", "frontend", "admin-bot", "scheduler")


def user(service: str, ref: str, image: str, project: str = "brace") -> TagUser:
    return TagUser(f"{project}-{service}-1", project, service, ref, image)


def test_no_conflict_when_tags_are_own_or_shared_with_one_image() -> None:
    retags = [("app:prod", "sha256:good"), ("app:prod", "sha256:good"), ("web:prod", "sha256:w")]
    users = [user("backend", "app:prod", "sha256:bad"), user("scheduler", "app:prod", "sha256:bad"),
             user("frontend", "web:prod", "sha256:w2"),
             user("smoke", "app:prod", "sha256:good")]  # outside, but already on the target
    assert retag_conflicts(retags, project="brace", services=SERVICES, users=users) == ()


def test_one_tag_with_two_images_in_the_target_is_a_conflict() -> None:
    retags = [("app:prod", "sha256:aaa"), ("app:prod", "sha256:bbb")]
    (problem,) = retag_conflicts(retags, project="brace", services=SERVICES, users=[])
    assert "tag app:prod" in problem and "2 different images" in problem


@pytest.mark.parametrize(("outsider", "who"), [
    (user("smoke", "app:prod", "sha256:bad"), "service smoke of project brace"),
    (user("backend", "app:prod", "sha256:bad", project="staging"), "project staging"),
    (TagUser("migrate", "", "", "app:prod", "sha256:bad"), "a container outside compose"),
])
def test_a_container_outside_the_list_on_the_tag_is_a_conflict(outsider: TagUser,
                                                                who: str) -> None:
    (problem,) = retag_conflicts([("app:prod", "sha256:good")], project="brace",
                                 services=SERVICES, users=[outsider])
    assert who in problem and outsider.name in problem and "app:prod" in problem


def test_containers_on_other_tags_do_not_matter() -> None:
    users = [user("smoke", "other:tag", "sha256:x")]
    assert retag_conflicts([("app:prod", "sha256:good")], project="brace", services=SERVICES,
                           users=users) == ()


# -- known-good images: present, archived only, missing -------------------------------------------
def test_images_are_present_archived_only_or_missing() -> None:
    check = classify(["sha256:a", "sha256:b", "sha256:c", "sha256:a"],
                     in_engine={"sha256:a", "sha256:x"}, archived={"sha256:a", "sha256:b"})
    assert check == ImageCheck(present=("sha256:a",), archived_only=("sha256:b",),
                               missing=("sha256:c",))
    assert classify([], in_engine=set(), archived=set()) == ImageCheck()
