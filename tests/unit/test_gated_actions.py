"""Pure pieces of the gated actions and the control commands: command lines, failure advice,
safety-dump naming, diffs, daemon.json validation, the post-mortem timeline, JSON conversion."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import pytest

from brace_watchdog import ctl
from brace_watchdog.actions.config_rollback import (
    DockerDaemonRollback,
    PgHbaRollback,
    preview_diff,
    validate_daemon_json,
)
from brace_watchdog.actions.db_rollback import (
    DbRollback,
    DbTarget,
    ended_state,
    next_steps,
    restore_in_flight,
    safety_dump_name,
)
from brace_watchdog.actions.db_writers import SwarmWriters
from brace_watchdog.actions.gated import Plan, compose_cli, compose_project, ordered, stamp
from brace_watchdog.adapters.swarm import SwarmAdapter
from brace_watchdog.config import parse_config
from brace_watchdog.control.commands import REGISTRY
from brace_watchdog.control.commands.operate import jsonable
from brace_watchdog.control.commands.timeline import incident_bounds, render_timeline
from brace_watchdog.errors import RefusedError
from brace_watchdog.monitors.backups import parse_backup_name
from brace_watchdog.state import ActionRecord, Event

UP = ["docker", "compose", "up", "-d", "backend"]


def test_local_target_commands_carry_no_connection_details() -> None:
    target = DbTarget("local", bin_dir="/pg/bin")
    assert target.restore_argv("/b/x.dump", app_name="app-7") == [
        "/pg/bin/pg_restore", "--clean", "--if-exists", "--no-owner", "--single-transaction",
        "-d", "service=brace_watchdog application_name=app-7", "/b/x.dump"]
    assert target.dump_argv("/b/s.dump") == ["/pg/bin/pg_dump", "-Fc", "-f", "/b/s.dump", "-d",
                                             "service=brace_watchdog"]
    assert target.list_argv("/b/s.dump") == ["/pg/bin/pg_restore", "--list", "/b/s.dump"]
    assert target.version_argv()[0] == "/pg/bin/psql"


def test_container_target_commands() -> None:
    target = DbTarget("container", container="brace-db-1", database="brace", user="postgres")
    assert target.restore_argv("/tmp/d", app_name="app-7") == [
        "docker", "exec", "--env=PGAPPNAME=app-7", "brace-db-1", "pg_restore", "--clean",
        "--if-exists", "--no-owner", "--single-transaction", "-U", "postgres", "-d", "brace",
        "/tmp/d"]
    assert target.version_argv()[-2:] == ["-c", "show server_version_num"]


def test_local_target_without_bin_dir_uses_path() -> None:
    assert DbTarget("local").tool("pg_dump") == ["pg_dump"]


@pytest.mark.parametrize(("state", "expected", "absent"), [
    ({"database": "unchanged (restore rolled back)", "writers": "stopped",
      "safety_dump": "brace_safety_1.dump"},
     ["rolled back", "writers are STOPPED", "docker compose up -d backend",
      "--dump brace_safety_1.dump"], ["holds the dump's data"]),
    ({"database": "untouched", "writers": "stopped", "safety_dump": None},
     ["writers are STOPPED"], ["rolled back", "--dump brace_safety"]),
    ({"database": "restored", "writers": "started", "safety_dump": "s.dump"},
     ["holds the dump's data", "--dump s.dump"], ["STOPPED"]),
    ({"database": "untouched", "writers": "running", "safety_dump": None},
     ["unfreeze"], ["STOPPED", "rolled back"]),
    ({"database": "restoring", "writers": "stopped", "safety_dump": "s.dump",
      "safety_dump_sha256": "ab" * 32},
     ["UNKNOWN", "do NOT start the writers", "writers are STOPPED", "--dump s.dump",
      "sha256 abababab"], ["rolled back", "holds the dump's data"]),
    ({"database": "UNKNOWN: pg_restore timed out", "writers": "stopped", "safety_dump": "s"},
     ["UNKNOWN", "check it"], ["unchanged", "rolled back:", "holds the dump's data"]),
    ({"database": "untouched", "writers": "stopping", "safety_dump": None},
     ["writers are STOPPING"], ["UNKNOWN"]),
])
def test_next_steps_follow_the_state(state: dict[str, object], expected: list[str],
                                     absent: list[str]) -> None:
    text = "\n".join(next_steps("x", state, up_argv=UP))
    for fragment in expected:
        assert fragment in text
    for fragment in absent:
        assert fragment not in text
    assert "unfreeze" in text and "ack" in text


def test_swarm_writers_are_started_again_at_their_journalled_counts() -> None:
    # the adapter is never called: restart_argv reads only the journalled state
    writers = SwarmWriters(SwarmAdapter("unix:///nonexistent"), "brace", ("backend", "bot"),
                           timeout=10, beat=lambda: None)
    state = {"database": "untouched", "writers": "stopping",
             "writer_replicas": {"brace_backend": 3, "brace_bot": 0}}
    text = "\n".join(next_steps("stopping_writers", state,
                                up_argv=writers.restart_argv(state)))
    assert ("writers are STOPPING; to start them again as they are: docker service scale "
            "brace_backend=3 brace_bot=0") in text
    assert writers.restart_argv({})[3:] == ["brace_backend=<replicas>", "brace_bot=<replicas>"]


def test_safety_dump_is_a_backup_but_not_a_scheduled_one() -> None:
    name = safety_dump_name(1_767_225_600.0)
    assert name == "brace_safety_20260101_000000.dump"
    assert fnmatch.fnmatch(name, "brace_*.dump")
    assert parse_backup_name(name) is None
    assert stamp(0) == "19700101_000000"


def test_compose_project_inherits_from_rollback() -> None:
    config = parse_config({"rollback": {"compose_command": ["docker-compose"],
                                        "compose_file": "/srv/c.yml", "project": "p"}})
    assert compose_project(config).argv("ps") == ["docker-compose", "-f", "/srv/c.yml", "-p", "p",
                                                  "ps"]
    cli = compose_cli(config, command=("docker", "compose"), timeout=7.0)
    assert compose_project(config, cli=cli, project="q").argv() == [
        "docker", "compose", "-f", "/srv/c.yml", "-p", "q"]
    assert (cli.timeout, compose_cli(config).timeout) == (7.0, 300.0)


def test_preview_diff_is_bounded() -> None:
    current = "\n".join(f"line {i}" for i in range(100))
    diff = preview_diff(current, "other", current_name="a", backup_name="b")
    assert diff[0] == "--- a" and len(diff) == 41 and diff[-1].endswith("more lines)")
    assert preview_diff("same", "same", current_name="a", backup_name="b") == []


@pytest.mark.parametrize(("text", "fragment"), [
    ("{", "not valid JSON"), ("", "not valid JSON"), ("[]", "JSON object"),
    ('"x"', "JSON object"), ("null", "JSON object")])
def test_daemon_json_must_be_an_object(text: str, fragment: str) -> None:
    with pytest.raises(RefusedError, match=fragment):
        validate_daemon_json(text, "daemon.json.bak")


def test_daemon_json_object_passes() -> None:
    assert validate_daemon_json('{"log-level": "warn"}', "x") == {"log-level": "warn"}


def _event(i: int, ts: float, kind: str, severity: str = "info", action: int | None = None
           ) -> Event:
    return Event(i, ts, kind, "src", severity, f"message {i} | pipe", {}, action)


def _action(i: int, created: float, updated: float) -> ActionRecord:
    return ActionRecord(i, "db_rollback", "control", "alice", "failed", "restoring", created,
                        updated, {}, "failed at restoring")


def test_incident_bounds() -> None:
    assert incident_bounds([_action(1, 100, 200)], [], lookback_seconds=50,
                           settle_seconds=10) == (50, 210)
    events = [_event(1, 10, "health.ok"), _event(2, 20, "escalation", "error")]
    assert incident_bounds([], events, lookback_seconds=5, settle_seconds=5) == (15, 25)
    assert incident_bounds([], [_event(1, 10, "x")], lookback_seconds=5,
                           settle_seconds=5) is None


def test_timeline_markdown() -> None:
    events = [_event(1, 0, "health.failing", "warning"), _event(2, 60, "action.x.begin",
                                                                action=7)]
    approvals = [{"action": "db_rollback", "params": {"args": {"dump": "d"}},
                  "requester_name": "alice", "created_at": 30.0, "used_at": 40.0,
                  "approver_name": "bob", "action_id": 7}]
    text = render_timeline("db_rollback #7", events, [_action(7, 50, 70)], approvals)
    assert text.startswith("# Post-mortem draft: db_rollback #7")
    assert "First failure seen: 1970-01-01 00:00:00 UTC — message 1 \\| pipe" in text
    assert "approved by bob" in text and "→ action #7" in text
    assert "**failed** at step `restoring`" in text
    assert text.count("\n| 1970") == 2 and "(action #7)" in text
    assert "## Root cause" in text and "## Follow-ups" in text
    assert "No events" in render_timeline("t", [], [], []) and "- None." in render_timeline(
        "t", [], [], [])


@dataclass(frozen=True)
class _Thing:
    name: str
    parts: tuple[int, ...]


def test_jsonable() -> None:
    plan = Plan("a", {"k": 1}, "t", ("s",))
    assert jsonable(plan)["steps"] == ["s"]
    assert jsonable({1: _Thing("x", (1, 2)), "o": object}) == {
        "1": {"name": "x", "parts": [1, 2]}, "o": str(object)}


def test_each_gated_action_is_planned_by_the_command_of_its_own_name() -> None:
    """One name per rollback: the command the CLI sends is the action's kind (store, approvals,
    audit), and no command keeps an old ``rollback-*`` name."""
    for action in (DbRollback, PgHbaRollback, DockerDaemonRollback):
        command = REGISTRY[action.name]
        assert command.role == "operator" and command.name == action.name
    assert set(ctl.GATED.values()) == {"db_rollback", "pg_hba_rollback",
                                       "docker_daemon_rollback"}
    assert "app_rollback" in REGISTRY
    assert not [name for name in REGISTRY if name.startswith("rollback")]


async def _nothing() -> None:
    return None


def test_ordered_follows_the_declared_names_and_refuses_a_mismatch() -> None:
    table = {"b": ("second", _nothing), "a": ("first", _nothing)}
    assert [(name, message) for name, message, _ in ordered(("a", "b"), table)] == [
        ("a", "first"), ("b", "second")]
    for names in (("a",), ("a", "b", "c"), ("a", "c")):
        with pytest.raises(ValueError, match="declared steps"):
            ordered(names, table)


@pytest.mark.parametrize(("state", "in_flight"), [
    ({"database": "restoring", "restore_application_name": "brace-watchdog-restore-3"}, True),
    ({"database": "restoring"}, False),  # no name to end it by
    ({"database": "restored", "restore_application_name": "brace-watchdog-restore-3"}, False),
    ({"database": ended_state("x", True, "n"), "restore_application_name": "n"}, False),
    ({"database": "untouched"}, False),
    ({}, False),
])
def test_a_restore_is_in_flight_only_while_journalled_restoring(
        state: dict[str, object], in_flight: bool) -> None:
    assert restore_in_flight(state) is in_flight


def test_ended_state_is_unknown_and_says_whether_it_was_ended() -> None:
    ended, not_ended = ended_state("why", True, "app-1"), ended_state("why", False, "app-1")
    assert ended.startswith("UNKNOWN: why; the restore ended inside the server")
    assert not_ended.startswith("UNKNOWN: why; the restore could NOT be confirmed ended")
    assert "application_name app-1" in not_ended
