"""The shared action journal's tables in the production PostgreSQL: ``brace_watchdog.journal``
(the actions) and ``brace_watchdog.guards`` (the loop-proofing guards, newest write wins).

Plain SQL on a connection the caller already holds inside a transaction that confirmed the
leadership lock (:meth:`~brace_watchdog.adapters.pg_lock.AdvisoryLockSession.run_locked`), so only
the leader ever writes here. The dedicated schema ``brace_watchdog`` keeps it away from the
application's tables (Alembic's autogenerate compares only the default schema unless told
``include_schemas=True``); :func:`ensure_table` creates both when missing. A row is one action of
one state file (``store_id``, ``action_id``); once closed (ended, or adopted by another leader)
it is never changed again. A guard row is replaced only by a newer setting of it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

from psycopg.types.json import Jsonb

from brace_watchdog.adapters.pg_lock import Connection
from brace_watchdog.journal_handover import (
    ADOPTED,
    OPEN_STATUSES,
    Guard,
    GuardKind,
    JournalEntry,
    SharedAction,
)

__all__ = ["GUARDS", "SCHEMA", "TABLE", "adopted", "ensure_table", "guards", "handover_rows",
           "write_entries"]

SCHEMA = "brace_watchdog"
TABLE = f"{SCHEMA}.journal"
GUARDS = f"{SCHEMA}.guards"
KEEP_CLOSED_SECONDS = 30 * 86400  # closed rows older than this go at each takeover

_CREATE = [
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        store_id text NOT NULL,
        action_id bigint NOT NULL,
        host text NOT NULL,
        pid integer NOT NULL,
        kind text NOT NULL,
        origin text NOT NULL,
        requester text NOT NULL DEFAULT '',
        status text NOT NULL,
        step text NOT NULL,
        result text NOT NULL DEFAULT '',
        plan jsonb NOT NULL DEFAULT '{{}}',
        evidence jsonb NOT NULL DEFAULT '{{}}',
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        adopted_by text,
        adopted_into_store text,
        adopted_into_action bigint,
        PRIMARY KEY (store_id, action_id))""",
    f"""CREATE TABLE IF NOT EXISTS {GUARDS} (
        kind text NOT NULL,
        key text NOT NULL,
        value jsonb,
        set_at double precision NOT NULL,
        store_id text NOT NULL,
        host text NOT NULL,
        PRIMARY KEY (kind, key))""",
]
_OPEN = f"status IN ({', '.join(repr(status) for status in OPEN_STATUSES)})"
_SET_STEP = ("host = %(host)s, pid = %(pid)s, step = %(step)s, "
             "status = COALESCE(%(status)s, j.status), result = COALESCE(%(result)s, j.result), "
             f"evidence = %(evidence)s, updated_at = %(ts)s WHERE j.{_OPEN}")
_STEP = (f"UPDATE {TABLE} AS j SET {_SET_STEP} "
         "AND j.store_id = %(store)s AND j.action_id = %(id)s")
# a start inserts its row — or, should it exist already, is the step it also is
_START = (f"INSERT INTO {TABLE} AS j (store_id, action_id, host, pid, kind, origin, requester, "
          "status, step, result, plan, evidence, created_at, updated_at) VALUES (%(store)s, "
          "%(id)s, %(host)s, %(pid)s, %(kind)s, %(origin)s, %(requester)s, "
          "COALESCE(%(status)s, 'running'), %(step)s, COALESCE(%(result)s, ''), %(plan)s, "
          "%(evidence)s, %(created)s, %(ts)s) "
          f"ON CONFLICT (store_id, action_id) DO UPDATE SET {_SET_STEP}")
_GUARD = (f"INSERT INTO {GUARDS} AS g (kind, key, value, set_at, store_id, host) VALUES "
          "(%(kind)s, %(key)s, %(value)s, %(ts)s, %(store)s, %(host)s) "
          "ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, "
          "set_at = excluded.set_at, store_id = excluded.store_id, host = excluded.host "
          "WHERE g.set_at < excluded.set_at")
_GUARD_KINDS: dict[str, GuardKind] = {"flag": "flag", "rolled_back": "rolled_back",
                                      "failed_verification": "failed_verification",
                                      "rollback_started": "rollback_started"}
_COLUMNS = ", ".join(f"j.{c}" for c in (
    "store_id", "action_id", "host", "pid", "kind", "origin", "requester", "status", "step",
    "plan", "evidence", "updated_at", "adopted_by"))


async def ensure_table(conn: Connection, now: float) -> None:
    """Create the schema and tables when missing (checked first: CREATE SCHEMA IF NOT EXISTS
    needs the CREATE privilege even when the schema exists); drop long-closed rows."""
    cur = await conn.execute("SELECT to_regnamespace(%s) IS NOT NULL, "
                             "to_regclass(%s) IS NOT NULL", (SCHEMA, GUARDS))
    row = await cur.fetchone()
    schema, tables = (bool(row[0]), bool(row[1])) if row else (False, False)
    if not tables:
        for statement in _CREATE[1 if schema else 0:]:
            await conn.execute(statement)
    await conn.execute(f"DELETE FROM {TABLE} WHERE NOT {_OPEN} AND updated_at < %s",
                       (now - KEEP_CLOSED_SECONDS,))


async def write_entries(conn: Connection, entries: Sequence[JournalEntry | Guard], *,
                        store_id: str, host: str, pid: int) -> None:
    """Write journal entries in order, one statement each: a ``begin`` (or adoption) inserts
    its row, a step updates it while it is open; a guard replaces an older setting of it."""
    for entry in entries:
        if isinstance(entry, Guard):
            await conn.execute(_GUARD, {
                "kind": entry.kind, "key": entry.key, "ts": entry.ts, "store": store_id,
                "host": host, "value": None if entry.value is None else Jsonb(_plain(entry.value))})
            continue
        params: dict[str, Any] = {
            "store": store_id, "id": entry.action_id, "host": host, "pid": pid,
            "step": entry.step, "status": entry.status, "result": entry.result,
            "evidence": Jsonb(_plain(entry.evidence)), "ts": entry.ts}
        start = entry.start
        if start is None:
            await conn.execute(_STEP, params)
        else:
            await conn.execute(_START, {
                **params, "kind": start.kind, "origin": start.origin,
                "requester": start.requester, "plan": Jsonb(_plain(start.plan)),
                "created": start.created_at})


async def handover_rows(conn: Connection, store_id: str,
                        local_open: Collection[int]) -> list[SharedAction]:
    """Every open row, and this state file's rows of its ``local_open`` actions (with the
    status of the copy that adopted them, if any)."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS}, a.status FROM {TABLE} j LEFT JOIN {TABLE} a "
        "ON a.store_id = j.adopted_into_store AND a.action_id = j.adopted_into_action "
        f"WHERE j.{_OPEN} OR (j.store_id = %(store)s AND j.action_id = ANY(%(ids)s)) "
        "ORDER BY j.updated_at, j.action_id",
        {"store": store_id, "ids": list(local_open)})
    return [SharedAction(store_id=str(r[0]), action_id=int(r[1]), host=str(r[2]), pid=int(r[3]),
                         kind=str(r[4]), origin=str(r[5]), requester=str(r[6]),
                         status=str(r[7]), step=str(r[8]), plan=_dict(r[9]),
                         evidence=_dict(r[10]), updated_at=float(r[11]),
                         adopted_by=None if r[12] is None else str(r[12]),
                         adopter_status=None if r[13] is None else str(r[13]))
            for r in await cur.fetchall()]


async def guards(conn: Connection) -> list[Guard]:
    """Every guard as last set by any leader (none before the first leader made the table)."""
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (GUARDS,))
    made = await cur.fetchone()
    if not (made and made[0]):
        return []
    cur = await conn.execute(f"SELECT kind, key, value, set_at FROM {GUARDS} ORDER BY set_at")
    return [Guard(_GUARD_KINDS[str(r[0])], str(r[1]), None if r[2] is None else _dict(r[2]),
                  float(r[3])) for r in await cur.fetchall() if str(r[0]) in _GUARD_KINDS]


async def adopted(conn: Connection, row: SharedAction, *, by: str, into: tuple[str, int],
                  now: float) -> None:
    """Close a row another state file took over: ``by`` says who, ``into`` is the copy's key."""
    await conn.execute(
        f"UPDATE {TABLE} SET status = %s, adopted_by = %s, adopted_into_store = %s, "
        f"adopted_into_action = %s, updated_at = %s "
        f"WHERE store_id = %s AND action_id = %s AND {_OPEN}",
        (ADOPTED, by, *into, now, row.store_id, row.action_id))


def _plain(value: dict[str, Any]) -> Any:
    """JSON-safe (what the SQLite journal stores: anything else as its str)."""
    return json.loads(json.dumps(value, default=str))


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
