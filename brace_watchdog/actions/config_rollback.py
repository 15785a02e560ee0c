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

Files on the host are replaced atomically (temporary file in the same folder, mode and owner of
the file it replaces, ``os.replace``).
"""

from __future__ import annotations

import asyncio
import difflib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from brace_watchdog.actions.db_rollback import DbRollback
from brace_watchdog.actions.gated import (
    Plan,
    Progress,
    Step,
    StepJournal,
    compose_base,
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
from brace_watchdog.runtime import Hub

__all__ = ["DockerDaemonRollback", "PgHbaRollback", "install_file", "keep_copy",
           "preview_diff", "validate_daemon_json"]

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


def keep_copy(path: Path, copy: Path) -> None:
    """Copy ``path`` to ``copy`` with its mode, times and owner."""
    shutil.copy2(path, copy)
    info = path.stat()
    os.chown(copy, info.st_uid, info.st_gid)


def install_file(source: Path, path: Path) -> None:
    """Replace ``path`` atomically with the content of ``source``, keeping ``path``'s mode and
    owner (or ``source``'s when ``path`` does not exist)."""
    info = (path if path.exists() else source).stat()
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(source.read_bytes())
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, info.st_mode & 0o7777)
        os.chown(temp, info.st_uid, info.st_gid)
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RefusedError("checking", f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RefusedError("checking", f"cannot read {what} {path}: {exc}") from None


class _ConfigRollback:
    """Shared plumbing: config, commands, journaled execution."""

    name = ""

    def __init__(self, hub: Hub, *, docker_command: Sequence[str] = ("docker",)) -> None:
        self.hub = hub
        self.docker = tuple(docker_command)

    @property
    def cfg(self) -> NetworkRollbackConfig:
        return self.hub.config.network_rollback

    async def _run(self, argv: Sequence[str], *, env: dict[str, str] | None = None
                   ) -> CommandResult:
        return await run_command(argv, timeout=self.cfg.command_timeout_seconds, env=env)

    async def _journaled(self, plan: Plan, steps: list[Step], state: dict[str, Any], *,
                         requester: str, approver: str, progress: Progress,
                         undo: str) -> dict[str, Any]:
        action_id = self.hub.store.begin_action(self.name, origin="control", plan=plan.as_dict(),
                                                requester=f"{requester}, approved by {approver}")
        journal = StepJournal(self.hub, action_id, progress)

        def advice(stage: str, now: dict[str, Any]) -> list[str]:
            kept = now.get("kept_as")
            return ([f"the previous file is kept as {kept}; to undo: {undo.format(kept=kept)}"]
                    if kept else []) + ["fix the cause and plan again, or repair by hand",
                                        "then brace-watchdogctl ack"]

        await journal.run_all(steps, kind=self.name, state=state, next_steps=advice)
        result = {"action_id": action_id, **state}
        journal.finish(f"{self.name} done", result)
        self.hub.record(f"{self.name}.succeeded", "control", f"{self.name} #{action_id} "
                        "succeeded", evidence=result, action_id=action_id)
        return result


class PgHbaRollback(_ConfigRollback):
    """The ``pg_hba_rollback`` gated action."""

    name = "pg_hba_rollback"

    async def _container(self) -> str:
        target = await DbRollback(self.hub, docker_command=self.docker).target()
        if target.mode != "container":
            raise RefusedError("checking", "pg_hba_in_container needs [db_rollback] target = "
                               "'container'")
        return target.container

    async def _read(self, path: Path, what: str) -> str:
        if not self.cfg.pg_hba_in_container:
            return await asyncio.to_thread(_read_text, path, what)
        try:
            result = await self._run([*self.docker, "exec", await self._container(), "cat",
                                      str(path)])
        except CommandError as exc:
            raise RefusedError("checking", f"cannot read {what} {path} in the container: {exc}"
                               ) from None
        return result.stdout

    async def _copy(self, source: Path, dest: Path, *, keep: bool) -> None:
        if not self.cfg.pg_hba_in_container:
            await asyncio.to_thread(keep_copy if keep else install_file, source, dest)
            return
        flags = ["-p"] if keep else []
        await self._run([*self.docker, "exec", await self._container(), "cp", *flags,
                         str(source), str(dest)])

    def _reload_argv(self) -> list[str]:
        if self.cfg.reload_command:
            return list(self.cfg.reload_command)
        return [*compose_base(self.hub.config), "restart", self.hub.config.database.service]

    async def plan(self, args: dict[str, Any]) -> Plan:
        cfg = self.cfg
        if not self.hub.config.database.dsn:
            raise RefusedError("checking", "a pg_hba rollback verifies with a real connection: "
                               "set [database] dsn")
        backup = await self._read(cfg.pg_hba_backup_path, "backup")
        if not backup.strip():
            raise RefusedError("checking", f"{cfg.pg_hba_backup_path} is empty; refusing to "
                               "install an empty pg_hba.conf")
        current = await self._read(cfg.pg_hba_path, "current file")
        if current == backup:
            raise RefusedError("checking", f"{cfg.pg_hba_path} is already identical to "
                               f"{cfg.pg_hba_backup_path}; nothing to roll back")
        where = " (inside the database container)" if cfg.pg_hba_in_container else ""
        steps = (f"keep the current {cfg.pg_hba_path}{where} as "
                 f"{cfg.pg_hba_path.name}.rollback-<UTC time>",
                 f"replace it with {cfg.pg_hba_backup_path}",
                 f"reload PostgreSQL: {' '.join(self._reload_argv())}",
                 "verify a new connection to [database] dsn succeeds "
                 f"(up to {cfg.verify_attempts} tries)")
        diff = preview_diff(current, backup, current_name=str(cfg.pg_hba_path),
                            backup_name=str(cfg.pg_hba_backup_path))
        return Plan(self.name, {"target": "pg_hba"}, "pg_hba", steps, {"diff": diff})

    async def execute(self, args: dict[str, Any], *, requester: str, approver: str,
                      progress: Progress) -> dict[str, Any]:
        plan = await self.plan({})
        cfg = self.cfg
        kept = rollback_copy_name(cfg.pg_hba_path, self.hub.clock())
        state: dict[str, Any] = {"kept_as": None, "pg_hba": "unchanged", "connection": None}

        async def keep() -> None:
            await self._copy(cfg.pg_hba_path, kept, keep=True)
            state["kept_as"] = str(kept)

        async def restore() -> None:
            await self._copy(cfg.pg_hba_backup_path, cfg.pg_hba_path, keep=False)
            state["pg_hba"] = "restored from .bak (not yet reloaded)"

        async def reload() -> None:
            await self._run(self._reload_argv())
            state["pg_hba"] = "restored and reloaded"

        steps: list[Step] = [
            ("keeping_current", f"keeping the current file as {kept.name}", keep),
            ("restoring", f"installing {cfg.pg_hba_backup_path.name}", restore),
            ("reloading", "reloading PostgreSQL", reload),
            ("verifying", "connecting to the database", lambda: self._verify(state)),
        ]
        undo = (f"copy {{kept}} over {cfg.pg_hba_path} and run "
                f"{' '.join(self._reload_argv())}")
        return await self._journaled(plan, steps, state, requester=requester, approver=approver,
                                     progress=progress, undo=undo)

    async def _verify(self, state: dict[str, Any]) -> None:
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
        state["connection"] = outcome
        if outcome != "ok":
            raise ActionError("verifying", f"new connections still fail: {outcome}")


class DockerDaemonRollback(_ConfigRollback):
    """The ``docker_daemon_rollback`` gated action."""

    name = "docker_daemon_rollback"

    def _services(self) -> tuple[str, ...]:
        chosen = self.cfg.verify_services
        return self.hub.config.rollback.services if chosen is None else chosen

    async def plan(self, args: dict[str, Any]) -> Plan:
        cfg = self.cfg
        backup = await asyncio.to_thread(_read_text, cfg.docker_daemon_json_backup, "backup")
        validate_daemon_json(backup, str(cfg.docker_daemon_json_backup))
        current = ""
        if cfg.docker_daemon_json.exists():
            current = await asyncio.to_thread(_read_text, cfg.docker_daemon_json, "current file")
        if current == backup:
            raise RefusedError("checking", f"{cfg.docker_daemon_json} is already identical to "
                               f"{cfg.docker_daemon_json_backup}; nothing to roll back")
        services = self._services()
        steps = (f"keep the current {cfg.docker_daemon_json} as "
                 f"{cfg.docker_daemon_json.name}.rollback-<UTC time>",
                 f"replace it with {cfg.docker_daemon_json_backup} (valid JSON)",
                 f"restart docker: {' '.join(cfg.docker_restart_command)}",
                 f"wait up to {cfg.engine_wait_seconds:.0f}s for the engine API "
                 f"({cfg.docker_host or 'default socket'})",
                 f"verify compose services run and {self.hub.config.health.url} answers: "
                 f"{', '.join(services)}" if services else "verify: no services configured")
        diff = preview_diff(current, backup, current_name=str(cfg.docker_daemon_json),
                            backup_name=str(cfg.docker_daemon_json_backup))
        return Plan(self.name, {"target": "docker"}, "docker", steps,
                    {"diff": diff, "current_valid_json": _is_json_object(current)})

    async def execute(self, args: dict[str, Any], *, requester: str, approver: str,
                      progress: Progress) -> dict[str, Any]:
        plan = await self.plan({})
        cfg = self.cfg
        path = cfg.docker_daemon_json
        kept = rollback_copy_name(path, self.hub.clock())
        state: dict[str, Any] = {"kept_as": None, "daemon_json": "unchanged", "engine": None,
                                 "services": None}

        async def keep() -> None:
            if path.exists():
                await asyncio.to_thread(keep_copy, path, kept)
                state["kept_as"] = str(kept)

        async def restore() -> None:
            await asyncio.to_thread(install_file, cfg.docker_daemon_json_backup, path)
            state["daemon_json"] = "restored from .bak"

        async def restart() -> None:
            state["engine"] = "restarting"
            await self._run(cfg.docker_restart_command)

        steps: list[Step] = [
            ("keeping_current", f"keeping the current file as {kept.name}", keep),
            ("restoring", f"installing {cfg.docker_daemon_json_backup.name}", restore),
            ("restarting", f"running {' '.join(cfg.docker_restart_command)}", restart),
            ("waiting_engine", "waiting for the docker engine API", lambda: self._engine(state)),
            ("verifying", "checking compose services", lambda: self._verify(state)),
        ]
        undo = f"copy {{kept}} over {path} and run {' '.join(cfg.docker_restart_command)}"
        return await self._journaled(plan, steps, state, requester=requester, approver=approver,
                                     progress=progress, undo=undo)

    async def _engine(self, state: dict[str, Any]) -> None:
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
        state["engine"] = "up" if up else "not answering"
        if not up:
            raise DockerError(f"docker engine did not answer within {cfg.engine_wait_seconds:.0f}s"
                              " after the restart")

    async def _verify(self, state: dict[str, Any]) -> None:
        services = self._services()
        if not services:
            state["services"] = "not checked (verify_services = [])"
            return
        env = {"DOCKER_HOST": self.cfg.docker_host} if self.cfg.docker_host else None
        result = await self._run([*compose_base(self.hub.config), "ps", "--services",
                                  "--filter", "status=running"], env=env)
        missing = sorted(set(services) - set(result.stdout.split()))
        if missing:
            state["services"] = f"not running: {missing}"
            raise ActionError("verifying", f"compose services not running: {missing}")
        state["services"] = "running"
        state["health"] = await verify_health(self.hub, attempts=self.cfg.verify_attempts,
                                              wait_seconds=self.cfg.verify_wait_seconds)


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
