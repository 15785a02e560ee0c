"""The PostgreSQL side of leadership: one dedicated async connection and a session advisory lock.

:class:`AdvisoryLockSession` connects with ``application_name = brace-watchdog@HOST:PID`` (how
every instance can name the holder) and server-side limits that end a stopped, hung or cut-off
holder's session, and with it the lock, after the lease: ``idle_session_timeout`` and
``idle_in_transaction_session_timeout`` (silent between queries, or inside
:meth:`~AdvisoryLockSession.run_locked`'s transaction), ``tcp_user_timeout`` (a reply to a
partitioned host left unacknowledged) and ``statement_timeout`` (a query). It takes the lock with
``pg_try_advisory_lock(key)`` and confirms it by asking ``pg_locks`` for our own backend pid, each
query under ``statement_timeout``. :meth:`AdvisoryLockSession.run_locked` runs work in one
transaction of this session that first checks the lock is ours, so a deposed leader writes
nothing (the shared journal, :mod:`brace_watchdog.adapters.pg_journal`). Async psycopg only; one
query at a time; every failure is a :class:`PostgresError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import psycopg
from psycopg.rows import TupleRow

from brace_watchdog.adapters.pg_connection import close_quietly, open_connection
from brace_watchdog.errors import PostgresError
from brace_watchdog.leadership import LeaderInfo, locked_deadline, query_deadline

__all__ = ["APP_PREFIX", "AdvisoryLockSession", "application_name", "parse_application_name"]

APP_PREFIX = "brace-watchdog@"
T = TypeVar("T")
Connection = psycopg.AsyncConnection[TupleRow]

# objid of a one-bigint advisory lock is its low 32 bits, classid the high 32 bits
_HOLDER_SQL = """
select a.application_name, a.pid
  from pg_locks l join pg_stat_activity a on a.pid = l.pid
 where l.locktype = 'advisory' and l.granted and l.objsubid = 1
   and l.database = (select oid from pg_database where datname = current_database())
   and l.classid::bigint = (%(key)s::bigint >> 32) & 4294967295
   and l.objid::bigint = %(key)s::bigint & 4294967295
"""
_HELD_SQL = f"select count(*) from ({_HOLDER_SQL}) h where h.pid = pg_backend_pid()"


def application_name(host: str, pid: int, since: float | None = None) -> str:
    """``brace-watchdog@HOST:PID``, and ``/SINCE`` (unix time) once it holds the lock."""
    tail = f":{pid}" + (f"/{int(since)}" if since is not None else "")
    return f"{APP_PREFIX}{host[:63 - len(APP_PREFIX) - len(tail)]}{tail}"


def parse_application_name(name: str) -> LeaderInfo | None:
    if not name.startswith(APP_PREFIX):
        return None
    who, _, since = name[len(APP_PREFIX):].partition("/")
    host, _, pid = who.rpartition(":")
    if not host or not pid.isdigit() or (since and not since.isdigit()):
        return None
    return LeaderInfo(host, int(pid), float(since) if since else None)


class AdvisoryLockSession:
    """One connection holding (or trying to hold) the leadership lock."""

    def __init__(self, dsn: str, *, password: str = "", key: int, host: str, pid: int,
                 lease_seconds: float, timeout_seconds: float) -> None:
        self._dsn = dsn
        self._password = password
        self.key = key
        self.host, self.pid = host, pid
        self.name = application_name(host, pid)
        self._lease_ms = int(lease_seconds * 1000)
        self._timeout = timeout_seconds
        self._conn: Connection | None = None
        self._busy = asyncio.Lock()  # one query (or locked transaction) at a time

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def connect(self) -> None:
        await self.close()
        options = " ".join(f"-c {name}={value}" for name, value in (
            ("idle_session_timeout", self._lease_ms),
            ("idle_in_transaction_session_timeout", self._lease_ms),
            ("tcp_user_timeout", self._lease_ms),
            ("statement_timeout", int(self._timeout * 1000))))
        try:
            self._conn = await asyncio.wait_for(open_connection(
                self._dsn, application_name=self.name, connect_timeout=self._timeout,
                password=self._password, options=options), timeout=self._timeout + 1)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            raise PostgresError(f"leadership: cannot connect: {_short(exc)}") from None

    async def try_acquire(self, now: float) -> bool:
        """Take the lock if it is free; the holder's application_name then says since when."""
        row = await self._one("select pg_try_advisory_lock(%(key)s::bigint)")
        if not (row and row[0]):
            return False
        await self._one("select set_config('application_name', %(name)s, false)",
                        name=application_name(self.host, self.pid, now))
        return True

    async def held(self) -> bool:
        """True when our session is alive and holds the lock (pg_locks, our backend pid)."""
        row = await self._one(_HELD_SQL)
        return bool(row and row[0])

    async def run_locked(self, work: Callable[[Connection], Awaitable[T]],
                         what: str) -> tuple[bool, T | None]:
        """``(True, work(conn))`` in one transaction that first confirmed the lock is ours;
        ``(False, None)`` when it is not (nothing written). Failures are PostgresErrors naming
        ``what``; the session is closed then, which frees the lock."""
        async with self._guarded(f"{what}: ", locked_deadline(self._timeout)) as conn, \
                conn.transaction():
            cur = await conn.execute(_HELD_SQL, {"key": self.key})
            row = await cur.fetchone()
            if not (row and row[0]):
                return False, None
            return True, await work(conn)

    async def read(self, work: Callable[[Connection], Awaitable[T]], what: str) -> T:
        """``work(conn)``, reading only, whether or not the lock is ours (a follower's look at
        what the leader wrote). Failures are PostgresErrors naming ``what``."""
        async with self._guarded(f"{what}: ", query_deadline(self._timeout)) as conn:
            return await work(conn)

    async def holder(self) -> LeaderInfo | None:
        row = await self._one(_HOLDER_SQL)
        return parse_application_name(str(row[0])) if row else None

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        await close_quietly(conn, timeout=self._timeout)

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            raise PostgresError("leadership: no connection")
        return self._conn

    async def _one(self, sql: str, **params: object) -> tuple[object, ...] | None:
        async with self._guarded("", query_deadline(self._timeout)) as conn:
            cur = await conn.execute(sql, {"key": self.key, **params})
            return await cur.fetchone()

    @contextlib.asynccontextmanager
    async def _guarded(self, what: str, seconds: float) -> AsyncIterator[Connection]:
        """The connection, one user at a time, for at most ``seconds``; any failure closes the
        session (freeing the lock) and is a PostgresError prefixed with ``what``."""
        conn = self._connection()
        try:
            async with self._busy, asyncio.timeout(seconds):
                yield conn
        except (psycopg.Error, OSError, TimeoutError) as exc:
            await self.close()
            raise PostgresError(f"leadership: {what}{_short(exc)}") from None


def _short(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
