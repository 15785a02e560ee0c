"""The gated DB rollback with ``[rollback] driver = "swarm"``, on a REAL single-node Swarm (a
private dockerd) and a real PostgreSQL 15 as production: the writer services are scaled to 0 and
no writer container runs while ``pg_restore`` does (a stand-in ``pg_restore`` asks the engine
before running the real one); afterwards each is back at its recorded replica count. A
global-mode writer, which Swarm cannot scale to 0, is refused before anything changes. A daemon
SIGKILLed (failpoint) after journalling the counts, or after scaling to 0, reports the counts and
the exact ``docker service scale`` command after its restart — and that command works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker.types import ServiceMode

from brace_watchdog.failpoints import ENV as FAILPOINTS
from tests.integration.control_helpers import control_server, ctl
from tests.support.daemon import Daemon
from tests.support.net import wait_for_port
from tests.support.pg import PG_BIN, PgCluster, make_brace_dump
from tests.support.swarm import PrivateSwarm, create_web_service
from tests.support.webserver import switchable_server

pytestmark = [pytest.mark.docker, pytest.mark.postgres, pytest.mark.slow]

DUMP = "brace_20260101_000000.dump"
LOOP = "trap 'exit 0' TERM; while true; do sleep 1; done"
PG_RESTORE = """#!/bin/sh
case " $* " in *" --clean "*)
  names=$(docker -H {host} ps --format '{{{{.Names}}}}') || exit 9
  echo "$names" | grep "^{stack}_" > {out};;
esac
exec {pg}/pg_restore "$@"
"""


class Stack:
    """One stack of writer services on the private swarm, removed afterwards."""

    def __init__(self, engine: PrivateSwarm, root: Path, image: str) -> None:
        self.engine = engine
        self.root = root
        self.image = engine.client.images.get(image).id
        self.name = f"bwdb{os.getpid()}x{time.monotonic_ns() % 10**6}"
        self.ids: dict[str, str] = {}

    def add_loop(self, name: str, mode: ServiceMode) -> None:
        service = self.engine.client.services.create(
            self.image, command=["sh", "-c", LOOP], name=f"{self.name}_{name}",
            labels={"com.docker.stack.namespace": self.name}, networks=["host"], mode=mode,
            stop_grace_period=1_000_000_000)
        self.ids[name] = str(service.id)

    def add_web(self, name: str) -> int:
        service_id, port, _ = create_web_service(self.engine, self.root, self.image, name,
                                                 stack=self.name)
        self.ids[name] = service_id
        return port

    def tasks(self, name: str) -> list[dict[str, Any]]:
        api: Any = self.engine.client.api
        return list(api.tasks(filters={"service": self.ids[name]}))

    def running(self, name: str) -> set[str]:
        return {t["ID"] for t in self.tasks(name) if t["Status"]["State"] == "running"}

    def replicas(self, name: str) -> int:
        spec = self.engine.client.services.get(self.ids[name]).attrs["Spec"]
        return int(spec["Mode"]["Replicated"]["Replicas"])

    def wait_running(self, counts: dict[str, int], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while any(len(self.running(name)) != count for name, count in counts.items()):
            assert time.monotonic() < deadline, {n: self.tasks(n) for n in counts}
            time.sleep(0.5)

    def remove(self) -> None:
        for service_id in self.ids.values():
            self.engine.client.services.get(service_id).remove()


@pytest.fixture
def stack(swarm: PrivateSwarm, tmp_path: Path, busybox_image: str) -> Iterator[Stack]:
    found = Stack(swarm, tmp_path, busybox_image)
    try:
        yield found
    finally:
        found.remove()


def _bins(folder: Path, swarm: PrivateSwarm, stack: Stack) -> Path:
    """PostgreSQL 15's tools; ``pg_restore`` first records which stack containers run."""
    folder.mkdir()
    for tool in ("psql", "pg_dump"):
        (folder / tool).symlink_to(PG_BIN / tool)
    script = folder / "pg_restore"
    script.write_text(PG_RESTORE.format(host=swarm.host, stack=stack.name, pg=PG_BIN,
                                        out=folder / "alive-during-restore"))
    script.chmod(0o755)
    return folder


def _config(cluster: PgCluster, dbname: str, stack: Stack, backups: Path, bins: Path,
            health: str, writers: list[str]) -> dict[str, Any]:
    return {
        "database": {"dsn": cluster.dsn(dbname=dbname)},
        "backups": {"directory": str(backups)},
        "health": {"url": health, "timeout_seconds": 2},
        "rollback": {"driver": "swarm", "project": stack.name},
        "db_rollback": {"target": "local", "bin_dir": str(bins), "writers": writers,
                        "require_passing_restore_test": False, "health_attempts": 120,
                        "health_wait_seconds": 0.5, "step_timeout_seconds": 120},
    }


async def test_writers_are_scaled_to_zero_and_back_to_their_recorded_counts(
        tmp_path: Path, pg_cluster: PgCluster, swarm: PrivateSwarm, stack: Stack,
        monkeypatch: pytest.MonkeyPatch) -> None:
    port = stack.add_web("backend")
    stack.add_loop("admin-bot", ServiceMode("replicated", replicas=2))
    stack.add_loop("scheduler", ServiceMode("replicated", replicas=1))
    counts = {"backend": 1, "admin-bot": 2, "scheduler": 1}
    stack.wait_running(counts)
    wait_for_port(port, timeout=60)
    before = {name: stack.running(name) for name in counts}
    names = subprocess.run(["docker", "-H", swarm.host, "ps", "--format", "{{.Names}}"],
                           check=True, capture_output=True, text=True).stdout.split()
    assert len([n for n in names if n.startswith(f"{stack.name}_")]) == 4, names  # as the probe
    dump = make_brace_dump(pg_cluster, tmp_path / "backups" / DUMP, revision="good", rows=20)
    pg_cluster.psql("update alembic_version set version_num = 'bad'", db=dump.dbname)
    bins = _bins(tmp_path / "bin", swarm, stack)
    monkeypatch.setenv("DOCKER_HOST", swarm.host)  # the daemon's engine is the swarm manager
    raw = _config(pg_cluster, dump.dbname, stack, tmp_path / "backups", bins,
                  f"http://127.0.0.1:{port}/api/health", list(counts))
    async with control_server(tmp_path, raw) as env:
        plan = await ctl("--socket", str(env.socket), "rollback", "db", "--dump", DUMP)
        assert plan.code == 1 and "not confirmed; nothing was changed" in plan.err, plan
        assert "scale them to 0" in plan.out and f"{stack.name}_admin-bot=0" in plan.out, plan
        run = await ctl("--socket", str(env.socket), "--json", "rollback", "db", "--dump", DUMP,
                        "--yes")
        assert run.code == 0, run
        outcome = run.json()
        action = outcome["action_id"]
        journal = [json.loads(r["evidence"]) for r in env.hub.store.query(
            "SELECT evidence FROM events WHERE action_id = ? AND source = 'journal' "
            "ORDER BY id", (action,))]
    recorded = {f"{stack.name}_{name}": count for name, count in counts.items()}
    assert outcome["writer_replicas"] == recorded and outcome["writers"] == "started"
    assert outcome["database"] == "restored" and outcome["health"] == "ok", outcome
    # the counts were journalled before anything was scaled
    first = next(e["state"] for e in journal if e.get("state", {}).get("writer_replicas"))
    assert first["writers"] == "stopping" and first["writer_replicas"] == recorded
    # no writer container ran while pg_restore did
    assert (bins / "alive-during-restore").read_text() == ""
    assert pg_cluster.psql("select version_num from alembic_version", db=dump.dbname) == "good"
    # each back at its recorded count, on new tasks; the old ones are all shut down
    stack.wait_running(counts)
    for name, count in counts.items():
        assert stack.replicas(name) == count
        assert not before[name] & stack.running(name), name


async def test_a_global_mode_writer_is_refused_before_anything_changes(
        tmp_path: Path, pg_cluster: PgCluster, swarm: PrivateSwarm, stack: Stack,
        monkeypatch: pytest.MonkeyPatch) -> None:
    port = stack.add_web("backend")
    stack.add_loop("cron", ServiceMode("global"))
    stack.wait_running({"backend": 1, "cron": 1})
    before = {name: stack.running(name) for name in ("backend", "cron")}
    dump = make_brace_dump(pg_cluster, tmp_path / "backups" / DUMP, rows=5)
    monkeypatch.setenv("DOCKER_HOST", swarm.host)
    raw = _config(pg_cluster, dump.dbname, stack, tmp_path / "backups",
                  _bins(tmp_path / "bin", swarm, stack), f"http://127.0.0.1:{port}/api/health",
                  ["backend", "cron"])
    async with control_server(tmp_path, raw) as env:
        run = await ctl("--socket", str(env.socket), "rollback", "db", "--dump", DUMP, "--yes")
        assert run.code == 1, run
        assert f"{stack.name}_cron run in global mode" in run.err, run.err
        assert "nothing was changed" in run.err
        assert env.hub.frozen() is None
    assert {name: stack.running(name) for name in before} == before
    assert stack.replicas("backend") == 1


@pytest.mark.parametrize(("failpoint", "journalled"), [
    ("journal:stopping_writers@2", "stopping"),  # the counts journalled, nothing scaled yet
    ("journal:stopping_writers@3", "stopped"),  # every writer at 0, its tasks gone
])
async def test_a_daemon_killed_while_stopping_writers_reports_their_counts(
        tmp_path: Path, pg_cluster: PgCluster, swarm: PrivateSwarm, stack: Stack,
        failpoint: str, journalled: str) -> None:
    stack.add_loop("admin-bot", ServiceMode("replicated", replicas=2))
    stack.add_loop("scheduler", ServiceMode("replicated", replicas=1))
    counts = {"admin-bot": 2, "scheduler": 1}
    stack.wait_running(counts)
    dump = make_brace_dump(pg_cluster, tmp_path / "src" / DUMP, rows=5)
    extra = f"""
[database]
dsn = "{pg_cluster.dsn(dbname=dump.dbname)}"
[rollback]
driver = "swarm"
project = "{stack.name}"
[db_rollback]
target = "local"
bin_dir = "{_bins(tmp_path / 'bin', swarm, stack)}"
writers = ["admin-bot", "scheduler"]
require_passing_restore_test = false
"""
    with switchable_server() as health:
        daemon = Daemon(tmp_path, health, extra=extra,
                        env={"DOCKER_HOST": swarm.host, FAILPOINTS: failpoint})
        os.replace(dump.path, tmp_path / "backups" / DUMP)
        try:
            daemon.wait_for("READY=1", timeout=60)
            run = await ctl("--socket", str(tmp_path / "control.sock"), "rollback", "db",
                            "--dump", DUMP, "--yes")
            assert daemon.proc.wait(60) == -signal.SIGKILL, (run, daemon.output())
            del daemon.env[FAILPOINTS]
            daemon.restart()
            daemon.wait_for("READY=1", timeout=60)
            status = await ctl("--socket", str(tmp_path / "control.sock"), "--json", "status")
        finally:
            daemon.close()
    message = str(status.json()["escalation"]["message"])
    assert "interrupted at step 'stopping_writers'" in message, message
    command = f"docker service scale {stack.name}_admin-bot=2 {stack.name}_scheduler=1"
    assert f"writers: {journalled}" in message and command in message, message
    assert {name: stack.replicas(name) for name in counts} == (
        counts if journalled == "stopping" else dict.fromkeys(counts, 0))
    # the reported command puts them back
    subprocess.run(["docker", "-H", swarm.host, *command.split()[1:], "--detach"], check=True,
                   capture_output=True, timeout=120)
    stack.wait_running(counts)
