"""The PostgreSQL health probe: connect, ``select 1``, read the Alembic revision, classify failures.

Async psycopg only (never blocks the event loop). :func:`probe_database` opens a *new* connection
each call on purpose: authentication (``pg_hba.conf``, passwords) is only checked when a
connection is made, so a kept-open connection would report "up" while every new connection of the
application is rejected — exactly the runbook's broken-``pg_hba.conf`` symptom.

:func:`classify_failure` is pure: it names a failure ``authentication``, ``refused``, ``timeout``
or ``other`` from the exception type, its SQLSTATE and, because libpq reports connection-time
errors without a SQLSTATE, the server's message. Messages leaving this module have every password
masked; :func:`describe_dsn` shows a DSN as ``user@host:port/dbname`` without it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict

from brace_watchdog.adapters.pg_connection import open_connection, text_rows
from brace_watchdog.adapters.process import mask
from brace_watchdog.errors import PostgresError
from brace_watchdog.observations import FailureKind

__all__ = ["DatabaseReading", "ProbeFailure", "classify_failure", "describe_dsn",
           "probe_database"]

_TIMEOUT_TYPES = (TimeoutError, pg_errors.ConnectionTimeout, pg_errors.QueryCanceled)
# (kind, SQLSTATEs, message pattern); libpq reports connection-time errors without a SQLSTATE,
# so the server's (English) message is the only evidence there. First match wins.
_RULES: tuple[tuple[FailureKind, frozenset[str], re.Pattern[str]], ...] = (
    ("authentication", frozenset({"28P01", "28000"}), re.compile(
        r"password authentication failed|no pg_hba\.conf entry|pg_hba\.conf rejects connection"
        r"|authentication failed|no password supplied|password is required"
        r'|role ".*" does not exist')),
    ("timeout", frozenset({"57014"}), re.compile(r"timeout expired|timed out|statement timeout")),
    ("refused", frozenset(), re.compile(
        r"connection refused|no such file or directory|is the server running")),
)
_BAD_DSN = ("the [database] dsn is not a valid libpq connection string (details hidden: it may "
            "contain the password); fix it")


def classify_failure(exc: BaseException) -> FailureKind:
    """Name what went wrong with a database check, without any I/O."""
    if isinstance(exc, _TIMEOUT_TYPES):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    sqlstate = getattr(exc, "sqlstate", None)
    text = str(exc).lower()
    for kind, sqlstates, pattern in _RULES:
        if sqlstate in sqlstates or pattern.search(text):
            return kind
    return "other"


class ProbeFailure(PostgresError):
    """A database check failed; ``kind`` says how. The message is already masked."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind


@dataclass(frozen=True)
class DatabaseReading:
    latency_seconds: float
    revision: str | None
    revision_note: str
    server_version: str


def describe_dsn(dsn: str) -> str:
    """``user@host:port/dbname`` for logs and status lines; never the password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<invalid dsn>"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    return (f"{params.get('user') or '?'}@{host}:{params.get('port') or 5432}"
            f"/{params.get('dbname') or '?'}")


def _secrets(dsn: str, password: str) -> list[str]:
    try:
        in_dsn = str(conninfo_to_dict(dsn).get("password") or "")
    except psycopg.Error:
        in_dsn = ""
    return [s for s in (password, in_dsn) if s]


def _failure(exc: BaseException, secrets: list[str], during: str) -> ProbeFailure:
    kind = classify_failure(exc)
    detail = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, TimeoutError) and not str(exc):
        detail = "no answer within the timeout"
    return ProbeFailure(kind, mask(f"{during}: {detail}", secrets))


async def probe_database(dsn: str, *, password: str = "", timeout_seconds: float = 5.0,
                         clock: Callable[[], float] = time.perf_counter) -> DatabaseReading:
    """Connect, measure ``select 1``, read ``alembic_version``; raise ProbeFailure otherwise."""
    secrets = _secrets(dsn, password)
    try:
        conninfo_to_dict(dsn)
    except psycopg.Error:
        raise ProbeFailure("other", _BAD_DSN) from None
    try:
        async with asyncio.timeout(timeout_seconds):
            conn = await open_connection(dsn, application_name="brace-watchdog",
                                         connect_timeout=max(2, timeout_seconds),
                                         password=password)
    except (psycopg.Error, OSError, TimeoutError) as exc:
        raise _failure(exc, secrets, "connect") from None
    try:
        async with asyncio.timeout(timeout_seconds):
            return await _query(conn, timeout_seconds, clock)
    except (psycopg.Error, OSError, TimeoutError) as exc:
        raise _failure(exc, secrets, "query") from None
    finally:
        await conn.close()


async def _query(conn: psycopg.AsyncConnection[Any], timeout_seconds: float,
                 clock: Callable[[], float]) -> DatabaseReading:
    await conn.execute(f"set statement_timeout = {max(1, int(timeout_seconds * 1000))}")
    started = clock()
    await conn.execute("select 1")
    latency = clock() - started
    try:
        rows = await text_rows(conn, "select version_num from alembic_version order by 1")
    except pg_errors.UndefinedTable:
        revision, note = None, "no alembic_version table"
    else:
        revision = ",".join(row[0] for row in rows) or None
        note = "" if rows else "alembic_version is empty"
    return DatabaseReading(latency_seconds=latency, revision=revision, revision_note=note,
                           server_version=_version(conn.info.server_version))


def _version(number: int) -> str:
    return f"{number // 10000}.{number % 10000}" if number >= 100000 else str(number)
