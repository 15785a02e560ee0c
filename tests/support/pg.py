"""Throwaway PostgreSQL 15 clusters and brace-like dumps for tests (real servers, no mocks).

``start_cluster(base_dir)`` runs ``initdb`` + ``pg_ctl`` from ``/usr/lib/postgresql/15/bin``
(override with ``$BRACE_TEST_PG_BIN``). initdb refuses to run as root, so when the tests run as
root the server runs as the unprivileged ``postgres`` user (``runuser``) in a private directory
it owns (in RAM, under ``/dev/shm``, when the host has one); client tools (psql, pg_dump) run as
the caller. The server listens on 127.0.0.1 only, on a free port, with its unix socket in that
private directory and durability switched off (``fsync=off``) for speed. Local (unix socket)
connections are trusted; TCP connections need the superuser password (scram-sha-256) unless
``hba_lines`` say otherwise.

``make_brace_dump(cluster, path)`` builds a database shaped like brace's (``alembic_version``,
``users``, ``orders`` with ``created_at``) and writes ``pg_dump -Fc`` output to ``path``.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from tests.support.net import free_port

__all__ = ["PG_BIN", "BraceDump", "PgCluster", "dsn_connects", "make_brace_dump",
           "start_cluster"]

PG_BIN = Path(os.environ.get("BRACE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
SERVER_USER = "postgres"
DEFAULT_HBA = (
    "host all all 127.0.0.1/32 scram-sha-256",
    "host all all ::1/128 scram-sha-256",
)
_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "'16MB'",
    "max_connections": "30",
    "jit": "off",
    "log_min_messages": "warning",
    "password_encryption": "'scram-sha-256'",
}


def _as_server_user() -> list[str]:
    """argv prefix that drops root privileges for initdb/pg_ctl (which refuse to run as root)."""
    return ["runuser", "-u", SERVER_USER, "--"] if os.geteuid() == 0 else []


def _run(argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = 120.0, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), cwd=cwd, env=env, input=stdin, capture_output=True,
                            text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}:\n"
                           f"{result.stdout}\n{result.stderr}")
    return result


@dataclass
class PgCluster:
    """A running PostgreSQL server owned by one test; ``stop()`` kills it and removes its files."""

    port: int
    datadir: Path
    bin_dir: Path
    superuser: str = "postgres"
    password: str = "postgres"
    host: str = "127.0.0.1"
    workdir: Path = field(default=Path())

    @property
    def socket_dir(self) -> Path:
        return self.workdir / "sock"

    @property
    def log_file(self) -> Path:
        return self.workdir / "server.log"

    def dsn(self, *, user: str | None = None, dbname: str = "postgres",
            password: str | None = None) -> str:
        """A libpq URI over TCP/loopback (``password=''`` leaves the password out)."""
        who = user or self.superuser
        secret = self.password if password is None and who == self.superuser else password
        auth = f"{who}:{secret}" if secret else who
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname}?connect_timeout=5"

    def psql(self, sql: str, *, db: str = "postgres") -> str:
        """Run SQL as the superuser over the unix socket; return unaligned, tuples-only output."""
        argv = [str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-h", str(self.socket_dir), "-p", str(self.port), "-U", self.superuser,
                "-d", db, "-f", "-"]
        return _run(argv, stdin=sql).stdout.strip()

    def pg_ctl(self, *args: str, timeout: float = 60.0) -> None:
        argv = [*_as_server_user(), str(self.bin_dir / "pg_ctl"), "-D", str(self.datadir), *args]
        _run(argv, cwd=self.workdir, timeout=timeout)

    def write_hba(self, lines: Sequence[str]) -> None:
        """Replace pg_hba.conf (unix-socket trust stays first so ``psql()`` keeps working)."""
        _write_as_server(self.datadir / "pg_hba.conf",
                         "\n".join(["local all all trust", *lines]) + "\n")

    def reload(self, *, timeout: float = 10.0) -> None:
        """Reload the config and wait until new connections see it (pg_conf_load_time moves)."""
        before = self.psql("select pg_conf_load_time()")
        self.psql("select pg_reload_conf()")
        deadline = time.monotonic() + timeout
        while self.psql("select pg_conf_load_time()") == before:
            if time.monotonic() > deadline:
                raise TimeoutError(f"server on port {self.port} did not reload its config")
            time.sleep(0.05)

    def break_hba(self, lines: Sequence[str]) -> str:
        """The runbook's broken auth: keep pg_hba.conf as ``pg_hba.conf.bak`` (owned by the
        server user), install ``lines``, reload; the good file's text."""
        hba = self.datadir / "pg_hba.conf"
        good = hba.read_text()
        shutil.copy2(hba, self.datadir / "pg_hba.conf.bak")
        server = pwd.getpwnam(SERVER_USER)
        os.chown(self.datadir / "pg_hba.conf.bak", server.pw_uid, server.pw_gid)
        self.write_hba(lines)
        self.reload()
        return good

    def stop(self) -> None:
        """Kill the server (``-m immediate``) and remove its directory; safe to call twice."""
        if (self.datadir / "postmaster.pid").exists():
            with suppress(RuntimeError):
                self.pg_ctl("stop", "-m", "immediate", "-w")
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def dsn_connects(dsn: str) -> bool:
    """Whether ``dsn`` connects and answers ``select 1`` (False on any connection error)."""
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            return conn.execute("select 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def _write_as_server(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


# Where a root test run keeps its clusters: RAM when the host has a tmpfs there. A cluster's
# start (a copy of the ~40 MB template), first query and stop took a median 2.5 s on this host's
# disk at load 7, 0.9 s in RAM; the server is the same either way.
RAM_DIR = Path("/dev/shm")


def _cluster_parent() -> Path | None:
    """RAM_DIR when it is a writable folder, else None (the system temp dir)."""
    return RAM_DIR if RAM_DIR.is_dir() and os.access(RAM_DIR, os.W_OK | os.X_OK) else None


def _private_workdir(base_dir: Path) -> Path:
    """A 0700 directory the server user owns.

    pytest's tmp_path lives under a root-only 0700 folder that ``postgres`` cannot traverse, so
    when running as root the cluster lives in its own folder under RAM_DIR (or the system temp
    dir) instead.
    """
    if os.geteuid() != 0:
        base_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="pg-", dir=base_dir))
    workdir = Path(tempfile.mkdtemp(prefix="brace-test-pg-", dir=_cluster_parent()))
    entry = pwd.getpwnam(SERVER_USER)
    os.chown(workdir, entry.pw_uid, entry.pw_gid)
    return workdir


# A pristine initdb output per (binaries, superuser, password), made once per process: initdb
# costs seconds of CPU (20 s on a loaded 2-core host), a copy of its ~40 MB a fraction of that.
_TEMPLATES: dict[tuple[Path, str, str], Path] = {}
_TEMPLATES_LOCK = threading.Lock()


def _template(bin_dir: Path, superuser: str, password: str) -> Path:
    """The data directory a fresh ``initdb`` made with these settings (never started)."""
    with _TEMPLATES_LOCK:
        key = (bin_dir, superuser, password)
        if key not in _TEMPLATES:
            workdir = _private_workdir(Path(tempfile.gettempdir()))
            atexit.register(shutil.rmtree, workdir, ignore_errors=True)
            pwfile = workdir / "pwfile"
            _write_as_server(pwfile, password + "\n")
            _run([*_as_server_user(), str(bin_dir / "initdb"), "-D", str(workdir / "data"),
                  "-U", superuser, f"--pwfile={pwfile}", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"],
                 cwd=workdir)
            pwfile.unlink()
            _TEMPLATES[key] = workdir / "data"
        return _TEMPLATES[key]


def _initdb(cluster: PgCluster, hba_lines: Sequence[str] | None) -> None:
    template = _template(cluster.bin_dir, cluster.superuser, cluster.password)
    _run([*_as_server_user(), "cp", "-a", str(template), str(cluster.datadir)])
    cluster.write_hba(DEFAULT_HBA if hba_lines is None else hba_lines)
    sock = cluster.socket_dir
    sock.mkdir()
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER)
        os.chown(sock, entry.pw_uid, entry.pw_gid)
    settings = {**_SETTINGS, "unix_socket_directories": f"'{sock}'"}
    with (cluster.datadir / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write("\n# brace-watchdog test settings\n")
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())


def start_cluster(base_dir: Path | str, *, hba_lines: Sequence[str] | None = None,
                  password: str = "postgres", bin_dir: Path = PG_BIN,
                  attempts: int = 3) -> PgCluster:
    """initdb + start a loopback-only cluster on a free port (retried if the port was taken)."""
    workdir = _private_workdir(Path(base_dir))
    cluster = PgCluster(port=0, datadir=workdir / "data", bin_dir=bin_dir, password=password,
                        workdir=workdir)
    try:
        _initdb(cluster, hba_lines)
        for attempt in range(1, attempts + 1):
            cluster.port = free_port()
            try:
                cluster.pg_ctl("start", "-w", "-t", "60", "-l", str(cluster.log_file),
                               "-o", f"-p {cluster.port}")
                return cluster
            except RuntimeError:
                if attempt == attempts:
                    raise
    except BaseException:
        log = cluster.log_file.read_text(errors="replace") if cluster.log_file.exists() else ""
        cluster.stop()
        if log:
            raise RuntimeError(f"postgres failed to start; server log:\n{log}") from None
        raise
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class BraceDump:
    """What :func:`make_brace_dump` wrote: the dump file and the facts a test can check."""

    path: Path
    dbname: str
    revision: str
    rows: int
    alembic_rows: int


_BRACE_SCHEMA = """
create table alembic_version (version_num varchar(32) not null,
    constraint alembic_version_pkc primary key (version_num));
create table users (id serial primary key, email text not null unique,
    created_at timestamptz not null default now());
create table orders (id serial primary key, user_id integer not null references users(id),
    amount numeric(10, 2) not null, created_at timestamptz not null default now());
create index orders_created_at_idx on orders (created_at);
"""


def _brace_data_sql(revision: str, rows: int, alembic_rows: int, data_age_hours: float) -> str:
    revisions = [revision] + [f"{revision}_{i}" for i in range(1, alembic_rows)]
    values = ", ".join(f"('{r}')" for r in revisions[:alembic_rows])
    inserts = [f"insert into alembic_version values {values};"] if alembic_rows > 0 else []
    age = f"interval '{data_age_hours} hours'"
    inserts += [
        f"insert into users (email, created_at) select 'user' || i || '@example.invalid', "
        f"now() - {age} - i * interval '1 minute' from generate_series(1, {rows}) i;",
        f"insert into orders (user_id, amount, created_at) select i, i * 1.5, "
        f"now() - {age} - i * interval '1 second' from generate_series(1, {rows}) i;",
    ]
    return "\n".join(inserts)


def make_brace_dump(cluster: PgCluster, path: Path | str, *, revision: str = "abc123",
                    rows: int = 100, alembic_rows: int = 1, extra_sql: str = "",
                    owner: str | None = "brace_user", data_age_hours: float = 0.0,
                    dbname: str | None = None) -> BraceDump:
    """Create a brace-shaped database in ``cluster`` and write ``pg_dump -Fc`` of it to ``path``.

    ``owner`` makes the tables belong to that role (like production's ``brace_user``) so a
    restore without the role needs ``--no-owner``; ``data_age_hours`` shifts every
    ``created_at`` into the past (for data-freshness checks); ``extra_sql`` runs last.
    """
    name = dbname or f"brace_src_{os.getpid()}_{time.monotonic_ns()}"
    if owner:
        cluster.psql(f"do $$ begin create role {owner} login; "
                     "exception when duplicate_object then null; end $$;")
    cluster.psql(f"create database {name}")
    if owner:
        cluster.psql(f"grant all on schema public to {owner}", db=name)
    ownership = f"set role {owner};\n" if owner else ""
    cluster.psql(f"{ownership}{_BRACE_SCHEMA}\n"
                 f"{_brace_data_sql(revision, rows, alembic_rows, data_age_hours)}\n"
                 f"reset role;\n{extra_sql}", db=name)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _run([str(cluster.bin_dir / "pg_dump"), "-Fc", "-h", str(cluster.socket_dir),
          "-p", str(cluster.port), "-U", cluster.superuser, "-d", name, "-f", str(target)])
    return BraceDump(path=target, dbname=name, revision=revision, rows=rows,
                     alembic_rows=alembic_rows)
