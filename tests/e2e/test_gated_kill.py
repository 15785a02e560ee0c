"""SIGKILL at each step of each gated action, with the daemon as a real process: the restarted
daemon reports exactly where the action stopped (the state its last journal entry recorded) and
the next safe commands.

Each step is held open at a real blocking point — the command that step runs is wrapped by
``gate``, which blocks (recording its pid) while ``block-<label>`` exists and otherwise runs the
real tool (docker-compose against a real busybox writer, PostgreSQL 15 tools against a real
cluster, the real docker engine); steps that wait in the daemon itself (health, connection,
engine) are held by what they wait for. Steps with no blocking point at all (freezing, keeping
and installing a file: microseconds of local work) are killed by a failpoint
(``BRACE_WATCHDOG_FAILPOINTS``: the daemon SIGKILLs itself right after a chosen journal entry);
so is every step of the file rollbacks, at its start and after each checkpoint that changes a
file. The steps come from each action's ``STEPS``, so a new step gets its kill test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import psycopg
import pytest

from brace_watchdog.actions.config_rollback import DockerDaemonRollback, PgHbaRollback
from brace_watchdog.actions.db_rollback import STEPS as DB_ROLLBACK_STEPS
from brace_watchdog.actions.gated import GATED_KINDS
from brace_watchdog.failpoints import ENV as FAILPOINTS
from tests.integration.control_helpers import ctl
from tests.support.daemon import Daemon
from tests.support.images import run_postgres
from tests.support.net import free_port
from tests.support.pg import PG_BIN, BraceDump, PgCluster, make_brace_dump, start_cluster
from tests.support.skips import skip_missing
from tests.support.webserver import SwitchableServer, switchable_server

pytestmark = [pytest.mark.slow]

DUMP = "brace_20260101_000000.dump"
GATE = """#!/bin/sh
# gate LABEL COMMAND...: block while {dir}/block-LABEL exists, else run COMMAND
label=$1; shift
if [ -e {dir}/block-$label ]; then echo $$ > {dir}/entered-$label; exec sleep 600; fi
exec "$@"
"""
COMPOSE = """#!/bin/sh
sub=none
for arg in "$@"; do case $arg in stop|up|ps) sub=$arg; break;; esac; done
exec {dir}/gate compose-$sub docker-compose "$@"
"""
PG_DUMP = """#!/bin/sh
[ "$1" = --version ] && exec {pg}/pg_dump "$@"
exec {dir}/gate pg_dump {pg}/pg_dump "$@"
"""
PG_RESTORE = """#!/bin/sh
for arg in "$@"; do case $arg in --version|--list) exec {pg}/pg_restore "$@";; esac; done
exec {dir}/gate pg_restore {pg}/pg_restore "$@"
"""


@dataclass
class Gates:
    dir: Path

    def script(self, name: str, text: str) -> str:
        path = self.dir / name
        path.write_text(text.format(dir=self.dir, pg=PG_BIN))
        path.chmod(0o755)
        return str(path)

    def block(self, label: str) -> None:
        (self.dir / f"block-{label}").touch()

    async def entered(self, label: str, timeout: float = 120) -> None:
        marker = self.dir / f"entered-{label}"
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert time.monotonic() < deadline, f"{label} never blocked"
            await asyncio.sleep(0.1)

    def release(self) -> None:
        """Kill every blocked stand-in (they outlive the SIGKILLed daemon)."""
        for marker in self.dir.glob("entered-*"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(marker.read_text()), signal.SIGKILL)


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[Gates]:
    folder = tmp_path / "gates"
    folder.mkdir()
    found = Gates(folder)
    found.script("gate", GATE)
    try:
        yield found
    finally:
        found.release()


def _step_of(state: Path, kind: str) -> str:
    with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True)) as conn:
        row = conn.execute("SELECT step FROM actions WHERE kind = ? ORDER BY id DESC LIMIT 1",
                           (kind,)).fetchone()
    return str(row[0]) if row else ""


async def _in_step(state: Path, kind: str, step: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _step_of(state, kind) != step:
        assert time.monotonic() < deadline, f"{kind} never reached {step}"
        await asyncio.sleep(0.1)


async def _kill_and_restart(daemon: Daemon, run: asyncio.Task[object]) -> str:
    """SIGKILL mid-step, start again; the escalation the new daemon reports."""
    return str((await _restarted_status(daemon, run))["escalation"]["message"])


async def _restarted_status(daemon: Daemon, run: asyncio.Task[object]) -> dict[str, Any]:
    """Start again (SIGKILLing the daemon if it still runs), without failpoints; its status."""
    daemon.restart(env={key: value for key, value in daemon.env.items() if key != FAILPOINTS})
    daemon.wait_for("READY=1", timeout=60)
    await run
    # settled: what the action left running (a restore in the server) has been ended
    return await _status_once(str(daemon.dir / "control.sock"),
                              lambda s: s["action_lock"] is None and s["escalation"])


@dataclass(frozen=True)
class Journal:
    """An action's journal as the state file holds it."""

    status: str
    step: str
    entries: int
    last: dict[str, Any]

    @property
    def state(self) -> dict[str, Any]:
        found = self.last.get("state", {})
        return found if isinstance(found, dict) else {}


def _journal(state: Path, kind: str) -> Journal:
    with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True)) as conn:
        action_id, status, step = conn.execute(
            "SELECT id, status, step FROM actions WHERE kind = ? ORDER BY id DESC LIMIT 1",
            (kind,)).fetchone()
        rows = conn.execute("SELECT evidence FROM events WHERE action_id = ? ORDER BY id",
                            (action_id,)).fetchall()
    return Journal(str(status), str(step), len(rows), json.loads(rows[-1][0]))


@dataclass(frozen=True)
class Killed:
    """What the journal held when a failpoint killed the daemon, and what the restart said."""

    at: Journal
    message: str


async def _killed_by_failpoint(daemon: Daemon, kind: str, point: str,
                               command: list[str]) -> Killed:
    """Run ``command`` on a daemon started with ``point`` armed; it must die there. Restarted
    (unarmed), the daemon reports exactly the last journal entry's state and next steps, marks
    the action interrupted (one entry more, nothing run again) and freezes automation."""
    daemon.wait_for("READY=1", timeout=60)
    run = asyncio.ensure_future(ctl("--socket", str(daemon.dir / "control.sock"), *command,
                                    "--yes"))
    died = asyncio.ensure_future(asyncio.to_thread(daemon.proc.wait, 120))
    await asyncio.wait([run, died], return_when=asyncio.FIRST_COMPLETED)
    assert died.done() or (await asyncio.wait([died], timeout=10))[0], (
        f"the action ended without reaching {point}: {run.result()}")
    assert died.result() == -signal.SIGKILL, daemon.output()
    step = point.partition("@")[0]
    assert f"failpoint journal:{step} (hit " in daemon.output()
    at = _journal(daemon.state_path, kind)
    assert (at.status, at.step) == ("running", step)
    status = await _restarted_status(daemon, run)
    message = str(status["escalation"]["message"])
    assert f"interrupted at step '{step}'" in message, message
    for key, value in at.state.items():
        assert value in (None, "") or f"{key}: {value}" in message, (key, message)
    for advice in at.last.get("next_steps", []):
        assert advice in message, (advice, message)
    assert status["frozen"], status
    after = _journal(daemon.state_path, kind)
    assert (after.status, after.step, after.entries) == ("interrupted", step, at.entries + 1)
    return Killed(at, message)


def _points(steps: tuple[str, ...], checkpoints: dict[str, int]) -> list[str]:
    """``begin``, every step at its first journal entry, and the later entries (checkpoints)
    named in ``checkpoints`` (step: how many entries it journals before its work ends)."""
    return ["begin", *steps, *(f"{step}@{n}" for step, last in checkpoints.items()
                               for n in range(2, last + 1))]


@dataclass
class Writers:
    """One compose project of a busybox writer, shared by the DB rollback kill tests."""

    file: Path
    project: str


@pytest.fixture(scope="module")
def writers(tmp_path_factory: pytest.TempPathFactory, busybox_image: str) -> Iterator[Writers]:
    folder = tmp_path_factory.mktemp("writers")
    compose = folder / "docker-compose.yml"
    compose.write_text(f"""version: "2.4"
services:
  backend:
    image: {busybox_image}
    network_mode: none
    stop_grace_period: 1s
    labels: {{brace-watchdog.test: '1'}}
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
""")
    found = Writers(compose, f"bwkill{os.getpid()}x{time.monotonic_ns() % 10**6}")
    try:
        yield found
    finally:
        _compose(found, "down", "-t", "1")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    """One PostgreSQL 15 for the DB rollback kill tests (each gets its own database)."""
    if not (PG_BIN / "initdb").exists():
        skip_missing(f"PostgreSQL 15 binaries not found in {PG_BIN}")
    found = start_cluster(tmp_path_factory.mktemp("pg"))
    yield found
    found.stop()


def _compose(writers: Writers, *args: str) -> None:
    subprocess.run(["docker-compose", "-f", str(writers.file), "-p", writers.project, *args],
                   capture_output=True, timeout=180, check=False)


DB_STEPS = {
    "stopping_writers": ("compose-stop", ["writers: stopping", "writers are STOPPING",
                                          "up -d --no-build backend"]),
    "safety_dump": ("pg_dump", ["writers: stopped", "no safety dump was completed",
                                "writers are STOPPED"]),
    "restoring": ("pg_restore", ["database: UNKNOWN: the daemon was killed during the restore",
                                 "safety_dump: brace_safety_",
                                 "safety_dump_sha256: ", "UNKNOWN", "do NOT start the writers",
                                 "rollback db --dump brace_safety_"]),
    "starting_writers": ("compose-up", ["database: restored", "writers: starting",
                                        "writers are STARTING"]),
    "verifying": (None, ["database: restored", "writers: started", "holds the dump's data"]),
    "smoke": ("smoke", ["database: restored", "health: ok", "holds the dump's data"]),
}


def _db_daemon(tmp_path: Path, gates: Gates, cluster: PgCluster, writers: Writers,
               health: SwitchableServer, env: dict[str, str] | None = None
               ) -> tuple[Daemon, BraceDump]:
    """A daemon that may roll the database (``dump.dbname``) back to DUMP (gated tools, a real
    cluster)."""
    dump = make_brace_dump(cluster, tmp_path / "src" / DUMP, rows=5)
    bins = gates.dir / "bin"
    bins.mkdir()
    (bins / "psql").symlink_to(PG_BIN / "psql")
    gates.script("bin/pg_dump", PG_DUMP)
    gates.script("bin/pg_restore", PG_RESTORE)
    smoke = [str(gates.dir / "gate"), "smoke", "true"]
    extra = f"""
[database]
dsn = "{cluster.dsn(dbname=dump.dbname)}"
[rollback]
compose_command = ["{gates.script("compose", COMPOSE)}"]
compose_file = "{writers.file}"
project = "{writers.project}"
[db_rollback]
target = "local"
bin_dir = "{bins}"
writers = ["backend"]
require_passing_restore_test = false
health_attempts = 10000
health_wait_seconds = 0.2
smoke_command = {json.dumps(smoke)}
"""
    daemon = Daemon(tmp_path, health, extra=extra, env=env)
    os.replace(dump.path, tmp_path / "backups" / DUMP)
    return daemon, dump


@pytest.mark.docker
@pytest.mark.postgres
@pytest.mark.parametrize("step", list(DB_STEPS))
@pytest.mark.daemon_ctl("rollback db", "status")
async def test_db_rollback_killed_at_each_step(
        step: str, tmp_path: Path, gates: Gates, cluster: PgCluster, writers: Writers) -> None:
    label, expected = DB_STEPS[step]
    with switchable_server() as health:
        daemon, _ = _db_daemon(tmp_path, gates, cluster, writers, health)
        try:
            await asyncio.to_thread(_compose, writers, "up", "-d")
            daemon.wait_for("READY=1", timeout=60)
            await _hold(step, label, gates, health, daemon)
            run = asyncio.ensure_future(ctl("--socket", str(tmp_path / "control.sock"),
                                            "rollback", "db", "--dump", DUMP, "--yes"))
            if label:
                await gates.entered(label)
            await _in_step(daemon.state_path, "db_rollback", step)
            message = await _kill_and_restart(daemon, run)
        finally:
            daemon.close()
    assert f"interrupted at step '{step}'" in message, message
    for fragment in expected:
        assert fragment in message, (fragment, message)
    assert "brace-watchdogctl unfreeze" in message


DB_FAILPOINT_STEPS = [step for step in DB_ROLLBACK_STEPS if step not in DB_STEPS]


@pytest.mark.docker
@pytest.mark.postgres
@pytest.mark.parametrize("point", _points(tuple(DB_FAILPOINT_STEPS), {"freezing": 2}))
@pytest.mark.daemon_ctl("rollback db", "status")
async def test_db_rollback_killed_where_nothing_blocks(
        point: str, tmp_path: Path, gates: Gates, cluster: PgCluster, writers: Writers) -> None:
    """Steps with no tool to hold (freezing): killed by a failpoint right after their entry."""
    with switchable_server() as health:
        daemon, _ = _db_daemon(tmp_path, gates, cluster, writers, health,
                               env={FAILPOINTS: f"journal:{point}"})
        try:
            killed = await _killed_by_failpoint(daemon, "db_rollback", point,
                                                ["rollback", "db", "--dump", DUMP])
        finally:
            daemon.close()
    assert killed.at.state.get("writers", "running") == "running"
    assert killed.at.state.get("safety_dump") is None
    assert not list((tmp_path / "backups").glob("brace_safety_*"))
    assert killed.at.state.get("automation", "running") == (
        "frozen" if point == "freezing@2" else "running")


RESTORES = ("select pid, wait_event_type from pg_stat_activity "
            "where application_name like 'brace-watchdog-restore-%'")


@pytest.mark.docker
@pytest.mark.postgres
@pytest.mark.daemon_ctl("rollback db", "status")
async def test_a_restore_that_outlived_the_killed_daemon_is_ended_after_the_restart(
        tmp_path: Path, gates: Gates, cluster: PgCluster, writers: Writers) -> None:
    """Local target: a real pg_restore held in the server (by a lock the test holds) outlives
    the SIGKILLed daemon; the restarted daemon ends it by its application_name, holding the
    action lock until no backend of it remains, and reports the database as UNKNOWN."""
    with switchable_server() as health:
        daemon, dump = _db_daemon(tmp_path, gates, cluster, writers, health)
        try:
            await _restore_outlives_the_daemon(daemon, cluster.dsn(dbname=dump.dbname))
        finally:
            daemon.close()


@pytest.mark.docker
@pytest.mark.postgres
@pytest.mark.daemon_ctl("rollback db", "status")
async def test_a_container_restore_that_outlived_the_killed_daemon_is_ended_after_the_restart(
        tmp_path: Path, cluster: PgCluster, docker_client: docker.DockerClient,
        postgres_image: str) -> None:
    """Container target (production's): the ``docker exec`` pg_restore outlives the daemon."""
    dump = make_brace_dump(cluster, tmp_path / "backups" / DUMP, rows=5)
    prod = run_postgres(docker_client, image=postgres_image)
    try:
        prod.load_brace(dump.path, PG_BIN / "pg_restore")
        extra = f"""
[db_rollback]
target = "container"
container = "{prod.container.name}"
database = "brace"
writers = []
require_passing_restore_test = false
"""
        with switchable_server() as health:
            daemon = Daemon(tmp_path, health, extra=extra,
                            env={"BRACE_WATCHDOG_DB_DSN": prod.dsn(dbname="brace")})
            try:
                await _restore_outlives_the_daemon(daemon, prod.dsn(dbname="brace"))
            finally:
                daemon.close()
    finally:
        prod.stop()


async def _restore_outlives_the_daemon(daemon: Daemon, dsn: str) -> None:
    """Roll back to DUMP while the test locks ``users``, SIGKILL the daemon with the restore
    waiting in the server, restart it: the restore is ended, the data as before, and said so."""
    sock = str(daemon.dir / "control.sock")
    daemon.wait_for("READY=1", timeout=60)
    with psycopg.connect(dsn) as blocker:
        blocker.execute("lock table users in access share mode")
        run = asyncio.ensure_future(ctl("--socket", sock, "rollback", "db", "--dump", DUMP,
                                        "--yes"))
        deadline = time.monotonic() + 120
        while "|Lock" not in await asyncio.to_thread(_sql, dsn, RESTORES):
            assert time.monotonic() < deadline, "the restore never reached the server"
            await asyncio.sleep(0.2)
        status = await _restarted_status(daemon, run)
    message = status["escalation"]["message"]
    assert status["escalation"]["reason"] == "db_rollback_restore_ended", status
    for fragment in ("interrupted at step 'restoring'", "UNKNOWN: the daemon was killed during the "
                     "restore; the restore ended inside the server", "do NOT start the writers",
                     "rollback db --dump brace_safety_"):
        assert fragment in message, (fragment, message)
    assert status["frozen"]
    assert _sql(dsn, RESTORES) == ""
    assert _sql(dsn, "select count(*) from users") == "5"  # its one transaction never committed
    with contextlib.closing(sqlite3.connect(daemon.state_path)) as conn:
        held = conn.execute("SELECT message FROM events WHERE kind = "
                            "'db_rollback.restore_leftover'").fetchall()
    assert len(held) == 1 and "the action lock is held" in held[0][0]


def _sql(dsn: str, sql: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(sql).fetchall()  # type: ignore[arg-type]
    return "\n".join("|".join(str(value) for value in row) for row in rows)


async def _status_once(sock: str, accept: Any, timeout: float = 120) -> dict[str, Any]:
    """The daemon's status once ``accept(status)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        found = await ctl("--socket", sock, "--json", "status")
        assert found.code == 0, found
        status: dict[str, Any] = found.json()
        if accept(status):
            return status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.2)


async def _hold(step: str, label: str | None, gates: Gates, health: SwitchableServer,
                daemon: Daemon) -> None:
    if label:
        gates.block(label)
    if step == "verifying":
        health.mode = "500"


HBA_STEPS = {
    "reloading": ["kept_as: ", "pg_hba: restored from .bak (not yet reloaded)", "to undo: copy"],
    "verifying": ["pg_hba: restored and reloaded", "to undo: copy"],
}


@pytest.mark.parametrize("step", list(HBA_STEPS))
@pytest.mark.daemon_ctl("rollback pg-hba", "status")
async def test_pg_hba_rollback_killed_at_each_step(step: str, tmp_path: Path,
                                                   gates: Gates) -> None:
    hba = tmp_path / "pg_hba.conf"
    hba.write_text("host all all 127.0.0.1/32 reject\n")
    (tmp_path / "pg_hba.conf.bak").write_text("host all all 127.0.0.1/32 scram-sha-256\n")
    reload = [str(gates.dir / "gate"), "reload", "true"]
    extra = f"""
[database]
dsn = "postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=1"
[network_rollback]
pg_hba_path = "{hba}"
reload_command = {json.dumps(reload)}
verify_attempts = 10000
verify_wait_seconds = 0.2
"""
    with switchable_server() as health:
        daemon = Daemon(tmp_path, health, extra=extra)
        try:
            daemon.wait_for("READY=1", timeout=60)
            if step == "reloading":
                gates.block("reload")
            run = asyncio.ensure_future(ctl("--socket", str(tmp_path / "control.sock"),
                                            "rollback", "pg-hba", "--yes"))
            await _in_step(daemon.state_path, "pg_hba_rollback", step)
            message = await _kill_and_restart(daemon, run)
        finally:
            daemon.close()
    assert f"interrupted at step '{step}'" in message, message
    for fragment in HBA_STEPS[step]:
        assert fragment in message, (fragment, message)


DOCKER_STEPS = {
    "restarting": ["daemon_json: restored from .bak", "engine: restarting", "to undo: copy"],
    "waiting_engine": ["daemon_json: restored from .bak", "engine: restarting"],
    "verifying": ["daemon_json: restored from .bak", "engine: up", "to undo: copy"],
}


@pytest.mark.docker
@pytest.mark.parametrize("step", list(DOCKER_STEPS))
@pytest.mark.daemon_ctl("rollback docker-daemon", "status")
async def test_docker_daemon_rollback_killed_at_each_step(step: str, tmp_path: Path,
                                                          gates: Gates) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "daemon.json").write_text('{"broken": true}')
    (folder / "daemon.json.bak").write_text('{"log-driver": "json-file"}')
    restart = [str(gates.dir / "gate"), "restart", "true"]
    engine = ("unix:///var/run/docker.sock" if step == "verifying"
              else f"unix://{tmp_path}/no-engine.sock")
    extra = f"""
[rollback]
compose_command = ["{gates.script("compose", COMPOSE)}"]
compose_file = "{tmp_path / 'none.yml'}"
project = "bwkill{os.getpid()}"
[network_rollback]
docker_daemon_json = "{folder / 'daemon.json'}"
docker_restart_command = {json.dumps(restart)}
docker_host = "{engine}"
engine_wait_seconds = 600
verify_services = ["backend"]
"""
    with switchable_server() as health:
        daemon = Daemon(tmp_path, health, extra=extra)
        try:
            daemon.wait_for("READY=1", timeout=60)
            gates.block({"restarting": "restart", "verifying": "compose-ps"}.get(step, "none"))
            run = asyncio.ensure_future(ctl("--socket", str(tmp_path / "control.sock"),
                                            "rollback", "docker-daemon", "--yes"))
            await _in_step(daemon.state_path, "docker_daemon_rollback", step)
            if step == "verifying":
                await gates.entered("compose-ps")
            message = await _kill_and_restart(daemon, run)
        finally:
            daemon.close()
    assert f"interrupted at step '{step}'" in message, message
    for fragment in DOCKER_STEPS[step]:
        assert fragment in message, (fragment, message)


def _files_match(folder: Path, name: str, old: str, new: str, live_state: str,
                 kept_as: str | None) -> None:
    """The files are as the journal says: the kept copy exists iff journaled and holds the old
    content, the live file is the old one until journaled restored; nothing is lost and no
    temporary file is left."""
    live = (folder / name).read_text()
    kept = sorted(folder.glob(f"{name}.rollback-*"))
    assert [str(path) for path in kept] == ([kept_as] if kept_as else [])
    assert all(path.read_text() == old for path in kept)
    if live_state == "unchanged":
        assert live == old
    elif live_state.startswith("restored"):
        assert live == new
    assert live in (old, new)
    assert old in (live, *(path.read_text() for path in kept))
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        [name, f"{name}.bak", *(path.name for path in kept)])


async def _file_rollback_killed(tmp_path: Path, point: str, command: list[str], extra: str,
                                file: tuple[Path, str, str]) -> Killed:
    """A file rollback (``file``: the live file, its content and its ``.bak``'s) killed at
    ``point``."""
    path, old, new = file
    path.parent.mkdir()
    path.write_text(old)
    path.with_name(f"{path.name}.bak").write_text(new)
    kind = {"pg-hba": "pg_hba_rollback", "docker-daemon": "docker_daemon_rollback"}[command[1]]
    with switchable_server() as health:
        daemon = Daemon(tmp_path, health, extra=extra, env={FAILPOINTS: f"journal:{point}"})
        try:
            return await _killed_by_failpoint(daemon, kind, point, command)
        finally:
            daemon.close()


HBA_OLD, HBA_NEW = "host all all 127.0.0.1/32 reject\n", "host all all 127.0.0.1/32 trust\n"


@pytest.mark.parametrize("point", _points(PgHbaRollback.STEPS,
                                          {"keeping_current": 2, "restoring": 3, "reloading": 2}))
@pytest.mark.daemon_ctl("rollback pg-hba", "status")
async def test_pg_hba_rollback_killed_after_each_journal_entry(point: str,
                                                               tmp_path: Path) -> None:
    folder = tmp_path / "hba"
    reloads = tmp_path / "reloads"
    extra = f"""
[database]
dsn = "postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=1"
[network_rollback]
pg_hba_path = "{folder / 'pg_hba.conf'}"
reload_command = ["sh", "-c", "echo reloaded >> {reloads}"]
verify_attempts = 1
"""
    killed = await _file_rollback_killed(tmp_path, point, ["rollback", "pg-hba"], extra,
                                         (folder / "pg_hba.conf", HBA_OLD, HBA_NEW))
    state = killed.at.state
    _files_match(folder, "pg_hba.conf", HBA_OLD, HBA_NEW, str(state.get("pg_hba", "unchanged")),
                 state.get("kept_as"))
    ran = reloads.read_text().splitlines() if reloads.exists() else []
    assert ran == (["reloaded"] if state.get("pg_hba") == "restored and reloaded" else [])
    if state.get("kept_as"):
        assert f"to undo: copy {state['kept_as']} over" in killed.message


DAEMON_OLD, DAEMON_NEW = '{"broken": true}', '{"log-driver": "json-file"}'


@pytest.mark.docker
@pytest.mark.parametrize("point", _points(DockerDaemonRollback.STEPS,
                                          {"keeping_current": 2, "restoring": 3,
                                           "restarting": 2}))
@pytest.mark.daemon_ctl("rollback docker-daemon", "status")
async def test_docker_daemon_rollback_killed_after_each_journal_entry(point: str,
                                                                      tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    restarts = tmp_path / "restarts"
    extra = f"""
[network_rollback]
docker_daemon_json = "{folder / 'daemon.json'}"
docker_restart_command = ["sh", "-c", "echo restarted >> {restarts}"]
docker_host = "unix:///var/run/docker.sock"
engine_wait_seconds = 1
verify_services = ["backend"]
"""
    killed = await _file_rollback_killed(tmp_path, point, ["rollback", "docker-daemon"], extra,
                                         (folder / "daemon.json", DAEMON_OLD, DAEMON_NEW))
    state = killed.at.state
    _files_match(folder, "daemon.json", DAEMON_OLD, DAEMON_NEW,
                 str(state.get("daemon_json", "unchanged")), state.get("kept_as"))
    ran = restarts.read_text().splitlines() if restarts.exists() else []
    assert ran == (["restarted"] if killed.at.step in ("waiting_engine", "verifying") else [])


def test_every_gated_action_and_step_has_a_kill_test() -> None:
    """The kill tests enumerate each action's declared ``STEPS``; the DB rollback's steps with
    no blocking point are the failpoint test's, so together they cover every step."""
    assert set(GATED_KINDS) == {"db_rollback", "pg_hba_rollback", "docker_daemon_rollback"}
    assert set(DB_STEPS) | set(DB_FAILPOINT_STEPS) == set(DB_ROLLBACK_STEPS)
