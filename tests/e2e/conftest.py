"""Fixtures of the end-to-end tests: the ``brace-test/web`` images, a throwaway compose stack, and
the check that a test marked ``daemon_ctl`` ran the ctl commands it declares."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import docker
import pytest

from tests.support.ctl_coverage import CTL_RUNS, MARKER, command_of
from tests.support.stack import (
    COMPOSE_V1,
    Stack,
    compose_or_skip,
    ensure_web_images,
    kill_leftover_daemons,
    new_stack,
    remove_archives,
    sweep_pins,
)


@pytest.fixture(scope="session")
def web_images(docker_client: docker.DockerClient, busybox_image: str) -> dict[str, str]:
    return ensure_web_images(docker_client, busybox_image)


@pytest.fixture(scope="session")
def pin_sweep(docker_client: docker.DockerClient) -> Iterator[None]:
    """At the session's end, the pins of this session's stacks that a pin call still in a
    worker thread made after the stack was destroyed."""
    yield
    sweep_pins(docker_client)


@pytest.fixture
def stack(request: pytest.FixtureRequest, docker_client: docker.DockerClient,
          web_images: dict[str, str], tmp_path: Path, pin_sweep: None) -> Iterator[Stack]:
    """A stack deployed with ``docker-compose`` 1.29, or with the compose a test's
    ``BOTH_COMPOSES`` parameter names; afterwards everything the stack and its daemons made
    is removed (a daemon the test left running first)."""
    command: tuple[str, ...] = getattr(request, "param", COMPOSE_V1)
    compose_or_skip(command)
    built = new_stack(docker_client, tmp_path / "stack", web_images, command)
    try:
        yield built
    finally:
        kill_leftover_daemons()
        remove_archives(tmp_path)
        built.destroy()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """A test marked ``daemon_ctl(*commands)`` fails unless it ran each of them through
    ``ctl()`` (checked only when the test itself passed)."""
    first = len(CTL_RUNS)
    result = yield
    marker = item.get_closest_marker(MARKER)
    if marker is not None:
        ran = {command_of(argv) for argv in CTL_RUNS[first:]}
        missing = sorted(set(marker.args) - ran)
        assert not missing, f"marked {MARKER} but never ran {missing}; ran {sorted(map(str, ran))}"
    return result
