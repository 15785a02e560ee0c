"""What was approved is exactly what runs: a gated action's token binds file *content* (a dump's
sha256/size/inode, pg_hba.conf's and daemon.json's hashes), a change after approval is refused
with nothing changed, restore tests are keyed by content, and files root creates in shared
folders never follow a planted symlink. Real PostgreSQL 15, real control socket, real files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import docker
import pytest

from brace_watchdog.files import identify
from tests.integration.control_helpers import Env, control_server, result
from tests.integration.test_pg_hba_rollback import _break
from tests.integration.test_pg_hba_rollback import _config as hba_config
from tests.support.images import (
    PG_HBA,
    hba_in_container_config,
    postgres_with_rejecting_hba,
    run_postgres,
)
from tests.support.pg import PG_BIN, PgCluster, make_brace_dump
from tests.support.webserver import switchable_server

NIGHTLY = "nightly/brace_20260101_000000.dump"
FIXED_NOW = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC: predictable copy / safety-dump names


def _db_config(cluster: PgCluster, dbname: str, backups: Path, **db: Any) -> dict[str, Any]:
    return {"database": {"dsn": cluster.dsn(dbname=dbname)},
            "backups": {"directory": str(backups)},
            "health": {"url": "http://127.0.0.1:9/api/health", "timeout_seconds": 1},
            "db_rollback": {"target": "local", "bin_dir": str(PG_BIN), "writers": [],
                            "health_attempts": 1, "health_wait_seconds": 0, **db}}


def _passed(env: Env, dump: Path) -> None:
    env.hub.store.record_restore_result(started_at=1, finished_at=2, dump_name=dump.name,
                                        dump_size=1, passed=True,
                                        dump_sha256=identify(dump).sha256)


async def _plan(env: Env, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    reply = await result(env.socket, cmd, args)
    assert reply["ok"], reply
    data: dict[str, Any] = reply["data"]
    return data


def _rewrite_in_place(path: Path, data: bytes) -> None:
    with path.open("r+b") as out:
        out.truncate(0)
        out.write(data)


def _replace_by_rename(path: Path, data: bytes) -> None:
    swap = path.with_name(".swap")
    swap.write_bytes(data)
    os.replace(swap, path)


@pytest.mark.postgres
@pytest.mark.parametrize("swap", [_rewrite_in_place, _replace_by_rename])
async def test_dump_changed_after_approval_is_refused_and_nothing_happens(
        tmp_path: Path, pg_cluster: PgCluster, swap: Any) -> None:
    backups = tmp_path / "backups"
    dump = make_brace_dump(pg_cluster, backups / NIGHTLY, revision="good", rows=5)
    other = make_brace_dump(pg_cluster, tmp_path / "other.dump", revision="evil", rows=7)
    pg_cluster.psql("update alembic_version set version_num = 'live'", db=dump.dbname)
    async with control_server(tmp_path, _db_config(pg_cluster, dump.dbname, backups)) as env:
        _passed(env, dump.path)
        plan = await _plan(env, "db_rollback", {"dump": NIGHTLY})
        # the subfolder is part of the name, and the token binds the content
        assert plan["target"] == NIGHTLY and plan["args"]["dump"] == NIGHTLY
        assert plan["args"]["sha256"] == identify(dump.path).sha256
        swap(dump.path, other.path.read_bytes())
        reply = await result(env.socket, "approve", {"token": plan["token"]})
        assert reply["error"]["code"] == "refused", reply
        message = reply["error"]["message"]
        assert "changed after the plan was made" in message and "nothing was changed" in message
        assert NIGHTLY in message
        # nothing happened: no action, not frozen, the data as it was, no file left anywhere
        assert not env.hub.store.actions() and env.hub.frozen() is None
        assert pg_cluster.psql("select version_num from alembic_version",
                               db=dump.dbname) == "live"
        assert sorted(p.name for p in backups.rglob("*")) == ["brace_20260101_000000.dump",
                                                              "nightly"]
        assert not list((tmp_path / "work").glob("*/*"))


@pytest.mark.postgres
async def test_restore_tests_are_keyed_by_content_not_name(tmp_path: Path,
                                                           pg_cluster: PgCluster) -> None:
    backups = tmp_path / "backups"
    dump = make_brace_dump(pg_cluster, backups / NIGHTLY, rows=5)
    async with control_server(tmp_path, _db_config(pg_cluster, dump.dbname, backups)) as env:
        _passed(env, dump.path)
        plan = await _plan(env, "db_rollback", {"dump": NIGHTLY})
        assert plan["checks"]["restore_tests"][0]["passed"] is True
        # same name, other content: the passing test no longer counts
        make_brace_dump(pg_cluster, tmp_path / "other.dump", revision="other", rows=9)
        _replace_by_rename(dump.path, (tmp_path / "other.dump").read_bytes())
        reply = await result(env.socket, "db_rollback", {"dump": NIGHTLY})
        assert reply["error"]["code"] == "refused", reply
        assert "no passing restore test of this content" in reply["error"]["message"]


@pytest.mark.postgres
@pytest.mark.parametrize("changed", ["pg_hba.conf", "pg_hba.conf.bak"])
async def test_pg_hba_changed_after_approval_is_refused(tmp_path: Path, pg_cluster: PgCluster,
                                                        changed: str) -> None:
    _break(pg_cluster)
    hba = pg_cluster.datadir / "pg_hba.conf"
    async with control_server(tmp_path, hba_config(pg_cluster)) as env:
        plan = await _plan(env, "pg_hba_rollback")
        target = pg_cluster.datadir / changed
        with target.open("a") as out:
            out.write("host all all 0.0.0.0/0 trust\n")
        before = hba.read_bytes()
        reply = await result(env.socket, "approve", {"token": plan["token"]})
        assert reply["error"]["code"] == "refused", reply
        assert f"{target} changed after the plan was made" in reply["error"]["message"]
        assert hba.read_bytes() == before
        assert not list(pg_cluster.datadir.glob("pg_hba.conf.rollback-*"))
        assert not env.hub.store.actions()


@pytest.mark.parametrize("changed", ["daemon.json", "daemon.json.bak"])
async def test_daemon_json_changed_after_approval_is_refused(tmp_path: Path,
                                                             changed: str) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "daemon.json").write_text('{"broken": true}')
    (folder / "daemon.json.bak").write_text('{"log-driver": "json-file"}')
    marker = tmp_path / "restarted"
    raw = {"network_rollback": {"docker_daemon_json": str(folder / "daemon.json"),
                                "docker_restart_command": ["touch", str(marker)]}}
    async with control_server(tmp_path, raw) as env:
        plan = await _plan(env, "docker_daemon_rollback")
        assert plan["args"]["backup_sha256"] == identify(folder / "daemon.json.bak").sha256
        (folder / changed).write_text('{"insecure-registries": ["0.0.0.0/0"]}')
        reply = await result(env.socket, "approve", {"token": plan["token"]})
        assert reply["error"]["code"] == "refused", reply
        assert "changed after the plan was made" in reply["error"]["message"]
        assert not marker.exists() and not env.hub.store.actions()
        assert not list(folder.glob("daemon.json.rollback-*"))


async def test_kept_copy_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "daemon.json").write_text('{"broken": true}')
    (folder / "daemon.json.bak").write_text('{"log-driver": "json-file"}')
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    # someone who can write the folder plants the copy's predictable name
    (folder / "daemon.json.rollback-20260101_000000").symlink_to(victim)
    raw = {"network_rollback": {"docker_daemon_json": str(folder / "daemon.json"),
                                "docker_restart_command": ["true"]}}
    async with control_server(tmp_path, raw, clock=lambda: FIXED_NOW) as env:
        plan = await _plan(env, "docker_daemon_rollback")
        reply = await result(env.socket, "approve", {"token": plan["token"]})
        assert reply["error"]["code"] == "failed", reply
        assert reply["error"]["details"]["stage"] == "keeping_current"
        assert victim.read_text() == "precious\n"
        assert (folder / "daemon.json").read_text() == '{"broken": true}'


@pytest.mark.postgres
async def test_safety_dump_never_follows_a_planted_symlink(tmp_path: Path,
                                                           pg_cluster: PgCluster) -> None:
    backups = tmp_path / "backups"
    dump = make_brace_dump(pg_cluster, backups / "brace_20260101_000000.dump", rows=5)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for planted in (".brace_safety_20260101_000000.dump.partial",
                    "brace_safety_20260101_000000.dump"):
        (backups / planted).symlink_to(victim)
    raw = _db_config(pg_cluster, dump.dbname, backups)
    async with control_server(tmp_path, raw, clock=lambda: FIXED_NOW) as env:
        _passed(env, dump.path)
        plan = await _plan(env, "db_rollback", {"dump": dump.path.name})
        reply = await result(env.socket, "approve", {"token": plan["token"]})
        assert reply["error"]["code"] == "failed", reply
        details = reply["error"]["details"]
        assert details["stage"] == "safety_dump", details
        assert "already exists" in reply["error"]["message"]
        assert details["state"]["database"] == "untouched"
        assert victim.read_text() == "precious\n"


@pytest.mark.postgres
async def test_a_safety_dump_missing_a_live_table_stops_before_the_restore(
        tmp_path: Path, pg_cluster: PgCluster) -> None:
    backups = tmp_path / "backups"
    dump = make_brace_dump(pg_cluster, backups / "brace_20260101_000000.dump", rows=5)
    pg_cluster.psql("update alembic_version set version_num = 'live'", db=dump.dbname)
    # a pg_dump that silently leaves a table out (a bad filter, a broken wrapper)
    bins = _bin_dir_with(tmp_path / "bin", "pg_dump",
                         f'exec {PG_BIN}/pg_dump "$@" -T public.orders')
    raw = _db_config(pg_cluster, dump.dbname, backups, bin_dir=str(bins))
    async with control_server(tmp_path, raw) as env:
        _passed(env, dump.path)
        plan = await _plan(env, "db_rollback", {"dump": dump.path.name})
        reply = await result(env.socket, "approve", {"token": plan["token"]})
        assert reply["error"]["code"] == "failed", reply
        details = reply["error"]["details"]
        assert details["stage"] == "safety_dump"
        assert "public.orders" in reply["error"]["message"]
        assert "not proven" in reply["error"]["message"]
        assert details["state"]["database"] == "untouched"
        assert details["state"]["safety_dump"] is None
        assert pg_cluster.psql("select version_num from alembic_version",
                               db=dump.dbname) == "live"
        assert not list(backups.glob("brace_safety_*"))
    shutil.rmtree(bins)


@pytest.mark.postgres
async def test_full_restore_proof_of_the_safety_dump_gates_the_restore(
        tmp_path: Path, pg_cluster: PgCluster) -> None:
    """prove_safety_dump = "restore": the safety dump goes through the restore-test machinery
    first. Production grants to a role the throwaway server does not have, so the safety dump
    lists every table (the --list check passes) yet does not restore cleanly: nothing
    destructive happens."""
    backups = tmp_path / "backups"
    dump = make_brace_dump(pg_cluster, backups / "brace_20260101_000000.dump", rows=5)
    pg_cluster.psql("create role bw_prod_only; grant select on users to bw_prod_only; "
                    "update alembic_version set version_num = 'live'", db=dump.dbname)
    raw = _db_config(pg_cluster, dump.dbname, backups, prove_safety_dump="restore")
    raw["restore_test"] = {"backend": "local", "local_bin_dir": str(PG_BIN)}
    async with control_server(tmp_path, raw) as env:
        _passed(env, dump.path)
        plan = await _plan(env, "db_rollback", {"dump": dump.path.name})
        assert any("full restore into a throwaway server" in step for step in plan["steps"])
        reply = await result(env.socket, "approve", {"token": plan["token"]})
        assert reply["error"]["code"] == "failed", reply
        assert reply["error"]["details"]["stage"] == "safety_dump"
        message = reply["error"]["message"]
        assert "did not restore into a throwaway server" in message and "bw_prod_only" in message
        assert reply["error"]["details"]["state"]["database"] == "untouched"
        assert pg_cluster.psql("select version_num from alembic_version",
                               db=dump.dbname) == "live"
        assert not list(backups.glob("brace_safety_*"))


@pytest.mark.docker
async def test_pg_hba_in_the_container_never_follows_a_planted_symlink(
        tmp_path: Path, docker_client: docker.DockerClient, postgres_image: str) -> None:
    with postgres_with_rejecting_hba(docker_client, postgres_image) as prod:
        prod.exec("sh", "-c", f"echo precious > /tmp/victim"
                  f" && ln -s /tmp/victim {PG_HBA}.rollback-20260101_000000")
        raw = hba_in_container_config(prod, reload_command=["true"], verify_attempts=1)
        async with control_server(tmp_path, raw, clock=lambda: FIXED_NOW) as env:
            plan = await _plan(env, "pg_hba_rollback")
            reply = await result(env.socket, "approve", {"token": plan["token"]})
            assert reply["error"]["code"] == "failed", reply
            assert reply["error"]["details"]["stage"] == "keeping_current"
        assert prod.exec("cat", "/tmp/victim") == (0, "precious\n")
        assert "reject" in prod.exec("cat", PG_HBA)[1]


def _bin_dir_with(folder: Path, tool: str, script: str) -> Path:
    """A ``bin_dir`` with the real PostgreSQL tools, ``tool`` replaced by a shell ``script``."""
    folder.mkdir()
    for name in ("psql", "pg_dump", "pg_restore"):
        if name != tool:
            (folder / name).symlink_to(PG_BIN / name)
    (folder / tool).write_text(f"#!/bin/sh\n{script}\n")
    (folder / tool).chmod(0o755)
    return folder


@pytest.mark.postgres
async def test_the_restore_reads_the_private_copy_not_the_original(
        tmp_path: Path, pg_cluster: PgCluster) -> None:
    """The original is swapped for other (valid, passing-looking) content while the safety dump
    runs — after the private copy was made and checked: the database gets the approved data."""
    backups = tmp_path / "backups"
    dump = make_brace_dump(pg_cluster, backups / NIGHTLY, revision="approved", rows=5)
    other = make_brace_dump(pg_cluster, tmp_path / "other.dump", revision="swapped", rows=7)
    pg_cluster.psql("update alembic_version set version_num = 'live'", db=dump.dbname)
    # pg_dump runs only for the safety dump (its --version at the plan excepted): it swaps the
    # original in place, then dumps
    bins = _bin_dir_with(tmp_path / "bin", "pg_dump",
                         f'case " $* " in *" --version "*) ;; *) cp {other.path} {dump.path};; '
                         f'esac\nexec {PG_BIN}/pg_dump "$@"')
    with switchable_server() as health:
        raw = _db_config(pg_cluster, dump.dbname, backups, bin_dir=str(bins))
        raw["health"] = {"url": health.url(), "timeout_seconds": 2}
        async with control_server(tmp_path, raw) as env:
            _passed(env, dump.path)
            plan = await _plan(env, "db_rollback", {"dump": NIGHTLY})
            reply = await result(env.socket, "approve", {"token": plan["token"]})
            assert reply["ok"], reply
            assert reply["data"]["database"] == "restored"
    assert dump.path.read_bytes() == other.path.read_bytes()  # the swap did happen
    assert pg_cluster.psql("select version_num from alembic_version",
                           db=dump.dbname) == "approved"
    assert pg_cluster.psql("select count(*) from users", db=dump.dbname) == "5"


# ``docker``, and then the staged dump in the container is changed (a stand-in, on PATH, for
# whoever can write the container's files: the engine, the copy and the hash are real).
TAMPERING_DOCKER = """#!/bin/sh
{real} "$@"; code=$?
if {when}; then
  {real} exec -u 0 {container} sh -c \
    'for f in /tmp/brace-watchdog-*/brace_2*.dump; do echo tampered >> "$f"; done'
fi
exit $code
"""
WHEN = {"after_cp": '[ "$1" = cp ]',
        "before_restore": 'case "$*" in *" pg_dump "*) true;; *) false;; esac'}


@pytest.mark.docker
@pytest.mark.postgres
@pytest.mark.parametrize("when", list(WHEN))
async def test_a_dump_changed_inside_the_container_is_never_restored(
        when: str, tmp_path: Path, pg_cluster: PgCluster, docker_client: docker.DockerClient,
        postgres_image: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Container target: the copy is hashed again in the container after ``docker cp`` (a
    change refuses before anything stops) and right before pg_restore reads it."""
    backups = tmp_path / "backups"
    dump = make_brace_dump(pg_cluster, backups / "brace_20260101_000000.dump", rows=5)
    prod = run_postgres(docker_client, image=postgres_image)
    try:
        prod.load_brace(dump.path, PG_BIN / "pg_restore")
        prod.exec("psql", "-d", "brace", "-c", "update alembic_version set version_num = 'bad'")
        _tampering_docker(tmp_path / "bin", prod.container.name, WHEN[when], monkeypatch)
        raw = {"database": {"dsn": prod.dsn(dbname="brace")},
               "backups": {"directory": str(backups)},
               "db_rollback": {"target": "container", "container": prod.container.name,
                               "writers": []}}
        async with control_server(tmp_path, raw) as env:
            _passed(env, dump.path)
            plan = await _plan(env, "db_rollback", {"dump": dump.path.name})
            reply = await result(env.socket, "approve", {"token": plan["token"]})
            message = reply["error"]["message"]
            assert f"the dump in container {prod.container.name}" in message, reply
            assert f"not the approved {identify(dump.path).sha256[:16]}" in message
            if when == "after_cp":
                assert reply["error"]["code"] == "refused", reply
                assert "nothing was stopped or changed" in message
                assert not env.hub.store.actions() and env.hub.frozen() is None
            else:
                assert reply["error"]["details"]["stage"] == "restoring", reply
                assert "nothing was restored" in message
                assert not reply["error"]["details"]["state"]["restore_started"]
        code, revision = prod.exec("psql", "-tA", "-d", "brace", "-c",
                                   "select version_num from alembic_version")
        assert (code, revision.strip()) == (0, "bad")
        assert "brace-watchdog-" not in prod.exec("ls", "/tmp")[1]
    finally:
        prod.stop()


def _tampering_docker(folder: Path, container: str, when: str,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which("docker")
    assert real, "docker CLI not found"
    folder.mkdir()
    (folder / "docker").write_text(TAMPERING_DOCKER.format(real=real, when=when,
                                                           container=container))
    (folder / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
