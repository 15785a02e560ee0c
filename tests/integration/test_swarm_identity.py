"""What a Swarm release is, against a REAL single-node Swarm on a private dockerd (the session's
``swarm`` fixture): a service whose spec names a bare tag (a stack deployed without a
registry) is identified by the image its node resolved the tag to, so retagging the tag to
another image and redeploying (``docker service update --force``) is a new release, and the
known-good release names the image ID — pinning it back restores the old image although the
tag points elsewhere. A redeploy of the same release (``docker service update --force``) is
seen from the tasks' specs: recorded as a redeploy, the release and its deploy time kept."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from brace_watchdog.actions.app_rollback import AppRollback
from brace_watchdog.actions.release_tracker import CURRENT_FLAG
from brace_watchdog.actions.rollback_steps import Polling
from brace_watchdog.actions.swarm_steps import verify_tasks
from brace_watchdog.adapters.swarm import SwarmAdapter
from brace_watchdog.config import Config, load_config
from brace_watchdog.metrics import Metrics
from brace_watchdog.releases import Release, build_release, diff
from brace_watchdog.runtime import Hub
from brace_watchdog.state import StateStore
from brace_watchdog.swarm_release import ServiceTarget, choose_step
from tests.support.stack import write_daemon_toml
from tests.support.swarm import STACK, PrivateSwarm, create_web_service, swarm_cli

pytestmark = [pytest.mark.docker, pytest.mark.slow]


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not {what} within {timeout}s"
        await asyncio.sleep(0.5)


def build_tagged(engine: PrivateSwarm, base: str, tag: str, mark: str) -> str:
    """An image of ``base``'s files tagged ``tag`` in the private Swarm (``mark``: a label
    that makes it another image); its ID."""
    image, _ = engine.client.images.build(fileobj=io.BytesIO(
        f"FROM {base}\nLABEL brace-test.mark={mark}\n".encode()), tag=tag, rm=True)
    return str(image.id)


async def whole_release(adapter: SwarmAdapter, service: str, image_id: str) -> Release:
    """The stack's release once ``service`` runs ``image_id`` alone."""
    found: list[Release] = []

    async def runs() -> bool:
        obs = build_release(STACK, [service], await adapter.compose_containers(STACK))
        if (obs.release is None or obs.not_running or obs.mixed
                or obs.release.image_ids() != {service: image_id}):
            return False
        found.append(obs.release)
        return True
    await until(runs, f"{service} running {image_id[:19]} alone")
    return found[-1]


async def test_a_tag_retagged_and_redeployed_is_a_new_release_and_the_old_image_comes_back(
        swarm: PrivateSwarm, tmp_path: Path, busybox_image: str) -> None:
    tag = f"brace-test/swarm2-{uuid.uuid4().hex[:8]}:1.4"
    old = build_tagged(swarm, busybox_image, tag, "old")
    service_id, _, _ = create_web_service(swarm, tmp_path, tag, "tagged", pin=False)
    adapter = SwarmAdapter(swarm.host)
    try:
        good = await whole_release(adapter, "tagged", old)
        assert good.service("tagged") is not None
        assert good.service("tagged").image_ref == tag  # type: ignore[union-attr]
        new = build_tagged(swarm, busybox_image, tag, "new")  # `:1.4` moves to another image
        swarm_cli(swarm, "service", "update", "--force", "--no-resolve-image", "--detach",
                  f"{STACK}_tagged")
        moved = await whole_release(adapter, "tagged", new)
        assert moved.fingerprint != good.fingerprint and diff(good, moved).change == "image"
        # the known-good names the old image's ID: Swarm's previous spec (the same tag) would
        # start the new one, so the image is pinned back by ID
        (service,) = [s for s in await adapter.services(STACK) if s.name == "tagged"]
        known_good = ServiceTarget(old, good.config_hashes()["tagged"])
        assert choose_step(service, known_good).method == "update"
        await adapter.update_image(service_id, old)
        assert await verify_tasks(adapter, STACK, {"tagged": known_good},
                                  Polling(within=120)) == {"tagged": old}
        assert adapter.images.inspected >= 2  # each task's container, on this node
    finally:
        adapter.close()
        swarm.client.services.get(service_id).remove()


def _component(config: Config, store: StateStore, engine: PrivateSwarm,
               registry: CollectorRegistry) -> AppRollback:
    return AppRollback(Hub(config=config, store=store, metrics=Metrics(registry, process=False)),
                       docker=SwarmAdapter(engine.host))


async def _cycles_until(rollback: AppRollback, store: StateStore, kind: str) -> None:
    async def seen() -> bool:
        await rollback.cycle()
        return bool(store.events(kinds=(kind,), limit=1))
    await until(seen, f"a {kind} event")


async def test_a_forced_update_of_the_same_release_is_a_redeploy_also_across_a_restart(
        swarm: PrivateSwarm, tmp_path: Path, busybox_image: str) -> None:
    """``service update --force`` replaces the tasks from the same spec: the release stays the
    same (no deploy, its deploy time kept) and a redeploy is recorded — also one made while
    the daemon was down; a spec version that moves without new tasks (a service label) is
    none."""
    service_id, port, _ = create_web_service(swarm, tmp_path, busybox_image, "again")
    config = load_config(write_daemon_toml(
        tmp_path, backend=f"http://127.0.0.1:{port}/api/health", driver="swarm",
        project=STACK, services=["again"]))
    store = StateStore(config.daemon.state_path).open()
    registry = CollectorRegistry()
    rollback = _component(config, store, swarm, registry)
    await rollback.start()
    try:
        await until(_whole(rollback), "the service running")
        first = rollback.tracker.current
        version = swarm.client.services.get(service_id).version
        swarm_cli(swarm, "service", "update", "--label-add", "brace-test.note=1", "--detach",
                  f"{STACK}_again")
        assert swarm.client.services.get(service_id).version > version
        for _ in range(3):
            await rollback.cycle()
        swarm_cli(swarm, "service", "update", "--force", "--no-resolve-image", "--detach",
                  f"{STACK}_again")
        await _cycles_until(rollback, store, "redeploy")
        await until(_whole(rollback), "the service running again")
        assert first is not None and rollback.tracker.current is not None
        assert rollback.tracker.current.fingerprint == first.fingerprint
        assert rollback.tracker.deploy_at is None  # never deployed while watched: still not
        assert not store.events(kinds=("deploy",), limit=5)
        assert registry.get_sample_value("brace_deploys_total", {"change": "none"}) == 1
        await rollback.stop()
        swarm_cli(swarm, "service", "update", "--force", "--no-resolve-image", "--detach",
                  f"{STACK}_again")  # while no daemon looks
        rollback = _component(config, store, swarm, CollectorRegistry())
        await rollback.start()
        await until(_whole(rollback), "the service running after the restart")
        redeploys = store.events(kinds=("redeploy",), limit=5)
        assert len(redeploys) == 2, [e.message for e in redeploys]
        assert "again" in redeploys[0].message and not store.events(kinds=("deploy",), limit=5)
    finally:
        await rollback.stop()
        store.close()
        swarm.client.services.get(service_id).remove()


def _whole(rollback: AppRollback) -> Callable[[], Awaitable[bool]]:
    """A check that cycles ``rollback`` once: the release is seen, every service running."""
    async def whole() -> bool:
        await rollback.cycle()
        obs = rollback.tracker.observation
        return obs is not None and obs.release is not None and not (
            obs.not_running or obs.mixed)
    return whole


async def test_a_release_kept_from_before_tags_were_resolved_is_renamed_not_deployed(
        swarm: PrivateSwarm, tmp_path: Path, busybox_image: str) -> None:
    """A state file from a version that named a tag-deployed image by its tag: the running
    release, now read with the tag resolved, is the same release renamed — no deploy, its
    deploy time kept (a fresh deploy would be attributed the next failures)."""
    service_id, port, image = create_web_service(swarm, tmp_path, busybox_image, "legacy",
                                                 pin=False)
    config = load_config(write_daemon_toml(
        tmp_path, backend=f"http://127.0.0.1:{port}/api/health", driver="swarm",
        project=STACK, services=["legacy"]))
    store = StateStore(config.daemon.state_path).open()
    rollback = _component(config, store, swarm, CollectorRegistry())
    try:
        adapter = SwarmAdapter(swarm.host)
        try:
            resolved = await whole_release(adapter, "legacy", image)
        finally:
            adapter.close()
        (service,) = resolved.services
        old = replace(resolved, services=(replace(service, image_id=busybox_image),))
        store.set_flag(CURRENT_FLAG, {"release": old.to_dict(), "seen_at": 1.0,
                                      "deploy_at": 1.0, "failing_before": False})
        await rollback.start()
        await until(_whole(rollback), "the service running")
        (renamed,) = store.events(kinds=("release.reidentified",), limit=5)
        assert renamed.evidence["to"]["fingerprint"] == resolved.fingerprint
        assert not store.events(kinds=("deploy",), limit=5)
        assert rollback.tracker.deploy_at == 1.0
    finally:
        await rollback.stop()
        store.close()
        swarm.client.services.get(service_id).remove()
