"""Known-good images on every node of a REAL two-node Swarm (private dockerds: a manager and a
worker joined on loopback; no registry, so each node has its own copy of each image): a
follower daemon whose node is the worker pins and archives the known-good image there; after
`docker system prune -af` on the worker removed it, the follower loads it back from its archive
(a follower may: it changes nothing the app runs); then the leader's rollback converges, with the
task on the worker running the known-good image again. The upkeep's failures against the
worker's real engine — an archive that does not load, an engine that does not answer — are
recorded once until they clear, and the node does not count as holding the images meanwhile."""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import docker
import pytest
from prometheus_client import CollectorRegistry

from brace_watchdog.actions.node_images import NodeImages
from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.adapters.swarm import SwarmAdapter
from brace_watchdog.config import Config, DaemonConfig
from brace_watchdog.metrics import Metrics
from brace_watchdog.releases import Release, ServiceRelease, pin_tag
from brace_watchdog.runtime import Hub
from brace_watchdog.state import StateStore
from tests.integration.control_helpers import ctl
from tests.support.pg import PgCluster
from tests.support.stack import (
    daemon_event,
    remove_archives,
    start_daemon,
    stop_daemon,
    write_daemon_toml,
)
from tests.support.swarm import (
    STACK,
    PrivateSwarm,
    converged_on,
    create_web_service,
    swarm_worker_node,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SERVICE = "kept"
HELD = "brace_known_good_images_held"
LEADERSHIP = """
[database]
dsn = "{dsn}"
interval_seconds = 1.0

[leadership]
enabled = true
name = "{name}"
check_interval_seconds = 0.5
check_timeout_seconds = 2.0
lease_seconds = 7.0
"""


@pytest.fixture(scope="module")
def worker_node(swarm: PrivateSwarm, docker_client: docker.DockerClient,
                busybox_image: str) -> Iterator[PrivateSwarm]:
    """A second private dockerd joined to the session's Swarm as a worker, for this module."""
    with swarm_worker_node(swarm, docker_client, [busybox_image]) as node:
        yield node


def _release_images(swarm: PrivateSwarm, worker: docker.DockerClient, busybox: str,
                    *releases: str) -> list[str]:
    """One image per release, built on the manager (never pruned here) and copied to the
    worker as an operator without a registry would (``docker save | docker load``: same IDs)."""
    ids = []
    for release in releases:
        image, _ = swarm.client.images.build(fileobj=io.BytesIO(
            f"FROM {busybox}\nLABEL brace.test={release}-{uuid.uuid4().hex}\n".encode()),
            rm=True)
        worker.images.load(b"".join(image.save(named=False)))
        ids.append(str(image.id))
    return ids


def _instance(root: Path, port: int, swarm: PrivateSwarm, dsn: str,
              **rollback: object) -> tuple[subprocess.Popen[bytes], int]:
    """The real daemon (driver swarm, leadership on) watching the stack through the manager;
    (process, metrics port). max_per_day = 0: only an operator's request rolls back; the
    database has no Alembic table, so app-only rollbacks are allowed."""
    config = write_daemon_toml(root, backend=f"http://127.0.0.1:{port}/api/health",
                               driver="swarm", project=STACK, services=[SERVICE],
                               verify_timeout_seconds=90.0, max_per_day=0,
                               on_schema_change="app_only", **rollback)
    text = config.read_text()
    config.write_text(text + LEADERSHIP.format(dsn=dsn, name=root.name))
    metrics = int(re.search(r'listen = "127\.0\.0\.1:(\d+)"', text).group(1))  # type: ignore[union-attr]
    return start_daemon(config, root / "daemon.log", env={"DOCKER_HOST": swarm.host}), metrics


async def _acts(root: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = await ctl("--socket", str(root / "control.sock"), "--json", "status")
        if status.code == 0 and json.loads(status.out)["leadership"]["acts"]:
            return
        assert time.monotonic() < deadline, f"{root.name} does not lead: {status}"
        await asyncio.sleep(0.5)


def _metric(port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        found = re.search(rf"^{name} (\S+)$", response.read().decode(), re.M)
    return float(found.group(1)) if found else None


async def _until(check: object, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):  # type: ignore[arg-type]
        assert time.monotonic() < deadline, f"not {what} within {timeout}s"
        await asyncio.sleep(0.5)


def _tagged(client: docker.DockerClient, ref: str, image_id: str) -> bool:
    try:
        return str(client.images.get(ref).id) == image_id
    except docker.errors.ImageNotFound:
        return False


def _prune(worker: docker.DockerClient) -> list[str]:
    """`docker system prune -af` on the worker (a private engine): stopped containers, then
    every image no container uses — pinned or not. The IDs of the images deleted."""
    worker.containers.prune()
    report = worker.images.prune(filters={"dangling": False})
    return [str(d["Deleted"]) for d in report.get("ImagesDeleted") or () if "Deleted" in d]


def _cleanup(engines: list[docker.DockerClient], images: list[str], service: str | None,
             swarm: PrivateSwarm) -> None:
    if service is not None:
        with suppress(docker.errors.DockerException):
            swarm.client.services.get(service).remove()
    for engine in engines:  # the images and every tag on them (the daemons' pins too)
        for image in images:
            with suppress(docker.errors.DockerException):
                engine.images.remove(image, force=True)


async def test_a_follower_keeps_the_known_good_image_on_its_node_for_the_leaders_rollback(
        swarm: PrivateSwarm, worker_node: PrivateSwarm, busybox_image: str,
        tmp_path: Path, pg_cluster: PgCluster) -> None:
    worker = worker_node.client
    good, update = _release_images(swarm, worker, busybox_image, "good", "update")
    service_id = None
    daemons: list[subprocess.Popen[bytes]] = []
    adapter = SwarmAdapter(swarm.host)
    try:
        service_id, port, _ = create_web_service(swarm, tmp_path / "app", good, SERVICE,
                                                 constraints=["node.role==worker"])
        await _until(lambda: any(c.image.id == good for c in worker.containers.list()),
                     "running on the worker")
        leader, _ = _instance(tmp_path / "leader", port, swarm, pg_cluster.dsn())
        daemons.append(leader)
        await _acts(tmp_path / "leader")
        follower, metrics = _instance(tmp_path / "follower", port, swarm, pg_cluster.dsn(),
                                      node_docker_host=worker_node.host)
        daemons.append(follower)
        promoted = await daemon_event(tmp_path / "follower" / "state.db", "release.known_good",
                                      timeout=90)
        fingerprint = promoted.evidence["release"]["fingerprint"]
        pin = ":".join(pin_tag(STACK, SERVICE, fingerprint))
        assert promoted.evidence["pins"] == [pin] and promoted.evidence["archived"], promoted
        assert _tagged(worker, pin, good)  # pinned on the follower's node: the worker
        archive = tmp_path / "follower" / "images" / f"{good.removeprefix('sha256:')}.tar"
        assert archive.stat().st_size > 0

        swarm.client.services.get(service_id).update(image=update)  # a deploy
        await _until(lambda: not any(c.image.id == good for c in worker.containers.list()),
                     "the known-good task stopped on the worker")
        assert good in _prune(worker)
        loaded = await daemon_event(tmp_path / "follower" / "state.db", "release.image_loaded",
                                    timeout=60)
        assert loaded.evidence["loaded"] == [good], loaded
        await _until(lambda: _tagged(worker, pin, good), "pinned again on the worker", 30)
        assert await asyncio.to_thread(_metric, metrics,
                                       "brace_known_good_images_loaded_total") == 1.0
        await _until(lambda: _metric(metrics, "brace_known_good_images_held") == 1.0,
                     "held on the worker", 30)

        run = await ctl("--socket", str(tmp_path / "leader" / "control.sock"), "rollback",
                        "app", "--to", fingerprint, "--yes")
        assert run.code == 0 and "succeeded" in run.out, (
            run, (tmp_path / "leader" / "daemon.log").read_text()[-3000:])
        assert converged_on(swarm.client, service_id, good)
        assert [c.image.id for c in worker.containers.list(
            filters={"label": f"com.docker.swarm.service.id={service_id}"})] == [good]
    finally:
        for daemon in daemons:
            stop_daemon(daemon)
        adapter.close()
        _cleanup([swarm.client, worker], [good, update], service_id, swarm)
        remove_archives(tmp_path)


def _hub(root: Path, release: Release) -> Hub:
    """A hub over a real state file in which ``release`` is the one known-good release."""
    store = StateStore(root / "state.db").open()
    store.upsert_release(release.fingerprint, release=release.to_dict(), first_seen=1.0)
    store.mark_known_good(release.fingerprint, at=2.0, alembic_revision=None, compose_file="",
                          config_files=None)
    return Hub(config=Config(daemon=DaemonConfig(state_path=root / "state.db")), store=store,
               metrics=Metrics(CollectorRegistry(), process=False))


def _sample(hub: Hub, name: str, **labels: str) -> float | None:
    return hub.metrics.registry.get_sample_value(name, labels)


def _kinds(hub: Hub) -> list[str]:
    return sorted(e.kind for e in hub.store.events(limit=100))


async def test_upkeep_failures_are_recorded_once_and_the_node_holds_nothing_meanwhile(
        swarm: PrivateSwarm, worker_node: PrivateSwarm, busybox_image: str,
        tmp_path: Path) -> None:
    worker = worker_node.client
    image_id, = _release_images(swarm, worker, busybox_image, "upkeep")
    release = Release(STACK, "", (), (ServiceRelease(SERVICE, image_id, image_id, "h"),))
    hub = _hub(tmp_path, release)
    node = NodeImages(hub, DockerAdapter(worker_node.host), load_back=True)
    try:
        kept = hub.store.known_good_releases()
        assert await node.upkeep(STACK, kept) is not None  # pins and archives what it finds
        pin = ":".join(pin_tag(STACK, SERVICE, release.fingerprint))
        assert _tagged(worker, pin, image_id) and _sample(hub, HELD) == 1
        assert _kinds(hub) == ["release.archived", "release.pinned"]
        good = node.archive.path(image_id).read_bytes()
        node.archive.path(image_id).write_bytes(b"not a docker save archive")
        worker.images.remove(image_id, force=True)  # what a prune does to an unused image
        for _ in range(3):  # retried every cycle, recorded once
            plan = await node.upkeep(STACK, kept)
            assert plan is not None and plan.load == (image_id,)
            assert _sample(hub, HELD) == 0
        assert _kinds(hub).count("release.image_load_failed") == 1, _kinds(hub)
        assert _sample(hub, "brace_known_good_images", state="archived_only") == 1
        node.archive.path(image_id).write_bytes(good)
        await node.upkeep(STACK, kept)
        assert _tagged(worker, pin, image_id) and _sample(hub, HELD) == 1
        assert _sample(hub, "brace_known_good_images_loaded_total") == 1
        lost = NodeImages(hub, DockerAdapter(f"unix://{tmp_path / 'no-engine.sock'}"),
                          load_back=True)
        for _ in range(2):
            assert await lost.upkeep(STACK, kept) is None
            assert _sample(hub, HELD) == 0
        assert _kinds(hub).count("release.upkeep_failed") == 1, _kinds(hub)
        lost.node.close()
    finally:
        node.node.close()
        hub.store.close()
        _cleanup([swarm.client, worker], [image_id], None, swarm)
        remove_archives(tmp_path)

