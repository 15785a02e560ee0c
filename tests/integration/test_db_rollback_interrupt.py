"""A container restore that times out is ended *inside* the database container (by its
application_name), reported as UNKNOWN — never "unchanged" — and the action returns only once
no backend of it remains; the dumps pass through a private mktemp folder in the container, so a
symlink planted in its /tmp is never followed. Real postgres container, docker exec, pg_restore."""

from __future__ import annotations

import subprocess
from pathlib import Path

import docker
import pytest

from tests.integration.control_helpers import control_server, result
from tests.integration.test_gated_content import _passed
from tests.support.images import run_postgres
from tests.support.pg import PG_BIN, PgCluster, make_brace_dump

pytestmark = [pytest.mark.docker, pytest.mark.postgres, pytest.mark.slow]

# An expression index over a function that sleeps: created fast, then the function is replaced
# by a slow one, so the dump restores slowly (0.5 s per row while building the index).
SLOW_RESTORE = """
create function bw_slow(int) returns int immutable language sql as $$ select $1 $$;
create index users_bw_slow on users (bw_slow(id));
create or replace function bw_slow(int) returns int immutable language sql
    as $$ select $1 from pg_sleep(0.5) $$;
"""
ACTIVE_SQL = ("select count(*) from pg_stat_activity where datname = 'brace' "
              "and pid <> pg_backend_pid() and state <> 'idle'")


async def test_timed_out_container_restore_is_ended_inside_and_reported_unknown(
        tmp_path: Path, pg_cluster: PgCluster, docker_client: docker.DockerClient,
        postgres_image: str) -> None:
    backups = tmp_path / "backups"
    dump = make_brace_dump(pg_cluster, backups / "brace_20260101_000000.dump", rows=80,
                           extra_sql=SLOW_RESTORE)
    prod = run_postgres(docker_client, image=postgres_image)
    try:
        prod.exec("psql", "-c", "create role brace_user")
        prod.exec("psql", "-c", "create database brace")
        subprocess.run([str(PG_BIN / "pg_restore"), "--no-owner", "-d",
                        prod.dsn(dbname="brace"), "-L", "/dev/stdin", str(dump.path)],
                       input=_without_slow_index(dump.path), check=True, capture_output=True,
                       text=True)
        prod.exec("psql", "-d", "brace", "-c", "update alembic_version set version_num = 'bad'")
        # a container user plants the predictable names root used to write in the shared /tmp
        prod.exec("sh", "-c", "echo precious > /tmp/victim && for n in rollback safety; do "
                  "ln -s /tmp/victim /tmp/brace-watchdog-$n.dump; done")
        raw = {"database": {"dsn": prod.dsn(dbname="brace")},
               "backups": {"directory": str(backups)},
               "db_rollback": {"target": "container", "container": prod.container.name,
                               "writers": [], "restore_timeout_seconds": 8}}
        async with control_server(tmp_path, raw) as env:
            _passed(env, dump.path)
            plan = await result(env.socket, "rollback-db", {"dump": dump.path.name})
            reply = await result(env.socket, "approve", {"token": plan["data"]["token"]})
            # the action answered only after the restore was ended in the server
            code, active = prod.exec("psql", "-tA", "-d", "brace", "-c", ACTIVE_SQL)
            assert (code, active.strip()) == (0, "0"), active
            assert reply["error"]["code"] == "failed", reply
            details = reply["error"]["details"]
            assert details["stage"] == "restoring"
            database = details["state"]["database"]
            assert database.startswith("UNKNOWN") and "ended inside the server" in database
            advice = "\n".join(details["next_steps"])
            assert "UNKNOWN" in advice and "do NOT start the writers" in advice
            assert "unchanged" not in database and "rolled back:" not in advice
            assert details["state"]["restore_started"] is True
            # the journal holds the same picture for a later reader
            action = env.hub.store.actions(kind="db_rollback")[0]
            last = env.hub.store.last_journal_evidence(action.id)
            assert last["state"]["database"] == database
        code, revision = prod.exec("psql", "-tA", "-d", "brace", "-c",
                                   "select version_num from alembic_version")
        assert revision.strip() == "bad"  # the terminated transaction was rolled back
        assert prod.exec("cat", "/tmp/victim") == (0, "precious\n")
        code, listing = prod.exec("ls", "-a", "/tmp")
        assert "brace-watchdog-" not in listing.replace("brace-watchdog-rollback.dump", "") \
            .replace("brace-watchdog-safety.dump", ""), listing
    finally:
        prod.stop()


def _without_slow_index(dump: Path) -> str:
    """The dump's table of contents without the slow index, to seed 'production' quickly."""
    listing = subprocess.run([str(PG_BIN / "pg_restore"), "-l", str(dump)], check=True,
                             capture_output=True, text=True).stdout
    return "".join(line + "\n" for line in listing.splitlines() if "users_bw_slow" not in line)
