"""Fixtures of the end-to-end tests: the ``brace-test/web`` images and a throwaway compose stack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.support.stack import Stack, ensure_web_images, new_stack


@pytest.fixture(scope="session")
def web_images(docker_client: docker.DockerClient, busybox_image: str) -> dict[str, str]:
    return ensure_web_images(docker_client, busybox_image)


@pytest.fixture
def stack(docker_client: docker.DockerClient, web_images: dict[str, str],
          tmp_path: Path) -> Iterator[Stack]:
    built = new_stack(docker_client, tmp_path / "stack", web_images)
    yield built
    built.destroy()
