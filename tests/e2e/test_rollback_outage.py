"""Engine outages are not verdicts: the rollback talks to the real engine through a socket the
test can cut (:class:`~tests.support.docker_proxy.DockerProxy`) while compose is about to run.
A short outage is retried through; a long one stops the rollback without marking the known-good
release failed, freezes automation and escalates ``rollback_outage``."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from brace_watchdog.adapters.compose import ComposeCLI
from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.errors import DockerError
from tests.support.docker_proxy import DockerProxy
from tests.support.stack import Harness, Stack, rollback_config, slow_compose

pytestmark = [
    pytest.mark.docker,
    # docker-py (urllib3 over a unix socket) does not close the socket of a connection the
    # engine dropped; the garbage collector reports it. The SDK's leak, not ours.
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"),
]


@pytest.fixture
async def proxy() -> AsyncIterator[DockerProxy]:
    built = DockerProxy()
    await built.mend()
    try:
        yield built
    finally:
        await built.close()
        gc.collect()  # the SDK's leaked sockets are reported here, under this module's filter


def through(proxy: DockerProxy) -> tuple[str, ...]:
    """Compose through the proxy, waiting 2 s first so the test can cut the engine in time."""
    return ("env", f"DOCKER_HOST={proxy.url}", *slow_compose(2))


@asynccontextmanager
async def engine_cut_mid_rollback(stack: Stack, tmp_path: Path, proxy: DockerProxy,
                                  retry: float) -> AsyncIterator[tuple[Harness, str]]:
    """A rollback from v2 back to v1 through ``proxy``, the engine cut once the tags moved back
    (compose is about to run); yields the harness and the known-good release's fingerprint."""
    stack.deploy("v1")
    command = through(proxy)
    config = rollback_config(stack, tmp_path, engine_retry_seconds=retry,
                             compose_command=list(command))
    async with Harness(config, docker=DockerAdapter(proxy.url, timeout=10),
                       compose=ComposeCLI(command, timeout=60), tolerate=(DockerError,)) as h:
        good = (await h.wait_event("release.known_good", timeout=30)).evidence["release"]
        stack.deploy("v2")
        await h.wait_event("action.rollback.retagged", timeout=40)
        await proxy.cut()
        yield h, good["fingerprint"]


async def test_a_short_engine_outage_is_retried_through(stack: Stack, tmp_path: Path,
                                                        proxy: DockerProxy) -> None:
    # dockerd "restarts" while compose is about to run, and is back within the retry time
    async with engine_cut_mid_rollback(stack, tmp_path, proxy, retry=60.0) as (h, good):
        await h.wait_event("rollback.started")
        await asyncio.sleep(5)
        await proxy.mend()
        done = await h.wait_event("rollback.succeeded", timeout=60)
        assert "verified" in done.message
        assert h.events("action.rollback.failed", "action.rollback.outage") == []
        record = h.store.release(good)
        assert record is not None and record.failed_verification_at is None
        assert h.hub.frozen() is None
    assert stack.running_images()["backend"] == stack.images["v1"]


async def test_a_long_engine_outage_stops_without_a_verdict(stack: Stack, tmp_path: Path,
                                                            proxy: DockerProxy) -> None:
    async with engine_cut_mid_rollback(stack, tmp_path, proxy, retry=4.0) as (h, good):
        stopped = await h.wait_event("action.rollback.outage", timeout=60)
        assert "no verdict" in stopped.message and "not marked failed" in stopped.message
        record = h.store.release(good)
        assert record is not None and record.failed_verification_at is None
        assert h.hub.frozen() is not None
        escalation = await h.wait_event("escalation")
        assert escalation.evidence["reason"] == "rollback_outage"
        assert h.metric("brace_rollbacks_total", result="outage") == 1
        assert h.metric("brace_rollbacks_total", result="failed") == 0
        assert h.events("action.rollback.compose_done") == []
        await proxy.mend()
