"""One restore test of one dump, stage by stage, with its result.

The recovery time compared with ``rto_seconds`` runs from the start of the test to the end
of ``verifying``: the time until a verified copy of the data is back.

Stages: ``checking`` (dump header) → ``starting`` (throwaway server, roles, version guard) →
``restoring`` (``pg_restore``) → ``verifying`` (Alembic, table list and row counts,
verification and freshness queries) → ``cleaning`` (server removed, always: on pass, failure,
timeout and cancellation). :class:`RestoreRun` never raises for a failed test; it returns a
:class:`RestoreResult` whose ``stage`` and ``message`` say where and why — except when the
``before`` hook (leadership confirmed before each stage) raises
:class:`~brace_watchdog.leadership.LeadershipLostError`: then it cleans up and re-raises.
Decisions come from :mod:`brace_watchdog.actions.restore_policy`; the servers from
:mod:`brace_watchdog.adapters.postgres`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from brace_watchdog.actions import restore_policy as policy
from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.adapters.postgres import DockerServer, LocalServer, ThrowawayServer
from brace_watchdog.config import RestoreTestConfig
from brace_watchdog.dumps import DumpHeader, read_dump_header
from brace_watchdog.errors import ActionError, AdapterError, CommandError, PostgresError
from brace_watchdog.files import identify
from brace_watchdog.leadership import LeadershipLostError

__all__ = ["STAGES", "RestoreResult", "RestoreRun", "ServerFactory", "server_factory", "shielded"]

T = TypeVar("T")

log = logging.getLogger("brace_watchdog.restore_test")

STAGES = ("checking", "starting", "restoring", "verifying", "cleaning")
ServerFactory = Callable[[Path], ThrowawayServer]

# every user table; their exact row counts follow in one statement (policy.row_count_sql).
# Plain catalog SQL: any PostgreSQL build that restores the dump can verify it (no libxml etc.).
_TABLES_SQL = (
    "select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
    "where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema') "
    "and n.nspname not like 'pg_toast%' and n.nspname not like 'pg_temp%' order by 1, 2"
)
# the Alembic check and the revision in one round trip
_ALEMBIC_SQL = "select count(*), coalesce(min(version_num), '') from alembic_version"


@dataclass(frozen=True)
class RestoreResult:
    passed: bool
    stage: str
    message: str
    dump_name: str
    dump_size: int = 0
    dump_sha256: str = ""
    backend: str = ""
    pg_version: str = ""
    alembic_revision: str = ""
    table_counts: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    duration_seconds: float = 0.0
    recovery_seconds: float = 0.0
    rto_exceeded: bool = False
    started_at: float = 0.0
    finished_at: float = 0.0
    errors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else f"FAILED at {self.stage}"
        rto = " (slower than the RTO)" if self.rto_exceeded else ""
        return f"restore test {verdict}: {self.dump_name}: {self.message}{rto}"


def server_factory(config: RestoreTestConfig, *, docker: DockerAdapter | None = None,
                   work_root: Path | None = None, ready_attempts: int = 480,
                   ready_wait: float = 0.25, labels: dict[str, str] | None = None
                   ) -> ServerFactory:
    """Build throwaway servers as ``[restore_test] backend`` says."""
    common: dict[str, Any] = {"throwaway_settings": config.throwaway_settings,
                              "ready_attempts": ready_attempts, "ready_wait": ready_wait,
                              "command_timeout": config.timeout_seconds}
    if config.backend == "local":
        return lambda dump: LocalServer(dump, user=config.local_user, bin_dir=config.local_bin_dir,
                                        work_root=work_root, **common)
    adapter = docker or DockerAdapter()
    return lambda dump: DockerServer(dump, adapter, image=config.image, network=config.network,
                                     labels=labels, tmpfs_mb=config.tmpfs_mb, **common)


class RestoreRun:
    """Restores ``dump`` into a throwaway server and judges the result."""

    def __init__(self, config: RestoreTestConfig, dump: Path, make_server: ServerFactory, *,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 on_stage: Callable[[str, str], None] | None = None,
                 before: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.config = config
        self.dump = dump
        self.make_server = make_server
        self.clock = clock
        self.monotonic = monotonic
        self.on_stage = on_stage or (lambda stage, line: None)
        self.before = before
        """Awaited before each stage but cleaning (the scheduler's leadership confirm); what
        it raises ends the run after cleanup, as an interruption rather than a result."""
        self.stage = "checking"
        self.started_at = clock()
        self._started = monotonic()
        self._stage_started = self._started
        self.facts: dict[str, Any] = {"stage_seconds": {}, "table_counts": {}}
        self.server: ThrowawayServer | None = None
        self._seen: tuple[object, ...] = ()

    def elapsed(self) -> float:
        return self.monotonic() - self._started

    async def _begin(self, stage: str) -> None:
        if self.before is not None:
            await self.before(stage)
        if stage != self.stage:
            self._enter(stage)

    def _enter(self, stage: str) -> None:
        now = self.monotonic()
        self.facts["stage_seconds"][self.stage] = round(now - self._stage_started, 3)
        self.stage, self._stage_started = stage, now
        line = f"{stage} {self.dump.name} ({STAGES.index(stage) + 1}/{len(STAGES)})"
        log.info("restore test: %s", line)
        self.on_stage(stage, line)

    async def execute(self) -> RestoreResult:
        """Run every stage within ``timeout_seconds``; always clean up; never raise on failure."""
        self.on_stage("checking", f"checking {self.dump.name} (1/{len(STAGES)})")
        failure: tuple[str, str] | None = None
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                await self._stages()
        except LeadershipLostError:
            raise
        except ActionError as exc:
            failure = (exc.stage, exc.message)
        except TimeoutError:
            failure = (self.stage, f"timed out after {self.config.timeout_seconds:g}s "
                                   "([restore_test] timeout_seconds)")
        except AdapterError as exc:
            failure = (self.stage, str(exc))
        finally:
            await self._cleanup_shielded()
        return self._result(failure)

    async def _cleanup_shielded(self) -> None:
        """Remove the server even when our task is being cancelled (then re-cancel)."""
        failed_stage = self.stage
        self._enter("cleaning")
        server, self.server = self.server, None
        if server is not None:
            try:
                await shielded(server.stop())
            except Exception:  # logged; a failed cleanup must not mask the result
                log.exception("restore test: cleanup of the %s server failed", server.backend)
        self.facts["stage_seconds"]["cleaning"] = round(self.monotonic() - self._stage_started, 3)
        self.stage = failed_stage

    async def _stages(self) -> None:
        await self._begin("checking")
        header = await self._check()
        await self._begin("starting")
        self.server = self.make_server(self.dump)
        self.facts["backend"] = self.server.backend
        await self.server.start()
        roles = [policy.quote_ident(role) for role in self.config.roles if role != "postgres"]
        try:
            major, version = await self.server.server_major(roles=roles)
        except PostgresError as exc:
            raise ActionError("starting", f"cannot create the roles {list(self.config.roles)} "
                                          f"or read the server version: {exc}") from None
        self.facts["pg_version"] = version
        problem = policy.version_problem(
            major, header.required_major, backend=self.server.backend, server_version=version,
            dumped_by=f"pg_dump {header.dump_version} of PostgreSQL {header.server_version}")
        if problem:
            raise ActionError("starting", f"refused: {problem}")
        await self._begin("restoring")
        expected = await self._restore(self.server)
        self.facts["recovery_seconds"] = self.elapsed()
        await self._begin("verifying")
        await self._verify(self.server, expected, header)
        await self._check_unchanged()
        self.facts["recovery_seconds"] = self.elapsed()

    async def _check(self) -> DumpHeader:
        try:
            identity = await asyncio.to_thread(identify, self.dump)
        except ActionError as exc:
            raise ActionError("checking", exc.message) from None
        self.facts["dump_size"], self.facts["dump_sha256"] = identity.size, identity.sha256
        self._seen = await asyncio.to_thread(_change_marks, self.dump)
        header = await asyncio.to_thread(read_dump_header, self.dump)
        if header.format != "custom":
            raise ActionError("checking", f"{self.dump.name} is a {header.format}-format archive;"
                                          " expected pg_dump -Fc (custom)")
        self.facts["dump_created"] = header.created
        return header

    async def _restore(self, server: ThrowawayServer) -> set[policy.TocTable]:
        try:
            expected = policy.toc_tables(await server.list_toc())
        except CommandError as exc:
            raise ActionError("restoring", f"pg_restore cannot read the dump: {exc}") from None
        result = await server.restore(jobs=self.config.jobs,
                                      time_limit=self.config.timeout_seconds)
        errors = policy.pg_restore_errors(result.stderr)
        self.facts["errors"] = tuple(errors)
        if errors or result.returncode != 0:
            quoted = "; ".join(errors[:5]) or result.stderr.strip()[-500:]
            more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
            raise ActionError("restoring", f"pg_restore reported {len(errors) or 'an'} error(s) "
                                           f"(exit {result.returncode}): {quoted}{more}")
        return expected

    async def _verify(self, server: ThrowawayServer, expected: set[policy.TocTable],
                      header: DumpHeader) -> None:
        await self._verify_alembic(server)
        counts = await self._table_counts(server)
        restored = {policy.TocTable(*key.split(".", 1)) for key in counts}
        problems = policy.table_problems(expected, restored)
        if problems:
            raise ActionError("verifying", problems[0])
        for query in self.config.verify_queries:
            problem = policy.verify_problem(query, await _query(server, query, "verification"))
            if problem:
                raise ActionError("verifying", problem)
        if self.config.freshness_query:
            await self._verify_freshness(server, header)

    async def _check_unchanged(self) -> None:
        """The result is recorded for the hashed content: refuse it if the file was rewritten
        or replaced meanwhile (ctime moves on every write and cannot be set back)."""
        try:
            now = await asyncio.to_thread(_change_marks, self.dump)
        except OSError as exc:
            now = (str(exc),)
        if now != self._seen:
            raise ActionError("verifying", f"{self.dump.name} was changed or replaced during the "
                              "test; the result would not describe its content: test it again")

    async def _verify_alembic(self, server: ThrowawayServer) -> None:
        try:
            rows = await server.query(_ALEMBIC_SQL)
        except PostgresError as exc:
            raise ActionError("verifying", f"alembic_version is missing or unreadable: {exc}"
                              ) from None
        problem = policy.alembic_problem(rows)
        if problem:
            raise ActionError("verifying", problem)
        self.facts["alembic_revision"] = rows[0][1]

    async def _table_counts(self, server: ThrowawayServer) -> dict[str, int]:
        tables = [policy.TocTable(schema, name)
                  for schema, name in await _query(server, _TABLES_SQL, "table listing")]
        rows = await _query(server, policy.row_count_sql(tables), "row counting") if tables else []
        counts = {name: int(count) for name, count in rows}
        self.facts["table_counts"] = counts
        return counts

    async def _verify_freshness(self, server: ThrowawayServer, header: DumpHeader) -> None:
        inner = self.config.freshness_query.strip().rstrip(";")
        rows = await _query(server, f"select extract(epoch from max(q.newest)) from ({inner}) "
                                    "as q(newest)", "freshness")
        newest = float(rows[0][0]) if rows and rows[0] and rows[0][0] else None
        self.facts["newest_data"] = newest
        problem = policy.freshness_problem(newest, header.created,
                                           self.config.max_data_lag_hours)
        if problem:
            raise ActionError("verifying", problem)

    def _result(self, failure: tuple[str, str] | None) -> RestoreResult:
        facts = self.facts
        recovery = float(facts.get("recovery_seconds", 0.0))
        counts: dict[str, int] = facts["table_counts"]
        passed = failure is None
        if passed:
            message = (f"restored into PostgreSQL {facts.get('pg_version', '?')}: Alembic "
                       f"{facts.get('alembic_revision', '?')}, {len(counts)} tables, "
                       f"{sum(counts.values())} rows in {recovery:.1f}s")
        else:
            message = failure[1] if failure else ""
        return RestoreResult(
            passed=passed, stage="done" if passed else (failure[0] if failure else ""),
            message=message, dump_name=self.dump.name, dump_size=int(facts.get("dump_size", 0)),
            dump_sha256=str(facts.get("dump_sha256", "")),
            backend=str(facts.get("backend", self.config.backend)),
            pg_version=str(facts.get("pg_version", "")),
            alembic_revision=str(facts.get("alembic_revision", "")), table_counts=counts,
            stage_seconds=dict(facts["stage_seconds"]), duration_seconds=round(self.elapsed(), 3),
            recovery_seconds=round(recovery, 3),
            rto_exceeded=passed and policy.rto_exceeded(recovery, self.config.rto_seconds),
            started_at=self.started_at, finished_at=self.clock(),
            errors=tuple(facts.get("errors", ())))


async def shielded(work: Awaitable[T]) -> T:
    """Await ``work`` to its end even when the caller is cancelled meanwhile; then re-raise
    the cancellation (chained to ``work``'s own error, if any)."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
        except Exception:  # noqa: S112 - the task is done; its error is re-raised below
            continue
    if cancelled:
        raise asyncio.CancelledError from task.exception()
    return task.result()


def _change_marks(path: Path) -> tuple[object, ...]:
    info = path.stat()
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


async def _query(server: ThrowawayServer, sql: str, what: str) -> list[list[str]]:
    try:
        return await server.query(sql)
    except PostgresError as exc:
        raise ActionError("verifying", f"{what} query failed: {exc} (query: {sql[:300]})"
                          ) from None
