"""A gated action approved through the real daemon process: ``brace-watchdog run`` with the
two-person rule, one operator plans the pg_hba.conf rollback, another inspects and approves it
with the token piped on stdin, and the real PostgreSQL accepts connections again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from brace_watchdog.state import StateStore
from tests.integration.control_helpers import ctl, short_dir
from tests.support.daemon import Daemon
from tests.support.pg import PG_BIN, PgCluster, dsn_connects
from tests.support.webserver import switchable_server

pytestmark = [pytest.mark.postgres]


def _two_person_env(socket: Path) -> dict[str, str]:
    """``[control]`` overrides: a socket ``nobody`` can reach, ``nobody`` an operator (its
    group ``nogroup`` owns the socket), and approval by a second person."""
    return {"BRACE_WATCHDOG__CONTROL__SOCKET": str(socket),
            "BRACE_WATCHDOG__CONTROL__GROUP": "nogroup",
            "BRACE_WATCHDOG__CONTROL__OPERATORS": json.dumps(["nobody"]),
            "BRACE_WATCHDOG__CONTROL__TWO_PERSON_RULE": "true"}


@pytest.mark.daemon_ctl("rollback pg-hba", "inspect", "approve", "status")
async def test_a_second_operator_approves_the_pg_hba_rollback_to_success(
        tmp_path: Path, pg_cluster: PgCluster) -> None:
    good = pg_cluster.break_hba(["host all all 127.0.0.1/32 reject"])
    assert not dsn_connects(pg_cluster.dsn())
    reload = ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D",
              str(pg_cluster.datadir), "reload"]
    extra = f"""
[database]
dsn = "{pg_cluster.dsn()}"
[network_rollback]
pg_hba_path = "{pg_cluster.datadir / 'pg_hba.conf'}"
reload_command = {json.dumps(reload)}
verify_attempts = 40
verify_wait_seconds = 0.25
"""
    folder = short_dir()
    sock = ["--socket", str(folder / "control.sock")]
    try:
        with switchable_server() as health:
            daemon = Daemon(tmp_path, health, extra=extra,
                            env=_two_person_env(folder / "control.sock"))
            try:
                daemon.wait_for("READY=1", timeout=60)
                planned = await ctl(*sock, "--json", "rollback", "pg-hba")
                assert planned.code == 0, (planned, daemon.output()[-3000:])
                plan = planned.json()
                assert plan["two_person_rule"] and any("reject" in line for line in
                                                       plan["checks"]["diff"])
                shown = await ctl(*sock, "inspect", stdin=f"{plan['token']}\n", as_nobody=True)
                assert shown.code == 0 and "pg_hba_rollback planned by root (uid 0)" in shown.out
                own = await ctl(*sock, "approve", "--yes", stdin=f"{plan['token']}\n")
                assert own.code == 1 and "two-person" in own.err, own
                run = await ctl(*sock, "approve", stdin=f"{plan['token']}\npg_hba\n",
                                as_nobody=True)
                assert run.code == 0, (run, daemon.output()[-3000:])
                assert "connection: ok" in run.out
                status = (await ctl(*sock, "--json", "status")).json()
                assert status["frozen"] is None and status["open_actions"] == []
            finally:
                daemon.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert dsn_connects(pg_cluster.dsn())
    assert (pg_cluster.datadir / "pg_hba.conf").read_text() == good
    store = StateStore(daemon.state_path).open()
    try:
        action = store.actions(kind="pg_hba_rollback")[0]
        assert action.status == "succeeded"
        approved = store.events(kinds=("approval.approved",))
        assert approved[0].message.startswith("nobody (uid 65534) approved"), approved
    finally:
        store.close()
