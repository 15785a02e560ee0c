"""A stack deployed the way production deploys it — ``docker stack deploy`` of a compose v3 file
on the host network (``networks: {hostnet: {external: true, name: host}}``), its image named by
a bare tag (an image made by ``docker import``, no registry) — on the session's REAL
single-node Swarm: the daemon finds its services by the ``com.docker.stack.namespace`` label
the CLI sets, promotes the release — the image the tag ran, pinned and archived on the node —
and rolls back a bad ``stack deploy`` of the same file
(the backend moved to another port: its health check is refused) to the known-good spec."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from brace_watchdog.state import StateStore
from tests.support.net import free_port
from tests.support.stack import daemon_event, start_daemon, stop_daemon, write_daemon_toml
from tests.support.swarm import PrivateSwarm, health_status, swarm_cli

pytestmark = [pytest.mark.docker, pytest.mark.slow]

STACK_FILE = """version: "3.8"
services:
  web:
    image: {image}
    command: ["httpd", "-f", "-p", "127.0.0.1:{port}", "-h", "/www"]
    volumes: ["{www}:/www:ro"]
    networks: [hostnet]
    stop_grace_period: 1s
    deploy:
      replicas: 1
networks:
  hostnet:
    external: true
    name: host
"""


def _deploy(engine: PrivateSwarm, root: Path, stack: str, image: str, port: int) -> None:
    """``docker stack deploy`` of the stack file serving on ``port`` (never asking a
    registry: none is reachable)."""
    path = root / "stack.yml"
    path.write_text(STACK_FILE.format(image=image, port=port, www=root / "www"))
    swarm_cli(engine, "stack", "deploy", "--compose-file", str(path), "--resolve-image",
              "never", "--detach=true", stack)


async def _healthy(port: int, timeout: float = 120) -> None:
    for _ in range(int(timeout / 0.5)):
        if await asyncio.to_thread(health_status, port) == "200":
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"no 200 from port {port} within {timeout}s")


async def test_a_bad_stack_deploy_is_rolled_back_to_the_known_good_spec(
        swarm: PrivateSwarm, tmp_path: Path, busybox_image: str) -> None:
    stack, port = f"bw{uuid.uuid4().hex[:8]}", free_port()
    (tmp_path / "www" / "api").mkdir(parents=True)
    (tmp_path / "www" / "api" / "health").write_text("ok\n")
    config = write_daemon_toml(tmp_path, backend=f"http://127.0.0.1:{port}/api/health",
                               driver="swarm", project=stack, services=["web"],
                               verify_timeout_seconds=90.0)
    state = tmp_path / "state.db"
    daemon = None
    try:
        _deploy(swarm, tmp_path, stack, busybox_image, port)
        labels = swarm.client.services.list(
            filters={"label": f"com.docker.stack.namespace={stack}"})[0].attrs["Spec"]
        assert labels["Name"] == f"{stack}_web"
        await _healthy(port)
        daemon = start_daemon(config, tmp_path / "daemon.log", env={"DOCKER_HOST": swarm.host})
        known = await daemon_event(state, "release.known_good", timeout=90)
        # the stack names a tag; the known-good names the image it ran, kept on this node
        (web,) = known.evidence["release"]["services"]
        assert (web["image_ref"], web["image_id"]) == (
            busybox_image, swarm.client.images.get(busybox_image).id), web
        assert known.evidence["pins"] and known.evidence["archived"], known.evidence
        _deploy(swarm, tmp_path, stack, busybox_image, free_port())  # the bad deploy
        done = await daemon_event(state, "rollback.succeeded", "rollback.failed", timeout=180)
        assert done.kind == "rollback.succeeded", (
            done.message, (tmp_path / "daemon.log").read_text()[-3000:])
        await _healthy(port)
        args = swarm.client.services.get(f"{stack}_web").attrs["Spec"]["TaskTemplate"][
            "ContainerSpec"]["Args"]
        assert f"127.0.0.1:{port}" in args, args
        store = StateStore(state).open()
        try:
            kinds = [e.kind for e in store.events(limit=500)]
        finally:
            store.close()
        assert kinds.count("action.rollback.swarm_rollback") == 1, kinds
        assert kinds.count("rollback.succeeded") == 1, kinds
    finally:
        if daemon is not None:
            stop_daemon(daemon)
        swarm_cli(swarm, "stack", "rm", stack)
