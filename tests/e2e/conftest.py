"""Fixtures of the end-to-end tests: the ``brace-test/web`` images and a throwaway compose stack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.support.stack import COMPOSE_V1, Stack, compose_or_skip, ensure_web_images, new_stack


@pytest.fixture(scope="session")
def web_images(docker_client: docker.DockerClient, busybox_image: str) -> dict[str, str]:
    return ensure_web_images(docker_client, busybox_image)


@pytest.fixture
def stack(request: pytest.FixtureRequest, docker_client: docker.DockerClient,
          web_images: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    """A stack deployed with ``docker-compose`` 1.29, or with the compose a test's
    ``BOTH_COMPOSES`` parameter names."""
    command: tuple[str, ...] = getattr(request, "param", COMPOSE_V1)
    compose_or_skip(command)
    built = new_stack(docker_client, tmp_path / "stack", web_images, command)
    yield built
    built.destroy()
