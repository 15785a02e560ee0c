"""Throwaway PostgreSQL servers for restore tests: a local cluster or a docker container.

Both backends sit behind :class:`ThrowawayServer`: ``start()`` (ready to accept connections),
``restore()``, ``list_toc()``, ``query()``, ``server_major()``, ``stop()`` (idempotent, always
safe). ``pg_restore`` runs through one abstract ``_exec``: on the host through
:func:`~brace_watchdog.adapters.process.run_command` for the local cluster, and *inside* the
container for docker so tool and server versions match. Readiness and SQL go over a kept libpq
connection to ``127.0.0.1:port`` (:mod:`~brace_watchdog.adapters.pg_sessions`), no child process.

- :class:`LocalServer`: ``initdb``/``pg_ctl`` in ``<tmp>/brace-restore-<pid>-XXXX`` on a free
  loopback port; as root the server runs as an unprivileged user (``runuser``).
- :class:`DockerServer`: a container of the configured image (official ``postgres`` image
  contract: ``POSTGRES_PASSWORD``, ``PGPORT``, ``PGDATA``), labelled
  ``brace-watchdog.restore-test=1``, the dump bind-mounted read-only, its data folder on a
  tmpfs of ``[restore_test] tmpfs_mb`` when set.

Orphans (left by a daemon that died mid-test) are found by the owner pid written into the
directory name / container label and removed by :func:`remove_local_orphans` and
:func:`remove_docker_orphans`. A container also names its owner's pid namespace (boot id and
namespace inode): a daemon in a container, or on another host sharing the engine, cannot tell
whether a pid of another namespace is alive, so it leaves those containers alone (a container
without that label, from an older version, is judged by its pid as before).

Throwaway settings switch durability off (``fsync=off`` …): they exist only on these servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.adapters.pg_sessions import SqlSessions
from brace_watchdog.adapters.process import CommandResult, run_command
from brace_watchdog.errors import ActionError, CommandError, DockerError

__all__ = [
    "CONTAINER_LABEL",
    "LOCAL_PREFIX",
    "OWNER_LABEL",
    "OWNER_NS_LABEL",
    "THROWAWAY_SETTINGS",
    "DockerServer",
    "LocalServer",
    "ThrowawayServer",
    "free_port",
    "pid_alive",
    "pid_namespace",
    "remove_docker_orphans",
    "remove_local_orphans",
]

LOCAL_PREFIX = "brace-restore-"
TEMPLATE_PREFIX = f"{LOCAL_PREFIX}template-"
CONTAINER_LABEL = "brace-watchdog.restore-test"
OWNER_LABEL = "brace-watchdog.owner-pid"
RUN_LABEL = "brace-watchdog.run-id"
OWNER_NS_LABEL = "brace-watchdog.owner-pidns"
SUPERUSER = "postgres"
THROWAWAY_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "maintenance_work_mem": "512MB",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "autovacuum": "off",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "1h",
    "wal_buffers": "64MB",
}


class _NotReady(Exception):
    """Internal: the server does not accept connections yet (retried)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (the kernel picks it; no fixed ports)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pid_namespace() -> str:
    """Where our pids mean something: this kernel's boot id and our pid namespace's inode."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ThrowawayServer(ABC):
    """One disposable server that receives one dump. Use as ``async with``.

    ``options`` of the backends are these keyword arguments: ``throwaway_settings``,
    ``ready_attempts``/``ready_wait`` (readiness polling), ``command_timeout`` (each psql or
    ``pg_restore -l`` call; the restore itself gets its own limit).
    """

    backend = "abstract"

    def __init__(self, dump: Path, *, throwaway_settings: bool = True,
                 ready_attempts: int = 480, ready_wait: float = 0.25,
                 command_timeout: float = 120.0) -> None:
        self.dump = dump
        self.throwaway_settings = throwaway_settings
        self.ready_attempts = ready_attempts
        self.ready_wait = ready_wait
        self.command_timeout = command_timeout
        self.password = secrets.token_urlsafe(18)
        self.sql = SqlSessions(SUPERUSER, self.password)

    @property
    def port(self) -> int:
        """The host port the server listens on (``127.0.0.1``); 0 before ``start``."""
        return self.sql.port

    @port.setter
    def port(self, value: int) -> None:
        self.sql.port = value

    # -- backend specifics ------------------------------------------------------------------
    @abstractmethod
    async def start(self) -> None:
        """Create and start the server; return once it accepts connections."""

    @abstractmethod
    async def stop(self) -> None:
        """Remove the server and everything it wrote; idempotent, never raises for 'gone'."""

    @abstractmethod
    async def _exec(self, argv: Sequence[str], time_limit: float) -> CommandResult:
        """Run a client tool next to the server (no check on the exit code)."""

    @abstractmethod
    def _tool(self, name: str) -> str:
        """Path or name of client tool ``name`` (pg_restore, initdb, pg_ctl)."""

    @abstractmethod
    def _dump_path(self) -> str:
        """The dump's path as the client tools see it."""

    @abstractmethod
    async def _precheck(self) -> str | None:
        """Before a readiness probe: raise ActionError('starting') when the server died; return
        a reason when a cheap check already shows it is not ready (skipping the probe)."""

    # -- shared logic -----------------------------------------------------------------------
    async def __aenter__(self) -> ThrowawayServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    def _conn(self) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER]

    async def wait_ready(self) -> None:
        """Poll the server with bounded retries (a connection and ``select 1``, kept for the
        queries that follow); ActionError('starting') when it never answers."""
        last = ""
        try:
            async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(self.ready_attempts), wait=wait_fixed(self.ready_wait),
                    retry=retry_if_exception_type(_NotReady), reraise=True):
                with attempt:
                    last = await self._precheck() or await self.sql.ping()
                    if last:
                        raise _NotReady(last)
        except _NotReady:
            waited = self.ready_attempts * self.ready_wait
            raise ActionError("starting", f"{self.backend} server not ready after "
                                          f"{self.ready_attempts} checks (~{waited:.0f}s): "
                                          f"{last[-300:] or 'no answer'}") from None

    async def query(self, sql: str, *more: str, db: str = "postgres",
                    time_limit: float | None = None) -> list[list[str]]:
        """Run SQL statements (in order, stopping at the first error); the rows of all of them
        as text fields, as psql prints them. PostgresError on failure."""
        return await self.sql.query((sql, *more), db=db,
                                    time_limit=time_limit or self.command_timeout)

    async def server_major(self, *, roles: Sequence[str] = ()) -> tuple[int, str]:
        """``(major, version text)`` of the running server, creating ``roles`` on the way
        (already-quoted identifiers; one round trip)."""
        rows = await self.query(*[f"create role {role}" for role in roles],
                                "select current_setting('server_version_num'), "
                                "current_setting('server_version')")
        return int(rows[0][0]) // 10000, rows[0][1]

    async def list_toc(self) -> str:
        """``pg_restore -l``: the dump's table of contents. CommandError when unreadable."""
        result = await self._exec([self._tool("pg_restore"), "-l", self._dump_path()],
                                  time_limit=self.command_timeout)
        if result.returncode != 0:
            raise CommandError(f"pg_restore -l failed: {result.stderr.strip()[-1000:]}",
                               returncode=result.returncode, output=result.stderr)
        return result.stdout

    async def restore(self, *, jobs: int = 1, db: str = "postgres",
                      time_limit: float = 3600.0) -> CommandResult:
        """``pg_restore --clean --if-exists --no-owner [--jobs N]``; the caller judges stderr."""
        argv = [self._tool("pg_restore"), "--clean", "--if-exists", "--no-owner",
                *self._conn(), "-d", db]
        if jobs > 1:
            argv += ["--jobs", str(jobs)]
        return await self._exec([*argv, self._dump_path()], time_limit=time_limit)


class LocalServer(ThrowawayServer):
    """An ephemeral cluster made with the host's initdb/pg_ctl in a private temp directory."""

    backend = "local"

    def __init__(self, dump: Path, *, user: str = "postgres", bin_dir: str = "",
                 work_root: Path | None = None, reuse_initdb: bool = True,
                 **options: Any) -> None:
        super().__init__(dump, **options)
        self.user = user
        self.bin_dir = bin_dir
        self.work_root = work_root or Path(tempfile.gettempdir())
        self.reuse_initdb = reuse_initdb
        self.workdir: Path | None = None

    def _tool(self, name: str) -> str:
        return str(Path(self.bin_dir) / name) if self.bin_dir else name

    def _dump_path(self) -> str:
        return str(self.dump)

    def _as_user(self) -> list[str]:
        return ["runuser", "-u", self.user, "--"] if os.geteuid() == 0 else []

    async def _exec(self, argv: Sequence[str], time_limit: float) -> CommandResult:
        try:
            return await run_command(argv, timeout=time_limit, check=False,
                                     env={"PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"},
                                     secrets=[self.password])
        except CommandError as exc:
            if exc.timed_out:
                raise ActionError("restoring" if "pg_restore" in argv[0] else "verifying",
                                  str(exc)) from None
            raise

    async def _precheck(self) -> str | None:
        if self.workdir is None or not (self.workdir / "data" / "postmaster.pid").exists():
            raise ActionError("starting", f"local server stopped: {self._log_tail()}")
        return None

    def _log_tail(self) -> str:
        log = (self.workdir / "server.log") if self.workdir else None
        if log is None or not log.exists():
            return "no server log"
        return log.read_text(errors="replace")[-800:].strip()

    async def start(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{LOCAL_PREFIX}{os.getpid()}-",
                                             dir=self.work_root))
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(self.user)
            except KeyError:
                raise ActionError("starting", f"[restore_test] local_user {self.user!r} does not "
                                              "exist; initdb refuses root, create it") from None
            os.chmod(self.workdir, 0o700)
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)
        data = self.workdir / "data"
        await self._initdb(data)
        self.port = free_port()
        settings = {"listen_addresses": "'127.0.0.1'", "port": str(self.port),
                    "unix_socket_directories": f"'{self.workdir}'"}
        if self.throwaway_settings:
            settings.update(THROWAWAY_SETTINGS)
        with (data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# brace-watchdog restore test (throwaway server)\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        await self._server_cmd([self._tool("pg_ctl"), "-D", str(data), "-l",
                                str(self.workdir / "server.log"), "-w", "-t", "60", "start"])
        await self.wait_ready()

    async def _initdb(self, data: Path) -> None:
        """Create ``data``: a copy of a cached pristine initdb result when possible.

        The cache (``<work_root>/brace-restore-template-<key>``, key = initdb version, user and
        path) is made once by a normal initdb and renamed into place atomically; it is used only
        when owned by the server user with mode 0700, so nobody else can plant a config in it.
        """
        initdb = [self._tool("initdb"), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync", "-D"]
        if not self.reuse_initdb:
            await self._server_cmd([*initdb, str(data)])
            return
        version = await run_command([self._tool("initdb"), "--version"], timeout=30)
        key = hashlib.sha256(f"{version.stdout}|{self.user}|{initdb[0]}".encode()).hexdigest()
        template = self.work_root / f"{TEMPLATE_PREFIX}{key[:16]}"
        if self._trusted_template(template):
            await self._server_cmd(["cp", "-a", str(template), str(data)])
            return
        await self._server_cmd([*initdb, str(data)])
        staging = self.workdir / "template" if self.workdir else data
        await self._server_cmd(["cp", "-a", str(data), str(staging)])
        with contextlib.suppress(OSError):
            os.rename(staging, template)

    def _trusted_template(self, template: Path) -> bool:
        try:
            info = template.lstat()
        except OSError:
            return False
        owner = pwd.getpwnam(self.user).pw_uid if os.geteuid() == 0 else os.geteuid()
        return (stat.S_ISDIR(info.st_mode) and info.st_uid == owner
                and info.st_mode & 0o077 == 0 and (template / "PG_VERSION").is_file())

    async def _server_cmd(self, argv: list[str]) -> None:
        try:
            await run_command([*self._as_user(), *argv], timeout=self.command_timeout,
                              cwd=self.workdir)
        except CommandError as exc:
            raise ActionError("starting", f"{Path(argv[0]).name} failed: {exc.output or exc}; "
                                          f"server log: {self._log_tail()}") from None

    async def stop(self) -> None:
        await self.sql.close()
        workdir, self.workdir = self.workdir, None
        if workdir is None:
            return
        await _stop_local(workdir, self._as_user(), self._tool("pg_ctl"))


async def _stop_local(workdir: Path, as_user: list[str], pg_ctl: str) -> None:
    data = workdir / "data"
    if (data / "postmaster.pid").exists():
        with contextlib.suppress(CommandError):
            await run_command([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w",
                               "-t", "30", "stop"], timeout=40, check=False)
        _kill_postmaster(data)
    await asyncio.to_thread(shutil.rmtree, workdir, True)


def _kill_postmaster(data: Path) -> None:
    """SIGQUIT (immediate shutdown) a postmaster that pg_ctl could not stop."""
    try:
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return
    if b"postgres" in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)


async def remove_local_orphans(work_root: Path | None = None, *, user: str = "postgres",
                               bin_dir: str = "",
                               alive: Callable[[int], bool] = pid_alive) -> list[Path]:
    """Stop and delete ``brace-restore-<pid>-*`` dirs whose creating process is gone.

    ``alive`` decides whether a pid still runs (our own pid does, so our servers stay).
    """
    root = work_root or Path(tempfile.gettempdir())
    removed: list[Path] = []
    as_user = ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []
    pg_ctl = str(Path(bin_dir) / "pg_ctl") if bin_dir else "pg_ctl"
    for path in root.glob(f"{LOCAL_PREFIX}*"):
        owner = path.name[len(LOCAL_PREFIX):].split("-", 1)[0]
        if not owner.isdigit() or alive(int(owner)):
            continue
        await _stop_local(path, as_user, pg_ctl)
        removed.append(path)
    return removed


class DockerServer(ThrowawayServer):
    """A temporary container of the configured image; tools run inside it via exec."""

    backend = "docker"
    DUMP_MOUNT = "/brace-restore"

    DATA_FOLDER = "/var/lib/postgresql/data"
    TMPFS_MOUNT = "/brace-restore-data"  # not DATA_FOLDER: the engine copies the image's mode

    def __init__(self, dump: Path, docker: DockerAdapter, *, image: str,
                 network: str = "host", run_id: str = "", tmpfs_mb: int = 0,
                 labels: Mapping[str, str] | None = None, **options: Any) -> None:
        super().__init__(dump, **options)
        self.docker = docker
        self.image = image
        self.network = network
        self.tmpfs_mb = tmpfs_mb
        self.run_id = run_id or secrets.token_hex(6)
        self.extra_labels = dict(labels or {})
        self.container_id: str | None = None
        self._creating: asyncio.Future[str] | None = None
        self.inner_port = 0

    def _tool(self, name: str) -> str:
        return name

    def _dump_path(self) -> str:
        return f"{self.DUMP_MOUNT}/{self.dump.name}"

    def _conn(self) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.inner_port), "-U", SUPERUSER]

    async def _exec(self, argv: Sequence[str], time_limit: float) -> CommandResult:
        if self.container_id is None:
            raise ActionError("starting", "container is not running")
        try:
            return await asyncio.wait_for(
                self.docker.exec(self.container_id, argv, environment={
                    "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"}), time_limit)
        except TimeoutError:
            raise ActionError("restoring" if argv[0] == "pg_restore" else "verifying",
                              f"{argv[0]} in the container timed out after {time_limit:.0f}s"
                              ) from None

    async def _precheck(self) -> str | None:
        assert self.container_id is not None
        status, logs = await self.docker.container_state(self.container_id)
        if status in ("exited", "dead"):
            raise ActionError("starting", f"container of {self.image} exited during start-up: "
                                          f"{logs.strip()[-800:] or 'no logs'}")
        if self.network == "host":  # the image's init phase listens on its socket only
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), 2.0)
            except (OSError, TimeoutError):
                return f"nothing listens on 127.0.0.1:{self.port} yet"
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return None

    async def start(self) -> None:
        if not await self.docker.image_exists(self.image):
            raise ActionError("starting", f"image {self.image} is not present on this docker "
                                          f"engine; pull or build it (docker pull {self.image}) "
                                          "or set [restore_test] image")
        host_port = free_port()
        self.port = host_port
        self.inner_port = host_port if self.network == "host" else 5432
        command = None
        if self.throwaway_settings:
            command = ["postgres"] + [arg for k, v in THROWAWAY_SETTINGS.items()
                                      for arg in ("-c", f"{k}={v}")]
        # shielded: a cancellation must not lose the id of a container that is being created
        self._creating = asyncio.ensure_future(self.docker.run_container(
            self.image, name=f"{LOCAL_PREFIX}{self.run_id}", command=command,
            environment=self._environment(),
            labels={CONTAINER_LABEL: "1", OWNER_LABEL: str(os.getpid()),
                    OWNER_NS_LABEL: pid_namespace(), RUN_LABEL: self.run_id,
                    **self.extra_labels},
            network_mode=self.network,
            ports=None if self.network == "host" else {"5432/tcp": ("127.0.0.1", host_port)},
            volumes={str(self.dump): {"bind": self._dump_path(), "mode": "ro"}},
            tmpfs={self.TMPFS_MOUNT: f"size={self.tmpfs_mb}m,mode=0755"} if self.tmpfs_mb
            else None))
        try:
            self.container_id = await asyncio.shield(self._creating)
        except DockerError as exc:
            raise ActionError("starting", f"cannot start a container of {self.image}: {exc}"
                              ) from None
        await self.wait_ready()

    def _environment(self) -> dict[str, str]:
        env = {"POSTGRES_PASSWORD": self.password, "PGPORT": str(self.inner_port),
               "PGDATA": f"{self.TMPFS_MOUNT if self.tmpfs_mb else self.DATA_FOLDER}/pgdata"}
        if self.throwaway_settings:
            env["POSTGRES_INITDB_ARGS"] = "--no-sync"
        return env

    async def stop(self) -> None:
        """Remove our container, also one whose creation failed half-way (found by run id)."""
        await self.sql.close()
        creating, self._creating = self._creating, None
        if creating is not None and not creating.done():
            with contextlib.suppress(Exception):
                await creating
        self.container_id = None
        for container_id, _ in await self.docker.containers_with_label(
                f"{RUN_LABEL}={self.run_id}"):
            await self.docker.remove_container(container_id)


async def remove_docker_orphans(docker: DockerAdapter, *,
                                alive: Callable[[int], bool] = pid_alive,
                                namespace: str | None = None,
                                own_idle: Callable[[], bool] | None = None) -> list[str]:
    """Remove restore-test containers whose owning daemon process is gone (only those of our
    pid namespace: another one's pids cannot be checked from here).

    With ``own_idle``, containers of this very process are removed too whenever ``own_idle()``
    says (just before each removal) that no restore test of ours is running: what a run could
    not remove itself, e.g. because the engine was down during its cleanup.
    """
    ours = pid_namespace() if namespace is None else namespace
    removed: list[str] = []
    for container_id, labels in await docker.containers_with_label(f"{CONTAINER_LABEL}=1"):
        owner = labels.get(OWNER_LABEL, "")
        if labels.get(OWNER_NS_LABEL, ours) != ours:
            continue
        if owner.isdigit() and alive(int(owner)) and not (
                owner == str(os.getpid()) and own_idle is not None and own_idle()):
            continue
        await docker.remove_container(container_id)
        removed.append(container_id)
    return removed
