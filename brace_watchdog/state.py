"""The SQLite state store: event log, action journal, releases and their health evidence, restore
results, approvals, audit.

One file in WAL mode at ``[daemon] state_path``. The schema is versioned (``PRAGMA user_version``)
and migrated forward on open; a file from a newer daemon, a corrupt file or an unwritable one is
a :class:`~brace_watchdog.errors.StateError` at start-up. The event log is append-only: every check
transition, decision and action step lands there with its evidence as JSON.

Calls are short (single-row writes, indexed reads) and serialised by a lock, so they are safe from
the event loop and from worker threads alike; with ``synchronous=NORMAL`` a write costs
microseconds. SQLite may wait at most ``BUSY_TIMEOUT_SECONDS`` per call: a file locked by another
process or a full disk makes the store *unavailable* (a
:class:`~brace_watchdog.errors.StateUnavailableError`, not fatal) and queues writes in order until
:meth:`StateStore.flush` can write them; the supervisor flushes every second and exports
:meth:`StateStore.health`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tenacity

from brace_watchdog import failpoints
from brace_watchdog.errors import StateError, StateUnavailableError, WatchdogError
from brace_watchdog.journal_handover import (
    OPEN_STATUSES,
    RATE_RECORD_SECONDS,
    ROLLBACK_STARTED,
    SHARED_FLAGS,
    ActionStart,
    Guard,
    JournalEntry,
    SharedAction,
)

__all__ = ["ActionRecord", "ConfigFiles", "Event", "ReleaseRecord", "StateStore", "StoreHealth",
           "files_blob", "files_from_blob"]

log = logging.getLogger("brace_watchdog.state")

Clock = Callable[[], float]
EventHook = Callable[[str, str, str, str, int], None]
"""Called after every event is written or queued: (kind, source, severity, message, event id);
the id is 0 for a queued event."""
FailureHook = Callable[[str], None]
"""Called on every write that failed for a reason that may pass: ``locked``, ``full``, ``io``."""
Write = Callable[[sqlite3.Connection], Any]
JournalHook = Callable[[JournalEntry | Guard], None]
"""Called after every action journal write (begin, step, adoption) and every change of a shared
guard (:data:`~brace_watchdog.journal_handover.SHARED_FLAGS`, a release a rollback left), written
or queued; not for a guard taken over from the shared table (:meth:`StateStore.apply_guard`)."""

BUSY_TIMEOUT_SECONDS = 0.05  # the longest SQLite may hold a caller (the event loop) per call
OPEN_TIMEOUT_SECONDS = 10.0  # opening and migrating (before the loop serves anything) may wait
CLOSE_TIMEOUT_SECONDS = 3.0  # the last flush on close, within the daemon's shutdown budget
MAX_PENDING_WRITES = 100_000  # queued while unavailable; beyond it the oldest go, counted
_TRANSIENT = {sqlite3.SQLITE_BUSY: "locked", sqlite3.SQLITE_LOCKED: "locked",
              sqlite3.SQLITE_FULL: "full", sqlite3.SQLITE_IOERR: "io",
              sqlite3.SQLITE_CANTOPEN: "io"}
_INSERT_EVENT = ("INSERT INTO events (ts, kind, source, severity, message, evidence, action_id) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)")

ConfigFiles = tuple[tuple[str, bytes | None], ...]
"""Path → content (None: absent) of a release's config files: the ``config_files`` column."""


def files_blob(files: Iterable[tuple[str, bytes | None]]) -> bytes:
    """``config_files`` as stored: JSON ``[[path, base64 or null], …]``."""
    return json.dumps([[path, None if data is None else base64.b64encode(data).decode()]
                       for path, data in files]).encode()


def files_from_blob(blob: bytes) -> ConfigFiles:
    return tuple((str(path), None if data is None else base64.b64decode(data))
                 for path, data in json.loads(blob))


def _fold_release_snapshots(conn: sqlite3.Connection) -> None:
    """Version 7: a release keeps its config once, in ``config_files``. A row from before
    version 5 kept only the compose file and ``.env`` (``compose_snapshot``, ``env_snapshot``):
    they become its ``config_files``, at the paths they were read from; both columns go."""
    rows = conn.execute(
        "SELECT id, working_dir, compose_file, compose_snapshot, env_snapshot FROM releases "
        "WHERE config_files IS NULL AND compose_snapshot IS NOT NULL AND compose_file != ''")
    for row_id, working_dir, compose_file, compose, env in rows.fetchall():
        env_path = Path(working_dir or Path(compose_file).parent) / ".env"
        conn.execute("UPDATE releases SET config_files = ? WHERE id = ?",
                     (files_blob(((compose_file, compose), (str(env_path), env))), row_id))
    conn.execute("ALTER TABLE releases DROP COLUMN compose_snapshot")
    conn.execute("ALTER TABLE releases DROP COLUMN env_snapshot")


_MIGRATIONS: list[str | Callable[[sqlite3.Connection], None]] = [
    # version 1
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        kind TEXT NOT NULL,
        source TEXT NOT NULL,
        severity TEXT NOT NULL DEFAULT 'info',
        message TEXT NOT NULL,
        evidence TEXT NOT NULL DEFAULT '{}',
        action_id INTEGER
    );
    CREATE INDEX events_kind_ts ON events(kind, ts);
    CREATE INDEX events_action ON events(action_id);
    CREATE TABLE flags (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE actions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        origin TEXT NOT NULL,
        requester TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        step TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        plan TEXT NOT NULL DEFAULT '{}',
        result TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX actions_status ON actions(status);
    CREATE TABLE releases (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        fingerprint TEXT NOT NULL UNIQUE,
        first_seen REAL NOT NULL,
        known_good_at REAL,
        services TEXT NOT NULL,
        working_dir TEXT NOT NULL DEFAULT '',
        alembic_revision TEXT,
        compose_file TEXT NOT NULL DEFAULT '',
        compose_snapshot BLOB,
        env_snapshot BLOB,
        failed_verification_at REAL,
        pinned INTEGER NOT NULL DEFAULT 0,
        extra TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE restore_results (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        started_at REAL NOT NULL,
        finished_at REAL NOT NULL,
        dump_name TEXT NOT NULL,
        dump_size INTEGER NOT NULL DEFAULT 0,
        passed INTEGER NOT NULL,
        stage TEXT NOT NULL DEFAULT '',
        message TEXT NOT NULL DEFAULT '',
        backend TEXT NOT NULL DEFAULT '',
        pg_version TEXT NOT NULL DEFAULT '',
        alembic_revision TEXT NOT NULL DEFAULT '',
        duration_seconds REAL NOT NULL DEFAULT 0,
        rto_exceeded INTEGER NOT NULL DEFAULT 0,
        details TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX restore_results_dump ON restore_results(dump_name, finished_at);
    CREATE TABLE approvals (
        token_hash TEXT PRIMARY KEY,
        action TEXT NOT NULL,
        params TEXT NOT NULL,
        requester_uid INTEGER NOT NULL,
        requester_name TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL,
        approver_uid INTEGER,
        approver_name TEXT,
        action_id INTEGER
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        uid INTEGER NOT NULL,
        user TEXT NOT NULL,
        command TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    """,
    # version 2: the release a rollback left (never rolled back automatically again)
    """
    ALTER TABLE releases ADD COLUMN rolled_back_at REAL;
    ALTER TABLE releases ADD COLUMN rolled_back_by INTEGER
    """,
    # version 3: restore-test results are keyed by the dump's content, not its name
    """
    ALTER TABLE restore_results ADD COLUMN dump_sha256 TEXT NOT NULL DEFAULT '';
    CREATE INDEX restore_results_sha256 ON restore_results(dump_sha256, finished_at);
    """,
    # version 4: what the daemon itself watched of each release (aggregates, not samples)
    """
    CREATE TABLE release_health (
        fingerprint TEXT PRIMARY KEY,
        observed_until REAL NOT NULL,
        healthy_seconds REAL NOT NULL DEFAULT 0,
        watched_seconds REAL NOT NULL DEFAULT 0,
        ok_samples INTEGER NOT NULL DEFAULT 0,
        failing_samples INTEGER NOT NULL DEFAULT 0,
        other_samples INTEGER NOT NULL DEFAULT 0,
        last_bad_at REAL,
        last_failing_at REAL
    );
    """,
    # version 5: every config file of a release (-f files, .env, env_file targets) by path
    """
    ALTER TABLE releases ADD COLUMN config_files BLOB
    """,
    # version 6: a rollback's control command bears its action's name (rollback-db was
    # db_rollback's); the audit rows follow, so one name finds every request. Approvals always
    # stored the action's name.
    """
    UPDATE audit SET command = 'db_rollback' WHERE command = 'rollback-db';
    UPDATE audit SET command = 'pg_hba_rollback' WHERE command = 'rollback-pg-hba';
    UPDATE audit SET command = 'docker_daemon_rollback' WHERE command = 'rollback-docker-daemon';
    UPDATE audit SET command = 'app_rollback' WHERE command = 'rollback-app'
    """,
    _fold_release_snapshots,
    # version 8: rollbacks other leaders started (shared guards), for the rate limits here
    """
    CREATE TABLE rollbacks_elsewhere (
        key TEXT PRIMARY KEY,
        started_at REAL NOT NULL
    );
    """,
    # version 9: a Swarm release's container spec per service, kept at promotion: the
    # known-good spec a rollback writes back when Swarm's previous spec is not it
    """
    ALTER TABLE releases ADD COLUMN service_specs BLOB
    """,
]

SCHEMA_VERSION = len(_MIGRATIONS)
_HEALTH_COLUMNS = ("fingerprint", "observed_until", "healthy_seconds", "watched_seconds",
                   "ok_samples", "failing_samples", "other_samples", "last_bad_at",
                   "last_failing_at")


@dataclass(frozen=True)
class Event:
    id: int
    ts: float
    kind: str
    source: str
    severity: str
    message: str
    evidence: dict[str, Any]
    action_id: int | None


@dataclass(frozen=True)
class ActionRecord:
    id: int
    kind: str
    origin: str
    requester: str
    status: str
    step: str
    created_at: float
    updated_at: float
    plan: dict[str, Any]
    result: str


ACTION_OPEN_STATUSES = OPEN_STATUSES


@dataclass(frozen=True)
class StoreHealth:
    """Whether writes land now; ``reason`` is SQLite's last error while they do not."""

    writable: bool
    reason: str
    pending: int
    dropped: int


@dataclass(frozen=True)
class ReleaseRecord:
    """A row of ``releases``; ``release`` is a :class:`brace_watchdog.releases.Release` as JSON."""

    id: int
    fingerprint: str
    first_seen: float
    known_good_at: float | None
    release: dict[str, Any]
    working_dir: str
    alembic_revision: str | None
    compose_file: str
    failed_verification_at: float | None
    pinned: bool
    extra: dict[str, Any]
    rolled_back_at: float | None = None
    rolled_back_by: int | None = None
    config_files: bytes | None = None
    service_specs: bytes | None = None


class StateStore:
    """The daemon's durable memory. Construct, then :meth:`open` (which migrates).

    Every write is its own transaction. When one fails because another process holds the file
    or its disk is full, the store degrades: the write and every later one are queued in order
    (never dropped silently: see ``max_pending``) and :meth:`flush` writes them once SQLite
    accepts writes again. SQLite waits at most ``busy_timeout`` seconds per call, so a caller on
    the event loop is never held longer than that.
    """

    def __init__(self, path: Path | str, *, clock: Clock = time.time,
                 busy_timeout: float = BUSY_TIMEOUT_SECONDS,
                 max_pending: int = MAX_PENDING_WRITES) -> None:
        self.path = Path(path)
        self.clock = clock
        self.busy_timeout = busy_timeout
        self.max_pending = max_pending
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pending: deque[Write] = deque()
        self._reason = ""
        self._dropped = 0
        self._flags: dict[str, Any] = {}
        self._kinds: dict[int, str] = {}
        self.on_event: EventHook | None = None
        self.on_write_failure: FailureHook | None = None
        self.on_journal: JournalHook | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> StateStore:
        if str(self.path) != ":memory:":
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StateError(f"cannot create state folder {self.path.parent}: {exc.strerror}; "
                                 "check [daemon] state_path and permissions") from None
        try:
            conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                                   timeout=OPEN_TIMEOUT_SECONDS)
            conn.row_factory = sqlite3.Row
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._conn = conn
            self._migrate(conn)
            _set_busy_timeout(conn, self.busy_timeout)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state file {self.path} is unusable ({exc}); move it aside to start "
                             "with an empty history, or restore it from a backup") from None
        return self

    def close(self) -> None:
        """Write what is queued (waiting up to ``CLOSE_TIMEOUT_SECONDS``), then close."""
        with self._lock:
            if self._conn is None:
                return
            if self._pending:
                _set_busy_timeout(self._conn, CLOSE_TIMEOUT_SECONDS)
                if not self.flush():
                    log.error("state store %s: %d queued writes could not be written (%s) and "
                              "are lost", self.path, len(self._pending), self._reason)
            self._conn.close()
            self._conn = None

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the schema to SCHEMA_VERSION in one write transaction.

        The version is read inside ``BEGIN IMMEDIATE``, so two processes opening the same file at
        once (the daemon and ``brace-watchdog restore-test``) never both run a migration.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StateError(f"state file {self.path} has schema v{version}, newer than this "
                                 f"daemon's v{SCHEMA_VERSION}: upgrade brace-watchdog or move "
                                 "the file")
            for number in range(version, SCHEMA_VERSION):
                migration = _MIGRATIONS[number]
                if callable(migration):
                    migration(conn)
                else:
                    for statement in migration.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        return int(self._query_one("PRAGMA user_version")[0])

    # -- degraded mode: queued writes ---------------------------------------------------------
    def health(self) -> StoreHealth:
        with self._lock:
            return StoreHealth(writable=not self._pending, reason=self._reason,
                               pending=len(self._pending), dropped=self._dropped)

    def flush(self) -> bool:
        """Write queued writes in order; True when none is left (the store is writable again)."""
        with self._lock:
            while self._pending:
                try:
                    self._run(self._pending[0])
                except StateUnavailableError:
                    return False
                except (StateError, sqlite3.Error) as exc:
                    log.error("state store: dropping a queued write that cannot succeed: %s", exc)
                    self._dropped += 1
                self._pending.popleft()
            if self._reason:
                log.warning("state store %s is writable again; queued writes are written",
                            self.path)
                self._reason = ""
            return True

    def _write(self, op: Write, *, queue: bool = True) -> Any:
        """Run ``op`` in its own transaction now, or queue it behind earlier queued writes.

        ``queue=False``: the caller needs the write to land before it goes on; when it cannot,
        :class:`StateUnavailableError` is raised and nothing is queued.
        """
        with self._lock:
            if not self._pending or (not queue and self.flush()):
                try:
                    return self._run(op)
                except StateUnavailableError:
                    if not queue:
                        raise
            elif not queue:
                raise StateUnavailableError(self._unavailable_message())
            self._enqueue(op)
            return None

    def _run(self, op: Write) -> Any:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = op(conn)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise self._failure(exc, write=True) from None
        if self._reason and not self._pending:
            log.warning("state store %s is writable again", self.path)
            self._reason = ""
        return result

    def _failure(self, exc: sqlite3.OperationalError, *, write: bool) -> WatchdogError:
        """A transient failure (locked, disk full, I/O) or a fatal one (anything else)."""
        reason = _transient_reason(exc)
        if reason is None:
            return StateError(f"state store write failed ({exc}): {self.path}")
        if write:
            if not self._reason:
                log.error("state store %s unavailable (%s): writes are queued until it recovers",
                          self.path, exc)
            self._reason = str(exc)
            if self.on_write_failure is not None:
                self.on_write_failure(reason)
        return StateUnavailableError(f"state store {self.path} unavailable ({exc})")

    def _unavailable_message(self) -> str:
        return (f"state store {self.path} unavailable ({self._reason}); "
                f"{len(self._pending)} writes queued")

    def _enqueue(self, op: Write) -> None:
        if len(self._pending) >= self.max_pending:
            self._pending.popleft()
            self._dropped += 1
            log.error("state store: %d writes queued, the oldest is dropped (%d so far)",
                      self.max_pending, self._dropped)
        self._pending.append(op)

    # -- plain statements ----------------------------------------------------------------------
    def execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> sqlite3.Cursor:
        """One write statement that must land now (raises StateUnavailableError otherwise)."""
        cursor: sqlite3.Cursor = self._write(lambda conn: conn.execute(sql, params), queue=False)
        return cursor

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        """Rows written so far (queued writes are not visible yet)."""
        with self._lock:
            try:
                return list(self._connection().execute(sql, params).fetchall())
            except sqlite3.OperationalError as exc:
                raise self._failure(exc, write=False) from None

    def _query_one(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Row:
        rows = self.query(sql, params)
        return rows[0]

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StateError("state store is not open")
        return self._conn

    # -- events ----------------------------------------------------------------------------
    def append_event(self, kind: str, source: str, message: str, *,
                     evidence: dict[str, Any] | None = None, severity: str = "info",
                     action_id: int | None = None) -> int:
        """Append an event; its id, or 0 when it is queued (the store is unavailable)."""
        row = (self.clock(), kind, source, severity, message, _dumps(evidence or {}), action_id)
        event_id = int(self._write(lambda conn: conn.execute(_INSERT_EVENT, row).lastrowid) or 0)
        if self.on_event is not None:
            self.on_event(kind, source, severity, message, event_id)
        return event_id

    def events(self, *, since_id: int = 0, limit: int = 100, kinds: tuple[str, ...] = (),
               since_ts: float | None = None, action_id: int | None = None) -> list[Event]:
        where, params = _where([("id > ?", since_id), ("kind IN", kinds), ("ts >= ?", since_ts),
                                ("action_id = ?", action_id)])
        rows = self.query(f"SELECT * FROM events WHERE {where} ORDER BY id DESC LIMIT ?",
                          (*params, limit))
        return [_event(row) for row in reversed(rows)]

    def event(self, event_id: int) -> Event | None:
        rows = self.query("SELECT * FROM events WHERE id = ?", (event_id,))
        return _event(rows[0]) if rows else None

    # -- flags (automation frozen, escalation pending, ...) ---------------------------------
    def set_flag(self, name: str, value: Any) -> None:
        now = self.clock()
        self._set_flag(name, value, now)
        if name in SHARED_FLAGS:
            self._journalled(Guard("flag", name, value if isinstance(value, dict) else None, now))

    def _set_flag(self, name: str, value: Any, ts: float) -> None:
        row = (name, _dumps(value), ts)
        with self._lock:
            self._flags[name] = value
            self._write(lambda conn: conn.execute(
                "INSERT INTO flags (name, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at", row))

    def flag(self, name: str, default: Any = None) -> Any:
        """A flag's value; while the store is unavailable, the last value known to this process."""
        with self._lock:
            if self._pending and name in self._flags:
                return self._flags[name]
            try:
                rows = self.query("SELECT value FROM flags WHERE name = ?", (name,))
            except StateUnavailableError:
                return self._flags.get(name, default)
            if not rows:
                return default
            self._flags[name] = json.loads(rows[0]["value"])
            return self._flags[name]

    # -- action journal --------------------------------------------------------------------
    def begin_action(self, kind: str, *, origin: str, plan: dict[str, Any],
                     requester: str = "", status: str = "running") -> int:
        """Journal a new action and its ``begin`` event; raises StateUnavailableError rather than
        let an action start that a restart could not see."""
        start = ActionStart(kind, origin, requester, plan, self.clock())
        message = f"{kind} started"
        action_id = self._insert_action(start, status=status, step="begin", event="begin",
                                        source=origin, severity="info", message=message,
                                        evidence={"plan": plan, "requester": requester})
        failpoints.hit("journal:begin")
        self._journalled(JournalEntry(action_id, "begin", start.created_at, status,
                                      evidence={"requester": requester}, start=start))
        if kind == "rollback" and self.on_journal is not None:  # every later leader counts it
            self._journalled(Guard(ROLLBACK_STARTED, f"{self.store_identity()}/{action_id}",
                                   {}, start.created_at))
        return action_id

    def _insert_action(self, start: ActionStart, *, status: str, step: str, event: str,
                       source: str, severity: str, message: str,
                       evidence: dict[str, Any]) -> int:
        """Insert an action and its first event (``action.KIND.EVENT``) in one transaction that
        must land now; announce the event; the action's id."""
        now, kind = start.created_at, f"action.{start.kind}.{event}"
        row = (start.kind, start.origin, start.requester, status, step, now, now,
               _dumps(start.plan))

        def op(conn: sqlite3.Connection) -> tuple[int, int]:
            action_id = int(conn.execute(
                "INSERT INTO actions (kind, origin, requester, status, step, created_at, "
                "updated_at, plan) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row).lastrowid or 0)
            event_row = (now, kind, source, severity, message, _dumps(evidence), action_id)
            return action_id, int(conn.execute(_INSERT_EVENT, event_row).lastrowid or 0)

        ids: tuple[int, int] = self._write(op, queue=False)
        action_id, event_id = ids
        self._kinds[action_id] = start.kind
        if self.on_event is not None:
            self.on_event(kind, source, severity, message, event_id)
        return action_id

    def journal_step(self, action_id: int, step: str, *, evidence: dict[str, Any] | None = None,
                     status: str | None = None, result: str | None = None) -> None:
        """Record progress of an action: its current step, and optionally its end status.

        Queued in order when the store is unavailable, so an action in progress goes on.
        """
        now = self.clock()
        severity = "error" if status in ("failed", "interrupted") else "info"
        event = (now, action_id, step, severity, result or step, _dumps(evidence or {}),
                 action_id)

        def op(conn: sqlite3.Connection) -> int:
            conn.execute("UPDATE actions SET step = ?, updated_at = ?, "
                         "status = COALESCE(?, status), result = COALESCE(?, result) WHERE id = ?",
                         (step, now, status, result, action_id))
            return int(conn.execute(
                "INSERT INTO events (ts, kind, source, severity, message, evidence, action_id) "
                "VALUES (?, 'action.' || COALESCE((SELECT kind FROM actions WHERE id = ?), "
                "'unknown') || '.' || ?, 'journal', ?, ?, ?, ?)", event).lastrowid or 0)

        event_id = int(self._write(op) or 0)
        if event_id:  # committed, not queued
            failpoints.hit(f"journal:{step}")
        if self.on_event is not None:
            kind = f"action.{self._kinds.get(action_id, 'unknown')}.{step}"
            self.on_event(kind, "journal", severity, result or step, event_id)
        self._journalled(JournalEntry(action_id, step, now, status, result, evidence or {}))

    def adopt_action(self, shared: SharedAction, message: str) -> int:
        """Copy an action another state file left open into this journal (still open, at its
        step, with its last evidence and ``plan["adopted_from"]``), so the restart path
        reconciles it here; its ``adopted`` event says which host left it."""
        start = ActionStart(shared.kind, shared.origin, shared.requester,
                            {**shared.plan, "adopted_from": shared.origin_note()}, self.clock())
        evidence = {**shared.evidence, "adopted_from": shared.origin_note()}
        action_id = self._insert_action(start, status=shared.status, step=shared.step,
                                        event="adopted", source="journal", severity="warning",
                                        message=message, evidence=evidence)
        self._journalled(JournalEntry(action_id, shared.step, start.created_at, shared.status,
                                      message, evidence, start))
        return action_id

    def adopted_keys(self) -> dict[tuple[str, int], int]:
        """(store id, action id) of every action this journal adopted → its id here."""
        rows = self.query("SELECT id, json_extract(plan, '$.adopted_from.store_id') AS store, "
                          "json_extract(plan, '$.adopted_from.action_id') AS action FROM actions "
                          "WHERE json_extract(plan, '$.adopted_from') IS NOT NULL")
        return {(str(r["store"]), int(r["action"])): int(r["id"]) for r in rows}

    def store_identity(self) -> str:
        """This state file's id in the shared journal: made once, kept in ``flags``."""
        known = self.flag("store_id")
        if known:
            return str(known)
        fresh = _dumps(uuid.uuid4().hex)
        self._write(lambda conn: conn.execute(
            "INSERT INTO flags (name, value, updated_at) VALUES ('store_id', ?, ?) "
            "ON CONFLICT(name) DO NOTHING", (fresh, self.clock())), queue=False)
        return str(self.flag("store_id"))

    def guards(self) -> list[Guard]:
        """This state file's shared guards: the flags (once set), every release a rollback
        left and every one a rollback to which failed verification, each with when it was set
        (a cleared failed mark is not one: the shared table knows when it was cleared)."""
        self.store_identity()  # keys this state file's rollback starts
        where, params = _where([("name IN", SHARED_FLAGS)])
        flags = self.query(f"SELECT name, value, updated_at FROM flags WHERE {where}",
                           tuple(params))
        guards = [Guard("flag", row["name"], _dict_or_none(json.loads(row["value"])),
                        row["updated_at"]) for row in flags]
        marked = self.query("SELECT fingerprint, services, rolled_back_at, rolled_back_by, "
                            "failed_verification_at FROM releases WHERE rolled_back_at IS NOT "
                            "NULL OR failed_verification_at IS NOT NULL")
        guards += [Guard(ROLLBACK_STARTED, key, {}, at) for key, at in
                   self.rollback_starts(since=self.clock() - RATE_RECORD_SECONDS).items()]
        for row in marked:
            note = {"release": json.loads(row["services"])}
            if row["rolled_back_at"] is not None:
                guards.append(Guard("rolled_back", row["fingerprint"], {
                    **note, "action_id": row["rolled_back_by"]}, row["rolled_back_at"]))
            if row["failed_verification_at"] is not None:
                guards.append(Guard("failed_verification", row["fingerprint"], note,
                                    row["failed_verification_at"]))
        return guards

    def rollback_starts(self, since: float) -> dict[str, float]:
        """When each rollback the rate limits count began (since ``since``), keyed by where it
        began — ``STORE_ID/ACTION_ID``, which an adopted copy keeps from its origin — so one
        rollback counts once: this journal's own and those other leaders shared (the later
        time of two sightings). Reads only: a state file not yet in a shared journal (no id)
        keys its own as ``here/ACTION_ID``."""
        own = str(self.flag("store_id") or "here")
        starts: dict[str, float] = {}
        seen = [(self._origin_key(action, own), action.created_at)
                for action in self.actions(kind="rollback", since_ts=since)]
        rows = self.query("SELECT key, started_at FROM rollbacks_elsewhere "
                          "WHERE started_at >= ?", (since,))
        for key, at in seen + [(str(row["key"]), float(row["started_at"])) for row in rows]:
            starts[key] = max(at, starts.get(key, at))
        return starts

    @staticmethod
    def _origin_key(action: ActionRecord, own: str) -> str:
        origin = action.plan.get("adopted_from")
        if isinstance(origin, dict) and "store_id" in origin:
            return f"{origin['store_id']}/{origin.get('action_id')}"
        return f"{own}/{action.id}"

    def apply_guard(self, guard: Guard) -> bool:
        """Take over a guard another instance set (keeping its time, not shared back); False
        when a release it names is unknown here and its record does not say what it was."""
        if guard.kind == "flag":
            self._set_flag(guard.key, guard.value, guard.ts)
            return True
        if guard.kind == ROLLBACK_STARTED:
            self.execute("INSERT INTO rollbacks_elsewhere (key, started_at) VALUES (?, ?) "
                         "ON CONFLICT(key) DO UPDATE SET started_at = excluded.started_at",
                         (guard.key, guard.ts))
            return True
        value = guard.value or {}
        if self.release(guard.key) is None:
            if not isinstance(value.get("release"), dict):
                return guard.value is None  # a cleared mark of a release unknown here
            self.upsert_release(guard.key, release=value["release"], first_seen=guard.ts)
        if guard.kind == "rolled_back":
            self.execute("UPDATE releases SET rolled_back_at = ?, rolled_back_by = NULL "
                         "WHERE fingerprint = ?", (guard.ts, guard.key))
        else:
            self.execute("UPDATE releases SET failed_verification_at = ? WHERE fingerprint = ?",
                         (None if guard.value is None else guard.ts, guard.key))
        return True

    def _journalled(self, entry: JournalEntry | Guard) -> None:
        if self.on_journal is not None:
            self.on_journal(entry)

    def last_journal_evidence(self, action_id: int) -> dict[str, Any]:
        """The evidence of the newest journal entry of an action (``{}`` if none)."""
        rows = self.query("SELECT evidence FROM events WHERE action_id = ? AND source = 'journal' "
                          "ORDER BY id DESC LIMIT 1", (action_id,))
        value = json.loads(rows[0]["evidence"]) if rows else {}
        return value if isinstance(value, dict) else {}

    def action(self, action_id: int) -> ActionRecord | None:
        rows = self.query("SELECT * FROM actions WHERE id = ?", (action_id,))
        return self._action(rows[0]) if rows else None

    def actions(self, *, kind: str | None = None, statuses: tuple[str, ...] = (),
                since_ts: float | None = None, limit: int = 100) -> list[ActionRecord]:
        where, params = _where([("kind = ?", kind), ("status IN", statuses),
                                ("created_at >= ?", since_ts)])
        rows = self.query(f"SELECT * FROM actions WHERE {where} ORDER BY id DESC LIMIT ?",
                          (*params, limit))
        return [self._action(row) for row in rows]

    def _action(self, row: sqlite3.Row) -> ActionRecord:
        record = _action(row)
        self._kinds[record.id] = record.kind
        return record

    def open_actions(self, kind: str | None = None) -> list[ActionRecord]:
        """Every action that was started and never finished (no limit: what a restart or a
        takeover must resolve), newest first."""
        where, params = _where([("kind = ?", kind), ("status IN", ACTION_OPEN_STATUSES)])
        rows = self.query(f"SELECT * FROM actions WHERE {where} ORDER BY id DESC", tuple(params))
        return [self._action(row) for row in rows]

    # -- releases (app rollback: known-good releases, snapshots, pins) -----------------------
    def upsert_release(self, fingerprint: str, *, release: dict[str, Any], first_seen: float,
                       compose_file: str = "") -> ReleaseRecord:
        """Remember a release the first time it is seen; return its (possibly older) record."""
        row = (fingerprint, first_seen, _dumps(release), str(release.get("working_dir", "")),
               compose_file)
        self._write(lambda conn: conn.execute(
            "INSERT INTO releases (fingerprint, first_seen, services, working_dir, compose_file) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(fingerprint) DO NOTHING", row), queue=False)
        record = self.release(fingerprint)
        if record is None:
            raise StateError(f"release {fingerprint[:12]} vanished from the state store")
        return record

    def release(self, fingerprint: str) -> ReleaseRecord | None:
        rows = self.query("SELECT * FROM releases WHERE fingerprint = ?", (fingerprint,))
        return _release(rows[0]) if rows else None

    def mark_known_good(self, fingerprint: str, *, at: float, alembic_revision: str | None,
                        compose_file: str, config_files: bytes | None,
                        extra: dict[str, Any] | None = None, since: float | None = None,
                        service_specs: bytes | None = None) -> bool:
        """Mark a release known-good (``service_specs``: a Swarm release's container specs,
        kept as they are when None); with ``since`` (when this sighting of it began) only if
        no instance sharing this state file marked it since — False then, nothing written."""
        row = (at, alembic_revision, compose_file, config_files, _dumps(extra or {}),
               service_specs, fingerprint, since, since)
        cursor = self._write(lambda conn: conn.execute(
            "UPDATE releases SET known_good_at = ?, alembic_revision = ?, compose_file = ?, "
            "config_files = ?, extra = ?, service_specs = COALESCE(?, service_specs) "
            "WHERE fingerprint = ? AND (? IS NULL OR known_good_at IS NULL "
            "OR known_good_at < ?)", row))
        return cursor is None or cursor.rowcount > 0  # None: queued while the store is down

    def set_release_config(self, fingerprint: str, *, compose_file: str,
                           config_files: bytes) -> None:
        """Keep the config a release was deployed with (first sighting only; never replaced)."""
        row = (compose_file, config_files, fingerprint)
        self._write(lambda conn: conn.execute(
            "UPDATE releases SET compose_file = ?, config_files = ? "
            "WHERE fingerprint = ? AND config_files IS NULL", row))

    def known_good_releases(self, limit: int = 10) -> list[ReleaseRecord]:
        """Known-good releases, newest known-good first."""
        rows = self.query("SELECT * FROM releases WHERE known_good_at IS NOT NULL "
                          "ORDER BY known_good_at DESC, id DESC LIMIT ?", (limit,))
        return [_release(row) for row in rows]

    def mark_release_failed_verification(self, fingerprint: str, at: float) -> None:
        """A rollback to this release failed verification (shared with later leaders)."""
        self._write(lambda conn: conn.execute(
            "UPDATE releases SET failed_verification_at = ? WHERE fingerprint = ?",
            (at, fingerprint)))
        self._journalled(Guard("failed_verification", fingerprint,
                               self._release_note(fingerprint), at))

    def mark_release_rolled_back(self, fingerprint: str, *, at: float, action_id: int) -> None:
        """Remember that rollback ``action_id`` left this release (kept across restarts, and
        shared with every instance that leads later)."""
        self.execute("UPDATE releases SET rolled_back_at = ?, rolled_back_by = ? "
                     "WHERE fingerprint = ?", (at, action_id, fingerprint))
        self._journalled(Guard("rolled_back", fingerprint,
                               {**self._release_note(fingerprint), "action_id": action_id}, at))

    def clear_release_failed(self, fingerprint: str) -> None:
        """An operator cleared the failed mark (shared: cleared for later leaders too)."""
        self.execute("UPDATE releases SET failed_verification_at = NULL WHERE fingerprint = ?",
                     (fingerprint,))
        self._journalled(Guard("failed_verification", fingerprint, None, self.clock()))

    def _release_note(self, fingerprint: str) -> dict[str, Any]:
        """What a shared guard keeps of a release, so a host that never saw it can know it."""
        record = self.release(fingerprint)
        return {"release": record.release} if record is not None else {}

    def releases(self, *, prefix: str = "", limit: int = 50) -> list[ReleaseRecord]:
        """Releases (whose fingerprint starts with ``prefix``), most recently seen first."""
        rows = self.query("SELECT * FROM releases WHERE substr(fingerprint, 1, ?) = ? "
                          "ORDER BY first_seen DESC, id DESC LIMIT ?",
                          (len(prefix), prefix, limit))
        return [_release(row) for row in rows]

    def set_release_pinned(self, fingerprint: str, pinned: bool) -> None:
        self._write(lambda conn: conn.execute(
            "UPDATE releases SET pinned = ? WHERE fingerprint = ?", (int(pinned), fingerprint)))

    def pinned_releases(self) -> list[ReleaseRecord]:
        return [_release(r) for r in self.query("SELECT * FROM releases WHERE pinned = 1")]

    def save_release_health(self, evidence: dict[str, Any]) -> None:
        """Store a release's health evidence (the columns of ``release_health``), replacing it
        (queued in order while the store is unavailable)."""
        values = tuple(evidence[c] for c in _HEALTH_COLUMNS)
        sql = (f"INSERT OR REPLACE INTO release_health ({', '.join(_HEALTH_COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(_HEALTH_COLUMNS))})")
        self._write(lambda conn: conn.execute(sql, values))

    def release_health(self, fingerprint: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM release_health WHERE fingerprint = ?", (fingerprint,))
        return dict(rows[0]) if rows else None

    # -- restore-test results --------------------------------------------------------------
    def record_restore_result(self, *, started_at: float, finished_at: float, dump_name: str,
                              dump_size: int, passed: bool, dump_sha256: str = "",
                              stage: str = "", message: str = "",
                              backend: str = "", pg_version: str = "", alembic_revision: str = "",
                              duration_seconds: float = 0.0, rto_exceeded: bool = False,
                              details: dict[str, Any] | None = None) -> int:
        """Record a restore test's result; its id, or 0 when it is queued."""
        row = (started_at, finished_at, dump_name, dump_size, int(passed), stage, message,
               backend, pg_version, alembic_revision, duration_seconds, int(rto_exceeded),
               _dumps(details or {}), dump_sha256)
        return int(self._write(lambda conn: conn.execute(
            "INSERT INTO restore_results (started_at, finished_at, dump_name, dump_size, passed, "
            "stage, message, backend, pg_version, alembic_revision, duration_seconds, rto_exceeded,"
            " details, dump_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row).lastrowid) or 0)

    def restore_results(self, *, dump_name: str | None = None, dump_sha256: str | None = None,
                        limit: int = 20) -> list[dict[str, Any]]:
        """Newest first; ``dump_sha256`` selects the tests of exactly that content (what a DB
        rollback's gate asks), ``dump_name`` those of a file name (for display)."""
        where, params = _where([("dump_name = ?", dump_name), ("dump_sha256 = ?", dump_sha256)])
        rows = self.query(f"SELECT * FROM restore_results WHERE {where} ORDER BY id DESC LIMIT ?",
                          (*params, limit))
        return [_restore_result(row) for row in rows]

    def latest_restore_result(self, *, passed: bool | None = None) -> dict[str, Any] | None:
        """The newest restore result (only passing or only failing ones when ``passed`` is set)."""
        where, params = ("", ()) if passed is None else ("WHERE passed = ?", (int(passed),))
        rows = self.query(f"SELECT * FROM restore_results {where} ORDER BY id DESC LIMIT 1",
                          params)
        return _restore_result(rows[0]) if rows else None

    # -- approvals (control socket plan tokens; only a hash of each token is stored) ------------
    def add_approval(self, *, token_hash: str, action: str, params: dict[str, Any],
                     requester_uid: int, requester_name: str, created_at: float,
                     expires_at: float) -> None:
        self.execute("INSERT INTO approvals (token_hash, action, params, requester_uid, "
                     "requester_name, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (token_hash, action, _dumps(params), requester_uid, requester_name,
                      created_at, expires_at))

    def approval(self, token_hash: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM approvals WHERE token_hash = ?", (token_hash,))
        return {**dict(rows[0]), "params": json.loads(rows[0]["params"])} if rows else None

    def consume_approval(self, token_hash: str, *, approver_uid: int, approver_name: str,
                         used_at: float) -> bool:
        """Mark a token used; False when it was already used or has expired (atomic)."""
        cursor = self.execute(
            "UPDATE approvals SET used_at = ?, approver_uid = ?, approver_name = ? "
            "WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
            (used_at, approver_uid, approver_name, token_hash, used_at))
        return cursor.rowcount == 1

    def link_approval(self, token_hash: str, action_id: int) -> None:
        self._write(lambda conn: conn.execute(
            "UPDATE approvals SET action_id = ? WHERE token_hash = ?", (action_id, token_hash)))

    def approvals(self, *, since_ts: float | None = None, limit: int = 100
                  ) -> list[dict[str, Any]]:
        where, params = ("WHERE created_at >= ?", (since_ts,)) if since_ts is not None else ("", ())
        rows = self.query(f"SELECT * FROM approvals {where} ORDER BY created_at DESC LIMIT ?",
                          (*params, limit))
        return [{**dict(r), "params": json.loads(r["params"])} for r in rows]

    # -- audit -----------------------------------------------------------------------------
    def audit(self, *, uid: int, user: str, command: str, outcome: str, detail: str = "") -> None:
        row = (self.clock(), uid, user, command, outcome, detail)
        self._write(lambda conn: conn.execute(
            "INSERT INTO audit (ts, uid, user, command, outcome, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)", row))

    def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        return [dict(r) for r in self.query("SELECT * FROM audit ORDER BY id DESC LIMIT ?",
                                            (limit,))]


@tenacity.retry(retry=tenacity.retry_if_exception_message(match=".*locked.*"),
                stop=tenacity.stop_after_delay(10), wait=tenacity.wait_fixed(0.05), reraise=True)
def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL; SQLite answers "locked" without waiting while another opener switches."""
    conn.execute("PRAGMA journal_mode=WAL")


def _set_busy_timeout(conn: sqlite3.Connection, seconds: float) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")


def _transient_reason(exc: sqlite3.OperationalError) -> str | None:
    """``locked``, ``full`` or ``io`` for a failure that may pass; None for anything else."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return None
    return _TRANSIENT.get(code & 0xFF)


def _where(conditions: list[tuple[str, Any]]) -> tuple[str, list[Any]]:
    """``[("kind = ?", x), ("status IN", (a, b))]`` → SQL and parameters; None/empty are skipped."""
    clauses, params = ["1 = 1"], []
    for clause, value in conditions:
        if value is None or (isinstance(value, tuple) and not value):
            continue
        if clause.endswith(" IN"):
            clauses.append(f"{clause} ({','.join('?' * len(value))})")
            params.extend(value)
        else:
            clauses.append(clause)
            params.append(value)
    return " AND ".join(clauses), params


def _dict_or_none(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def _restore_result(row: sqlite3.Row) -> dict[str, Any]:
    return {**dict(row), "passed": bool(row["passed"]), "rto_exceeded": bool(row["rto_exceeded"]),
            "details": json.loads(row["details"])}


def _event(row: sqlite3.Row) -> Event:
    return Event(id=row["id"], ts=row["ts"], kind=row["kind"], source=row["source"],
                 severity=row["severity"], message=row["message"],
                 evidence=json.loads(row["evidence"]), action_id=row["action_id"])


def _action(row: sqlite3.Row) -> ActionRecord:
    return ActionRecord(id=row["id"], kind=row["kind"], origin=row["origin"],
                        requester=row["requester"], status=row["status"], step=row["step"],
                        created_at=row["created_at"], updated_at=row["updated_at"],
                        plan=json.loads(row["plan"]), result=row["result"])


def _release(row: sqlite3.Row) -> ReleaseRecord:
    return ReleaseRecord(
        id=row["id"], fingerprint=row["fingerprint"], first_seen=row["first_seen"],
        known_good_at=row["known_good_at"], release=json.loads(row["services"]),
        working_dir=row["working_dir"], alembic_revision=row["alembic_revision"],
        compose_file=row["compose_file"], failed_verification_at=row["failed_verification_at"],
        pinned=bool(row["pinned"]), extra=json.loads(row["extra"]),
        rolled_back_at=row["rolled_back_at"], rolled_back_by=row["rolled_back_by"],
        config_files=row["config_files"], service_specs=row["service_specs"])
