"""pg_hba.conf rollback against a real PostgreSQL whose broken pg_hba.conf refuses connections
until the action (planned and approved through the control socket) restores the ``.bak``."""

from __future__ import annotations

import pwd
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.integration.control_helpers import control_server, ctl, result
from tests.support.images import (
    PG_DATA,
    PG_HBA,
    hba_in_container_config,
    postgres_with_rejecting_hba,
)
from tests.support.pg import PG_BIN, PgCluster, dsn_connects

pytestmark = [pytest.mark.postgres]

BROKEN = ["host all all 127.0.0.1/32 reject", "host all all ::1/128 reject"]


def _config(cluster: PgCluster, reload_command: list[str] | None = None) -> dict[str, Any]:
    reload = reload_command or ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"),
                                "-D", str(cluster.datadir), "reload"]
    return {"database": {"dsn": cluster.dsn()},
            "network_rollback": {"pg_hba_path": str(cluster.datadir / "pg_hba.conf"),
                                 "reload_command": reload, "verify_attempts": 20,
                                 "verify_wait_seconds": 0.25}}


def _connects(cluster: PgCluster) -> bool:
    return dsn_connects(cluster.dsn())


def _break(cluster: PgCluster) -> str:
    """Keep the good file as .bak (like the runbook), install a rejecting one, reload."""
    good = cluster.break_hba(BROKEN)
    assert not _connects(cluster)
    return good


async def test_pg_hba_rollback_restores_connections(tmp_path: Path,
                                                    pg_cluster: PgCluster) -> None:
    good = _break(pg_cluster)
    hba = pg_cluster.datadir / "pg_hba.conf"
    async with control_server(tmp_path, _config(pg_cluster)) as env:
        plan = (await result(env.socket, "pg_hba_rollback"))["data"]
        assert any("reject" in line for line in plan["checks"]["diff"])
        run = await ctl("--socket", str(env.socket), "rollback", "pg-hba", stdin="pg_hba\n")
        assert run.code == 0, run
        assert "Plan for pg_hba_rollback" in run.out and "connection: ok" in run.out
        assert _connects(pg_cluster)
        assert hba.read_text() == good
        assert hba.stat().st_uid == pwd.getpwnam("postgres").pw_uid
        kept = list(pg_cluster.datadir.glob("pg_hba.conf.rollback-*"))
        assert len(kept) == 1 and "reject" in kept[0].read_text()
        action = env.hub.store.actions(kind="pg_hba_rollback")[0]
        assert action.status == "succeeded"
        again = await result(env.socket, "pg_hba_rollback")
        assert again["error"]["code"] == "refused" and "already identical" in again["error"][
            "message"]


async def test_pg_hba_rollback_failure_reports_how_to_undo(tmp_path: Path,
                                                           pg_cluster: PgCluster) -> None:
    _break(pg_cluster)
    async with control_server(tmp_path, _config(pg_cluster, ["false"])) as env:
        run = await ctl("--socket", str(env.socket), "rollback", "pg-hba", "--yes")
        assert run.code == 1, run
        assert "reloading" in run.err and "pg_hba.conf.rollback-" in run.err
        assert "to undo: copy" in run.err
        assert not _connects(pg_cluster)
        assert env.hub.escalation() is not None


async def test_missing_backup_is_refused(tmp_path: Path, pg_cluster: PgCluster) -> None:
    async with control_server(tmp_path, _config(pg_cluster)) as env:
        reply = await result(env.socket, "pg_hba_rollback")
        assert reply["error"]["code"] == "refused" and "does not exist" in reply["error"][
            "message"]


@pytest.mark.docker
async def test_pg_hba_rollback_inside_the_database_container(
        tmp_path: Path, docker_client: docker.DockerClient, postgres_image: str) -> None:
    with postgres_with_rejecting_hba(docker_client, postgres_image) as prod:
        prod.exec("pg_ctl", "reload", "-D", PG_DATA)
        assert not dsn_connects(prod.dsn())
        name = str(prod.container.name)
        raw = hba_in_container_config(
            prod, reload_command=["docker", "exec", "-u", "postgres", name, "pg_ctl", "reload",
                                  "-D", PG_DATA],
            verify_attempts=20, verify_wait_seconds=0.25)
        async with control_server(tmp_path, raw) as env:
            run = await ctl("--socket", str(env.socket), "--json", "rollback", "pg-hba", "--yes")
            assert run.code == 0, run
            assert run.json()["connection"] == "ok"
            assert dsn_connects(prod.dsn())
            code, listing = prod.exec("ls", PG_DATA)
            assert code == 0 and "pg_hba.conf.rollback-" in listing
            code, owner = prod.exec("stat", "-c", "%U", PG_HBA)
            assert owner.strip() == "postgres"
