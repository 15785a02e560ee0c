"""Full DB rollback (the runbook's "Full DB rollback"), a gated action: plan, then approve.

Pre-checks (``plan``): the dump resolves strictly inside ``[backups] directory``; it is a readable
custom-format archive; the production server's major version can restore it; ``pg_dump`` and
``pg_restore`` are not older than that server (an older ``pg_dump`` refuses a newer server, which
would otherwise surface at the safety dump with the writers already stopped); its restore-test
history is shown (and, with ``require_passing_restore_test``, a passing test is required).

Steps (``execute``), each journaled, streamed as progress and stopping at the first failure:

1. freeze automatic actions;
2. stop the writers (``compose stop backend admin-bot scheduler``) and check none still runs;
3. safety dump of the current database into the backups folder as
   ``brace_safety_YYYYMMDD_HHMMSS.dump`` — it matches ``brace_*.dump`` and starts with ``PGDMP``,
   so the backups monitor counts it as a valid backup (timestamp from its mtime) and a restore
   test can prove it, yet its name tells it apart from the scheduled dumps. It is written under a
   hidden ``.partial`` name first and renamed when complete, so nobody sees half a dump;
4. ``pg_restore --clean --if-exists --no-owner --single-transaction`` — inside the database
   container (``docker exec``, after ``docker cp`` of the dump) or with local binaries against
   ``[database] dsn`` (``[db_rollback] target``). One transaction: a restore that fails midway
   is rolled back entirely and the database stays as it was;
5. start the writers (``compose up -d``); 6. verify ``[health] url``; 7. run the smoke command.

A failure leaves the writers as they are (stopped, if it happened before step 5), keeps
automation frozen, escalates, and reports the exact state and how to continue (:func:`next_steps`).
Automation stays frozen after success too: the runbook wants a post-mortem before re-deploying.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brace_watchdog.actions.gated import (
    Plan,
    Progress,
    Step,
    StepJournal,
    compose_base,
    stamp,
    verify_health,
)
from brace_watchdog.adapters.process import CommandResult, run_command
from brace_watchdog.config import DbRollbackConfig
from brace_watchdog.dumps import DumpHeader, InvalidDumpError, read_dump_header, resolve_dump
from brace_watchdog.errors import ActionError, CommandError, RefusedError
from brace_watchdog.runtime import Hub

__all__ = ["ACTION", "TOOLS", "DbRollback", "DbTarget", "next_steps", "safety_dump_name",
           "tool_major", "tools_problem"]

ACTION = "db_rollback"
CONTAINER_DUMP = "/tmp/brace-watchdog-rollback.dump"  # noqa: S108 - a path inside the container
TOOLS = ("pg_dump", "pg_restore")
_TOOL_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")


def safety_dump_name(now: float) -> str:
    return f"brace_safety_{stamp(now)}.dump"


@dataclass(frozen=True)
class DbTarget:
    """How to reach the production database: its container, or local binaries + a DSN."""

    mode: str
    container: str = ""
    database: str = "brace"
    user: str = "postgres"
    bin_dir: str = ""
    dsn: str = ""
    docker: tuple[str, ...] = ("docker",)

    def tool(self, name: str) -> list[str]:
        if self.mode == "container":
            return [*self.docker, "exec", self.container, name]
        return [os.path.join(self.bin_dir, name) if self.bin_dir else name]

    def conn(self) -> list[str]:
        return ["-d", self.dsn] if self.mode == "local" else ["-U", self.user, "-d", self.database]

    def version_argv(self) -> list[str]:
        return [*self.tool("psql"), "-X", "-tA", *self.conn(), "-c", "show server_version_num"]

    def dump_argv(self, out: str) -> list[str]:
        return [*self.tool("pg_dump"), "-Fc", "-f", out, *self.conn()]

    def restore_argv(self, dump: str) -> list[str]:
        return [*self.tool("pg_restore"), "--clean", "--if-exists", "--no-owner",
                "--single-transaction", *self.conn(), dump]


def tool_major(version_output: str) -> int | None:
    """Major version from ``pg_dump --version`` output (``pg_dump (PostgreSQL) 18.6``)."""
    match = _TOOL_VERSION.search(version_output)
    return int(match.group(1)) if match else None


def tools_problem(tool_majors: Mapping[str, int], server_major: int, *, target: str) -> str | None:
    """None when every tool is at least ``server_major``; else which are older and what to set.

    ``pg_dump`` refuses a newer server (so the safety dump would fail with the writers already
    stopped), and ``pg_restore`` cannot read archives of a newer one.
    """
    older = sorted((tool, major) for tool, major in tool_majors.items() if major < server_major)
    if not older:
        return None
    listed = ", ".join(f"{tool} {major}" for tool, major in older)
    fix = (f"set [db_rollback] bin_dir to the bin folder of PostgreSQL {server_major} or newer"
           if target == "local" else
           f"the database container's own tools must match its server (PostgreSQL "
           f"{server_major}); check [db_rollback] container")
    return (f"client tools older than the production server: {listed} against PostgreSQL "
            f"{server_major}; nothing was stopped. {fix}")


def next_steps(stage: str, state: dict[str, Any], *, up_argv: Sequence[str]) -> list[str]:
    """What the operator can do after a failure at ``stage`` with things as in ``state``."""
    steps: list[str] = []
    if state.get("database") == "unchanged (restore rolled back)":
        steps.append("the restore ran in one transaction and was rolled back: the database holds "
                     "the same data as before the rollback; read the pg_restore error above")
    if state.get("writers") == "stopped":
        steps.append(f"writers are STOPPED; to start them again as they are: {' '.join(up_argv)}")
    if state.get("database") == "restored":
        steps.append("the database holds the dump's data and the writers were started; "
                     "investigate the health/smoke failure before anything else")
    if state.get("safety_dump"):
        steps.append(f"to return to the data from before the rollback: brace-watchdogctl "
                     f"rollback db --dump {state['safety_dump']} (restore-test it first)")
    steps.append("fix the cause and plan the rollback again (brace-watchdogctl rollback db "
                 "--dump NAME), or finish the runbook steps by hand")
    steps.append("automatic actions stay frozen: brace-watchdogctl unfreeze when done, "
                 "then brace-watchdogctl ack")
    return steps


class DbRollback:
    """The ``db_rollback`` gated action."""

    name = ACTION

    def __init__(self, hub: Hub, *, docker_command: Sequence[str] = ("docker",)) -> None:
        self.hub = hub
        self.docker = tuple(docker_command)

    @property
    def cfg(self) -> DbRollbackConfig:
        return self.hub.config.db_rollback

    def compose(self, *args: str) -> list[str]:
        cfg = self.cfg
        return [*compose_base(self.hub.config, command=cfg.compose_command,
                              file=cfg.compose_file, project=cfg.project), *args]

    async def _run(self, argv: Sequence[str], *, timeout: float | None = None,
                   check: bool = True) -> CommandResult:
        db = self.hub.config.database
        env = {"PGPASSWORD": db.password.reveal()} if db.password else None
        return await run_command(argv, timeout=timeout or self.cfg.step_timeout_seconds,
                                 check=check, env=env,
                                 secrets=[db.dsn.reveal(), db.password.reveal()])

    async def target(self) -> DbTarget:
        cfg = self.cfg
        if cfg.target == "local":
            if not self.hub.config.database.dsn:
                raise RefusedError("checking", "[db_rollback] target = 'local' needs "
                                   "[database] dsn (or BRACE_WATCHDOG_DB_DSN)")
            return DbTarget("local", bin_dir=cfg.bin_dir, dsn=self.hub.config.database.dsn.reveal())
        container = cfg.container or await self._service_container()
        return DbTarget("container", container=container, database=cfg.database, user=cfg.user,
                        docker=self.docker)

    async def _service_container(self) -> str:
        service = self.hub.config.database.service
        try:
            result = await self._run(self.compose("ps", "-q", service))
        except CommandError as exc:
            raise RefusedError("checking", f"cannot find the database container: {exc}") from None
        ids = result.stdout.split()
        if not ids:
            raise RefusedError("checking", f"compose service {service!r} has no container; set "
                               "[db_rollback] container or start the database")
        return ids[0]

    # -- plan --------------------------------------------------------------------------------
    async def plan(self, args: dict[str, Any]) -> Plan:
        dump = await asyncio.to_thread(resolve_dump, self.hub.config.backups.directory,
                                       str(args.get("dump", "")))
        try:
            header = await asyncio.to_thread(read_dump_header, dump)
        except InvalidDumpError as exc:
            raise RefusedError("checking", exc.message) from None
        target = await self.target()
        server_major = await self._server_major(target)
        if header.required_major > server_major:
            raise RefusedError("checking", f"{dump.name} needs PostgreSQL {header.required_major}"
                               f" (dumped from {header.server_version} with pg_dump "
                               f"{header.dump_version}) but production runs {server_major}")
        tools = await self._tool_majors(target)
        problem = tools_problem(tools, server_major, target=target.mode)
        if problem:
            raise RefusedError("checking", problem)
        history = self.hub.store.restore_results(dump_name=dump.name, limit=5)
        passed = [r for r in history if r["passed"]]
        warnings: list[str] = []
        if not passed:
            advice = (f"run brace-watchdogctl restore-test --dump {dump.name} first")
            if self.cfg.require_passing_restore_test:
                raise RefusedError("checking", f"{dump.name} has no passing restore test "
                                   f"([db_rollback] require_passing_restore_test); {advice}")
            warnings.append(f"{dump.name} has never passed a restore test; {advice}")
        return Plan(ACTION, {"dump": dump.name, "target": dump.name}, dump.name,
                    self._describe(dump, target),
                    {**_checks(dump, header, server_major, history), "tools": tools},
                    tuple(warnings))

    async def _server_major(self, target: DbTarget) -> int:
        try:
            result = await self._run(target.version_argv())
            return int(result.stdout.strip()) // 10000
        except (CommandError, ValueError) as exc:
            raise RefusedError("checking", f"cannot read the production server version: {exc}"
                               ) from None

    async def _tool_majors(self, target: DbTarget) -> dict[str, int]:
        """``{tool: major}`` of the pg_dump and pg_restore the steps will run."""
        majors: dict[str, int] = {}
        for tool in TOOLS:
            argv = [*target.tool(tool), "--version"]
            try:
                output = (await self._run(argv)).stdout
            except CommandError as exc:
                raise RefusedError("checking", f"cannot run {tool} ({' '.join(argv)}): {exc}"
                                   ) from None
            major = tool_major(output)
            if major is None:
                raise RefusedError("checking", f"cannot read the version of {tool} from "
                                   f"{output.strip()[:200]!r}")
            majors[tool] = major
        return majors

    def _describe(self, dump: Path, target: DbTarget) -> tuple[str, ...]:
        cfg = self.cfg
        folder = self.hub.config.backups.directory
        smoke = " ".join(cfg.smoke_command) if cfg.smoke_command else "none configured (skipped)"
        return (
            "freeze automatic actions (they stay frozen afterwards, for the post-mortem)",
            f"stop writers: {' '.join(self.compose('stop', *cfg.writers))}",
            f"safety dump of the current database to {folder}/brace_safety_<UTC time>.dump",
            f"restore {dump.name}: {' '.join(target.restore_argv(str(dump)))}",
            f"start writers: {' '.join(self.compose('up', '-d', *cfg.writers))}",
            f"verify {self.hub.config.health.url} answers ok "
            f"(up to {cfg.health_attempts} tries)",
            f"smoke test: {smoke}",
        )

    # -- execute -----------------------------------------------------------------------------
    async def execute(self, args: dict[str, Any], *, requester: str, approver: str,
                      progress: Progress) -> dict[str, Any]:
        plan = await self.plan({"dump": args["dump"]})
        dump = self.hub.config.backups.directory / plan.args["dump"]
        target = await self.target()
        action_id = self.hub.store.begin_action(
            ACTION, origin="control", plan=plan.as_dict(),
            requester=f"{requester}, approved by {approver}")
        run = _Run(self, target, dump, StepJournal(self.hub, action_id, progress),
                   who=f"{approver} (DB rollback #{action_id})")
        await run.journal.run_all(
            run.steps(), kind=ACTION, state=run.state,
            next_steps=lambda stage, state: next_steps(
                stage, state, up_argv=self.compose("up", "-d", *self.cfg.writers)))
        result = {"action_id": action_id, **run.state}
        run.journal.finish(f"database restored from {dump.name}", result)
        self.hub.record(f"{ACTION}.succeeded", "control",
                        f"DB rollback #{action_id} to {dump.name} succeeded", evidence=result,
                        action_id=action_id)
        return result


class _Run:
    """The mutable state of one DB rollback; ``state`` is what a failure report shows."""

    def __init__(self, owner: DbRollback, target: DbTarget, dump: Path, journal: StepJournal,
                 *, who: str) -> None:
        self.owner = owner
        self.target = target
        self.dump = dump
        self.journal = journal
        self.who = who
        self.state: dict[str, Any] = {"automation": "running", "writers": "running",
                                      "safety_dump": None, "database": "untouched",
                                      "dump": dump.name, "health": None, "smoke": None}

    def steps(self) -> list[Step]:
        writers = ", ".join(self.owner.cfg.writers) or "(none configured)"
        return [
            ("freezing", "freezing automatic actions", self.freeze),
            ("stopping_writers", f"stopping writers: {writers}", self.stop_writers),
            ("safety_dump", "dumping the current database", self.safety_dump),
            ("restoring", f"restoring {self.dump.name}", self.restore),
            ("starting_writers", f"starting writers: {writers}", self.start_writers),
            ("verifying", f"probing {self.owner.hub.config.health.url}", self.verify),
            ("smoke", "running the smoke test", self.smoke),
        ]

    async def freeze(self) -> None:
        self.owner.hub.freeze(f"DB rollback to {self.dump.name}", by=self.who)
        self.state["automation"] = "frozen"

    async def stop_writers(self) -> None:
        writers = self.owner.cfg.writers
        if not writers:
            self.state["writers"] = "none configured"
            return
        self.state["writers"] = "stopping"
        await self.owner._run(self.owner.compose("stop", *writers))
        running = await self.owner._run(self.owner.compose(
            "ps", "--services", "--filter", "status=running"))
        still = sorted(set(running.stdout.split()) & set(writers))
        if still:
            raise ActionError("stopping_writers", f"still running after stop: {still}")
        self.state["writers"] = "stopped"

    async def safety_dump(self) -> None:
        folder = self.owner.hub.config.backups.directory
        name = safety_dump_name(self.owner.hub.clock())
        partial = folder / f".{name}.partial"
        try:
            await self._dump_to(partial)
            await asyncio.to_thread(read_dump_header, partial)
            partial.rename(folder / name)
        finally:
            partial.unlink(missing_ok=True)
        self.state["safety_dump"] = name

    async def _dump_to(self, path: Path) -> None:
        target, run = self.target, self.owner._run
        timeout = self.owner.cfg.restore_timeout_seconds
        if target.mode == "local":
            await run(target.dump_argv(str(path)), timeout=timeout)
            return
        await run(target.dump_argv(CONTAINER_DUMP), timeout=timeout)
        try:
            await run([*target.docker, "cp", f"{target.container}:{CONTAINER_DUMP}", str(path)],
                      timeout=timeout)
        finally:
            await run([*target.docker, "exec", target.container, "rm", "-f", CONTAINER_DUMP],
                      check=False)

    async def restore(self) -> None:
        target, run = self.target, self.owner._run
        timeout = self.owner.cfg.restore_timeout_seconds
        self.state["database"] = "restoring"
        try:
            if target.mode == "local":
                await run(target.restore_argv(str(self.dump)), timeout=timeout)
            else:
                await run([*target.docker, "cp", str(self.dump),
                           f"{target.container}:{CONTAINER_DUMP}"], timeout=timeout)
                try:
                    await run(target.restore_argv(CONTAINER_DUMP), timeout=timeout)
                finally:
                    await run([*target.docker, "exec", target.container, "rm", "-f",
                               CONTAINER_DUMP], check=False)
        except CommandError:
            self.state["database"] = "unchanged (restore rolled back)"
            raise
        self.state["database"] = "restored"

    async def start_writers(self) -> None:
        writers = self.owner.cfg.writers
        if writers:
            await self.owner._run(self.owner.compose("up", "-d", *writers))
            self.state["writers"] = "started"

    async def verify(self) -> None:
        cfg = self.owner.cfg
        self.state["health"] = await verify_health(self.owner.hub, attempts=cfg.health_attempts,
                                                   wait_seconds=cfg.health_wait_seconds)

    async def smoke(self) -> None:
        cfg = self.owner.cfg
        if not cfg.smoke_command:
            self.state["smoke"] = "skipped (no smoke_command)"
            return
        await self.owner._run(cfg.smoke_command, timeout=cfg.smoke_timeout_seconds)
        self.state["smoke"] = "passed"


def _checks(dump: Path, header: DumpHeader, server_major: int,
            history: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "dump": {"name": dump.name, "size": dump.stat().st_size,
                 "server_version": header.server_version, "pg_dump": header.dump_version,
                 "created": header.created},
        "production_server_major": server_major,
        "restore_tests": [{"passed": r["passed"], "finished_at": r["finished_at"],
                           "stage": r["stage"], "message": r["message"]} for r in history],
    }
