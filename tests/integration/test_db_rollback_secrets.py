"""No secret in argv, plan text, events, logs or errors: a real DB rollback (local target, real
PostgreSQL 15 with a password-only role) runs while a thread reads ``/proc/<pid>/cmdline`` and
``/proc/<pid>/environ`` of every process; then a reader-only user reads the events."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.control_helpers import control_server, ctl, result
from tests.integration.test_gated_content import _db_config, _passed
from tests.support.pg import PG_BIN, PgCluster, make_brace_dump
from tests.support.webserver import switchable_server

pytestmark = [pytest.mark.postgres]


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


async def test_no_secret_reaches_argv_events_logs_or_errors(
        tmp_path: Path, pg_cluster: PgCluster, caplog: pytest.LogCaptureFixture) -> None:
    password = f"pw-{secrets.token_hex(12)}"
    pg_cluster.psql(f"create role bw_owner login superuser password '{password}'")
    backups = tmp_path / "backups"
    dump = make_brace_dump(pg_cluster, backups / "brace_20260101_000000.dump", rows=20)
    with switchable_server() as health:
        raw = _db_config(pg_cluster, dump.dbname, backups,
                         smoke_command=[str(PG_BIN / "psql"), "-X", "-tA", "-c",
                                        "select count(*) from alembic_version"])
        raw["database"] = {"dsn": pg_cluster.dsn(user="bw_owner", password=password,
                                                 dbname=dump.dbname)}
        raw["health"] = {"url": health.url(), "timeout_seconds": 2}
        raw["control"] = {"group": "nogroup", "readers": ["nobody"]}
        async with control_server(tmp_path, raw) as env:
            _passed(env, dump.path)
            with ProcScanner(password).running() as scanner:
                plan = await result(env.socket, "rollback-db", {"dump": dump.path.name})
                run = await result(env.socket, "approve", {"token": plan["data"]["token"]})
            assert run["ok"], run
            assert run["data"]["smoke"] == "passed" and run["data"]["database"] == "restored"
            assert {"pg_dump", "pg_restore", "psql"} <= scanner.seen, scanner.seen
            assert scanner.leaks == []
            assert password not in json.dumps(plan)
            events = await ctl("--socket", str(env.socket), "--json", "events", "--limit",
                               "500", as_nobody=True)
            assert events.code == 0, events
            assert "db_rollback" in events.out and password not in events.out
            audit = json.dumps(env.hub.store.audit_log(500))
            assert password not in audit
    assert password not in caplog.text
