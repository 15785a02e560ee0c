"""Unit tests for plan tokens: binding, expiry, single use, two-person rule, tampering."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from brace_watchdog.control.approvals import ApprovalBook, hash_token
from brace_watchdog.control.auth import Peer
from brace_watchdog.errors import RefusedError
from brace_watchdog.state import StateStore

ALICE = Peer(1000, 1000, 1, "alice")
BOB = Peer(1001, 1001, 2, "bob")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> StateStore:
    return StateStore(":memory:", clock=clock).open()


def book(store: StateStore, clock: Clock, *, two_person: bool = False) -> ApprovalBook:
    return ApprovalBook(store, ttl_seconds=300, two_person_rule=two_person, clock=clock)


def test_token_is_random_and_only_its_hash_is_stored(store: StateStore, clock: Clock) -> None:
    approvals = book(store, clock)
    token, expires = approvals.issue("db_rollback", {"dump": "a.dump"}, ALICE)
    other, _ = approvals.issue("db_rollback", {"dump": "a.dump"}, ALICE)
    assert token != other and len(token) > 30 and expires == clock.now + 300
    rows = store.query("SELECT * FROM approvals")
    assert all(token not in str(tuple(row)) for row in rows)
    assert store.approval(hash_token(token)) is not None


def test_redeem_returns_the_bound_action_once(store: StateStore, clock: Clock) -> None:
    approvals = book(store, clock)
    token, _ = approvals.issue("db_rollback", {"dump": "a.dump"}, ALICE)
    approval = approvals.redeem(token, ALICE)
    assert (approval.action, approval.params, approval.requester_name) == (
        "db_rollback", {"dump": "a.dump"}, "alice")
    with pytest.raises(RefusedError, match="already used"):
        approvals.redeem(token, ALICE)
    row = store.approval(hash_token(token))
    assert row is not None and row["approver_name"] == "alice"


def test_expired_token_is_refused(store: StateStore, clock: Clock) -> None:
    approvals = book(store, clock)
    token, _ = approvals.issue("pg_hba_rollback", {}, ALICE)
    clock.now += 300
    with pytest.raises(RefusedError, match="expired"):
        approvals.redeem(token, ALICE)


def test_just_before_expiry_works(store: StateStore, clock: Clock) -> None:
    approvals = book(store, clock)
    token, _ = approvals.issue("pg_hba_rollback", {}, ALICE)
    clock.now += 299.9
    assert approvals.redeem(token, ALICE).action == "pg_hba_rollback"


@pytest.mark.parametrize("mutate", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
    lambda t: t + "x",
    lambda t: t[1:],
    lambda t: "",
    lambda t: t.upper(),
])
def test_altered_token_is_refused(store: StateStore, clock: Clock, mutate: object) -> None:
    approvals = book(store, clock)
    token, _ = approvals.issue("db_rollback", {"dump": "a.dump"}, ALICE)
    with pytest.raises(RefusedError, match="unknown token"):
        approvals.redeem(mutate(token), ALICE)  # type: ignore[operator]


@pytest.mark.parametrize(("column", "value"), [
    ("params", '{"args": {"dump": "other.dump"}, "binding": "x"}'),
    ("action", "docker_daemon_rollback"),
    ("requester_uid", 1001),
])
def test_edited_row_breaks_the_binding(store: StateStore, clock: Clock, column: str,
                                       value: object) -> None:
    approvals = book(store, clock)
    token, _ = approvals.issue("db_rollback", {"dump": "a.dump"}, ALICE)
    if column == "params":
        row = store.approval(hash_token(token))
        assert row is not None
        binding = row["params"]["binding"]
        value = f'{{"args": {{"dump": "other.dump"}}, "binding": "{binding}"}}'
    store.execute(f"UPDATE approvals SET {column} = ?", (value,))
    with pytest.raises(RefusedError, match="does not match the stored plan"):
        approvals.redeem(token, BOB)


def test_two_person_rule_refuses_the_requester(store: StateStore, clock: Clock) -> None:
    approvals = book(store, clock, two_person=True)
    token, _ = approvals.issue("db_rollback", {"dump": "a.dump"}, ALICE)
    with pytest.raises(RefusedError, match="two-person rule"):
        approvals.redeem(token, ALICE)
    assert approvals.redeem(token, BOB).requester_uid == ALICE.uid


def test_root_is_not_exempt_from_the_two_person_rule(store: StateStore, clock: Clock) -> None:
    root = Peer(0, 0, 1, "root")
    approvals = book(store, clock, two_person=True)
    token, _ = approvals.issue("db_rollback", {"dump": "a.dump"}, root)
    with pytest.raises(RefusedError, match="two-person rule"):
        approvals.redeem(token, root)


def test_inspect_does_not_consume(store: StateStore, clock: Clock) -> None:
    approvals = book(store, clock)
    token, _ = approvals.issue("docker_daemon_rollback", {"target": "docker"}, ALICE)
    assert approvals.inspect(token, BOB).params == {"target": "docker"}
    assert approvals.redeem(token, BOB).action == "docker_daemon_rollback"


def test_consume_is_atomic_at_the_store(store: StateStore, clock: Clock) -> None:
    approvals = book(store, clock)
    token, _ = approvals.issue("db_rollback", {"dump": "a"}, ALICE)
    digest = hash_token(token)
    assert store.consume_approval(digest, approver_uid=1, approver_name="x", used_at=clock.now)
    assert not store.consume_approval(digest, approver_uid=1, approver_name="x",
                                      used_at=clock.now)


PLAN = {"action": "db_rollback", "steps": ["stop writers", "restore a.dump"]}


def test_the_approver_sees_the_stored_plan(store: StateStore, clock: Clock) -> None:
    approvals = book(store, clock)
    token, _ = approvals.issue("db_rollback", {"dump": "a.dump"}, ALICE, plan=PLAN)
    assert approvals.inspect(token, BOB).plan == PLAN


@pytest.mark.parametrize("field", ["plan", "requester_login_uid"])
def test_edited_plan_or_login_uid_breaks_the_binding(store: StateStore, clock: Clock,
                                                     field: str) -> None:
    approvals = book(store, clock)
    token, _ = approvals.issue("db_rollback", {"dump": "a.dump"}, replace(ALICE, login_uid=7),
                               plan=PLAN)
    row = store.approval(hash_token(token))
    assert row is not None
    params = dict(row["params"])
    params[field] = {"steps": ["something else"]} if field == "plan" else 8
    store.execute("UPDATE approvals SET params = ?", (json.dumps(params),))
    with pytest.raises(RefusedError, match="does not match the stored plan"):
        approvals.redeem(token, BOB)


@pytest.mark.parametrize(("planner_login", "approver_login", "refused"), [
    (1000, 1000, True),    # alice planned, then `sudo` approved as root: one person
    (1000, 1001, False),   # two people, each from their own login
    (None, 1000, False),   # unknown login uid (no audit): the uids decide
    (1000, None, False),
    (None, None, False),
])
def test_two_person_rule_compares_login_uids(store: StateStore, clock: Clock,
                                             planner_login: int | None,
                                             approver_login: int | None, refused: bool) -> None:
    approvals = book(store, clock, two_person=True)
    token, _ = approvals.issue("db_rollback", {"dump": "a.dump"},
                               replace(ALICE, login_uid=planner_login))
    root = Peer(0, 0, 9, "root", login_uid=approver_login)
    if refused:
        with pytest.raises(RefusedError, match=r"same person \(login uid 1000\).*sudo"):
            approvals.redeem(token, root)
    else:
        assert approvals.redeem(token, root).requester_login_uid == planner_login
