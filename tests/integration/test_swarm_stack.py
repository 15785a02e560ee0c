"""A stack deployed the way production deploys it — ``docker stack deploy`` of a compose v3 file
on the host network (``networks: {hostnet: {external: true, name: host}}``), its image named by
a bare tag (an image made by ``docker import``, no registry) — on the session's REAL
single-node Swarm: the daemon finds its services by the ``com.docker.stack.namespace`` label
the CLI sets, promotes the release — the image the tag ran, pinned and archived on the node —
and rolls back a bad ``stack deploy`` of the same file
(the backend moved to another port: its health check is refused) to the known-good spec."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from docker.models.containers import Container

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


EXAMPLE = Path(__file__).parents[2] / "etc" / "swarm" / "brace-watchdog.stack.yml"
# the shipped file as it is, but a stand-in image (no brace-watchdog image is built here) and
# this test's engine socket and backups folder in place of the host's
STAND_IN = """version: "3.8"
services:
  watchdog:
    image: {image}
    command: ["sleep", "3600"]
    stop_grace_period: 1s
    volumes: ["{socket}:/var/run/docker.sock", "{backups}:/srv/brace/backups:ro"]
  watchdog-node:
    image: {image}
    command: ["sleep", "3600"]
    stop_grace_period: 1s
    volumes: ["{socket}:/var/run/docker.sock"]
"""
SECRETS = {"brace_watchdog_db_dsn": "host=db.internal dbname=brace user=brace_watchdog",
           "brace_watchdog_db_password": "s3cret", "brace_watchdog_tls_ca": "ca",
           "brace_watchdog_tls_cert": "cert", "brace_watchdog_tls_key": "key"}


def test_the_shipped_global_service_example_deploys_with_its_secrets_and_node_name(
        swarm: PrivateSwarm, tmp_path: Path, busybox_image: str) -> None:
    """etc/swarm/brace-watchdog.stack.yml (docs/swarm.md) deploys on a real Swarm: one task
    per manager, named by its node, the DSN and password where ``$CREDENTIALS_DIRECTORY``
    says, the config file in place."""
    stack = f"bwd{uuid.uuid4().hex[:8]}"
    (tmp_path / "stack.yml").write_text(EXAMPLE.read_text())
    (tmp_path / "brace-watchdog.toml").write_text('[rollback]\ndriver = "swarm"\n')
    (tmp_path / "backups").mkdir()
    (tmp_path / "stand-in.yml").write_text(STAND_IN.format(
        image=busybox_image, socket=swarm.folder / "d.sock", backups=tmp_path / "backups"))
    secrets = [swarm.client.secrets.create(name=name, data=value.encode())
               for name, value in SECRETS.items()]
    try:
        swarm_cli(swarm, "stack", "deploy", "-c", "stack.yml", "-c", "stand-in.yml",
                  "--resolve-image", "never", "--detach=true", stack, cwd=tmp_path)
        container = _running(swarm, f"{stack}_watchdog")

        def run(script: str) -> str:
            code, out = container.exec_run(["sh", "-c", script])
            assert code == 0, (script, out)
            return str(out.decode()).strip()
        assert run('cat "$CREDENTIALS_DIRECTORY/db_dsn"') == SECRETS["brace_watchdog_db_dsn"]
        assert run('cat "$CREDENTIALS_DIRECTORY/db_password"') == "s3cret"
        assert run("echo $BRACE_WATCHDOG__LEADERSHIP__NAME") == swarm.client.info()["Name"]
        assert "driver" in run("cat /etc/brace-watchdog/brace-watchdog.toml")
        assert run("ls /var/lib/brace-watchdog") == ""  # the state volume, empty
        # global on the managers: one task (this Swarm has one node); none on workers
        assert len(swarm.client.services.get(f"{stack}_watchdog").tasks(
            filters={"desired-state": "running"})) == 1
        assert not swarm.client.services.get(f"{stack}_watchdog-node").tasks(
            filters={"desired-state": "running"})
    finally:
        swarm_cli(swarm, "stack", "rm", stack)
        _removed(swarm, stack)
        for secret in secrets:
            secret.remove()
        for volume in swarm.client.volumes.list(filters={"name": f"{stack}_watchdog_state"}):
            volume.remove(force=True)


def _running(engine: PrivateSwarm, service: str, timeout: float = 120) -> Container:
    """The running container of ``service``'s task on this node."""
    label = {"label": f"com.docker.swarm.service.name={service}", "status": "running"}
    for _ in range(int(timeout / 0.5)):
        found = engine.client.containers.list(filters=label)
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"no running task of {service} within {timeout}s")


def _removed(engine: PrivateSwarm, stack: str, timeout: float = 60) -> None:
    """Wait until the stack's containers are gone (a secret in use cannot be removed)."""
    label = {"label": f"com.docker.stack.namespace={stack}"}
    for _ in range(int(timeout / 0.5)):
        if not engine.client.containers.list(all=True, filters=label):
            return
        time.sleep(0.5)
    raise AssertionError(f"the containers of {stack} are still there after {timeout}s")
