"""Engine outages are not verdicts: the rollback talks to the real engine through a socket the
test can cut (:class:`~tests.support.docker_proxy.DockerProxy`) while compose is about to run,
or once compose is done and the rollback verifies (the images, then the probes of a backend the
"restarting" engine took down). A short outage is retried through; a long one stops the rollback
without marking the known-good release failed, freezes automation and escalates
``rollback_outage``."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from brace_watchdog.adapters.compose import ComposeCLI
from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.errors import DockerError
from tests.support.docker_proxy import DockerProxy
from tests.support.stack import BOTH_COMPOSES, Harness, Stack, rollback_config, slow_compose
from tests.support.webhooks import webhook_receiver

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


def through(proxy: DockerProxy, stack: Stack) -> tuple[str, ...]:
    """Compose through the proxy, waiting 2 s first so the test can cut the engine in time."""
    return ("env", f"DOCKER_HOST={proxy.url}", *slow_compose(2, stack.compose_command))


def held_after_up(gate: Path, stack: Stack) -> tuple[str, ...]:
    """The stack's compose, whose ``up`` touches ``gate/up-done`` once it is done and then
    returns only when the test touched ``gate/go`` (between them the test breaks things)."""
    return ("sh", "-c", f'{" ".join(stack.compose_command)} "$@"; rc=$?; case " $* " in '
            f'*" up "*) touch {gate}/up-done; while [ ! -e {gate}/go ]; do sleep 0.1; done;; '
            'esac; exit $rc', "compose")


@asynccontextmanager
async def rollback_through(stack: Stack, tmp_path: Path, proxy: DockerProxy,
                           command: tuple[str, ...],
                           **settings: Any) -> AsyncIterator[tuple[Harness, str]]:
    """A harness whose engine is ``proxy`` and whose compose is ``command``, v1 known-good and
    v2 deployed; yields the harness and the known-good release's fingerprint."""
    stack.deploy("v1")
    config = rollback_config(stack, tmp_path, compose_command=list(command), **settings)
    async with Harness(config, docker=DockerAdapter(proxy.url, timeout=10),
                       compose=ComposeCLI(command, timeout=60), tolerate=(DockerError,)) as h:
        good = (await h.wait_event("release.known_good", timeout=30)).evidence["release"]
        stack.deploy("v2")
        yield h, good["fingerprint"]


@asynccontextmanager
async def engine_cut_mid_rollback(stack: Stack, tmp_path: Path, proxy: DockerProxy,
                                  retry: float) -> AsyncIterator[tuple[Harness, str]]:
    """A rollback from v2 back to v1 through ``proxy``, the engine cut once the tags moved back
    (compose is about to run); yields the harness and the known-good release's fingerprint."""
    async with rollback_through(stack, tmp_path, proxy, through(proxy, stack),
                                engine_retry_seconds=retry) as (h, good):
        await h.wait_event("action.rollback.retagged", timeout=40)
        await proxy.cut()
        yield h, good


@BOTH_COMPOSES
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


async def compose_done_then(gate: Path) -> None:
    """Wait until the held compose ``up`` (:func:`held_after_up`) is done."""
    deadline = time.monotonic() + 60
    while not (gate / "up-done").exists():
        assert time.monotonic() < deadline, "the rollback's compose up never ran"
        await asyncio.sleep(0.05)


async def outage_verdict(h: Harness, good: str, stage: str) -> None:
    """The rollback stopped at ``stage`` as an outage: the target untouched, frozen, escalated."""
    stopped = await h.wait_event("action.rollback.outage", timeout=60)
    assert stopped.evidence["stage"] == stage, stopped.message
    assert "not marked failed" in stopped.message
    record = h.store.release(good)
    assert record is not None and record.failed_verification_at is None
    assert h.hub.frozen() is not None
    escalation = await h.wait_event("escalation")
    assert escalation.evidence["reason"] == "rollback_outage"
    assert escalation.evidence["stage"] == stage
    assert h.metric("brace_rollbacks_total", result="outage") == 1
    assert h.metric("brace_rollbacks_total", result="failed") == 0
    assert h.events("action.rollback.succeeded", "action.rollback.failed") == []


async def test_an_engine_outage_while_verifying_the_images_is_no_verdict(
        stack: Stack, tmp_path: Path, proxy: DockerProxy) -> None:
    # compose brought the known-good release back; dockerd "restarts" before the rollback could
    # read back which images run, and is still away at the verification's deadline
    gate = tmp_path / "gate"
    gate.mkdir()
    async with rollback_through(stack, tmp_path, proxy, held_after_up(gate, stack),
                                verify_timeout_seconds=6.0) as (h, good):
        await compose_done_then(gate)
        await proxy.cut()
        (gate / "go").touch()
        await h.wait_event("action.rollback.verifying", timeout=30)
        await outage_verdict(h, good, "verify_images")
        assert h.events("action.rollback.images_verified") == []
        await proxy.mend()


async def test_an_engine_outage_while_probing_the_target_is_no_verdict(
        stack: Stack, tmp_path: Path, proxy: DockerProxy) -> None:
    # the known-good images run, then the engine "restarts" and takes the backend with it: the
    # probes fail while the engine does not answer — the engine's outage, not the release's
    gate = tmp_path / "gate"
    gate.mkdir()
    async with rollback_through(stack, tmp_path, proxy, held_after_up(gate, stack),
                                verify_timeout_seconds=6.0) as (h, good):
        await compose_done_then(gate)
        stack.break_health(500)  # what a backend the engine stopped looks like to the probes
        (gate / "go").touch()
        await h.wait_event("action.rollback.images_verified", timeout=30)
        await proxy.cut()
        await outage_verdict(h, good, "verify_probes")
        await proxy.mend()


async def test_an_engine_outage_before_the_rollback_escalates_engine_down(
        stack: Stack, tmp_path: Path, proxy: DockerProxy) -> None:
    # a bad deploy, then the engine stops answering before the failures are sustained: no
    # rollback against an engine that cannot carry it out — escalated, and the webhook says why
    stack.deploy("v1")
    with webhook_receiver() as receiver:
        config = rollback_config(stack, tmp_path, deploy_grace_seconds=4.0,
                                 webhook_url=receiver.url().reveal())
        async with Harness(config, docker=DockerAdapter(proxy.url, timeout=10),
                           tolerate=(DockerError,)) as h:
            await h.wait_event("release.known_good", timeout=30)
            stack.deploy("v2")
            await h.wait_event("deploy", timeout=20)
            await proxy.cut()
            escalation = await h.wait_event("escalation", timeout=30)
            assert escalation.evidence["reason"] == "engine_down"
            assert escalation.message.startswith("escalated: the docker engine does not answer")
            decision = h.events("rollback.decision")[0]
            assert decision.evidence["reason"] == "engine_down"
            assert decision.evidence["engine_error"], decision.evidence
            await asyncio.sleep(1.5)
            assert h.store.actions(kind="rollback") == []
            await proxy.mend()
        sent = [body for body in receiver.bodies if body["event"] == "escalation"]
        assert [body["reason"] for body in sent] == ["engine_down"]
        assert "docker engine does not answer" in sent[0]["message"]
    assert stack.running_images()["backend"] == stack.images["v2"]
