"""Fixtures shared by the integration tests: one private single-node Swarm for the session."""

from __future__ import annotations

import io
from collections.abc import Iterator

import docker
import pytest

from tests.support.swarm import CRASH_TAG, PrivateSwarm, private_swarm


@pytest.fixture(scope="session")
def swarm(docker_client: docker.DockerClient, busybox_image: str) -> Iterator[PrivateSwarm]:
    """A private dockerd in swarm mode (never the shared engine), with busybox and a crash-loop
    image. Tests name their services uniquely (own stack or service names)."""
    with private_swarm(docker_client, [busybox_image]) as engine:
        # the same files, but an entrypoint that exits at once: a crash loop under any args
        engine.client.images.build(fileobj=io.BytesIO(
            f'FROM {busybox_image}\nENTRYPOINT ["false"]\n'.encode()), tag=CRASH_TAG, rm=True)
        yield engine
