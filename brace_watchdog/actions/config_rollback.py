"""Network/auth rollbacks (the runbook's "Network / auth rollback"), gated: plan, then approve.

* ``pg_hba_rollback`` — restore ``pg_hba.conf`` from its ``.bak`` (``[network_rollback]
  pg_hba_path`` / ``pg_hba_backup_path``, on the host — e.g. a bind mount — or inside the database
  container with ``pg_hba_in_container``), keeping the current file as
  ``pg_hba.conf.rollback-<UTC time>``; reload or restart PostgreSQL (``reload_command``, default
  ``compose restart <[database] service>``); verify with a real new connection to
  ``[database] dsn`` (authentication is only checked when a connection is made).
* ``docker_daemon_rollback`` — check ``daemon.json.bak`` is a JSON object, keep the current file
  as ``daemon.json.rollback-<UTC time>``, restore the ``.bak``, run ``docker_restart_command``
  (default ``systemctl restart docker``), wait for the engine API (``docker_host``), verify the
  compose services run and ``[health] url`` answers.

A plan binds the **content** of both files (sha256 of the current file and of the ``.bak``, in the
token); at execute both are read again and a change since the plan is refused before anything
happens. What is installed is exactly the approved ``.bak`` bytes (re-read and compared after a
copy inside the container), so the diff shown at plan time is what gets applied. On the host the
kept copy is created with ``O_EXCL|O_NOFOLLOW`` (a planted file or symlink makes the step fail,
never redirects it) and the live file is replaced atomically (temporary file in the same folder
made by ``mkstemp``, mode and owner of the file it replaces, ``os.replace``).
"""

from __future__ import annotations

import asyncio
import difflib
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from brace_watchdog.actions.db_rollback import DbRollback
from brace_watchdog.actions.gated import (
    Plan,
    Progress,
    Step,
    StepJournal,
    compose_project,
    ordered,
    stamp,
    verify_health,
    wait_until,
)
from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.adapters.postgres_probe import probe_database
from brace_watchdog.adapters.process import CommandResult, run_command
from brace_watchdog.config import NetworkRollbackConfig
from brace_watchdog.errors import (
    ActionError,
    CommandError,
    DockerError,
    PostgresError,
    RefusedError,
)
from brace_watchdog.files import create_exclusive, identify_bytes, install_bytes, read_nofollow
from brace_watchdog.runtime import Hub

__all__ = ["DockerDaemonRollback", "FilePair", "PgHbaRollback", "check_binding",
           "install_bytes", "keep_copy", "preview_diff", "validate_daemon_json"]

DIFF_LINES = 40
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"


def rollback_copy_name(path: Path, now: float) -> Path:
    return path.with_name(f"{path.name}.rollback-{stamp(now)}")


def preview_diff(current: str, backup: str, *, current_name: str, backup_name: str) -> list[str]:
    """At most DIFF_LINES lines of unified diff from the current file to the backup."""
    lines = list(difflib.unified_diff(current.splitlines(), backup.splitlines(),
                                      fromfile=current_name, tofile=backup_name, lineterm=""))
    return lines[:DIFF_LINES] + ([f"... ({len(lines) - DIFF_LINES} more lines)"]
                                 if len(lines) > DIFF_LINES else [])


def validate_daemon_json(text: str, name: str) -> dict[str, Any]:
    """The parsed daemon.json, or RefusedError saying why dockerd would reject it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RefusedError("checking", f"{name} is not valid JSON ({exc}); dockerd would not "
                           "start with it") from None
    if not isinstance(value, dict):
        raise RefusedError("checking", f"{name} must hold a JSON object, not "
                           f"{type(value).__name__}")
    return value


@dataclass(frozen=True)
class FilePair:
    """The live file and its known-good ``.bak`` as read now (bytes, exactly)."""

    current: bytes
    backup: bytes
    current_exists: bool = True

    def binding(self) -> dict[str, str]:
        """What a plan's token binds: the sha256 of both files."""
        return {"current_sha256": identify_bytes(self.current).sha256,
                "backup_sha256": identify_bytes(self.backup).sha256}

    def diff(self, current_name: str, backup_name: str) -> list[str]:
        return preview_diff(self.current.decode("utf-8", "replace"),
                            self.backup.decode("utf-8", "replace"),
                            current_name=current_name, backup_name=backup_name)


def check_binding(found: FilePair, approved: dict[str, Any], *, current: Path,
                  backup: Path) -> None:
    """RefusedError unless ``found`` is the content the approval binds (pure)."""
    now = found.binding()
    for key, path in (("current_sha256", current), ("backup_sha256", backup)):
        want = approved.get(key)
        if not isinstance(want, str):
            raise RefusedError("checking", "this approval does not bind the files' content (a "
                               "token from an older daemon?); plan again")
        if now[key] != want:
            raise RefusedError("checking", f"{path} changed after the plan was made (approved "
                               f"sha256 {want[:16]}…, now {now[key][:16]}…); nothing was "
                               "changed: plan again and review the new diff")


def keep_copy(data: bytes, like: Path, copy: Path) -> None:
    """Write ``data`` (the live file's approved content) to the new file ``copy``
    (O_EXCL|O_NOFOLLOW) with the mode, owner and times of ``like``."""
    info = like.stat()
    with create_exclusive(copy, 0o600) as out:
        out.write(data)
        out.flush()
        os.fchown(out.fileno(), info.st_uid, info.st_gid)
        os.fchmod(out.fileno(), info.st_mode & 0o7777)
        os.fsync(out.fileno())
    os.utime(copy, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        data = read_nofollow(path)
        data.decode("utf-8")
    except RefusedError as exc:
        raise RefusedError("checking", f"{what}: {exc.message}") from None
    except UnicodeDecodeError as exc:
        raise RefusedError("checking", f"cannot read {what} {path}: {exc}") from None
    return data


class _ConfigRollback:
    """Shared plumbing: config, commands, content binding, journaled execution."""

    name = ""

    def __init__(self, hub: Hub, *, docker_command: Sequence[str] = ("docker",)) -> None:
        self.hub = hub
        self.docker = tuple(docker_command)

    @property
    def cfg(self) -> NetworkRollbackConfig:
        return self.hub.config.network_rollback

    def leftover(self) -> None:
        """Nothing of a file rollback outlives the daemon but the command it ran (reported)."""
        return None

    async def _run(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
                   stdin: bytes | None = None) -> CommandResult:
        return await run_command(argv, timeout=self.cfg.command_timeout_seconds, env=env,
                                 stdin=stdin)

    def _begin(self, plan: Plan, state: dict[str, Any], *, requester: str, approver: str,
               progress: Progress, undo: str) -> StepJournal:
        action_id = self.hub.store.begin_action(self.name, origin="control", plan=plan.as_dict(),
                                                requester=f"{requester}, approved by {approver}")

        def advice(stage: str, now: dict[str, Any]) -> list[str]:
            kept = now.get("kept_as")
            return ([f"the previous file is kept as {kept}; to undo: {undo.format(kept=kept)}"]
                    if kept else []) + ["fix the cause and plan again, or repair by hand",
                                        "then brace-watchdogctl ack"]

        return StepJournal(self.hub, action_id, progress, state=state, advice=advice)

    async def _journaled(self, journal: StepJournal, steps: list[Step]) -> dict[str, Any]:
        await journal.run_all(steps, kind=self.name)
        result = {"action_id": journal.action_id, **journal.state}
        journal.finish(f"{self.name} done", result)
        self.hub.record(f"{self.name}.succeeded", "control", f"{self.name} #{journal.action_id}"
                        " succeeded", evidence=result, action_id=journal.action_id)
        return result


class PgHbaRollback(_ConfigRollback):
    """The ``pg_hba_rollback`` gated action."""

    name = "pg_hba_rollback"
    STEPS: ClassVar[tuple[str, ...]] = ("keeping_current", "restoring", "reloading", "verifying")

    async def _container(self) -> str:
        target = await DbRollback(self.hub, docker_command=self.docker).target()
        if target.mode != "container":
            raise RefusedError("checking", "pg_hba_in_container needs [db_rollback] target = "
                               "'container'")
        return target.container

    async def _read(self, path: Path, what: str) -> bytes:
        if not self.cfg.pg_hba_in_container:
            return await asyncio.to_thread(_read_bytes, path, what)
        try:
            result = await self._run([*self.docker, "exec", await self._container(), "cat",
                                      str(path)])
        except CommandError as exc:
            raise RefusedError("checking", f"cannot read {what} {path} in the container: {exc}"
                               ) from None
        return result.stdout.encode("utf-8")

    async def _files(self) -> FilePair:
        cfg = self.cfg
        files = FilePair(await self._read(cfg.pg_hba_path, "current file"),
                         await self._read(cfg.pg_hba_backup_path, "backup"))
        if not files.backup.strip():
            raise RefusedError("checking", f"{cfg.pg_hba_backup_path} is empty; refusing to "
                               "install an empty pg_hba.conf")
        if files.current == files.backup:
            raise RefusedError("checking", f"{cfg.pg_hba_path} is already identical to "
                               f"{cfg.pg_hba_backup_path}; nothing to roll back")
        return files

    def _reload_argv(self) -> list[str]:
        if self.cfg.reload_command:
            return list(self.cfg.reload_command)
        return compose_project(self.hub.config).argv("restart", self.hub.config.database.service)

    async def plan(self, args: dict[str, Any]) -> Plan:
        if not self.hub.config.database.dsn:
            raise RefusedError("checking", "a pg_hba rollback verifies with a real connection: "
                               "set [database] dsn")
        return self._plan(await self._files())

    def _plan(self, files: FilePair) -> Plan:
        cfg = self.cfg
        where = " (inside the database container)" if cfg.pg_hba_in_container else ""
        steps = (f"keep the current {cfg.pg_hba_path}{where} as "
                 f"{cfg.pg_hba_path.name}.rollback-<UTC time>",
                 f"replace it with {cfg.pg_hba_backup_path} (exactly the content shown in the "
                 "diff; a change after this plan is refused)",
                 f"reload PostgreSQL: {' '.join(self._reload_argv())}",
                 "verify a new connection to [database] dsn succeeds "
                 f"(up to {cfg.verify_attempts} tries)")
        diff = files.diff(str(cfg.pg_hba_path), str(cfg.pg_hba_backup_path))
        return Plan(self.name, {"target": "pg_hba", **files.binding()}, "pg_hba", steps,
                    {"diff": diff})

    async def execute(self, args: dict[str, Any], *, requester: str, approver: str,
                      progress: Progress) -> dict[str, Any]:
        cfg = self.cfg
        files = await self._files()
        check_binding(files, args, current=cfg.pg_hba_path, backup=cfg.pg_hba_backup_path)
        plan = self._plan(files)
        kept = rollback_copy_name(cfg.pg_hba_path, self.hub.clock())
        state: dict[str, Any] = {"kept_as": None, "pg_hba": "unchanged", "connection": None}
        undo = (f"copy {{kept}} over {cfg.pg_hba_path} and run "
                f"{' '.join(self._reload_argv())}")
        journal = self._begin(plan, state, requester=requester, approver=approver,
                              progress=progress, undo=undo)

        async def keep() -> None:
            await self._keep(files, kept)
            journal.checkpoint(kept_as=str(kept))

        async def restore() -> None:
            journal.checkpoint(pg_hba="being replaced by the .bak (may be either file)")
            await self._install(files)
            journal.checkpoint(pg_hba="restored from .bak (not yet reloaded)")

        async def reload() -> None:
            await self._run(self._reload_argv())
            journal.checkpoint(pg_hba="restored and reloaded")

        return await self._journaled(journal, ordered(self.STEPS, {
            "keeping_current": (f"keeping the current file as {kept.name}", keep),
            "restoring": (f"installing {cfg.pg_hba_backup_path.name}", restore),
            "reloading": ("reloading PostgreSQL", reload),
            "verifying": ("connecting to the database", lambda: self._verify(journal)),
        }))

    async def _keep(self, files: FilePair, kept: Path) -> None:
        cfg = self.cfg
        if not cfg.pg_hba_in_container:
            await asyncio.to_thread(keep_copy, files.current, cfg.pg_hba_path, kept)
            return
        await self._container_write(files.current, kept, like=cfg.pg_hba_path, exclusive=True)

    async def _install(self, files: FilePair) -> None:
        cfg = self.cfg
        if not cfg.pg_hba_in_container:
            await asyncio.to_thread(install_bytes, files.backup, cfg.pg_hba_path,
                                    like=cfg.pg_hba_backup_path)
            return
        await self._container_write(files.backup, cfg.pg_hba_path, like=cfg.pg_hba_path,
                                    exclusive=False)

    async def _container_write(self, data: bytes, dest: Path, *, like: Path,
                               exclusive: bool) -> None:
        """Write ``data`` (the approved bytes, on stdin) to ``dest`` inside the container with
        ``like``'s owner and mode: through a ``mktemp`` file in the same folder, then hard-linked
        (``exclusive``: fails if anything, a symlink too, is at ``dest``) or renamed over it —
        never opening ``dest`` itself, so a planted symlink is never followed."""
        publish = 'ln "$t" "$1"' if exclusive else 'mv -f "$t" "$1"'
        script = ('set -e; umask 077; t=$(mktemp "$1.XXXXXX"); trap \'rm -f "$t"\' EXIT; '
                  'cat > "$t"; chown "$(stat -c %u:%g "$2")" "$t"; '
                  f'chmod "$(stat -c %a "$2")" "$t"; {publish}')
        await self._run([*self.docker, "exec", "-i", await self._container(), "sh", "-c", script,
                         "sh", str(dest), str(like)], stdin=data)

    async def _verify(self, journal: StepJournal) -> None:
        db = self.hub.config.database

        async def attempt() -> str:
            self.hub.progress.beat("control")
            try:
                await probe_database(db.dsn.reveal(), password=db.password.reveal(),
                                     timeout_seconds=db.timeout_seconds)
            except PostgresError as exc:
                return str(exc)
            return "ok"

        outcome = await wait_until(attempt, lambda r: r == "ok", attempts=self.cfg.verify_attempts,
                                   wait_seconds=self.cfg.verify_wait_seconds)
        journal.checkpoint(connection=outcome)
        if outcome != "ok":
            raise ActionError("verifying", f"new connections still fail: {outcome}")


class DockerDaemonRollback(_ConfigRollback):
    """The ``docker_daemon_rollback`` gated action."""

    name = "docker_daemon_rollback"
    STEPS: ClassVar[tuple[str, ...]] = ("keeping_current", "restoring", "restarting",
                                        "waiting_engine", "verifying")

    def _services(self) -> tuple[str, ...]:
        chosen = self.cfg.verify_services
        return self.hub.config.rollback.services if chosen is None else chosen

    async def _files(self) -> FilePair:
        cfg = self.cfg
        backup = await asyncio.to_thread(_read_bytes, cfg.docker_daemon_json_backup, "backup")
        validate_daemon_json(backup.decode("utf-8"), str(cfg.docker_daemon_json_backup))
        exists = cfg.docker_daemon_json.exists() or cfg.docker_daemon_json.is_symlink()
        current = (await asyncio.to_thread(_read_bytes, cfg.docker_daemon_json, "current file")
                   if exists else b"")
        if current == backup:
            raise RefusedError("checking", f"{cfg.docker_daemon_json} is already identical to "
                               f"{cfg.docker_daemon_json_backup}; nothing to roll back")
        return FilePair(current, backup, exists)

    async def plan(self, args: dict[str, Any]) -> Plan:
        return self._plan(await self._files())

    def _plan(self, files: FilePair) -> Plan:
        cfg = self.cfg
        services = self._services()
        steps = (f"keep the current {cfg.docker_daemon_json} as "
                 f"{cfg.docker_daemon_json.name}.rollback-<UTC time>",
                 f"replace it with {cfg.docker_daemon_json_backup} (valid JSON; exactly the "
                 "content shown in the diff; a change after this plan is refused)",
                 f"restart docker: {' '.join(cfg.docker_restart_command)}",
                 f"wait up to {cfg.engine_wait_seconds:.0f}s for the engine API "
                 f"({cfg.docker_host or 'default socket'})",
                 f"verify compose services run and {self.hub.config.health.url} answers: "
                 f"{', '.join(services)}" if services else "verify: no services configured")
        diff = files.diff(str(cfg.docker_daemon_json), str(cfg.docker_daemon_json_backup))
        return Plan(self.name, {"target": "docker", **files.binding()}, "docker", steps,
                    {"diff": diff,
                     "current_valid_json": _is_json_object(files.current.decode("utf-8"))})

    async def execute(self, args: dict[str, Any], *, requester: str, approver: str,
                      progress: Progress) -> dict[str, Any]:
        cfg = self.cfg
        path = cfg.docker_daemon_json
        files = await self._files()
        check_binding(files, args, current=path, backup=cfg.docker_daemon_json_backup)
        plan = self._plan(files)
        kept = rollback_copy_name(path, self.hub.clock())
        state: dict[str, Any] = {"kept_as": None, "daemon_json": "unchanged", "engine": None,
                                 "services": None}
        undo = f"copy {{kept}} over {path} and run {' '.join(cfg.docker_restart_command)}"
        journal = self._begin(plan, state, requester=requester, approver=approver,
                              progress=progress, undo=undo)

        async def keep() -> None:
            if files.current_exists:
                await asyncio.to_thread(keep_copy, files.current, path, kept)
                journal.checkpoint(kept_as=str(kept))

        async def restore() -> None:
            journal.checkpoint(daemon_json="being replaced by the .bak (may be either file)")
            await asyncio.to_thread(install_bytes, files.backup, path,
                                    like=cfg.docker_daemon_json_backup)
            journal.checkpoint(daemon_json="restored from .bak")

        async def restart() -> None:
            journal.checkpoint(engine="restarting")
            await self._run(cfg.docker_restart_command)

        return await self._journaled(journal, ordered(self.STEPS, {
            "keeping_current": (f"keeping the current file as {kept.name}", keep),
            "restoring": (f"installing {cfg.docker_daemon_json_backup.name}", restore),
            "restarting": (f"running {' '.join(cfg.docker_restart_command)}", restart),
            "waiting_engine": ("waiting for the docker engine API",
                               lambda: self._engine(journal)),
            "verifying": ("checking compose services", lambda: self._verify(journal)),
        }))

    async def _engine(self, journal: StepJournal) -> None:
        cfg = self.cfg
        adapter = DockerAdapter(cfg.docker_host or None, timeout=5.0)

        async def ping() -> bool:
            self.hub.progress.beat("control")
            if not await asyncio.to_thread(_unix_socket_accepts, cfg.docker_host):
                return False
            try:
                return await adapter.ping()
            except DockerError:
                adapter.close()
                return False

        try:
            up = await wait_until(ping, bool, attempts=max(1, int(cfg.engine_wait_seconds)),
                                  wait_seconds=1.0)
        finally:
            adapter.close()
        journal.checkpoint(engine="up" if up else "not answering")
        if not up:
            raise DockerError(f"docker engine did not answer within {cfg.engine_wait_seconds:.0f}s"
                              " after the restart")

    async def _verify(self, journal: StepJournal) -> None:
        services = self._services()
        if not services:
            journal.checkpoint(services="not checked (verify_services = [])")
            return
        env = {"DOCKER_HOST": self.cfg.docker_host} if self.cfg.docker_host else None
        result = await self._run(compose_project(self.hub.config).argv(
            "ps", "--services", "--filter", "status=running"), env=env)
        missing = sorted(set(services) - set(result.stdout.split()))
        if missing:
            journal.checkpoint(services=f"not running: {missing}")
            raise ActionError("verifying", f"compose services not running: {missing}")
        journal.checkpoint(services="running")
        health = await verify_health(self.hub, attempts=self.cfg.verify_attempts,
                                     wait_seconds=self.cfg.verify_wait_seconds)
        journal.checkpoint(health=health)


def _unix_socket_accepts(docker_host: str) -> bool:
    """Whether the engine's unix socket accepts a connection at all. Checked before the SDK's
    ping because docker-py leaks the socket of a failed unix connect (a ResourceWarning per try
    while the engine restarts). Non-unix hosts are left to the SDK."""
    if docker_host and not docker_host.startswith("unix://"):
        return True
    path = docker_host.removeprefix("unix://") if docker_host else DEFAULT_DOCKER_SOCKET
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False
