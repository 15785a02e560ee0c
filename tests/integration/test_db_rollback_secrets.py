"""No secret in argv, plan text, events, logs or errors: a real DB rollback (local target, real
PostgreSQL 15 with a password-only role) runs while a thread reads ``/proc/<pid>/cmdline`` and
``/proc/<pid>/environ`` of every process; then a reader-only user reads the events."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.control_helpers import Env, control_server, ctl, result
from tests.integration.test_gated_content import _bin_dir_with, _db_config, _passed
from tests.support.pg import PG_BIN, BraceDump, PgCluster, make_brace_dump
from tests.support.webserver import switchable_server

pytestmark = [pytest.mark.postgres]

DUMP = "brace_20260101_000000.dump"


class ProcScanner:
    """Reads every process's cmdline and environment until stopped; remembers tool names seen
    and any process whose argv or environment holds ``secret``."""

    def __init__(self, secret: str) -> None:
        self.secret = secret.encode()
        self.seen: set[str] = set()
        self.leaks: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    self._look(proc)

    def _look(self, proc: Path) -> None:
        try:
            argv = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            return
        if argv:
            self.seen.add(Path(argv.split(b"\0")[0].decode(errors="replace")).name)
        shown = argv.replace(b"\0", b" ")[:300]
        for where, data in (("argv", argv), ("environment", environ)):
            if self.secret in data:
                self.leaks.append(f"{proc.name} {where}: {shown!r}")

    @contextmanager
    def running(self) -> Iterator[ProcScanner]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


def _raw(tmp_path: Path, pg_cluster: PgCluster, dump: BraceDump, password: str, health: str,
         **db: Any) -> dict[str, Any]:
    """A local-target DB rollback whose DSN carries ``password``; a reader-only ``nobody``."""
    raw = _db_config(pg_cluster, dump.dbname, tmp_path / "backups", **db)
    raw["database"] = {"dsn": pg_cluster.dsn(user="bw_owner", password=password,
                                             dbname=dump.dbname)}
    raw["health"] = {"url": health, "timeout_seconds": 2}
    raw["control"] = {"group": "nogroup", "readers": ["nobody"]}
    return raw


def _owner_with_password(pg_cluster: PgCluster) -> str:
    password = f"pw-{secrets.token_hex(12)}"
    pg_cluster.psql(f"create role bw_owner login superuser password '{password}'")
    return password


async def _assert_nowhere(env: Env, password: str, *replies: Any) -> None:
    """``password`` is in no reply, in no event a reader sees, in no audit row."""
    for reply in replies:
        assert password not in json.dumps(reply), reply
    events = await ctl("--socket", str(env.socket), "--json", "events", "--limit", "500",
                       as_nobody=True)
    assert events.code == 0, events
    assert "db_rollback" in events.out and password not in events.out
    assert password not in json.dumps(env.hub.store.audit_log(500))


async def test_no_secret_reaches_argv_events_logs_or_errors(
        tmp_path: Path, pg_cluster: PgCluster, caplog: pytest.LogCaptureFixture) -> None:
    password = _owner_with_password(pg_cluster)
    dump = make_brace_dump(pg_cluster, tmp_path / "backups" / DUMP, rows=20)
    with switchable_server() as health:
        raw = _raw(tmp_path, pg_cluster, dump, password, health.url(),
                   smoke_command=[str(PG_BIN / "psql"), "-X", "-tA", "-c",
                                  "select count(*) from alembic_version"])
        async with control_server(tmp_path, raw) as env:
            _passed(env, dump.path)
            with ProcScanner(password).running() as scanner:
                plan = await result(env.socket, "db_rollback", {"dump": DUMP})
                run = await result(env.socket, "approve", {"token": plan["data"]["token"]})
            assert run["ok"], run
            assert run["data"]["smoke"] == "passed" and run["data"]["database"] == "restored"
            assert {"pg_dump", "pg_restore", "psql"} <= scanner.seen, scanner.seen
            assert scanner.leaks == []
            await _assert_nowhere(env, password, plan)
    assert password not in caplog.text


@dataclass(frozen=True)
class Fault:
    """A way the rollback fails: ``apply`` runs before the plan (its result: extra
    ``[db_rollback]`` keys) or, with ``after_plan``, between plan and approve."""

    apply: Callable[[PgCluster, BraceDump, Path], dict[str, Any]]
    outcome: str
    says: str
    after_plan: bool = False


def _change_password(pg_cluster: PgCluster, dump: BraceDump, tmp_path: Path) -> dict[str, Any]:
    pg_cluster.psql(f"alter role bw_owner password 'pw-{secrets.token_hex(12)}'")
    return {}


def _kill_server_at_restore(pg_cluster: PgCluster, dump: BraceDump,
                            tmp_path: Path) -> dict[str, Any]:
    """pg_restore (not its --version or --list) first kills the server (SIGQUIT: immediate
    shutdown), so the restore's connection fails mid-action."""
    pid_file = pg_cluster.datadir / "postmaster.pid"
    bins = _bin_dir_with(tmp_path / "bin", "pg_restore",
                         f'case " $* " in *" --version "*|*" --list "*) ;; *) '
                         f'kill -QUIT $(head -1 {pid_file}); sleep 1;; esac\n'
                         f'exec {PG_BIN}/pg_restore "$@"')
    return {"bin_dir": str(bins)}


def _truncate_dump(pg_cluster: PgCluster, dump: BraceDump, tmp_path: Path) -> dict[str, Any]:
    with dump.path.open("r+b") as out:  # the header stays intact
        out.truncate(dump.path.stat().st_size * 3 // 4)
    return {}


FAULTS = {
    "wrong password": Fault(_change_password, "refused", "password authentication failed",
                            after_plan=True),
    "server down mid-way": Fault(_kill_server_at_restore, "failed", "connection to server"),
    "pg_restore fails": Fault(_truncate_dump, "failed", "could not read from input file"),
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
async def test_no_secret_in_a_failing_rollback(tmp_path: Path, pg_cluster: PgCluster,
                                               caplog: pytest.LogCaptureFixture,
                                               fault: Fault) -> None:
    password = _owner_with_password(pg_cluster)
    dump = make_brace_dump(pg_cluster, tmp_path / "backups" / DUMP, rows=20)
    db = {} if fault.after_plan else fault.apply(pg_cluster, dump, tmp_path)
    with switchable_server() as health:
        async with control_server(tmp_path, _raw(tmp_path, pg_cluster, dump, password,
                                                 health.url(), **db)) as env:
            _passed(env, dump.path)
            with ProcScanner(password).running() as scanner:
                plan = await result(env.socket, "db_rollback", {"dump": DUMP})
                assert plan["ok"], plan
                if fault.after_plan:
                    fault.apply(pg_cluster, dump, tmp_path)
                run = await result(env.socket, "approve", {"token": plan["data"]["token"]})
            assert run["error"]["code"] == fault.outcome, run
            assert fault.says in run["error"]["message"], run
            assert "psql" in scanner.seen and scanner.leaks == []
            await _assert_nowhere(env, password, plan, run)
    assert password not in caplog.text
