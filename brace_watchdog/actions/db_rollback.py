"""Full DB rollback (the runbook's "Full DB rollback"), a gated action: plan, then approve.

Pre-checks (``plan``): the dump resolves strictly inside ``[backups] directory`` (a subfolder is
kept in its name); its content is hashed (sha256, size, inode: the approval binds exactly these
bytes); it is a readable custom-format archive; the production server's major version can
restore it; ``pg_dump`` and ``pg_restore`` are not older than that server (an older ``pg_dump``
refuses a newer server, which would otherwise surface at the safety dump with the writers
already stopped); the restore-test history of *that content* (looked up by hash, not by name)
is shown (and, with ``require_passing_restore_test``, a passing test is required).

Steps (``execute``), each journaled with the state an operator needs after a crash (see
:func:`next_steps`), streamed as progress and stopping at the first failure. Before any step,
the approved dump is copied (``O_NOFOLLOW``) into a private folder of the daemon and its hash
checked: a dump changed after approval is refused and nothing happens; the restore reads only
that copy.

1. freeze automatic actions;
2. stop the writers (``compose stop backend admin-bot scheduler`` and check none still runs; on
   Swarm: journal each writer service's replica count, scale it to 0 and wait until no task of it
   is alive — :mod:`~brace_watchdog.actions.db_writers`);
3. safety dump of the current database, written in the private folder and **proven** before
   anything destructive: ``pg_restore --list`` must list every table the live database has
   (and with ``prove_safety_dump = "restore"`` it is restored into a throwaway server by the
   restore-test machinery); then published into the backups folder as
   ``brace_safety_YYYYMMDD_HHMMSS.dump`` (created with ``O_EXCL|O_NOFOLLOW``, linked into place,
   never replacing anything). It matches ``brace_*.dump`` and starts with ``PGDMP``, so the
   backups monitor counts it as a valid backup, yet its name tells it apart;
4. ``pg_restore --clean --if-exists --no-owner --single-transaction`` with ``application_name``
   ``brace-watchdog-restore-<action id>`` — inside the database container (``docker exec``, after
   ``docker cp`` of the copy) or with local binaries (``[db_rollback] target``). One
   transaction: a restore that fails midway is rolled back entirely. A restore that times out
   or is cancelled is ended *in the server* (``pg_terminate_backend`` of that application name,
   waited for, under the lock) and its outcome reported as unknown; so is a restore that
   outlived a killed daemon, once the daemon is back (:meth:`DbRollback.leftover`);
5. start the writers (``compose up -d``; on Swarm: each back to its recorded count);
6. verify ``[health] url``; 7. run the smoke command.

Connection details never reach argv: local tools and the smoke command get a 0600 libpq service
file in a private folder (:mod:`brace_watchdog.adapters.pgservice`).

A failure leaves the writers as they are (stopped, if it happened before step 5), keeps
automation frozen, escalates, and reports the exact state and how to continue (:func:`next_steps`).
Automation stays frozen after success too: the runbook wants a post-mortem before re-deploying.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from brace_watchdog.actions import restore_policy
from brace_watchdog.actions.db_writers import Writers, writers_for
from brace_watchdog.actions.gated import (
    Plan,
    Progress,
    Step,
    StepJournal,
    Work,
    compose_cli,
    compose_project,
    interrupted_message,
    ordered,
    stamp,
    verify_health,
    wait_until,
)
from brace_watchdog.actions.restore_run import RestoreRun, server_factory, shielded
from brace_watchdog.adapters.compose import ComposeCLI, ComposeProject
from brace_watchdog.adapters.pgservice import SERVICE, dsn_secrets, pg_service
from brace_watchdog.adapters.process import CommandResult, run_command
from brace_watchdog.config import DbRollbackConfig
from brace_watchdog.dumps import DumpHeader, InvalidDumpError, read_dump_header, resolve_dump
from brace_watchdog.errors import ActionError, CommandError, RefusedError
from brace_watchdog.files import FileIdentity, copy_verified, identify, private_dir, publish
from brace_watchdog.runtime import Hub
from brace_watchdog.state import ActionRecord

__all__ = ["ACTION", "STEPS", "TOOLS", "DbRollback", "DbTarget", "approved_identity",
           "ended_state", "next_steps", "restore_in_flight", "safety_dump_name", "tool_major",
           "tools_problem"]

ACTION = "db_rollback"
CONTAINER_FOLDER = "/tmp/brace-watchdog-XXXXXXXX"  # noqa: S108 - a mktemp template in the container
APP_NAME = "brace-watchdog-restore"
_LIVE_TABLES_SQL = ("select schemaname || '.' || tablename from pg_tables where schemaname "
                    "not in ('pg_catalog', 'information_schema') order by 1")
UNKNOWN = "UNKNOWN"
STEPS = ("freezing", "stopping_writers", "safety_dump", "restoring", "starting_writers",
         "verifying", "smoke")
TOOLS = ("pg_dump", "pg_restore")
_TOOL_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")


def safety_dump_name(now: float) -> str:
    return f"brace_safety_{stamp(now)}.dump"


def approved_identity(args: dict[str, Any]) -> FileIdentity:
    """The dump content an approval binds; RefusedError for a token without one."""
    try:
        return FileIdentity(str(args["sha256"]), int(args["size"]), int(args["inode"]))
    except (KeyError, TypeError, ValueError):
        raise RefusedError("checking", "this approval does not bind the dump's content (a token "
                           "from an older daemon?); plan again") from None


@dataclass(frozen=True)
class DbTarget:
    """How to reach the production database: its container, or local binaries (connection
    details come from the environment, never argv)."""

    mode: str
    container: str = ""
    database: str = "brace"
    user: str = "postgres"
    bin_dir: str = ""
    docker: tuple[str, ...] = ("docker",)

    def tool(self, name: str, *, env: dict[str, str] | None = None) -> list[str]:
        if self.mode == "container":
            extra = [f"--env={key}={value}" for key, value in (env or {}).items()]
            return [*self.docker, "exec", *extra, self.container, name]
        return [os.path.join(self.bin_dir, name) if self.bin_dir else name]

    def conn(self, app_name: str = "") -> list[str]:
        """Connection options; ``app_name`` (local: in the conninfo, above the service file;
        container: ``PGAPPNAME``, see :meth:`restore_argv`) names the session."""
        if self.mode == "local":  # the details are in the private service file
            named = f" application_name={app_name}" if app_name else ""
            return ["-d", f"service={SERVICE}{named}"]
        return ["-U", self.user, "-d", self.database]

    def psql_argv(self, sql: str) -> list[str]:
        return [*self.tool("psql"), "-X", "-tA", "-v", "ON_ERROR_STOP=1", *self.conn(),
                "-c", sql]

    def version_argv(self) -> list[str]:
        return self.psql_argv("show server_version_num")

    def dump_argv(self, out: str) -> list[str]:
        return [*self.tool("pg_dump"), "-Fc", "-f", out, *self.conn()]

    def list_argv(self, dump: str) -> list[str]:
        return [*self.tool("pg_restore"), "--list", dump]

    def restore_argv(self, dump: str, *, app_name: str = APP_NAME) -> list[str]:
        return [*self.tool("pg_restore", env={"PGAPPNAME": app_name}), "--clean", "--if-exists",
                "--no-owner", "--single-transaction", *self.conn(app_name), dump]


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
    """What the operator can do after a failure (or a crash) at ``stage`` with ``state``."""
    steps: list[str] = []
    database = str(state.get("database") or "")
    if database == "unchanged (restore rolled back)":
        steps.append("the restore ran in one transaction and was rolled back: the database holds "
                     "the same data as before the rollback; read the pg_restore error above")
    elif database == "restoring" or database.startswith(UNKNOWN):
        steps.append("the database state is UNKNOWN: a restore was started and did not finish "
                     "normally; check it (alembic_version, row counts) before anything else — "
                     "do NOT start the writers on it unchecked")
    if state.get("writers") in ("stopped", "stopping", "starting"):
        steps.append(f"writers are {str(state['writers']).upper()}; to start them again as they "
                     f"are: {' '.join(up_argv)}")
    if database == "restored":
        steps.append("the database holds the dump's data and the writers were started; "
                     "investigate the health/smoke failure before anything else")
    if state.get("safety_dump"):
        digest = str(state.get("safety_dump_sha256") or "")[:16]
        steps.append(f"to return to the data from before the rollback: brace-watchdogctl "
                     f"rollback db --dump {state['safety_dump']} (sha256 {digest}…; "
                     "restore-test it first)")
    elif state.get("writers") == "stopped" and stage == "safety_dump":
        steps.append("no safety dump was completed: the data from before the rollback exists "
                     "only in the database itself")
    steps.append("fix the cause and plan the rollback again (brace-watchdogctl rollback db "
                 "--dump NAME), or finish the runbook steps by hand")
    steps.append("automatic actions stay frozen: brace-watchdogctl unfreeze when done, "
                 "then brace-watchdogctl ack")
    return steps


@dataclass(frozen=True)
class Staged:
    """The approved dump where pg_restore reads it (inside the container, or the host copy)."""

    path: str
    sha256: str
    in_container: bool


def restore_in_flight(state: dict[str, Any]) -> bool:
    """Whether a journalled ``state`` says a restore was started and not known to have ended."""
    return (state.get("database") == "restoring"
            and isinstance(state.get("restore_application_name"), str))


def ended_state(why: str, ended: bool, app_name: str) -> str:
    """The database state after a restore was cut short: UNKNOWN, and whether it was ended."""
    outcome = ("ended inside the server (no backend of it remains)" if ended else
               f"could NOT be confirmed ended: look for application_name {app_name} in "
               "pg_stat_activity")
    return (f"{UNKNOWN}: {why}; the restore {outcome}; its single transaction was rolled back "
            "unless it had just committed")


class DbRollback:
    """The ``db_rollback`` gated action."""

    name = ACTION
    STEPS: ClassVar[tuple[str, ...]] = STEPS

    def __init__(self, hub: Hub, *, docker_command: Sequence[str] = ("docker",)) -> None:
        self.hub = hub
        self.docker = tuple(docker_command)

    async def writers(self, *, detect: bool) -> Writers:
        """The writers as the hub's engine runs them (:func:`writers_for`: scaled on Swarm,
        stopped and started by compose otherwise); ``detect`` asks the compose CLI for its
        exact ``up`` flags (the plan shows the plain command)."""
        return await writers_for(self.hub, self._cli(), self._project(), self._run,
                                 detect=detect)

    @property
    def cfg(self) -> DbRollbackConfig:
        return self.hub.config.db_rollback

    def _cli(self) -> ComposeCLI:
        return compose_cli(self.hub.config, command=self.cfg.compose_command,
                           timeout=self.cfg.step_timeout_seconds)

    def _project(self) -> ComposeProject:
        cfg = self.cfg
        return compose_project(self.hub.config, cli=self._cli(), file=cfg.compose_file,
                               project=cfg.project)

    def compose(self, *args: str) -> list[str]:
        return self._project().argv(*args)

    async def _run(self, argv: Sequence[str], *, timeout: float | None = None,
                   check: bool = True) -> CommandResult:
        """Run a command; with ``[database] dsn`` set it gets a private service file."""
        db = self.hub.config.database
        service: contextlib.AbstractContextManager[dict[str, str]] = (
            pg_service(db.dsn.reveal(), db.password.reveal()) if db.dsn
            else contextlib.nullcontext({}))
        with service as env:
            return await run_command(argv, timeout=timeout or self.cfg.step_timeout_seconds,
                                     check=check, env=env,
                                     secrets=dsn_secrets(db.dsn.reveal(), db.password.reveal()))

    async def target(self) -> DbTarget:
        cfg = self.cfg
        if cfg.target == "local":
            if not self.hub.config.database.dsn:
                raise RefusedError("checking", "[db_rollback] target = 'local' needs "
                                   "[database] dsn (or BRACE_WATCHDOG_DB_DSN)")
            return DbTarget("local", bin_dir=cfg.bin_dir)
        container = cfg.container or await self._service_container()
        return DbTarget("container", container=container, database=cfg.database, user=cfg.user,
                        docker=self.docker)

    async def _service_container(self) -> str:
        service = self.hub.config.database.service
        if self.hub.config.rollback.driver == "swarm":
            raise RefusedError("checking", "with [rollback] driver = 'swarm' the database "
                               "container is not found by compose: set [db_rollback] container "
                               "(its task container on this node) or target = 'local'")
        try:
            result = await self._run(self.compose("ps", "-q", service))
        except CommandError as exc:
            raise RefusedError("checking", f"cannot find the database container: {exc}") from None
        ids = result.stdout.split()
        if not ids:
            raise RefusedError("checking", f"compose service {service!r} has no container; set "
                               "[db_rollback] container or start the database")
        return ids[0]

    async def end_backends(self, target: DbTarget, app_name: str) -> bool:
        """Terminate every backend named ``app_name`` and wait (up to ``step_timeout_seconds``)
        until none remains; whether that was confirmed."""
        sql = (f"select count(*), count(pg_terminate_backend(pid)) from pg_stat_activity "
               f"where application_name = '{app_name}'")

        async def remaining() -> int:
            self.hub.progress.beat("control")
            try:
                result = await self._run(target.psql_argv(sql), check=True)
                return int(result.stdout.split("|")[0])
            except (CommandError, ValueError):
                return -1

        left = await wait_until(remaining, lambda n: n == 0,
                                attempts=max(1, int(self.cfg.step_timeout_seconds)),
                                wait_seconds=1.0)
        return left == 0

    def leftover(self) -> Work | None:
        """A restore a killed daemon left in flight (an interrupted rollback whose last entry
        says ``database: restoring``): the work that ends it inside the server."""
        for action in self.hub.store.actions(kind=ACTION, statuses=("interrupted",), limit=5):
            last = self.hub.store.last_journal_evidence(action.id)
            state = last.get("state")
            if isinstance(state, dict) and restore_in_flight(state):
                return functools.partial(self._end_leftover, action, last)
        return None

    async def _end_leftover(self, action: ActionRecord, last: dict[str, Any]) -> None:
        """End the restore of interrupted rollback ``action`` (under the action lock, kept
        until no backend of it remains), then journal and escalate the outcome: UNKNOWN."""
        action_id, step, state = action.id, action.step, dict(last["state"])
        app_name = str(state["restore_application_name"])
        self.hub.record(f"{ACTION}.restore_leftover", "control", f"DB rollback #{action_id}: "
                        f"its restore ({app_name}) may still run in the server after the daemon "
                        "was killed; ending it (pg_terminate_backend); the action lock is held "
                        "until no backend of it remains; the database state is UNKNOWN until "
                        "checked", severity="warning", action_id=action_id)
        why, rounds = "the daemon was killed during the restore", 0
        while not await self._ended(app_name):
            rounds += 1
            if rounds == 1:
                await self.hub.escalate(f"{ACTION}_restore_not_ended", f"DB rollback "
                                        f"#{action_id}: {ended_state(why, False, app_name)}; "
                                        "still trying, the action lock stays held",
                                        source="control", evidence={"action_id": action_id})
        state["database"] = ended_state(why, True, app_name)
        next_steps = [str(step) for step in last.get("next_steps", [])]
        message = interrupted_message(action, state, next_steps)
        self.hub.store.journal_step(action_id, step, result=message,
                                    evidence={"state": state, "next_steps": next_steps})
        await self.hub.escalate(f"{ACTION}_restore_ended", message, source="control",
                                evidence={"action_id": action_id, "state": state})

    async def _ended(self, app_name: str) -> bool:
        try:
            return await self.end_backends(await self.target(), app_name)
        except RefusedError:  # the database container cannot be found (yet)
            await asyncio.sleep(1.0)
            return False

    @contextlib.asynccontextmanager
    async def container_folder(self, target: DbTarget) -> AsyncIterator[str]:
        """A fresh private folder (``mktemp -d``) inside the database container, removed after
        use: nothing is written at a predictable path in the container's shared /tmp."""
        docker, container = target.docker, target.container
        made = await self._run([*docker, "exec", container, "mktemp", "-d", CONTAINER_FOLDER])
        folder = made.stdout.strip()
        try:
            yield folder
        finally:
            await shielded(self._run([*docker, "exec", container, "rm", "-rf", "--", folder],
                                     check=False))

    @contextlib.asynccontextmanager
    async def _staged(self, target: DbTarget, copy: Path, sha256: str) -> AsyncIterator[Staged]:
        """Where pg_restore will read the approved copy: the private copy itself (local), or a
        copy of it in a private folder inside the container, hashed there before anything is
        stopped (RefusedError when it is not the approved content)."""
        if target.mode == "local":
            yield Staged(str(copy), sha256, in_container=False)
            return
        async with self.container_folder(target) as folder:
            staged = Staged(f"{folder}/{copy.name}", sha256, in_container=True)
            await self._run([*target.docker, "cp", str(copy),
                             f"{target.container}:{staged.path}"],
                            timeout=self.cfg.restore_timeout_seconds)
            problem = await self.staged_problem(target, staged)
            if problem:
                raise RefusedError("checking", f"{problem} after docker cp; nothing was "
                                   "stopped or changed: check the container's storage and "
                                   "plan again")
            yield staged

    async def staged_problem(self, target: DbTarget, staged: Staged) -> str | None:
        """None when the staged dump (in the container) is still the approved content."""
        if not staged.in_container:
            return None
        try:
            result = await self._run([*target.docker, "exec", target.container, "sha256sum",
                                      staged.path], timeout=self.cfg.restore_timeout_seconds)
        except CommandError as exc:
            return f"cannot hash the dump in container {target.container} ({staged.path}): {exc}"
        found = (result.stdout.split() or [""])[0]
        if found == staged.sha256:
            return None
        return (f"the dump in container {target.container} ({staged.path}) has sha256 "
                f"{found[:16] or '(none)'}…, not the approved {staged.sha256[:16]}…: it changed")

    def work_root(self) -> Path:
        """Root-owned parent of the private folders: next to the state file."""
        return self.hub.store.path.parent / "work"

    # -- plan --------------------------------------------------------------------------------
    async def plan(self, args: dict[str, Any]) -> Plan:
        folder = self.hub.config.backups.directory
        dump = await asyncio.to_thread(resolve_dump, folder, str(args.get("dump", "")))
        name = str(dump.relative_to(folder.resolve()))
        identity = await asyncio.to_thread(identify, dump)
        return await self._plan(dump, name, identity)

    async def _plan(self, dump: Path, name: str, identity: FileIdentity) -> Plan:
        """Pre-checks of the content at ``dump`` (the original or the private copy)."""
        try:
            header = await asyncio.to_thread(read_dump_header, dump)
        except InvalidDumpError as exc:
            raise RefusedError("checking", exc.message) from None
        target = await self.target()
        server_major = await self._server_major(target)
        if header.required_major > server_major:
            raise RefusedError("checking", f"{name} needs PostgreSQL {header.required_major}"
                               f" (dumped from {header.server_version} with pg_dump "
                               f"{header.dump_version}) but production runs {server_major}")
        tools = await self._tool_majors(target)
        problem = tools_problem(tools, server_major, target=target.mode)
        if problem:
            raise RefusedError("checking", problem)
        writers = await self.writers(detect=False)
        replicas = await writers.check()
        history = self.hub.store.restore_results(dump_sha256=identity.sha256, limit=5)
        warnings: list[str] = []
        if not [r for r in history if r["passed"]]:
            advice = f"run brace-watchdogctl restore-test --dump {name} first"
            if self.cfg.require_passing_restore_test:
                raise RefusedError("checking", f"{name} ({identity.short()}) has no passing "
                                   "restore test of this content ([db_rollback] "
                                   f"require_passing_restore_test); {advice}")
            warnings.append(f"{name} has never passed a restore test; {advice}")
        args = {"dump": name, "target": name, "sha256": identity.sha256, "size": identity.size,
                "inode": identity.inode}
        checks = {**_checks(name, identity, header, server_major, history), "tools": tools}
        if replicas:
            checks["writer_replicas"] = replicas
        return Plan(ACTION, args, name, self._describe(name, target, writers.describe(replicas)),
                    checks, tuple(warnings))

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

    def _describe(self, name: str, target: DbTarget,
                  writer_lines: tuple[str, str]) -> tuple[str, ...]:
        cfg = self.cfg
        folder = self.hub.config.backups.directory
        smoke = " ".join(cfg.smoke_command) if cfg.smoke_command else "none configured (skipped)"
        proof = ("pg_restore --list checked against the live tables, then a full restore into "
                 "a throwaway server" if cfg.prove_safety_dump == "restore"
                 else "pg_restore --list checked against the live tables")
        return (
            "freeze automatic actions (they stay frozen afterwards, for the post-mortem)",
            writer_lines[0],
            f"safety dump of the current database to {folder}/brace_safety_<UTC time>.dump, "
            f"proven before the restore ({proof})",
            f"restore a private copy of {name} (its sha256 checked; in the container checked "
            "again after docker cp, before anything stops, and before the restore): "
            f"{' '.join(target.restore_argv('<copy>'))}",
            writer_lines[1],
            f"verify {self.hub.config.health.url} answers ok "
            f"(up to {cfg.health_attempts} tries)",
            f"smoke test: {smoke}",
        )

    # -- execute -----------------------------------------------------------------------------
    async def execute(self, args: dict[str, Any], *, requester: str, approver: str,
                      progress: Progress) -> dict[str, Any]:
        approved = approved_identity(args)
        name = str(args.get("dump", ""))
        dump = await asyncio.to_thread(resolve_dump, self.hub.config.backups.directory, name)
        work = await asyncio.to_thread(private_dir, self.work_root(), "db_rollback-")
        try:
            copy = await asyncio.to_thread(copy_verified, dump, work, approved)
            plan = await self._plan(copy, name, approved)
            return await self._execute(plan, copy, work, requester=requester,
                                       approver=approver, progress=progress)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def _execute(self, plan: Plan, copy: Path, work: Path, *, requester: str,
                       approver: str, progress: Progress) -> dict[str, Any]:
        target = await self.target()
        async with self._staged(target, copy, str(plan.args["sha256"])) as staged:
            action_id = self.hub.store.begin_action(
                ACTION, origin="control", plan=plan.as_dict(),
                requester=f"{requester}, approved by {approver}")
            writers = await self.writers(detect=True)
            run = _Run(self, target, staged, work, who=f"{approver} (DB rollback #{action_id})",
                       name=plan.target, app_name=f"{APP_NAME}-{action_id}", writers=writers)
            run.journal = StepJournal(
                self.hub, action_id, progress, state=run.state,
                advice=lambda stage, state: next_steps(stage, state,
                                                       up_argv=writers.restart_argv(state)))
            await run.journal.run_all(run.steps(), kind=ACTION)
        result = {"action_id": action_id, **run.state}
        run.journal.finish(f"database restored from {plan.target}", result)
        self.hub.record("db_rollback.succeeded", "control",
                        f"DB rollback #{action_id} to {plan.target} succeeded", evidence=result,
                        action_id=action_id)
        return result


class _Run:
    """The mutable state of one DB rollback; ``state`` is what a failure report shows and what
    every journal entry persists."""

    journal: StepJournal

    def __init__(self, owner: DbRollback, target: DbTarget, staged: Staged, work: Path, *,
                 who: str, name: str, app_name: str, writers: Writers) -> None:
        self.owner = owner
        self.writers = writers
        self.target = target
        self.staged = staged
        self.work = work
        self.who = who
        self.name = name
        self.app_name = app_name
        self.state: dict[str, Any] = {"automation": "running", "writers": "running",
                                      "safety_dump": None, "safety_dump_sha256": None,
                                      "database": "untouched", "dump": name,
                                      "restore_started": False, "health": None, "smoke": None}

    def steps(self) -> list[Step]:
        writers = ", ".join(self.owner.cfg.writers) or "(none configured)"
        return ordered(STEPS, {
            "freezing": ("freezing automatic actions", self.freeze),
            "stopping_writers": (f"stopping writers: {writers}", self.stop_writers),
            "safety_dump": ("dumping the current database", self.safety_dump),
            "restoring": (f"restoring {self.name}", self.restore),
            "starting_writers": (f"starting writers: {writers}", self.start_writers),
            "verifying": (f"probing {self.owner.hub.config.health.url}", self.verify),
            "smoke": ("running the smoke test", self.smoke),
        })

    async def freeze(self) -> None:
        self.owner.hub.freeze(f"DB rollback to {self.name}", by=self.who)
        self.journal.checkpoint(automation="frozen")

    async def stop_writers(self) -> None:
        if not self.owner.cfg.writers:
            self.state["writers"] = "none configured"
            return
        await self.writers.stop(self.journal)

    async def safety_dump(self) -> None:
        name = safety_dump_name(self.owner.hub.clock())
        local = self.work / name
        toc = await self._dump_to(local)
        await self._prove(local, toc)
        identity = await asyncio.to_thread(identify, local)
        try:
            await asyncio.to_thread(publish, local, self.owner.hub.config.backups.directory / name)
        except FileExistsError:
            raise ActionError("safety_dump", f"{name} already exists in the backups folder; "
                              "nothing was replaced") from None
        self.journal.checkpoint(safety_dump=name, safety_dump_sha256=identity.sha256)

    async def _dump_to(self, path: Path) -> str:
        """Dump production into ``path``; return ``pg_restore --list`` of the dump."""
        target, run = self.target, self.owner._run
        timeout = self.owner.cfg.restore_timeout_seconds
        if target.mode == "local":
            await run(target.dump_argv(str(path)), timeout=timeout)
            return (await run(target.list_argv(str(path)), timeout=timeout)).stdout
        async with self.owner.container_folder(self.target) as folder:
            inner = f"{folder}/{path.name}"
            await run(target.dump_argv(inner), timeout=timeout)
            toc = (await run(target.list_argv(inner), timeout=timeout)).stdout
            await run([*target.docker, "cp", f"{target.container}:{inner}", str(path)],
                      timeout=timeout)
        return toc

    async def _prove(self, path: Path, toc: str) -> None:
        """The safety dump lists every live table (and, if configured, restores)."""
        await asyncio.to_thread(read_dump_header, path)
        live = await self.owner._run(self.target.psql_argv(_LIVE_TABLES_SQL))
        tables = {restore_policy.TocTable(*line.split(".", 1))
                  for line in live.stdout.splitlines() if "." in line}
        problem = restore_policy.missing_from_toc(tables, restore_policy.toc_tables(toc))
        if problem:
            raise ActionError("safety_dump", f"the safety dump is not proven: {problem}; "
                              "nothing destructive was done")
        if self.owner.cfg.prove_safety_dump != "restore":
            return
        config = self.owner.hub.config.restore_test
        result = await RestoreRun(config, path, server_factory(config)).execute()
        if not result.passed:
            raise ActionError("safety_dump", f"the safety dump did not restore into a throwaway "
                              f"server: {result.message}; nothing destructive was done")

    async def restore(self) -> None:
        problem = await self.owner.staged_problem(self.target, self.staged)
        if problem:
            raise ActionError("restoring", f"{problem} since it was checked; nothing was "
                              "restored")
        await self._restore_from(self.staged.path)
        self.journal.checkpoint(database="restored")

    async def _restore_from(self, path: str) -> None:
        timeout = self.owner.cfg.restore_timeout_seconds
        self.journal.checkpoint(database="restoring", restore_started=True,
                                restore_application_name=self.app_name)
        try:
            await self.owner._run(self.target.restore_argv(path, app_name=self.app_name),
                                  timeout=timeout)
        except CommandError as exc:
            if not exc.timed_out:
                self.state["database"] = "unchanged (restore rolled back)"
                raise
            await self._end_restore(f"pg_restore timed out after {timeout:.0f}s")
            raise
        except asyncio.CancelledError:
            await shielded(self._end_restore("the restore was cancelled"))
            raise

    async def _end_restore(self, why: str) -> None:
        """End the restore inside the server (by its application_name) and wait until no
        backend of it remains; the lock stays held meanwhile. Its outcome stays UNKNOWN."""
        ended = await self.owner.end_backends(self.target, self.app_name)
        self.journal.checkpoint(database=ended_state(why, ended, self.app_name))

    async def start_writers(self) -> None:
        if self.owner.cfg.writers:
            await self.writers.start(self.journal)

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


def _checks(name: str, identity: FileIdentity, header: DumpHeader, server_major: int,
            history: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "dump": {"name": name, "size": identity.size, "sha256": identity.sha256,
                 "server_version": header.server_version, "pg_dump": header.dump_version,
                 "created": header.created},
        "production_server_major": server_major,
        "restore_tests": [{"passed": r["passed"], "finished_at": r["finished_at"],
                           "stage": r["stage"], "message": r["message"]} for r in history],
    }
