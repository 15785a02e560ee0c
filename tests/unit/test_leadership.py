"""Leadership decisions (pure): who may act, the gate the hub and action lock consult, config."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from brace_watchdog.adapters.pg_lock import application_name, parse_application_name
from brace_watchdog.config import load_config, parse_config
from brace_watchdog.errors import ConfigError, RefusedError
from brace_watchdog.leader_election import leadership_active, leadership_unused
from brace_watchdog.leadership import (
    LeaderInfo,
    LeadershipGate,
    LeadershipLostError,
    LeaderView,
    locked_deadline,
    may_act,
    new_leader_acts_after,
    old_leader_stops_within,
    split_brain_problem,
)
from brace_watchdog.runtime import ActionLock
from tests.support.check_config import check_config_refusal

LEADER = LeaderInfo("node-b", 42, 50.0)


def test_disabled_always_acts_whatever_else_it_knows() -> None:
    for held, acquired, confirmed in itertools.product((False, True), (None, 0.0),
                                                       (None, 0.0, 99.0)):
        view = LeaderView(enabled=False, held=held, acquired_at=acquired, confirmed_at=confirmed)
        assert may_act(view, 100.0).reason == "single"


@pytest.mark.parametrize(("view", "now", "reason"), [
    (LeaderView(enabled=True), 100.0, "follower"),
    (LeaderView(enabled=True, held=False, acquired_at=1.0, confirmed_at=99.0), 100.0, "follower"),
    (LeaderView(enabled=True, held=True, acquired_at=None, confirmed_at=99.0), 100.0, "follower"),
    (LeaderView(enabled=True, held=True, acquired_at=1.0, confirmed_at=None), 100.0, "follower"),
    # confirmed longer ago than the lease: never act on an old belief
    (LeaderView(enabled=True, held=True, acquired_at=1.0, confirmed_at=89.9,
                lease_seconds=10.0), 100.0, "stale"),
    (LeaderView(enabled=True, held=True, acquired_at=1.0, confirmed_at=90.0,
                lease_seconds=10.0), 100.0, "leader"),
    # just promoted: the previous leader gets settle_seconds to notice
    (LeaderView(enabled=True, held=True, acquired_at=98.0, confirmed_at=100.0,
                settle_seconds=3.0), 100.0, "settling"),
    (LeaderView(enabled=True, held=True, acquired_at=97.0, confirmed_at=100.0,
                settle_seconds=3.0), 100.0, "leader"),
])
def test_enabled_acts_only_as_a_confirmed_settled_leader(view: LeaderView, now: float,
                                                         reason: str) -> None:
    decision = may_act(view, now)
    assert decision.reason == reason
    assert decision.acts is (reason == "leader")


def test_a_follower_names_the_leader_to_ask() -> None:
    decision = may_act(LeaderView(enabled=True, leader=LEADER), 1.0)
    assert "node-b (pid 42)" in decision.message
    assert "lock free" in may_act(LeaderView(enabled=True), 1.0).message


def _gate(now: list[float], answers: list[bool]) -> LeadershipGate:
    async def confirm() -> bool:
        return answers.pop(0)
    gate = LeadershipGate(lambda: now[0])
    gate.enable(confirm, lease_seconds=10.0, settle_seconds=3.0)
    return gate


async def test_gate_refuses_actions_until_settled_and_confirms_before_steps() -> None:
    now, answers = [100.0], [True, False]
    gate = _gate(now, answers)
    lock = ActionLock(lambda: now[0], gate.check)
    with pytest.raises(RefusedError, match="follower"):
        lock.acquire("rollback", "automatic")
    gate.promoted(100.0, LEADER)
    assert gate.generation == 1
    with pytest.raises(RefusedError, match=r"settling|waiting"):
        lock.check("db_rollback")
    now[0] = 104.0
    lock.release(lock.acquire("rollback", "automatic"))
    await gate.confirm("retag")
    assert gate.view.confirmed_at == 104.0
    lost: list[str] = []
    gate.on_lost.append(lost.append)
    with pytest.raises(LeadershipLostError, match="before step 'compose'"):
        await gate.confirm("compose")  # PostgreSQL says: not ours any more
    assert lost and gate.generation == 2 and not gate.view.held
    with pytest.raises(RefusedError):
        lock.check("rollback")


async def test_gate_does_not_ask_postgres_when_its_belief_is_already_stale() -> None:
    now, answers = [100.0], [True]
    gate = _gate(now, answers)
    gate.promoted(90.0, LEADER)
    now[0] = 100.5  # last confirmed 10.5 s ago, lease 10 s
    with pytest.raises(LeadershipLostError, match="not confirmed"):
        await gate.confirm("compose")
    assert answers == [True]


async def test_disabled_gate_never_refuses() -> None:
    gate = LeadershipGate()
    gate.check("rollback")
    await gate.confirm("compose")
    assert not gate.demote("x")


@pytest.mark.parametrize(("host", "pid", "since"), [
    ("node-a", 1, None), ("node-a", 99999, 1733100000.0), ("a" * 80, 4194304, 1733100000.0),
    ("host:with:colons", 7, None)])
def test_application_name_round_trips_and_fits_postgres(host: str, pid: int,
                                                       since: float | None) -> None:
    name = application_name(host, pid, since)
    assert len(name) <= 63
    info = parse_application_name(name)
    assert info is not None and info.pid == pid and info.since == since
    assert host.startswith(info.host)


@pytest.mark.parametrize("name", ["psql", "brace-watchdog@", "brace-watchdog@host:x",
                                  "brace-watchdog@host:1/x", "brace-watchdog@:1"])
def test_foreign_application_names_are_not_leaders(name: str) -> None:
    assert parse_application_name(name) is None


@pytest.mark.parametrize(("raw", "expected"), [
    ({"lease_seconds": 4.0}, "leadership.lease_seconds: must be at least 2 x"),
    ({"check_interval_seconds": 0}, "leadership.check_interval_seconds"),
    ({"name": "a:b"}, "leadership.name"),
    ({"lock_key": 2**64}, "leadership.lock_key"),
    ({"enabled": "yes"}, "leadership.enabled"),
    ({"surprise": 1}, "leadership.surprise"),
])
def test_bad_leadership_config_is_refused_with_its_key(raw: dict[str, Any],
                                                      expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"leadership": raw})
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_leadership_config_defaults_and_settle() -> None:
    cfg = parse_config({"leadership": {"enabled": True, "check_interval_seconds": 0.5,
                                       "check_timeout_seconds": 0.5, "lease_seconds": 2}})
    assert cfg.leadership.enabled and cfg.leadership.settle_seconds == 1.0
    assert not parse_config({}).leadership.enabled


@pytest.mark.parametrize(("enabled", "dsn"),
                         list(itertools.product((False, True), ("", "host=db"))))
def test_an_election_runs_only_when_enabled_with_a_database_and_else_it_says_why(
        enabled: bool, dsn: str) -> None:
    config = parse_config({"leadership": {"enabled": enabled}, "database": {"dsn": dsn}})
    assert leadership_active(config) == (enabled and bool(dsn))
    unused = leadership_unused(config)
    assert (unused is not None) == (enabled and not dsn)
    assert unused is None or "acts alone" in unused


# -- the split-brain margin (leadership.split_brain_problem) --------------------------------
# Values are multiples of 1/8 s, exact in binary floating point, so the boundary is exact.
STEPS = [0.125 * n for n in range(1, 41)]  # 0.125 .. 5 s


@pytest.mark.parametrize("check_timeout", STEPS)
def test_the_split_brain_rule_holds_exactly_from_its_smallest_lease(check_timeout: float) -> None:
    """For every interval and timeout: the smallest safe lease passes, 1/8 s less does not."""
    confirm = 2 * check_timeout + 0.5  # run_locked's deadline: the longest confirmation
    assert locked_deadline(check_timeout) == confirm
    for check_interval in STEPS:
        stops = max(check_interval, confirm) + confirm
        assert old_leader_stops_within(check_interval, check_timeout) == stops
        smallest = stops - check_interval - check_timeout  # lease + settle must reach stops
        assert new_leader_acts_after(check_interval, check_timeout, smallest) == stops
        assert split_brain_problem(check_interval, check_timeout, smallest) is None
        assert split_brain_problem(check_interval, check_timeout, smallest + 0.125) is None
        problem = split_brain_problem(check_interval, check_timeout, smallest - 0.125)
        assert problem is not None and f"at least {smallest:g} " in problem


@pytest.mark.parametrize(("interval", "timeout", "lease", "safe"), [
    (2.0, 1.0, 10.0, True),    # the defaults: the old leader stops 5 s after, another acts 13 s
    (0.5, 2.0, 6.5, True),     # stops 9 s after (4.5 + 4.5); another acts 6.5 + 2.5 = 9 s
    (0.5, 2.0, 6.0, False),
    (0.5, 1.0, 4.0, True),     # the failover benchmark: 5 s against 5.5 s
    (0.2, 1.0, 2.0, False),    # passes the lease rule (>= 1.4 s) yet stops 5 s vs 3.2 s
    (0.5, 0.5, 2.0, True),     # exactly on the boundary: 3 s against 3 s
    (5.0, 1.0, 1.5, True),     # interval beyond the confirmation: 7.5 s against 1.5 + 6 s
    (5.0, 1.0, 1.375, False),
])
def test_the_split_brain_rule_on_known_timings(interval: float, timeout: float, lease: float,
                                              safe: bool) -> None:
    assert (split_brain_problem(interval, timeout, lease) is None) == safe


def test_check_config_refuses_timings_that_let_two_leaders_act_naming_options_and_values(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = check_config_refusal(
        tmp_path, capsys, "[leadership]\nenabled = true\ncheck_interval_seconds = 0.5\n"
        "check_timeout_seconds = 2.0\nlease_seconds = 6.0\n")
    assert "leadership.lease_seconds: two leaders could act at once" in err
    for named in ("check_interval_seconds = 0.5", "check_timeout_seconds = 2", "lease_seconds = 6",
                  "= 9 s after its last answer", "= 8.5 s after it",
                  "raise lease_seconds to at least 6.5"):
        assert named in err, err


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[2].glob("etc/*.toml")))
def test_shipped_configs_keep_the_split_brain_margin(path: Path) -> None:
    lead = load_config(path, {}).leadership
    assert split_brain_problem(lead.check_interval_seconds, lead.check_timeout_seconds,
                               lead.lease_seconds) is None
