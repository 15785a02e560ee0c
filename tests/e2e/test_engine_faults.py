"""The docker engine stopped for 30 s and started again, on a private engine (never the shared
one): while the daemon (rollback on) is idle it keeps probing, serving metrics and pinging the
watchdog, counts the rollback component's errors, takes no action and raises no escalation, and
recovers by itself; during a rollback, the rollback ends exactly once and is never repeated;
during a restore test, the test fails once and its leftover container goes when the engine
is back."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import docker
import pytest

from brace_watchdog.config import load_config
from tests.support.daemon import Daemon
from tests.support.dockerd import PrivateDockerd
from tests.support.images import ensure_busybox_image, ensure_postgres_image
from tests.support.pg import PgCluster, make_brace_dump
from tests.support.stack import (
    ensure_web_images,
    new_stack,
    wait_for_event,
    write_daemon_config,
)
from tests.support.webserver import switchable_server

OUTAGE_SECONDS = 30.0
RESTORE_ROWS = 200_000  # pg_restore runs long enough for the engine to go away under it
CTL = Path(sys.executable).parent / "brace-watchdogctl"
ROLLBACK_UP = 'brace_watchdog_component_up{component="rollback"}'


@pytest.fixture
def engine() -> Iterator[PrivateDockerd]:
    private = PrivateDockerd()
    try:
        private.start()
        yield private
    finally:
        private.close()


def _until(daemon: Daemon, metric: str, value: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while daemon.sample(metric) != value:
        assert time.monotonic() < deadline, f"{metric} != {value}\n{daemon.output()[-3000:]}"
        daemon.drain(0.3)


def _ride_out_the_outage(daemon: Daemon) -> None:
    """The engine stays away for OUTAGE_SECONDS: probes go on, the watchdog stays healthy and
    is pinged."""
    probes, seen = daemon.total("brace_health_probes_total{"), []
    deadline = time.monotonic() + OUTAGE_SECONDS
    while time.monotonic() < deadline:
        seen += daemon.drain(2.0)
        assert daemon.sample("brace_watchdog_watchdog_healthy") == 1.0
    assert daemon.total("brace_health_probes_total{") > probes
    assert seen.count("WATCHDOG=1") >= OUTAGE_SECONDS / 4, seen


def test_engine_down_30s_while_idle(engine: PrivateDockerd, tmp_path: Path) -> None:
    compose = tmp_path / "docker-compose.yml"
    compose.write_text("services: {}\n")
    pre = "BRACE_WATCHDOG__ROLLBACK__"
    env = {"DOCKER_HOST": engine.host, f"{pre}ENABLED": "true",
           f"{pre}COMPOSE_FILE": str(compose), f"{pre}PROJECT": f"bwfaults{id(engine)}",
           f"{pre}SERVICES": '["backend"]', f"{pre}INTERVAL_SECONDS": "0.5"}
    with switchable_server() as server:
        daemon = Daemon(tmp_path, server, env=env)
        try:
            daemon.wait_for("READY=1")
            _until(daemon, ROLLBACK_UP, 1.0)
            engine.stop()
            _until(daemon, ROLLBACK_UP, 0.0)
            _ride_out_the_outage(daemon)
            assert (daemon.sample('brace_watchdog_component_errors_total{component="rollback"}')
                    or 0) > 1
            engine.start()
            _until(daemon, ROLLBACK_UP, 1.0)
        finally:
            daemon.close()
    with sqlite3.connect(daemon.state_path) as conn:
        kinds = [row[0] for row in conn.execute("SELECT kind FROM events")]
        assert conn.execute("SELECT count(*) FROM actions").fetchone()[0] == 0
    assert not [k for k in kinds if k.startswith(("escalation", "automation.", "rollback."))], kinds


def _status(state: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(state) as conn:
        return list(conn.execute(sql))


def test_engine_down_30s_during_a_rollback(engine: PrivateDockerd, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine goes away right after a rollback started: an outage shorter than
    ``[rollback] engine_retry_seconds`` (60 s) is retried through, so the rollback succeeds
    exactly once and the known-good release is never marked failed; the daemon carries on and
    never starts a second one once the engine is back."""
    monkeypatch.setenv("DOCKER_HOST", engine.host)  # compose and the stack helper use it
    client = docker.DockerClient(base_url=engine.host, timeout=120)
    stack = new_stack(client, tmp_path / "stack", ensure_web_images(
        client, ensure_busybox_image(client)))
    try:
        stack.deploy("v1")
        daemon = Daemon(tmp_path, config=write_daemon_config(stack, tmp_path),
                        env={"DOCKER_HOST": engine.host})
        try:
            daemon.wait_for("READY=1", timeout=60)
            assert wait_for_event(daemon.state_path, ("release.known_good",), 60)
            stack.deploy("v2")
            assert wait_for_event(daemon.state_path, ("rollback.started",), 60), daemon.output()
            engine.stop()
            seen: list[str] = []
            deadline = time.monotonic() + OUTAGE_SECONDS
            while time.monotonic() < deadline:
                seen += daemon.drain(2.0)
                assert daemon.sample("brace_watchdog_watchdog_healthy") == 1.0
            assert seen.count("WATCHDOG=1") >= OUTAGE_SECONDS / 4, seen
            engine.start()
            _until(daemon, ROLLBACK_UP, 1.0, timeout=60)
            assert wait_for_event(daemon.state_path, ("rollback.succeeded",), 90), \
                daemon.output()[-3000:]
            daemon.drain(5.0)  # a few more rollback cycles with the engine back
        finally:
            daemon.close()
        actions = _status(daemon.state_path, "SELECT status FROM actions WHERE kind = 'rollback'")
        assert actions == [("succeeded",)], (actions, daemon.output()[-3000:])
        failed = _status(daemon.state_path, "SELECT fingerprint FROM releases "
                         "WHERE failed_verification_at IS NOT NULL")
        assert failed == []
    finally:
        stack.destroy()
        client.close()


def _restore_containers(client: docker.DockerClient) -> list[str]:
    return [c.id for c in client.containers.list(
        all=True, filters={"label": "brace-watchdog.restore-test=1"})]


def test_engine_down_30s_during_a_restore_test(engine: PrivateDockerd, pg_cluster: PgCluster,
                                               tmp_path: Path) -> None:
    """The engine stops while the docker backend restores: the run fails once with the engine
    named, the daemon keeps probing and pinging, the container the failed cleanup could not
    remove is removed once the engine is back (no restart needed), and the next test passes."""
    client = docker.DockerClient(base_url=engine.host, timeout=120)
    image = ensure_postgres_image(client)
    backups = tmp_path / "backups"
    backups.mkdir()
    make_brace_dump(pg_cluster, backups / datetime.now(UTC).strftime("brace_%Y%m%d_%H%M%S.dump"),
                    rows=RESTORE_ROWS)
    pre = "BRACE_WATCHDOG__RESTORE_TEST__"
    env = {"DOCKER_HOST": engine.host, f"{pre}ENABLED": "true", f"{pre}BACKEND": "docker",
           f"{pre}IMAGE": json.dumps(image), f"{pre}NETWORK": json.dumps("host"),
           f"{pre}TIMEOUT_SECONDS": "300", "BRACE_WATCHDOG__BACKUPS__SETTLE_SECONDS": "0"}
    results = "SELECT count(*) FROM restore_results"
    try:
        with switchable_server() as server:
            daemon = Daemon(tmp_path, server, env=env)
            try:
                daemon.wait_for("READY=1", timeout=60)
                daemon.wait_restore_stage("restoring")
                engine.stop()
                _ride_out_the_outage(daemon)
                assert _count(daemon.state_path, results) == 1          # failed, exactly once
                engine.start()
                _until_count(daemon, "SELECT count(*) FROM events WHERE kind = "
                                     "'restore_test.leftovers_removed'", 1)
                assert _restore_containers(client) == []
                socket_path = load_config(daemon.config, environ=daemon.env).control.socket
                subprocess.run([str(CTL), "--socket", str(socket_path), "restore-test"],
                               check=True, timeout=60, capture_output=True)
                _until_count(daemon, f"{results} WHERE passed", 1, timeout=240)
            finally:
                daemon.close()
        failed = _rows(daemon.state_path, "SELECT message FROM restore_results WHERE NOT passed")
        assert len(failed) == 1 and "docker" in str(failed[0][0]).lower(), failed
        assert _restore_containers(client) == []
    finally:
        client.close()


def _rows(state: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(state) as conn:
        return list(conn.execute(sql))


def _count(state: Path, sql: str) -> int:
    return int(_rows(state, sql)[0][0])  # type: ignore[call-overload]


def _until_count(daemon: Daemon, sql: str, at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _count(daemon.state_path, sql) < at_least:
        assert time.monotonic() < deadline, f"{sql} < {at_least}\n{daemon.output()[-3000:]}"
        daemon.drain(0.5)
