"""Unit tests for the restore test's pure decisions (no I/O)."""

from __future__ import annotations

import pytest

from brace_watchdog.actions.restore_policy import (
    TocTable,
    alembic_problem,
    freshness_problem,
    is_due,
    pg_restore_errors,
    quote_ident,
    row_count_sql,
    rto_exceeded,
    table_problems,
    toc_tables,
    truthy,
    verify_problem,
    version_problem,
)

STDERR = """\
pg_restore: while PROCESSING TOC:
pg_restore: from TOC entry 3360; 0 0 ACL SCHEMA public pg_database_owner
pg_restore: error: could not execute query: ERROR:  role "brace_user" does not exist
Command was: GRANT ALL ON SCHEMA public TO brace_user;
pg_restore: error: could not execute query: ERROR:  extension "postgis" is not available
pg_restore: warning: errors ignored on restore: 2
"""


def test_pg_restore_errors_are_collected_with_their_command() -> None:
    errors = pg_restore_errors(STDERR)
    assert len(errors) == 2
    assert errors[0].startswith('pg_restore: error: could not execute query: ERROR:  role "brace')
    assert "(Command was: GRANT ALL ON SCHEMA public TO brace_user;)" in errors[0]
    assert "postgis" in errors[1]


def test_ignored_errors_summary_alone_still_fails() -> None:
    assert pg_restore_errors("pg_restore: warning: errors ignored on restore: 3\n") == [
        "pg_restore: warning: errors ignored on restore: 3"]


@pytest.mark.parametrize("stderr", ["", "pg_restore: warning: something harmless\n",
                                    "Command was: orphan context line\n"])
def test_clean_stderr_has_no_errors(stderr: str) -> None:
    assert pg_restore_errors(stderr) == []


TOC = """\
;
; Archive created at 2026-02-03 04:52:06 UTC
;     dbname: brace
;
214; 1259 16384 TABLE public alembic_version brace_user
216; 1259 16390 TABLE public users brace_user
217; 1259 16391 TABLE billing invoices brace_user
215; 1259 16389 SEQUENCE public users_id_seq brace_user
3348; 0 16384 TABLE DATA public alembic_version brace_user
3350; 0 16390 TABLE DATA public users brace_user
3205; 2606 16397 CONSTRAINT public users users_pkey brace_user
3360; 0 0 ACL - SCHEMA public pg_database_owner
"""


def test_toc_tables_lists_only_table_entries() -> None:
    assert toc_tables(TOC) == {TocTable("public", "alembic_version"), TocTable("public", "users"),
                               TocTable("billing", "invoices")}
    assert toc_tables("") == set()
    assert str(TocTable("billing", "invoices")) == "billing.invoices"


def test_table_problems() -> None:
    expected = toc_tables(TOC)
    assert table_problems(expected, expected | {TocTable("public", "extra")}) == []
    [problem] = table_problems(expected, {TocTable("public", "users")})
    assert problem.startswith("2 table(s)") and "billing.invoices" in problem
    many = {TocTable("s", f"t{i:02}") for i in range(25)}
    assert "and 5 more" in table_problems(many, set())[0]


@pytest.mark.parametrize(("value", "expected"), [
    ("t", True), ("true", True), ("1", True), ("42", True), ("yes", True), ("abc", True),
    ("0.5", True), ("", False), ("f", False), ("false", False), ("FALSE", False), ("0", False),
    ("0.00", False), ("-0", False), ("no", False), ("off", False), ("NULL", False),
])
def test_truthy(value: str, expected: bool) -> None:
    assert truthy(value) is expected


def test_verify_problem() -> None:
    assert verify_problem("q", [["t"]]) is None
    assert verify_problem("q", [["f"], ["t"]]) is None
    assert "no rows" in (verify_problem("q", []) or "")
    assert "false/empty/zero" in (verify_problem("q", [["0"]]) or "")


@pytest.mark.parametrize(("rows", "expected"), [
    ([["1"]], None), ([["0"]], "is empty"), ([["2"]], "holds 2 rows"), ([], "holds no rows"),
])
def test_alembic_problem(rows: list[list[str]], expected: str | None) -> None:
    problem = alembic_problem(rows)
    assert problem is None if expected is None else expected in (problem or "")


def test_freshness_problem() -> None:
    dump = 1_000_000.0
    assert freshness_problem(dump - 3600, dump, 24) is None
    assert freshness_problem(dump + 60, dump, 24) is None  # data newer than the dump clock
    stale = freshness_problem(dump - 48 * 3600, dump, 24)
    assert stale is not None and "48.0 h older" in stale
    assert "no timestamp" in (freshness_problem(None, dump, 24) or "")
    assert "no creation time" in (freshness_problem(dump, None, 24) or "")


def test_version_problem() -> None:
    assert version_problem(17, 17, backend="docker") is None
    assert version_problem(18, 15, backend="local") is None
    docker = version_problem(15, 18, backend="docker", server_version="15.10",
                             dumped_by="pg_dump 18.6 of PostgreSQL 18.6")
    assert docker == ("the dump needs PostgreSQL 18 or newer (pg_dump 18.6 of PostgreSQL 18.6) "
                      "but the docker restore-test server runs PostgreSQL 15.10; set "
                      "[restore_test] image to an image of PostgreSQL 18 or newer")
    local = version_problem(15, 17, backend="local")
    assert local is not None and "runs PostgreSQL 15;" in local
    assert "[restore_test] local_bin_dir to the bin folder of PostgreSQL 17 or newer" in local


def test_row_count_sql_quotes_every_name() -> None:
    sql = row_count_sql([TocTable("public", "users"), TocTable("we'ird", 'ta"ble')])
    assert sql == ("select 'public.users', count(*) from \"public\".\"users\"\nunion all "
                   "select 'we''ird.ta\"ble', count(*) from \"we'ird\".\"ta\"\"ble\"")
    with pytest.raises(ValueError, match="NUL"):
        row_count_sql([TocTable("public", "a\x00b")])


def test_is_due() -> None:
    assert is_due(None, 100.0, 24)
    assert not is_due(0.0, 24 * 3600 - 1, 24)
    assert is_due(0.0, 24 * 3600, 24)


def test_rto_exceeded() -> None:
    assert not rto_exceeded(100.0, 0.0)
    assert not rto_exceeded(100.0, 100.0)
    assert rto_exceeded(100.1, 100.0)


def test_quote_ident() -> None:
    assert quote_ident("brace_user") == '"brace_user"'
    assert quote_ident('we"ird') == '"we""ird"'
    with pytest.raises(ValueError, match="NUL"):
        quote_ident("a\x00b")
