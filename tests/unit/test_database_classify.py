"""Unit tests: database check failures -> authentication / refused / timeout / other.

The messages are the ones libpq and PostgreSQL 15 really produce (captured from a live server in
tests/integration/test_database_monitor.py, which checks the same classes end to end).
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pg_errors

from brace_watchdog.adapters.postgres_probe import classify_failure, describe_dsn

PREFIX = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: '


@pytest.mark.parametrize(("message", "kind"), [
    (PREFIX + 'FATAL:  password authentication failed for user "brace"', "authentication"),
    (PREFIX + 'FATAL:  no pg_hba.conf entry for host "127.0.0.1", user "brace", '
              'database "brace", no encryption', "authentication"),
    (PREFIX + 'FATAL:  pg_hba.conf rejects connection for host "127.0.0.1", user "brace", '
              'database "brace", no encryption', "authentication"),
    (PREFIX + "fe_sendauth: no password supplied", "authentication"),
    (PREFIX + 'FATAL:  Ident authentication failed for user "brace"', "authentication"),
    (PREFIX + 'FATAL:  role "ghost" does not exist', "authentication"),
    (PREFIX + "Connection refused\n\tIs the server running on that host and accepting TCP/IP "
              "connections?", "refused"),
    ('connection is bad: connection to server on socket "/run/postgresql/.s.PGSQL.5432" '
     "failed: No such file or directory\n\tIs the server running locally and accepting "
     "connections on that socket?", "refused"),
    ("connection timeout expired", "timeout"),
    (PREFIX + "timeout expired", "timeout"),
    (PREFIX + 'FATAL:  database "brace" does not exist', "other"),
    (PREFIX + "FATAL:  the database system is starting up", "other"),
    (PREFIX + "FATAL:  sorry, too many clients already", "other"),
    ("", "other"),
])
def test_operational_error_messages(message: str, kind: str) -> None:
    assert classify_failure(psycopg.OperationalError(message)) == kind


@pytest.mark.parametrize(("sqlstate", "kind"), [
    ("28P01", "authentication"), ("28000", "authentication"), ("57014", "timeout"),
    ("57P03", "other"), ("53300", "other"),
])
def test_sqlstate_decides_when_present(sqlstate: str, kind: str) -> None:
    exc = pg_errors.lookup(sqlstate)("localised text the classifier cannot read")
    assert exc.sqlstate == sqlstate
    assert classify_failure(exc) == kind


@pytest.mark.parametrize(("exc", "kind"), [
    (TimeoutError(), "timeout"),
    (pg_errors.ConnectionTimeout("connection timeout expired"), "timeout"),
    (pg_errors.QueryCanceled("canceling statement due to statement timeout"), "timeout"),
    (ConnectionRefusedError(111, "Connection refused"), "refused"),
    (OSError(113, "No route to host"), "other"),
    (psycopg.ProgrammingError("syntax error"), "other"),
    (RuntimeError("boom"), "other"),
])
def test_exception_types(exc: BaseException, kind: str) -> None:
    assert classify_failure(exc) == kind


@pytest.mark.parametrize(("dsn", "shown"), [
    ("postgresql://brace:s3cret@db.internal:5433/brace", "brace@db.internal:5433/brace"),
    ("host=127.0.0.1 user=brace password=s3cret dbname=app", "brace@127.0.0.1:5432/app"),
    ("dbname=app", "?@localhost:5432/app"),
    ("host=x password='unterminated", "<invalid dsn>"),
])
def test_describe_dsn_never_shows_the_password(dsn: str, shown: str) -> None:
    assert describe_dsn(dsn) == shown
    assert "s3cret" not in describe_dsn(dsn)
