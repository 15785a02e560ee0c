"""A single instance acts as before leadership existed: the real daemon process with
``[leadership] enabled = true`` but no ``[database] dsn`` (``check-config`` and the daemon say
it acts alone), and with ``enabled = false`` beside a real PostgreSQL (no lock session is ever
opened) — no election runs, ``brace_watchdog_leader`` reads 1 and it plans a gated action, which
a follower would refuse."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from brace_watchdog.state import StateStore
from tests.integration.control_helpers import ctl, short_dir
from tests.support.daemon import BIN, Daemon, write_config
from tests.support.net import free_port
from tests.support.pg import PgCluster
from tests.support.webserver import switchable_server

pytestmark = [pytest.mark.postgres]

UNUSED = "[leadership] enabled = true but [database] dsn is empty: no election"
LOCK_SESSIONS = ("select count(*) from pg_stat_activity "
                 "where application_name like 'brace-watchdog@%'")


def _extra(root: Path, *, enabled: bool, dsn: str) -> str:
    """``[leadership]``, ``[database]`` and a docker daemon.json rollback the daemon can plan
    (two files that differ; the plan is never approved, so nothing changes)."""
    (root / "daemon.json").write_text('{"debug": true}\n')
    (root / "daemon.json.bak").write_text("{}\n")
    return f"""
[database]
dsn = "{dsn}"
[leadership]
enabled = {json.dumps(enabled)}
[network_rollback]
docker_daemon_json = "{root / 'daemon.json'}"
docker_restart_command = ["true"]
"""


async def _acts_alone(root: Path, extra: str, cluster: PgCluster | None = None) -> list[str]:
    """Start the daemon on ``extra``; it must lead alone, open no lock session on ``cluster``
    and plan the gated rollback. Returns the messages of its ``daemon.started`` and
    ``leadership.*`` events."""
    root.mkdir()
    folder = short_dir()
    sock = ["--socket", str(folder / "control.sock")]
    try:
        with switchable_server() as health:
            daemon = Daemon(root, health, extra=extra,
                            env={"BRACE_WATCHDOG__CONTROL__SOCKET": sock[1],
                                 # the plan is printed and left for another operator
                                 "BRACE_WATCHDOG__CONTROL__TWO_PERSON_RULE": "true"})
            try:
                daemon.wait_for("READY=1", timeout=60)
                assert daemon.sample("brace_watchdog_leader") == 1.0, daemon.output()
                status = (await ctl(*sock, "--json", "status")).json()
                assert status["leadership"]["acts"], status["leadership"]
                assert not status["leadership"]["enabled"], status["leadership"]
                planned = await ctl(*sock, "--json", "rollback", "docker-daemon")
                assert planned.code == 0, (planned, daemon.output()[-3000:])
                assert planned.json()["token"]
                if cluster is not None:
                    assert cluster.psql(LOCK_SESSIONS) == "0"
            finally:
                daemon.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    store = StateStore(daemon.state_path).open()
    try:
        return [e.message for e in store.events(limit=1000)
                if e.kind == "daemon.started" or e.kind.startswith("leadership.")]
    finally:
        store.close()


@pytest.mark.daemon_ctl("rollback docker-daemon", "status")
async def test_without_a_database_or_with_leadership_off_a_single_instance_acts(
        tmp_path: Path, pg_cluster: PgCluster) -> None:
    extra = _extra(tmp_path, enabled=True, dsn="")
    config = tmp_path / "check.toml"
    write_config(config, health_url="http://127.0.0.1:9/", metrics_port=free_port(),
                 extra=extra)
    checked = subprocess.run([str(BIN), "check-config", "--config", str(config)],
                             capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0 and f"note: {UNUSED}" in checked.stdout, checked
    said = await _acts_alone(tmp_path / "enabled-no-dsn", extra)
    assert any(UNUSED in m for m in said), said
    assert not any(m.startswith("started") and "leadership" in m for m in said), said

    said = await _acts_alone(tmp_path / "disabled", _extra(tmp_path, enabled=False,
                                                           dsn=pg_cluster.dsn()), pg_cluster)
    assert [m for m in said if not m.startswith("started")] == [], said
    assert "database" in said[0] and "leadership" not in said[0], said
