"""App rollback end to end: a real docker engine, real ``docker-compose`` 1.29, real images.

Each test builds its own compose project (host networking, free loopback ports) from the
``brace-test/web`` images — v1 answers ``/api/health`` with 200, v2 with 500 — and drives the
real components (health probes, the rollback component, the database monitor against a real
PostgreSQL where needed) over a real SQLite state file, with small time values.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.support.stack import (
    Harness,
    Stack,
    ensure_web_images,
    new_stack,
    rollback_config,
)

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def web_images(docker_client: docker.DockerClient, busybox_image: str) -> dict[str, str]:
    return ensure_web_images(docker_client, busybox_image)


@pytest.fixture
def stack(docker_client: docker.DockerClient, web_images: dict[str, str],
          tmp_path: Path) -> Iterator[Stack]:
    built = new_stack(docker_client, tmp_path / "stack", web_images)
    yield built
    built.destroy()


async def known_good(h: Harness) -> str:
    event = await h.wait_event("release.known_good", timeout=20)
    return str(event.evidence["release"]["fingerprint"])


async def test_bad_image_deploy_is_rolled_back_and_verified(stack: Stack, tmp_path: Path) -> None:
    stack.deploy("v1")
    async with Harness(rollback_config(stack, tmp_path)) as h:
        good = await known_good(h)
        assert len(stack.pins()) == 2
        stack.deploy("v2")
        done = await h.wait_event("rollback.succeeded", timeout=40)
        assert stack.running_images() == {"backend": stack.images["v1"],
                                          "frontend": stack.images["v1"]}
        deploys = h.events("deploy")
        assert deploys[0].evidence["change"] == "image"
        assert deploys[0].evidence["services"] == {"backend": "image"}
        assert h.metric("brace_rollbacks_total", result="succeeded") == 1
        assert h.metric("brace_rollback_time_to_recovery_seconds") > 0
        assert 0 < h.metric("brace_rollback_time_to_action_seconds") < 10
        action = h.store.actions(kind="rollback")[0]
        assert (action.status, action.origin) == ("succeeded", "automatic")
        assert action.plan["target"]["fingerprint"] == good
        steps = [e.kind for e in h.store.events(action_id=action.id, limit=50)]
        assert steps[:2] == ["action.rollback.begin", "action.rollback.retagged"]
        assert "action.rollback.compose_done" in steps and "action.rollback.succeeded" in steps
        compose = next(e for e in h.store.events(action_id=action.id, limit=50)
                       if e.kind == "action.rollback.compose_done")
        assert "--no-deps" in compose.evidence["argv"]
        assert [e for e, _ in h.notifier.sent][:2] == ["rollback.started", "rollback.succeeded"]
        assert "v2 GET /api/health -> 500" in h.notifier.sent[0][1]["logs"]["backend"]
        assert done.evidence["checks"]["probes"]["consecutive_ok"] == 3
        await asyncio.sleep(1.5)
        assert len(h.store.actions(kind="rollback")) == 1
        assert h.hub.frozen() is None
