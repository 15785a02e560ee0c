"""What a Swarm release is, against a REAL single-node Swarm on a private dockerd (the session's
``swarm`` fixture): a service whose spec names a bare tag (a stack deployed without a
registry) is identified by the image its node resolved the tag to, so retagging the tag to
another image and redeploying (``docker service update --force``) is a new release, and the
known-good release names the image ID — pinning it back restores the old image although the
tag points elsewhere."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from brace_watchdog.actions.rollback_steps import verify_images
from brace_watchdog.adapters.swarm import SwarmAdapter
from brace_watchdog.releases import Release, build_release, diff
from brace_watchdog.swarm_release import ServiceTarget, choose_step
from tests.support.swarm import STACK, PrivateSwarm, create_web_service

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def swarm_cli(engine: PrivateSwarm, *argv: str) -> None:
    """The docker CLI against the private Swarm (never the shared engine)."""
    subprocess.run(["docker", *argv], check=True, capture_output=True, timeout=120,
                   env={**os.environ, "DOCKER_HOST": engine.host})


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
        assert await verify_images(adapter, STACK, ["tagged"], {"tagged": old}, within=120,
                                   expected_config=good.config_hashes()) == {"tagged": old}
        assert adapter.images.inspected >= 2  # each task's container, on this node
    finally:
        adapter.close()
        swarm.client.services.get(service_id).remove()
