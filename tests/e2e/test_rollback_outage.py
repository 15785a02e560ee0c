"""Engine outages are not verdicts: the rollback talks to the real engine through a socket the
test can cut (:class:`~tests.support.docker_proxy.DockerProxy`) as compose starts, or once
compose is done and the rollback verifies (the images, then the probes of a backend the
"restarting" engine took down). A short outage is retried through — even when the engine
answers again before the daemon judges the compose run that failed for want of it; a long one
stops the rollback without marking the known-good release failed, freezes automation and
escalates ``rollback_outage``."""

from __future__ import annotations

import asyncio
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
from tests.support.stack import BOTH_COMPOSES, Harness, Stack, rollback_config
from tests.support.webhooks import webhook_receiver

pytestmark = [
    pytest.mark.docker,
    # docker-py (urllib3 over a unix socket) does not close the socket of a connection the
    # engine dropped; the garbage collector reports it. The SDK's leak, not ours.
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"),
]


def held(gate: Path, command: tuple[str, ...]) -> tuple[str, ...]:
    """``command`` (a compose) whose ``up`` touches ``gate/up-start`` and waits for ``gate/run``
    before it runs, then appends its exit code to ``gate/up-done`` and returns only when the
    test touched ``gate/go`` (before and after it, the test breaks or mends things)."""
    def hold(before: str, until: str) -> str:
        return (f'case " $* " in *" up "*) {before}; while [ ! -e {gate}/{until} ]; do '
                'sleep 0.1; done;; esac; ')
    return ("sh", "-c", hold(f"touch {gate}/up-start", "run") + f'{" ".join(command)} "$@"; '
            f'rc=$?; ' + hold(f"echo $rc >> {gate}/up-done", "go") + "exit $rc", "compose")


def held_after_up(gate: Path, stack: Stack) -> tuple[str, ...]:
    """The stack's compose, run at once, held after ``up`` until the test touches ``gate/go``."""
    (gate / "run").touch()
    return held(gate, stack.compose_command)


async def touched(path: Path) -> None:
    """Wait until the held compose (:func:`held`) touched ``path``."""
    deadline = time.monotonic() + 60
    while not path.exists():
        assert time.monotonic() < deadline, f"the rollback's compose up never touched {path.name}"
        await asyncio.sleep(0.05)


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
async def engine_cut_as_compose_starts(stack: Stack, tmp_path: Path, proxy: DockerProxy,
                                       retry: float) -> AsyncIterator[tuple[Harness, str, Path]]:
    """A rollback from v2 back to v1 through ``proxy``, the engine cut as the rollback's
    compose ``up`` starts; yields the harness, the known-good release's fingerprint and the
    gate of the compose (:func:`held`), which the test opens (``go``) once compose failed."""
    gate = tmp_path / "gate"
    gate.mkdir()
    compose = held(gate, ("env", f"DOCKER_HOST={proxy.url}", *stack.compose_command))
    async with rollback_through(stack, tmp_path, proxy, compose,
                                engine_retry_seconds=retry) as (h, good):
        await touched(gate / "up-start")
        await proxy.cut()
        (gate / "run").touch()
        yield h, good, gate


@BOTH_COMPOSES
async def test_a_compose_run_that_lost_the_engine_is_retried_though_the_engine_is_back(
        stack: Stack, tmp_path: Path, docker_proxy: DockerProxy) -> None:
    # dockerd "restarts" as compose starts: compose fails for want of an engine, and the engine
    # answers again before the daemon judges that failure — an outage all the same (compose
    # says so), retried through, not a verdict on the known-good release
    async with engine_cut_as_compose_starts(stack, tmp_path, docker_proxy,
                                            60.0) as (h, good, gate):
        await touched(gate / "up-done")
        await docker_proxy.mend()
        (gate / "go").touch()
        done = await h.wait_event("rollback.succeeded", timeout=60)
        assert "verified" in done.message
        assert (gate / "up-done").read_text().split() == ["1", "0"]  # failed once, then not
        assert h.events("action.rollback.failed", "action.rollback.outage") == []
        record = h.store.release(good)
        assert record is not None and record.failed_verification_at is None
        assert h.hub.frozen() is None
    assert stack.running_images()["backend"] == stack.images["v1"]


async def test_a_long_engine_outage_stops_without_a_verdict(stack: Stack, tmp_path: Path,
                                                            docker_proxy: DockerProxy) -> None:
    async with engine_cut_as_compose_starts(stack, tmp_path, docker_proxy,
                                            4.0) as (h, good, gate):
        (gate / "go").touch()
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
        await docker_proxy.mend()


@asynccontextmanager
async def compose_held_after_up(stack: Stack, tmp_path: Path,
                                proxy: DockerProxy) -> AsyncIterator[tuple[Harness, str, Path]]:
    """A rollback from v2 back to v1 through ``proxy`` (verification deadline 6 s), its compose
    ``up`` done and held (:func:`held_after_up`); yields the harness, the known-good release's
    fingerprint and the file whose creation lets compose return."""
    gate = tmp_path / "gate"
    gate.mkdir()
    async with rollback_through(stack, tmp_path, proxy, held_after_up(gate, stack),
                                verify_timeout_seconds=6.0) as (h, good):
        await touched(gate / "up-done")
        yield h, good, gate / "go"


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
        stack: Stack, tmp_path: Path, docker_proxy: DockerProxy) -> None:
    # compose brought the known-good release back; dockerd "restarts" before the rollback could
    # read back which images run, and is still away at the verification's deadline
    async with compose_held_after_up(stack, tmp_path, docker_proxy) as (h, good, go):
        await docker_proxy.cut()
        go.touch()
        await h.wait_event("action.rollback.verifying", timeout=30)
        await outage_verdict(h, good, "verify_images")
        assert h.events("action.rollback.images_verified") == []
        await docker_proxy.mend()


async def test_an_engine_outage_while_probing_the_target_is_no_verdict(
        stack: Stack, tmp_path: Path, docker_proxy: DockerProxy) -> None:
    # the known-good images run, then the engine "restarts" and takes the backend with it: the
    # probes fail while the engine does not answer — the engine's outage, not the release's
    async with compose_held_after_up(stack, tmp_path, docker_proxy) as (h, good, go):
        stack.break_health(500)  # what a backend the engine stopped looks like to the probes
        go.touch()
        await h.wait_event("action.rollback.images_verified", timeout=30)
        await docker_proxy.cut()
        await outage_verdict(h, good, "verify_probes")
        await docker_proxy.mend()


async def test_an_engine_outage_before_the_rollback_escalates_engine_down(
        stack: Stack, tmp_path: Path, docker_proxy: DockerProxy) -> None:
    # a bad deploy, then the engine stops answering before the failures are sustained: no
    # rollback against an engine that cannot carry it out — escalated, and the webhook says why
    stack.deploy("v1")
    with webhook_receiver() as receiver:
        config = rollback_config(stack, tmp_path, deploy_grace_seconds=4.0,
                                 webhook_url=receiver.url().reveal())
        async with Harness(config, docker=DockerAdapter(docker_proxy.url, timeout=10),
                           tolerate=(DockerError,)) as h:
            await h.wait_event("release.known_good", timeout=30)
            stack.deploy("v2")
            await h.wait_event("deploy", timeout=20)
            await docker_proxy.cut()
            escalation = await h.wait_event("escalation", timeout=30)
            assert escalation.evidence["reason"] == "engine_down"
            assert escalation.message.startswith("escalated: the docker engine does not answer")
            decision = h.events("rollback.decision")[0]
            assert decision.evidence["reason"] == "engine_down"
            assert decision.evidence["engine_error"], decision.evidence
            await asyncio.sleep(1.5)
            assert h.store.actions(kind="rollback") == []
            await docker_proxy.mend()
        sent = [body for body in receiver.bodies if body["event"] == "escalation"]
        assert [body["reason"] for body in sent] == ["engine_down"]
        assert "docker engine does not answer" in sent[0]["message"]
    assert stack.running_images()["backend"] == stack.images["v2"]
