"""The docker engine stopped for 30 s and started again, on a private engine (never the shared
one): while the daemon (rollback on) is idle it keeps probing, serving metrics and pinging the
watchdog, counts the rollback component's errors, takes no action and raises no escalation, and
recovers by itself; during a rollback, the rollback ends exactly once and is never repeated."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.support.daemon import Daemon
from tests.support.dockerd import PrivateDockerd
from tests.support.images import ensure_busybox_image
from tests.support.stack import (
    ensure_web_images,
    new_stack,
    wait_for_event,
    write_daemon_config,
)
from tests.support.webserver import switchable_server

OUTAGE_SECONDS = 30.0
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
            probes, seen = daemon.total("brace_health_probes_total{"), []
            deadline = time.monotonic() + OUTAGE_SECONDS
            while time.monotonic() < deadline:
                seen += daemon.drain(2.0)
                assert daemon.sample("brace_watchdog_watchdog_healthy") == 1.0
            assert daemon.total("brace_health_probes_total{") > probes
            assert seen.count("WATCHDOG=1") >= OUTAGE_SECONDS / 4, seen
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
    """The engine goes away right after a rollback started: the rollback ends (done before the
    engine went, or failed, frozen and escalated) exactly once; the daemon carries on and never
    starts a second one once the engine is back."""
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
            daemon.drain(5.0)  # a few more rollback cycles with the engine back
        finally:
            daemon.close()
        actions = _status(daemon.state_path, "SELECT status FROM actions WHERE kind = 'rollback'")
        assert actions in ([("succeeded",)], [("failed",)]), (actions, daemon.output()[-3000:])
        if actions == [("failed",)]:
            kinds = [k for (k,) in _status(daemon.state_path, "SELECT kind FROM events")]
            assert "automation.frozen" in kinds and "escalation" in kinds, kinds
    finally:
        stack.destroy()
        client.close()
