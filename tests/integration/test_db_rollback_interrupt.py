"""A container restore that times out or is cancelled (the daemon stopping) is ended *inside*
the database container (by its application_name), reported as UNKNOWN — never "unchanged" —
and the action ends only once no backend of it remains — holding the action lock until then,
so another approved action is refused meanwhile; the dumps pass through a private
mktemp folder in the container, so a symlink planted in its /tmp is never followed. Real
postgres container, docker exec, pg_restore."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from brace_watchdog.actions.db_rollback import DbRollback
from tests.integration.control_helpers import (
    Env,
    TouchAction,
    add_touch_planner,
    call,
    control_server,
    result,
)
from tests.integration.test_gated_content import _passed
from tests.support.images import PgContainer, run_postgres
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
RESTORE_SQL = ("select count(*) from pg_stat_activity "
               "where application_name like 'brace-watchdog-restore-%'")
ACTIVE_SQL = ("select count(*) from pg_stat_activity where datname = 'brace' "
              "and pid <> pg_backend_pid() and state <> 'idle'")


@pytest.mark.parametrize("how", ["timeout", "cancel"])
async def test_interrupted_container_restore_is_ended_inside_and_reported_unknown(
        how: str, tmp_path: Path, pg_cluster: PgCluster, docker_client: docker.DockerClient,
        postgres_image: str) -> None:
    backups = tmp_path / "backups"
    dump = make_brace_dump(pg_cluster, backups / "brace_20260101_000000.dump", rows=80,
                           extra_sql=SLOW_RESTORE)
    gate = Gate(tmp_path, closed=how == "timeout")
    prod = run_postgres(docker_client, image=postgres_image)
    try:
        _seed_production(prod, dump.path)
        raw = {"database": {"dsn": prod.dsn(dbname="brace")},
               "backups": {"directory": str(backups)},
               "db_rollback": {"target": "container", "container": prod.container.name,
                               "writers": [],
                               "restore_timeout_seconds": 8 if how == "timeout" else 600}}
        async with control_server(tmp_path, raw) as env:
            touch = gate.serve(env)
            _passed(env, dump.path)
            other = (await result(env.socket, "plan-touch"))["data"]["token"]
            plan = await result(env.socket, "db_rollback", {"dump": dump.path.name})
            approve = asyncio.ensure_future(call(env.socket, "approve",
                                                 {"token": plan["data"]["token"]}))
            if how == "cancel":  # the daemon stops while pg_restore runs in the container
                await _restore_running(prod)
                await env.server.stop()
            else:
                await _others_refused_while_ending(env, gate, approve, other)
            answer = (await asyncio.gather(approve, return_exceptions=True))[0]
            # the action ended only after the restore was ended in the server
            code, active = prod.exec("psql", "-tA", "-d", "brace", "-c", ACTIVE_SQL)
            assert (code, active.strip()) == (0, "0"), active
            action = env.hub.store.actions(kind="db_rollback")[0]
            last = env.hub.store.last_journal_evidence(action.id)
            _assert_unknown(last["state"], last["next_steps"], how)
            if how == "timeout":
                assert isinstance(answer, list), answer
                details = answer[-1]["error"]["details"]
                assert details["stage"] == "restoring"
                _assert_unknown(details["state"], details["next_steps"], how)
                # ended: the lock is free, and the token refused meanwhile was kept
                assert (await result(env.socket, "approve", {"token": other}))["ok"]
                assert touch.path.read_text() == "root->root\n"
        _assert_clean(prod)
    finally:
        gate.open()
        prod.stop()


class Gate:
    """A ``docker`` stand-in that holds the call ending the restore (``pg_terminate_backend``)
    until :meth:`open`; :attr:`reached` appears when one waits there."""

    def __init__(self, folder: Path, *, closed: bool) -> None:
        self.reached, self._gate = folder / "ending", folder / "gate"
        self.docker = folder / "docker"
        self.docker.write_text(
            f'#!/bin/sh\ncase "$*" in *pg_terminate_backend*) touch {self.reached}; n=0\n'
            f'  while [ ! -e {self._gate} ] && [ $n -lt 3000 ]; do sleep 0.1; n=$((n+1)); '
            'done;; esac\nexec docker "$@"\n')
        self.docker.chmod(0o755)
        if not closed:
            self.open()

    def open(self) -> None:
        self._gate.touch()

    def serve(self, env: Env) -> TouchAction:
        """Serve the DB rollback through this ``docker``, and a harmless second action."""
        touch = TouchAction(env.hub.config.backups.directory.parent / "touched")
        env.server.gated = {"db_rollback": DbRollback(env.hub, docker_command=[str(self.docker)]),
                            "touch": touch}
        add_touch_planner(env.server)
        return touch


# How long the DB rollback's approval is watched for an early answer while its restore is held
# being ended: it must not come at all, so the margin only bounds how long the test looks.
WATCH_SECONDS = 3.0


async def _others_refused_while_ending(env: Env, gate: Gate, approve: asyncio.Future[Any],
                                       other: str) -> None:
    """pg_restore timed out and is being ended (held at the gate): the DB rollback keeps the
    lock — its approval stays unanswered and another approved action is refused."""
    deadline = time.monotonic() + 120
    while not gate.reached.exists():
        assert time.monotonic() < deadline, "the restore was never ended"
        await asyncio.sleep(0.1)
    done, _ = await asyncio.wait({approve}, timeout=WATCH_SECONDS)
    assert not done, approve.result()
    status = await result(env.socket, "status")
    assert status["data"]["action_lock"]["kind"] == "db_rollback", status
    busy = await result(env.socket, "approve", {"token": other})
    assert busy["error"]["code"] == "refused", busy
    assert "approved db_rollback" in busy["error"]["message"]
    assert "one action at a time" in busy["error"]["message"]
    gate.open()


def _assert_clean(prod: PgContainer) -> None:
    _, revision = prod.exec("psql", "-tA", "-d", "brace", "-c",
                               "select version_num from alembic_version")
    assert revision.strip() == "bad"  # the terminated transaction was rolled back
    assert prod.exec("cat", "/tmp/victim") == (0, "precious\n")
    _, listing = prod.exec("ls", "-a", "/tmp")
    assert "brace-watchdog-" not in listing.replace("brace-watchdog-rollback.dump", "") \
        .replace("brace-watchdog-safety.dump", ""), listing


def _assert_unknown(state: dict[str, Any], next_steps: list[str], how: str) -> None:
    database = state["database"]
    assert database.startswith("UNKNOWN") and "ended inside the server" in database, state
    assert ("timed out" if how == "timeout" else "cancelled") in database
    advice = "\n".join(next_steps)
    assert "UNKNOWN" in advice and "do NOT start the writers" in advice
    assert "unchanged" not in database and "rolled back:" not in advice
    assert state["restore_started"] is True


def _seed_production(prod: PgContainer, dump: Path) -> None:
    """'bad' production data, and symlinks a container user planted at the predictable names
    root used to write in the container's shared /tmp."""
    prod.exec("psql", "-c", "create role brace_user")
    prod.exec("psql", "-c", "create database brace")
    subprocess.run([str(PG_BIN / "pg_restore"), "--no-owner", "-d", prod.dsn(dbname="brace"),
                    "-L", "/dev/stdin", str(dump)], input=_without_slow_index(dump),
                   check=True, capture_output=True, text=True)
    prod.exec("psql", "-d", "brace", "-c", "update alembic_version set version_num = 'bad'")
    prod.exec("sh", "-c", "echo precious > /tmp/victim && for n in rollback safety; do "
              "ln -s /tmp/victim /tmp/brace-watchdog-$n.dump; done")


async def _restore_running(prod: PgContainer, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        _, found = await asyncio.to_thread(prod.exec, "psql", "-tA", "-d", "brace", "-c",
                                           RESTORE_SQL)
        if found.strip() not in ("", "0"):
            return
        assert time.monotonic() < deadline, "pg_restore never started in the container"
        await asyncio.sleep(0.2)


def _without_slow_index(dump: Path) -> str:
    """The dump's table of contents without the slow index, to seed 'production' quickly."""
    listing = subprocess.run([str(PG_BIN / "pg_restore"), "-l", str(dump)], check=True,
                             capture_output=True, text=True).stdout
    return "".join(line + "\n" for line in listing.splitlines() if "users_bw_slow" not in line)
