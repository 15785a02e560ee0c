"""A long-running daemon against an engine that does not answer holds no more file descriptors
after many cycles than after the first: the Swarm adapter's stack look and the node-images
upkeep fail every cycle against a REAL unix socket nobody accepts on (a dockerd that died and
left its socket file), and no failed connect may leave its socket open until the garbage
collector happens to run (it is disabled here, as it may not run for a long while)."""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from brace_watchdog.actions.node_images import NodeImages
from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.adapters.swarm import SwarmAdapter
from brace_watchdog.errors import DockerError
from brace_watchdog.releases import Release, ServiceRelease
from tests.integration.test_swarm_node_images import _hub

CYCLES = 30


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def dead_engine(tmp_path: Path) -> Iterator[str]:
    """``unix://`` URL of a socket file bound but never listened on: connects are refused."""
    path = tmp_path / "dead-docker.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        yield f"unix://{path}"


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.usefixtures("no_gc")
async def test_the_swarm_look_against_a_dead_engine_leaks_no_fd(dead_engine: str) -> None:
    adapter = SwarmAdapter(dead_engine, timeout=5)
    try:
        with pytest.raises(DockerError):
            await adapter.look("app")
        before = _open_fds()
        for _ in range(CYCLES):
            with pytest.raises(DockerError, match=r"unreachable|refused"):
                await adapter.look("app")
        assert _open_fds() == before
    finally:
        adapter.close()


@pytest.mark.usefixtures("no_gc")
async def test_the_node_images_upkeep_against_a_dead_engine_leaks_no_fd(
        dead_engine: str, tmp_path: Path) -> None:
    release = Release("app", "", (), (ServiceRelease("web", "sha256:" + "a" * 64,
                                                     "sha256:" + "a" * 64, "h"),))
    hub = _hub(tmp_path, release)
    node = NodeImages(hub, DockerAdapter(dead_engine, timeout=5), load_back=True)
    try:
        kept = hub.store.known_good_releases()
        assert await node.upkeep("app", kept) is None
        before = _open_fds()
        for _ in range(CYCLES):
            assert await node.upkeep("app", kept) is None
        assert _open_fds() == before
        assert [e.kind for e in hub.store.events(limit=100)].count("release.upkeep_failed") == 1
    finally:
        node.node.close()
        hub.store.close()
