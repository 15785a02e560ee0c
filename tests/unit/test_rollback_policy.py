"""Every guard of the app-rollback policy, alone and in its place in the order."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from brace_watchdog.actions.rollback_policy import DAY_SECONDS, PolicyInput, decide
from brace_watchdog.config import RollbackConfig
from brace_watchdog.monitors.policy import WindowVerdict

NOW = 1_000_000.0
CFG = RollbackConfig(enabled=True, deploy_grace_seconds=60, cooldown_seconds=1800,
                     max_per_day=2)


def verdict(sustained: bool = True) -> WindowVerdict:
    return WindowVerdict(sustained, 10, 8 if sustained else 1, 0.8 if sustained else 0.1,
                         NOW - 50, "8/10 failing" if sustained else "1/10 failing", ())


def inp(**overrides: Any) -> PolicyInput:
    base = PolicyInput(now=NOW, verdict=verdict(), current_fingerprint="bad" * 10,
                       known_good_fingerprint="good" * 10, last_deploy_at=NOW - 600)
    return replace(base, **overrides)


def test_all_guards_pass_rolls_back() -> None:
    decision = decide(inp(), CFG)
    assert (decision.action, decision.reason) == ("rollback", "rollback")
    assert decision.acts
    assert decision.evidence["window"]["failing"] == 8
    assert decision.evidence["known_good_release"] == "good" * 10


def test_not_sustained_is_nothing_to_do() -> None:
    decision = decide(inp(verdict=verdict(False)), CFG)
    assert (decision.action, decision.reason) == ("none", "not_triggered")
    assert decision.message == "1/10 failing"
    assert not decision.acts


def test_firing_trigger_alert_alone_triggers() -> None:
    decision = decide(inp(verdict=verdict(False), firing_alerts=("BackendDown",)), CFG)
    assert decision.action == "rollback"
    assert decision.evidence["firing_alerts"] == ["BackendDown"]


@pytest.mark.parametrize(("age", "action"), [(0, "hold"), (59.9, "hold"), (60, "rollback"),
                                             (61, "rollback")])
def test_deploy_grace_boundary(age: float, action: str) -> None:
    decision = decide(inp(last_deploy_at=NOW - age), CFG)
    assert decision.action == action
    if action == "hold":
        assert decision.reason == "deploy_grace"


def test_no_deploy_seen_has_no_grace_but_cannot_be_attributed() -> None:
    decision = decide(inp(last_deploy_at=None), CFG)
    assert (decision.action, decision.reason) == ("escalate", "deploy_unseen")
    assert decide(inp(last_deploy_at=None, manual=True), CFG).action == "rollback"


@pytest.mark.parametrize(("up", "problem", "action"), [
    (None, "", "rollback"), (True, "", "rollback"), (False, "refused: connection refused",
                                                     "escalate"), (False, "", "escalate")])
def test_database_down_escalates(up: bool | None, problem: str, action: str) -> None:
    decision = decide(inp(database_up=up, database_problem=problem), CFG)
    assert decision.action == action
    if action == "escalate":
        assert decision.reason == "database_down"
        assert decision.message.startswith("escalated: the database is down")
        assert problem in decision.message
        assert decision.evidence["database_up"] is False


def test_engine_not_answering_escalates() -> None:
    decision = decide(inp(engine_error="docker engine unreachable: refused"), CFG)
    assert (decision.action, decision.reason) == ("escalate", "engine_down")
    assert "docker engine does not answer (docker engine unreachable: refused)" in (
        decision.message)
    assert decision.evidence["engine_error"] == "docker engine unreachable: refused"


@pytest.mark.parametrize(("age", "action"), [(60, "rollback"), (3600, "rollback"),
                                             (3600.5, "escalate"), (86400 * 3, "escalate")])
def test_deploy_age_boundary(age: float, action: str) -> None:
    decision = decide(inp(last_deploy_at=NOW - age), CFG)
    assert decision.action == action
    if action == "escalate":
        assert decision.reason == "deploy_too_old"
        assert "older than max_deploy_age_seconds = 3600" in decision.message


def test_failures_that_predate_the_deploy_escalate() -> None:
    decision = decide(inp(failing_before_deploy=True), CFG)
    assert (decision.action, decision.reason) == ("escalate", "failures_predate_deploy")
    assert "failures predate the deploy" in decision.message
    assert decision.evidence["failing_before_deploy"] is True


@pytest.mark.parametrize(("db", "engine", "age", "before", "expected"), [
    (db, engine, age, before, "database_down" if db is False else "engine_down" if engine
     else "deploy_unseen" if age is None else "deploy_too_old" if age > 3600
     else "failures_predate_deploy" if before else "rollback")
    for db in (None, True, False) for engine in ("", "gone") for age in (None, 100.0, 4000.0)
    for before in (False, True)])
def test_every_infrastructure_and_attribution_combination(
        db: bool | None, engine: str, age: float | None, before: bool, expected: str) -> None:
    """Brute force: infrastructure first, then who saw the deploy, its age, what predates it."""
    decision = decide(inp(database_up=db, engine_error=engine, failing_before_deploy=before,
                          last_deploy_at=None if age is None else NOW - age), CFG)
    assert decision.reason == expected
    manual = decide(inp(manual=True, database_up=db, engine_error=engine,
                        failing_before_deploy=before,
                        last_deploy_at=None if age is None else NOW - age), CFG)
    assert manual.action == "rollback", "an operator's request is theirs to attribute"


def test_frozen_holds() -> None:
    decision = decide(inp(frozen=True), CFG)
    assert (decision.action, decision.reason) == ("hold", "frozen")


def test_no_current_release_escalates() -> None:
    decision = decide(inp(current_fingerprint=None), CFG)
    assert (decision.action, decision.reason) == ("escalate", "no_current_release")


def test_no_known_good_escalates() -> None:
    decision = decide(inp(known_good_fingerprint=None), CFG)
    assert (decision.action, decision.reason) == ("escalate", "no_known_good")


def test_running_release_is_known_good_escalates() -> None:
    decision = decide(inp(current_fingerprint="good" * 10), CFG)
    assert (decision.action, decision.reason) == ("escalate", "known_good_running")
    assert decision.message.startswith("no rollback: running release is known-good")


def test_target_that_failed_verification_is_not_tried_again() -> None:
    decision = decide(inp(known_good_failed_at=NOW - 10), CFG)
    assert (decision.action, decision.reason) == ("escalate", "target_failed_before")


def test_a_redeployed_release_that_was_rolled_back_escalates_whatever_the_cooldown() -> None:
    for times in ((), (NOW - 10 * DAY_SECONDS,)):
        decision = decide(inp(current_rolled_back_at=NOW - 3 * DAY_SECONDS,
                              rollback_times=times), CFG)
        assert (decision.action, decision.reason) == ("escalate", "rolled_back_before")
        assert "rolled back 259200s ago" in decision.message
    assert decide(inp(current_rolled_back_at=NOW - 5, manual=True), CFG).acts


@pytest.mark.parametrize("outcome", [None, "succeeded"])
def test_a_release_a_completed_rollback_left_is_called_redeployed(outcome: str | None) -> None:
    decision = decide(inp(current_rolled_back_at=NOW - 60,
                          current_rollback_outcome=outcome), CFG)
    assert (decision.action, decision.reason) == ("escalate", "rolled_back_before")
    assert "was rolled back 60s ago and has been deployed again" in decision.message
    assert decision.evidence["rollback_outcome"] == outcome


@pytest.mark.parametrize("outcome", ["interrupted", "failed", "handed_over", "running"])
def test_a_release_whose_rollback_did_not_complete_is_not_called_redeployed(
        outcome: str) -> None:
    """An interrupted (or failed, handed-over, still open) rollback never left the release:
    the escalation says so, and still does not try a second time."""
    decision = decide(inp(current_rolled_back_at=NOW - 60,
                          current_rollback_outcome=outcome), CFG)
    assert (decision.action, decision.reason) == ("escalate", "rolled_back_before")
    assert "deployed again" not in decision.message
    assert (f"still runs: the rollback of it started 60s ago did not complete (it is "
            f"{outcome}), so this is no redeploy") in decision.message
    assert decision.evidence["rollback_outcome"] == outcome


def test_schema_untracked_is_ignored() -> None:
    assert decide(inp(known_good_revision="a", current_revision="b"), CFG).action == "rollback"


def test_schema_same_revision_passes() -> None:
    decision = decide(inp(schema_tracked=True, known_good_revision="a", current_revision="a"), CFG)
    assert decision.action == "rollback"
    assert "schema_moved" not in decision.evidence


def test_schema_moved_escalates_with_both_revisions() -> None:
    decision = decide(inp(schema_tracked=True, known_good_revision="a", current_revision="b"), CFG)
    assert (decision.action, decision.reason) == ("escalate", "schema_moved")
    assert "from a to b" in decision.message
    assert decision.evidence["schema_moved"] is True


@pytest.mark.parametrize(("known", "current"), [(None, "b"), ("a", None), (None, None)])
def test_schema_unknown_escalates(known: str | None, current: str | None) -> None:
    decision = decide(inp(schema_tracked=True, known_good_revision=known,
                          current_revision=current), CFG)
    assert (decision.action, decision.reason) == ("escalate", "schema_unknown")


def test_schema_moved_app_only_rolls_back_anyway() -> None:
    cfg = replace(CFG, on_schema_change="app_only")
    decision = decide(inp(schema_tracked=True, known_good_revision="a", current_revision="b"), cfg)
    assert decision.action == "rollback"
    assert "app_only" in decision.message


@pytest.mark.parametrize(("ago", "action"), [(10, "escalate"), (1799, "escalate"),
                                             (1800, "rollback")])
def test_cooldown_boundary(ago: float, action: str) -> None:
    decision = decide(inp(rollback_times=(NOW - ago,)), CFG)
    assert decision.action == action
    if action == "escalate":
        assert decision.reason == "cooldown"


def test_max_per_day_counts_only_the_last_24h() -> None:
    two = (NOW - 5000, NOW - 4000)
    assert decide(inp(rollback_times=two), CFG).reason == "max_per_day"
    old = (NOW - DAY_SECONDS - 1, NOW - 4000)
    assert decide(inp(rollback_times=old), CFG).action == "rollback"


def test_max_per_day_zero_never_rolls_back() -> None:
    assert decide(inp(), replace(CFG, max_per_day=0)).reason == "max_per_day"


def test_swarm_in_charge_holds_instead_of_fighting_it() -> None:
    decision = decide(inp(swarm_in_charge=("backend",)), CFG)
    assert (decision.action, decision.reason) == ("hold", "swarm_in_charge")
    assert "backend" in decision.message and "not acting against it" in decision.message
    assert decision.evidence["swarm_in_charge"] == ["backend"]
    assert decide(inp(swarm_in_charge=("backend",), manual=True), CFG).action == "rollback"


def test_manual_bypasses_trigger_grace_frozen_failed_before_and_rate() -> None:
    decision = decide(inp(manual=True, verdict=verdict(False), last_deploy_at=NOW, frozen=True,
                          known_good_failed_at=NOW - 1, rollback_times=(NOW - 1, NOW - 2, NOW - 3)),
                      CFG)
    assert decision.action == "rollback"
    assert "operator request" in decision.message


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"current_fingerprint": None}, "no_current_release"),
    ({"known_good_fingerprint": None}, "no_known_good"),
    ({"current_fingerprint": "good" * 10}, "known_good_running"),
    ({"schema_tracked": True, "known_good_revision": "a", "current_revision": "b"},
     "schema_moved"),
])
def test_manual_keeps_the_safety_guards(overrides: dict[str, Any], reason: str) -> None:
    assert decide(inp(manual=True, **overrides), CFG).reason == reason


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"verdict": verdict(False), "frozen": True, "current_fingerprint": None}, "not_triggered"),
    ({"last_deploy_at": NOW, "frozen": True, "firing_alerts": ("A",)}, "deploy_grace"),
    ({"verdict": verdict(False), "swarm_in_charge": ("a",)}, "not_triggered"),
    ({"last_deploy_at": NOW, "firing_alerts": ("A",), "swarm_in_charge": ("a",)},
     "deploy_grace"),
    ({"swarm_in_charge": ("a",), "frozen": True}, "frozen"),
    ({"swarm_in_charge": ("a",), "engine_error": "x"}, "engine_down"),
    ({"swarm_in_charge": ("a",), "current_fingerprint": None}, "swarm_in_charge"),
    ({"frozen": True, "known_good_fingerprint": None}, "frozen"),
    ({"database_up": False, "current_fingerprint": None}, "database_down"),
    ({"engine_error": "x", "known_good_fingerprint": None}, "engine_down"),
    ({"current_fingerprint": "good" * 10, "failing_before_deploy": True}, "known_good_running"),
    ({"failing_before_deploy": True, "known_good_failed_at": 1.0}, "failures_predate_deploy"),
    ({"last_deploy_at": NOW - 4000, "schema_tracked": True, "current_revision": "x"},
     "deploy_too_old"),
    ({"current_fingerprint": None, "known_good_fingerprint": None}, "no_current_release"),
    ({"known_good_fingerprint": None, "known_good_failed_at": 1.0}, "no_known_good"),
    ({"current_fingerprint": "good" * 10, "known_good_failed_at": 1.0}, "known_good_running"),
    ({"known_good_failed_at": 1.0, "schema_tracked": True, "current_revision": "x"},
     "target_failed_before"),
    ({"known_good_failed_at": 1.0, "current_rolled_back_at": 1.0}, "target_failed_before"),
    ({"current_rolled_back_at": 1.0, "schema_tracked": True, "current_revision": "x",
      "rollback_times": (NOW - 1,)}, "rolled_back_before"),
    ({"schema_tracked": True, "known_good_revision": "a", "current_revision": "b",
      "rollback_times": (NOW - 1,)}, "schema_moved"),
    ({"rollback_times": (NOW - 1, NOW - 2)}, "cooldown"),
])
def test_guard_order(overrides: dict[str, Any], reason: str) -> None:
    assert decide(inp(**overrides), CFG).reason == reason


def test_every_decision_carries_the_window_evidence() -> None:
    for overrides in ({}, {"frozen": True}, {"current_fingerprint": "good" * 10}):
        evidence = decide(inp(**overrides), CFG).evidence
        assert evidence["window"]["reason"] == "8/10 failing"
        assert evidence["current_release"] is not None


def test_the_newest_known_good_running_escalates_even_with_an_older_target() -> None:
    decision = decide(inp(current_fingerprint="new" * 10, newest_known_good="new" * 10,
                          target_note="falling back"), CFG)
    assert (decision.action, decision.reason) == ("escalate", "known_good_running")


def test_a_fallback_target_rolls_back_and_says_why() -> None:
    decision = decide(inp(newest_known_good="new" * 10, target_note="the newest failed"), CFG)
    assert decision.acts and "(the newest failed)" in decision.message
    assert decision.evidence["newest_known_good"] == "new" * 10


def test_an_operator_may_go_back_from_a_known_good_release_to_an_older_one() -> None:
    request = inp(manual=True, requested=True, current_fingerprint="new" * 10,
                  newest_known_good="new" * 10)
    assert decide(request, CFG).acts
    same = replace(request, current_fingerprint="good" * 10)
    decision = decide(same, CFG)
    assert (decision.action, decision.reason) == ("escalate", "target_running")
