"""SQL on a throwaway restore-test server over libpq (psycopg), with psql's text answers.

The restore test's readiness check and verification queries used to run ``pg_isready`` and
``psql`` as child processes — in the docker backend each one a ``docker exec`` round trip of
~0.1-0.2 s. One kept connection per database does the same for milliseconds, and no password
ever reaches an argv. Answers keep psql's shape: every field as its text form (``''`` for
NULL), the rows of every statement of every query in order, so callers and tests read the same
values whichever way they were fetched. Statements go out without parameters (libpq's simple
protocol), so a configured check may hold several statements, as it could with ``psql -c``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from brace_watchdog.adapters.pg_connection import close_quietly, open_connection, text_rows
from brace_watchdog.errors import ActionError, PostgresError

__all__ = ["SqlSessions"]

APPLICATION_NAME = "brace-watchdog-restore-test"


class SqlSessions:
    """Connections to one server (``127.0.0.1:port`` as ``user``), one per database, kept."""

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password = password
        self.port = 0
        self._connections: dict[str, psycopg.AsyncConnection[Any]] = {}

    async def _connection(self, db: str, connect_timeout: int) -> psycopg.AsyncConnection[Any]:
        conn = self._connections.get(db)
        if conn is None or conn.closed:
            conn = await open_connection(
                application_name=APPLICATION_NAME, connect_timeout=connect_timeout,
                password=self.password, host="127.0.0.1", port=self.port, user=self.user,
                dbname=db)
            self._connections[db] = conn
        return conn

    async def ping(self, connect_timeout: int = 5) -> str:
        """``""`` when the server answers ``select 1`` on database ``postgres``; else why not."""
        try:
            conn = await self._connection("postgres", connect_timeout)
            await conn.execute("select 1")
        except (psycopg.Error, OSError) as exc:
            await self._drop("postgres")
            return str(exc).strip() or type(exc).__name__
        return ""

    async def query(self, statements: tuple[str, ...], *, db: str,
                    time_limit: float) -> list[list[str]]:
        """Run ``statements`` in order, stopping at the first error; every row as text fields.

        PostgresError with the server's message on an SQL error; ActionError('verifying') when
        the time limit passes (the connection is dropped, which ends the query server-side)."""
        rows: list[list[str]] = []
        try:
            async with asyncio.timeout(time_limit):
                conn = await self._connection(db, connect_timeout=10)
                for statement in statements:
                    rows += await text_rows(conn, statement)
        except TimeoutError:
            await self._drop(db)
            raise ActionError("verifying", f"query timed out after {time_limit:.0f}s") from None
        except (psycopg.Error, OSError) as exc:
            if isinstance(exc, psycopg.OperationalError | OSError):
                await self._drop(db)
            raise PostgresError(str(exc).strip()[-1000:] or type(exc).__name__) from None
        return rows

    async def _drop(self, db: str) -> None:
        await close_quietly(self._connections.pop(db, None))

    async def close(self) -> None:
        """Close every connection; idempotent."""
        for db in list(self._connections):
            await self._drop(db)

