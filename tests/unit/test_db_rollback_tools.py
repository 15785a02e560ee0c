"""The DB rollback's plan-time tool check: tool versions parsed, older tools refused (pure)."""

from __future__ import annotations

import pytest

from brace_watchdog.actions.db_rollback import tool_major, tools_problem


@pytest.mark.parametrize(("output", "major"), [
    ("pg_dump (PostgreSQL) 18.6\n", 18),
    ("pg_restore (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)\n", 15),
    ("pg_dump (PostgreSQL) 9.6.24\n", 9),
    ("pg_dump (PostgreSQL) 19devel\n", 19),
    ("pg_dump: command not found\n", None),
    ("", None),
])
def test_tool_major(output: str, major: int | None) -> None:
    assert tool_major(output) == major


@pytest.mark.parametrize("tools", [
    {"pg_dump": 18, "pg_restore": 18},
    {"pg_dump": 19, "pg_restore": 18},
])
def test_tools_as_new_as_the_server_pass(tools: dict[str, int]) -> None:
    assert tools_problem(tools, 18, target="local") is None


def test_older_local_tools_are_refused_naming_versions_and_the_key() -> None:
    problem = tools_problem({"pg_restore": 15, "pg_dump": 15}, 18, target="local")
    assert problem == ("client tools older than the production server: pg_dump 15, pg_restore 15 "
                       "against PostgreSQL 18; nothing was stopped. set [db_rollback] bin_dir "
                       "to the bin folder of PostgreSQL 18 or newer")


def test_one_older_tool_is_enough_to_refuse() -> None:
    problem = tools_problem({"pg_dump": 18, "pg_restore": 17}, 18, target="container")
    assert problem is not None and "pg_restore 17 against PostgreSQL 18" in problem
    assert "pg_dump" not in problem and "[db_rollback] container" in problem
