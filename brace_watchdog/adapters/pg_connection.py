"""How brace-watchdog opens, reads and closes an async psycopg (libpq) connection.

Every connection of ours is autocommit and names itself (``application_name``), takes a password
only when one is configured (otherwise libpq's usual sources apply) and a whole-second libpq
``connect_timeout``. :func:`text_rows` runs one SQL text without parameters — libpq's simple
protocol, so it may hold several statements — and returns every row of every result as psql
would print it: each field's text form, ``''`` for NULL.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

import psycopg
from psycopg import pq

__all__ = ["close_quietly", "open_connection", "text_rows"]


async def open_connection(conninfo: str = "", *, application_name: str, connect_timeout: float,
                          password: str = "", **params: Any) -> psycopg.AsyncConnection[Any]:
    """An autocommit connection; ``connect_timeout`` is rounded up to whole seconds (libpq's
    unit). ``params`` are further libpq keywords (``host``, ``options``, …)."""
    if password:
        params["password"] = password
    return await psycopg.AsyncConnection.connect(
        conninfo, autocommit=True, connect_timeout=max(1, math.ceil(connect_timeout)),
        application_name=application_name, **params)


async def close_quietly(conn: psycopg.AsyncConnection[Any] | None, *,
                        timeout: float | None = None) -> None:
    """Close ``conn`` if it is open (waiting at most ``timeout``), ignoring the errors of a
    connection that is already gone."""
    if conn is not None and not conn.closed:
        with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
            async with asyncio.timeout(timeout):
                await conn.close()


async def text_rows(conn: psycopg.AsyncConnection[Any], sql: str) -> list[list[str]]:
    """Run ``sql`` (simple protocol) and return the rows of all its results as text fields."""
    rows: list[list[str]] = []
    async with conn.cursor() as cursor:
        await cursor.execute(sql.encode())
        rows += _rows_of(cursor.pgresult)
        while cursor.nextset():
            rows += _rows_of(cursor.pgresult)
    return rows


def _rows_of(result: pq.abc.PGresult | None) -> list[list[str]]:
    if result is None or result.status != pq.ExecStatus.TUPLES_OK:
        return []
    return [[_text(result.get_value(row, column)) for column in range(result.nfields)]
            for row in range(result.ntuples)]


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode("utf-8", errors="replace")
