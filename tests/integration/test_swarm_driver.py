"""The Swarm driver's engine side against a REAL single-node Swarm on a private dockerd: a bad
update (health 404, crash loop) is taken back to the known-good spec — by `service rollback` when
Swarm's previous spec is the known-good one, by pinning the known-good image ID otherwise — and
verified (every task on the known-good image, health OK); the daemon itself, with the default
failure_results, rolls back a bad update that answers 500, hangs or crash-loops, once; an update
Swarm rolls back itself (`failure_action: rollback`) is recorded by the daemon, once, and not
fought; tasks on another node (a worker dockerd joined on loopback) are seen through the
manager's task API; a task's docker health check is read with its verdict time; the printed
rollback plan names each service's `docker service` step."""

from __future__ import annotations

import asyncio
import collections
import io
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.types import UpdateConfig
from prometheus_client import CollectorRegistry

from brace_watchdog import ctl
from brace_watchdog.actions.app_rollback import AppRollback
from brace_watchdog.actions.rollback_run import RollbackRequest, RollbackRun
from brace_watchdog.actions.rollback_steps import Polling, RollbackPlan, build_plan
from brace_watchdog.actions.swarm_steps import verify_tasks
from brace_watchdog.adapters.compose import ComposeCLI
from brace_watchdog.adapters.swarm import SwarmAdapter
from brace_watchdog.config import load_config
from brace_watchdog.metrics import Metrics
from brace_watchdog.releases import HealthCheck, Release, build_release, health_checks
from brace_watchdog.runtime import Hub
from brace_watchdog.state import Event, StateStore
from brace_watchdog.swarm_release import (
    ServiceTarget,
    SwarmService,
    choose_step,
    spec_hash,
)
from tests.support.stack import Harness, daemon_event, stop_daemon, write_daemon_toml
from tests.support.swarm import (
    CRASH_TAG,
    STACK,
    PrivateSwarm,
    converged_on,
    create_replicated_service,
    create_web_service,
    health_status,
    slot_args,
    swarm_worker,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

def _create(engine: PrivateSwarm, tmp_path: Path, busybox_image: str, name: str,
            **extra: object) -> tuple[str, int, str]:
    return create_web_service(engine, tmp_path, busybox_image, name, **extra)


def _update(engine: PrivateSwarm, service_id: str, **changes: object) -> None:
    """A deploy, as `docker service update` does it: retried when Swarm's own update moved the
    spec version between the read and the write ("update out of sequence")."""
    for attempt in range(5):
        try:
            engine.client.services.get(service_id).update(**changes)
            return
        except docker.errors.APIError as exc:
            if "out of sequence" not in str(exc) or attempt == 4:
                raise
            time.sleep(0.5)


async def _service(adapter: SwarmAdapter, name: str) -> SwarmService:
    return next(s for s in await adapter.services(STACK) if s.name == name)


async def _until(check: object, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not {what} within {timeout}s"
        await asyncio.sleep(0.5)


async def _recovered(adapter: SwarmAdapter, service_id: str, image_id: str, port: int) -> None:
    async def ok() -> bool:
        return (await asyncio.to_thread(converged_on, adapter.client, service_id, image_id)
                and await asyncio.to_thread(health_status, port) == "200")
    await _until(ok, "back on the known-good image and healthy")


async def test_a_bad_config_update_goes_back_by_service_rollback(
        swarm: PrivateSwarm, tmp_path: Path, busybox_image: str) -> None:
    adapter = SwarmAdapter(swarm.host)
    service_id, port, image = _create(swarm, tmp_path, busybox_image, "backend")
    try:
        await _recovered(adapter, service_id, image, port)
        good = (await _service(adapter, "backend")).current
        _update(swarm, service_id,  # the bad deploy: health answers 404
            args=["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/"])
        await _until(lambda: asyncio.to_thread(lambda: health_status(port) == "404"), "failing")
        bad = await _service(adapter, "backend")
        assert bad.version > 0 and bad.current != good and bad.current.image == good.image
        step = choose_step(bad, good)
        assert step.method == "rollback", step
        await adapter.rollback(service_id)
        await _recovered(adapter, service_id, image, port)
        assert (await _service(adapter, "backend")).current == good
    finally:
        adapter.close()


async def test_a_crash_looping_image_goes_back_by_pinning_the_known_good_image(
        swarm: PrivateSwarm, tmp_path: Path, busybox_image: str) -> None:
    adapter = SwarmAdapter(swarm.host)
    service_id, port, image = _create(swarm, tmp_path, busybox_image, "frontend")
    try:
        await _recovered(adapter, service_id, image, port)
        good = (await _service(adapter, "frontend")).current
        crash = swarm.client.images.get(CRASH_TAG).id
        _update(swarm, service_id, image=crash)
        # deployed twice: Swarm's previous spec is the bad one now, not the known-good
        _update(swarm, service_id, image=crash, force_update=True)
        bad = await _service(adapter, "frontend")
        assert bad.current == ServiceTarget(crash, good.spec_hash) and bad.previous != good
        step = choose_step(bad, good)
        assert step.method == "update", step
        await adapter.update_image(service_id, good.image)
        await _recovered(adapter, service_id, image, port)
        assert (await _service(adapter, "frontend")).current == good
    finally:
        adapter.close()


def _daemon_config(root: Path, port: int, service: str, path: str,
                   **rollback: object) -> Path:
    return write_daemon_toml(
        root, backend=f"http://127.0.0.1:{port}{path}", driver="swarm", project=STACK,
        services=[service], **{"verify_timeout_seconds": 90.0, **rollback})


def _start_daemon(root: Path, port: int, service: str, engine: PrivateSwarm,
                  path: str = "/api/health", **rollback: object) -> subprocess.Popen[bytes]:
    """The real daemon (driver swarm) probing ``path`` of ``service`` of the private swarm
    (``rollback``: [rollback] settings over the test defaults)."""
    with (root / "daemon.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "brace_watchdog", "run", "--config",
             str(_daemon_config(root, port, service, path, **rollback))], stdout=log,
            stderr=subprocess.STDOUT, env={**os.environ, "DOCKER_HOST": engine.host})


def _epoch(docker_time: str) -> float:
    return datetime.fromisoformat(docker_time[:26].rstrip("Z") + "+00:00").timestamp()


def _events(state: Path) -> list[Event]:
    store = StateStore(state).open()
    try:
        return sorted(store.events(limit=1000), key=lambda e: e.id)
    finally:
        store.close()


async def test_an_update_swarm_rolls_back_itself_is_recorded_not_fought(
        swarm: PrivateSwarm, tmp_path: Path, busybox_image: str) -> None:
    service_id, port, image = _create(
        swarm, tmp_path, busybox_image, "admin",
        update_config=UpdateConfig(failure_action="rollback", monitor=3_000_000_000))
    adapter = SwarmAdapter(swarm.host)
    daemon = _start_daemon(tmp_path, port, "admin", swarm)
    state = tmp_path / "state.db"
    try:
        await _recovered(adapter, service_id, image, port)
        await daemon_event(state, "release.known_good", timeout=60)
        _update(swarm, service_id, image=swarm.client.images.get(CRASH_TAG).id)
        recorded = await daemon_event(state, "swarm.rolled_back", timeout=120)
        assert f"{STACK}_admin" in recorded.message and "recorded, not fought" in recorded.message
        await _recovered(adapter, service_id, image, port)
        # the window (4 s) twice over after Swarm's rollback: the watchdog still did nothing
        await asyncio.sleep(10)
        events = _events(state)
        kinds = [e.kind for e in events]
        assert kinds.count("swarm.rolled_back") == 1, kinds
        assert not [k for k in kinds if k.startswith(("action.rollback", "escalation"))], [
            (e.kind, e.message) for e in events]
        assert not [e for e in events if e.kind == "rollback.decision"
                    and e.evidence.get("reason") not in ("swarm_in_charge", "deploy_grace")], [
            (e.kind, e.message) for e in events]
    finally:
        stop_daemon(daemon)
        adapter.close()


async def test_the_daemon_rolls_back_a_bad_swarm_update_and_verifies_it(
        swarm: PrivateSwarm, tmp_path: Path, busybox_image: str) -> None:
    service_id, port, image = _create(swarm, tmp_path, busybox_image, "api")
    adapter = SwarmAdapter(swarm.host)
    daemon = _start_daemon(tmp_path, port, "api", swarm, failure_results=[
        "http_4xx", "http_5xx", "timeout", "connection_error"])
    state = tmp_path / "state.db"
    try:
        await _recovered(adapter, service_id, image, port)
        good = (await _service(adapter, "api")).current
        await daemon_event(state, "release.known_good", timeout=60)
        _update(swarm, service_id,  # the bad deploy: health answers 404
            args=["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/"])
        bad = (await _service(adapter, "api")).current
        done = await daemon_event(state, "rollback.succeeded", "rollback.failed", timeout=180)
        assert done.kind == "rollback.succeeded", (done.message,
                                                   (tmp_path / "daemon.log").read_text())
        assert (await _service(adapter, "api")).current == good
        assert await asyncio.to_thread(health_status, port) == "200"
        events = _events(state)
        kinds = [e.kind for e in events]
        assert "action.rollback.swarm_rollback" in kinds, kinds
        # the same image, another config: the tasks were verified only once the bad-spec task
        # was gone (the manager's task API; Swarm converges after its rollback call returned)
        verified = next(e.ts for e in events if e.kind == "action.rollback.images_verified")
        api: Any = swarm.client.api
        gone = [_epoch(t["Status"]["Timestamp"]) for t in api.tasks(filters={"service": service_id})
                if spec_hash(t["Spec"]["ContainerSpec"]) == bad.spec_hash]
        assert gone and max(gone) <= verified, (gone, verified)
        assert "swarm.rolled_back" not in kinds, kinds  # its own `service rollback` is not Swarm's
    finally:
        stop_daemon(daemon)
        adapter.close()


async def test_tasks_on_another_node_are_read_through_the_managers_task_api(
        swarm: PrivateSwarm, tmp_path: Path, busybox_image: str,
        docker_client: docker.DockerClient) -> None:
    """A worker node (a second private dockerd joined on loopback) runs the service: the
    manager's engine has no container of it, yet release, convergence and verification see it."""
    with swarm_worker(swarm, docker_client, [busybox_image]) as worker:
        service_id, port, image = _create(swarm, tmp_path, busybox_image, "remote",
                                          constraints=["node.role==worker"])
        adapter = SwarmAdapter(swarm.host)
        try:
            await _recovered(adapter, service_id, image, port)
            label = {"label": f"com.docker.swarm.service.id={service_id}"}
            assert worker.containers.list(filters=label)
            assert not swarm.client.containers.list(all=True, filters=label)
            good = (await _service(adapter, "remote")).current
            obs = build_release(STACK, ["remote"], await adapter.compose_containers(STACK))
            assert obs.release is not None and not obs.not_running and not obs.mixed, obs
            assert obs.release.image_ids() == {"remote": image}
            assert await verify_tasks(adapter, STACK, {"remote": good},
                                      Polling(within=60)) == {"remote": image}
        finally:
            adapter.close()
            swarm.client.services.get(service_id).remove()


async def test_a_tasks_health_check_is_read_with_its_verdict_time(
        swarm: PrivateSwarm, tmp_path: Path, busybox_image: str) -> None:
    """A service with a docker health check (3 retries of 1 s + 1 s timeout): once Swarm runs
    its task (its check passed), the look reads it healthy with a 6 s verdict time, which the
    promotion rule waits out as on compose."""
    ns = 1_000_000_000
    check = docker.types.Healthcheck(test=["CMD-SHELL", "true"], interval=ns, timeout=ns,
                                     retries=3)
    service_id, port, image = _create(swarm, tmp_path, busybox_image, "checked",
                                      healthcheck=check)
    adapter = SwarmAdapter(swarm.host)
    try:
        await _recovered(adapter, service_id, image, port)
        containers = await adapter.compose_containers(STACK)
        assert health_checks(STACK, ["checked"], containers) == (
            HealthCheck("checked", "healthy", 6.0),)
    finally:
        adapter.close()
        swarm.client.services.get(service_id).remove()


async def test_the_printed_plan_says_what_the_swarm_rollback_does(
        swarm: PrivateSwarm, tmp_path: Path, busybox_image: str) -> None:
    """``rollback app --plan`` on Swarm prints each service's step — here ``docker service
    rollback`` after a config deploy, Swarm's previous spec being the known-good one — and
    why, not a compose command (was: ``… up -d --no-build --no-deps <service>``)."""
    service_id, port, image = _create(swarm, tmp_path, busybox_image, "planned")
    config = load_config(_daemon_config(tmp_path, port, "planned", "/api/health"))
    adapter = SwarmAdapter(swarm.host)
    try:
        await _recovered(adapter, service_id, image, port)
        async with Harness(config, docker=adapter) as h:
            await h.wait_event("release.known_good", timeout=60)
            _update(swarm, service_id, env=["UNUSED=1"])  # a config deploy that stays healthy
            await h.wait_event("deploy", timeout=60)
            out = io.StringIO()
            ctl._app_plan(await h.rollback.plan(), out)  # the printer `rollback app --plan` uses
        assert (f"  swarm: docker service rollback {STACK}_planned — planned: Swarm's previous "
                "spec is the known-good one") in out.getvalue(), out.getvalue()
        assert "run:" not in out.getvalue() and "compose" not in out.getvalue(), out.getvalue()
    finally:
        adapter.close()
        swarm.client.services.get(service_id).remove()


def _count_requests(client: docker.DockerClient) -> collections.Counter[str]:
    """The requests ``client`` sends the engine, counted by the last part of their API path
    (a wrapper around the SDK's transport: the engine keeps no request log to read)."""
    seen: collections.Counter[str] = collections.Counter()
    api: Any = client.api
    send = api.send

    def counting(request: Any, **kwargs: Any) -> Any:
        seen[str(request.path_url).split("?")[0].rsplit("/", 1)[-1]] += 1
        return send(request, **kwargs)
    api.send = counting
    return seen


async def test_a_rollback_cycle_reads_the_stack_once_and_hashes_a_spec_once_per_version(
        swarm: PrivateSwarm, tmp_path: Path, busybox_image: str) -> None:
    """Each cycle of the rollback component asks the manager once for the stack's services and
    once for their tasks (the Swarm watch reuses the tracker's look), and a spec is hashed once
    per service spec version, not on every cycle."""
    service_id, port, image = _create(swarm, tmp_path, busybox_image, "cycle")
    config = load_config(_daemon_config(tmp_path, port, "cycle", "/api/health"))
    client = docker.DockerClient(base_url=swarm.host, version="1.41")
    seen = _count_requests(client)
    adapter = SwarmAdapter(client=client)
    store = StateStore(config.daemon.state_path).open()
    rollback = AppRollback(Hub(config=config, store=store,
                               metrics=Metrics(CollectorRegistry(), process=False)),
                           docker=adapter)
    await rollback.start()
    try:
        await _recovered(adapter, service_id, image, port)
        await rollback.cycle()
        first = rollback.tracker.running
        seen.clear()
        for _ in range(3):
            await rollback.cycle()
        assert (seen["services"], seen["tasks"]) == (3, 3), seen
        computed = adapter.hashes.computed
        await rollback.cycle()
        assert adapter.hashes.computed == computed and rollback.tracker.running == first
        _update(swarm, service_id, env=["HEALTH=500"])  # a new spec version: hashed anew
        await rollback.cycle()
        assert adapter.hashes.computed > computed
        moved = (await _service(adapter, "cycle")).current
        assert moved.spec_hash == spec_hash(
            swarm.client.services.get(service_id).attrs["Spec"]["TaskTemplate"]["ContainerSpec"])
        assert first is not None and moved.spec_hash != first.config_hashes()["cycle"]
    finally:
        await rollback.stop()
        store.close()
        adapter.close()  # its own client (the counting one): no socket left to the GC
        swarm.client.services.get(service_id).remove()


# A CGI health check (busybox httpd runs it per request, with the service's environment): OK
# by default; a bad config update sets HEALTH to answer 500 or to hang past every probe timeout.
_CGI_HEALTH = """#!/bin/sh
case "$HEALTH" in
  500) printf 'HTTP/1.0 500 Internal Server Error\\r\\n\\r\\nbroken\\n' ;;
  hang) exec sleep 3600 ;;
  *) printf 'Content-Type: text/plain\\r\\n\\r\\nok\\n' ;;
esac
"""
_CGI_PATH = "/cgi-bin/health"


def _bad_update(engine: PrivateSwarm, service_id: str, failure: str) -> None:
    """The bad deploy: a config update whose health check answers 500 or hangs, an image that
    crash-loops deployed twice, or two bad configs one after the other (either way Swarm's
    previous spec is then not the known-good one)."""
    if failure == "500_twice":
        _update(engine, service_id, env=["HEALTH=500"])
        _update(engine, service_id, env=["HEALTH=500", "DEPLOY=2"])
        return
    if failure != "crash_loop":
        _update(engine, service_id, env=[f"HEALTH={failure}"])
        return
    crash = engine.client.images.get(CRASH_TAG).id
    _update(engine, service_id, image=crash)
    _update(engine, service_id, image=crash, force_update=True)


@pytest.mark.parametrize(("failure", "method", "window"), [
    ("500", "swarm_rollback", 4.0),
    # each hung probe takes the whole timeout: a window of many of them
    ("hang", "swarm_rollback", 20.0),
    ("crash_loop", "swarm_update", 4.0),
    # `service rollback` would land on the first bad config: the known-good spec kept at its
    # promotion is written back
    ("500_twice", "swarm_restore", 4.0)])
async def test_the_daemon_rolls_back_a_failing_swarm_update_once_and_verifies_it(
        swarm: PrivateSwarm, tmp_path: Path, busybox_image: str, failure: str,
        method: str, window: float) -> None:
    """The daemon's own decision, with the DEFAULT failure_results: a bad update that answers
    500, hangs (probe timeouts) or crash-loops goes back to the known-good spec, once — also
    when its config moved twice (the whole known-good container spec written back)."""
    name = f"bad{failure.replace('_', '')}"
    service_id, port, image = _create(swarm, tmp_path, busybox_image, name)
    script = tmp_path / "www" / "cgi-bin" / "health"
    script.parent.mkdir()
    script.write_text(_CGI_HEALTH)
    script.chmod(0o755)
    adapter = SwarmAdapter(swarm.host)
    daemon = _start_daemon(tmp_path, port, name, swarm, _CGI_PATH, window_seconds=window)
    state = tmp_path / "state.db"
    try:
        await _recovered(adapter, service_id, image, port)
        assert await asyncio.to_thread(health_status, port, _CGI_PATH) == "200"
        good = (await _service(adapter, name)).current
        await daemon_event(state, "release.known_good", timeout=60)
        _bad_update(swarm, service_id, failure)
        done = await daemon_event(state, "rollback.succeeded", "rollback.failed", timeout=180)
        assert done.kind == "rollback.succeeded", (done.message,
                                                   (tmp_path / "daemon.log").read_text())
        await _recovered(adapter, service_id, image, port)
        assert (await _service(adapter, name)).current == good
        api: Any = swarm.client.api
        running = [spec_hash(t["Spec"]["ContainerSpec"]) for t in api.tasks(
            filters={"service": service_id, "desired-state": "running"})]
        assert running and set(running) == {good.spec_hash}, (running, good)
        assert await asyncio.to_thread(health_status, port, _CGI_PATH) == "200"
        await asyncio.sleep(10)  # the window (4 s) twice over: no second rollback
        events = _events(state)
        kinds = [e.kind for e in events]
        assert kinds.count(f"action.rollback.{method}") == 1, kinds
        assert kinds.count("action.rollback.begin") == 1, kinds
        assert kinds.count("rollback.succeeded") == 1, kinds
        # nothing escalated on the way — in a crash loop neither: between two crashes the task
        # has no container, yet the release is its spec's (never no_current_release)
        escalated = [(e.kind, e.message) for e in events if e.kind == "rollback.decision"
                     and e.message.startswith("escalated")]
        assert not escalated, escalated
    finally:
        stop_daemon(daemon)
        adapter.close()
        swarm.client.services.get(service_id).remove()


# -- replicas: a rollback is verified only when every replica runs the known-good spec ----------

class _InProcess:
    """One :class:`RollbackRun` in this process against the private Swarm (no daemon: the run
    is what is under test), with its store, the escalations it asked for, and a manual request."""

    def __init__(self, root: Path, port: int, name: str, adapter: SwarmAdapter,
                 **rollback: object) -> None:
        self.config = load_config(_daemon_config(root, port, name, "/api/health", **rollback))
        self.store = StateStore(self.config.daemon.state_path).open()
        self.hub = Hub(config=self.config, store=self.store,
                       metrics=Metrics(CollectorRegistry(), process=False), docker=adapter)
        self.escalated: list[str] = []
        self.compose = ComposeCLI(self.config.rollback.compose_command, timeout=60)
        self.run = RollbackRun(self.hub, self.config.rollback, adapter, self.compose,
                               escalate=self._escalate, failing_logs=self._no_logs)
        self.request = RollbackRequest("manual", "test", "a test rollback", None, {})

    async def _escalate(self, reason: str, message: str, evidence: dict[str, Any]) -> None:
        del message, evidence
        self.escalated.append(reason)

    @staticmethod
    async def _no_logs() -> dict[str, str]:
        return {}

    def plan(self, good: Release, bad: Release | None) -> RollbackPlan:
        return build_plan(self.config.rollback, good, bad, snapshot=None,
                          disk_matches_snapshot=True, compose=self.compose)

    def verified_at(self) -> float:
        return next(e.ts for e in sorted(self.store.events(limit=1000), key=lambda e: e.id)
                    if e.kind == "action.rollback.images_verified")


async def _release(adapter: SwarmAdapter, name: str) -> Release:
    obs = build_release(STACK, [name], await adapter.compose_containers(STACK))
    assert obs.release is not None and not obs.not_running and not obs.mixed, obs
    return obs.release


def _tasks(engine: PrivateSwarm, service_id: str) -> list[dict[str, Any]]:
    api: Any = engine.client.api
    return list(api.tasks(filters={"service": service_id}))


def _assert_verified_after_convergence(engine: PrivateSwarm, service_id: str, good: str,
                                       verified: float) -> None:
    """Both replicas ran the known-good spec (``good``: its hash), and every task of another
    spec had stopped, before the tasks were verified (the manager's task API's timestamps)."""
    tasks = _tasks(engine, service_id)
    ran = [_epoch(t["Status"]["Timestamp"]) for t in tasks if t["Status"]["State"] == "running"
           and spec_hash(t["Spec"]["ContainerSpec"]) == good]
    stopped = [_epoch(t["Status"]["Timestamp"]) for t in tasks
               if spec_hash(t["Spec"]["ContainerSpec"]) != good]
    assert len(ran) == 2 and stopped, (tasks, verified)
    assert max(ran) <= verified and max(stopped) <= verified, (ran, stopped, verified)


async def test_a_rollback_whose_second_replica_cannot_run_fails_verification_at_its_deadline(
        swarm: PrivateSwarm, tmp_path: Path, busybox_image: str) -> None:
    """Two replicas wanted, one node, at most one per node: one task runs (healthy), the other
    stays pending. The rollback (to the release that runs) is not verified: at the deadline it
    fails like a compose one — the target marked, automation frozen, an operator asked."""
    service_id, ports, image = create_replicated_service(
        swarm, tmp_path, busybox_image, "unplaced", 2, maxreplicas=1)
    adapter = SwarmAdapter(swarm.host)
    try:
        def placed() -> list[dict[str, Any]]:
            tasks = [t for t in _tasks(swarm, service_id) if t["DesiredState"] == "running"]
            states = sorted(t["Status"]["State"] for t in tasks)
            return tasks if states == ["pending", "running"] else []
        await _until(lambda: asyncio.to_thread(lambda: bool(placed())), "one task placed")
        slot = next(t["Slot"] for t in placed() if t["Status"]["State"] == "running")
        port = ports[slot - 1]
        await _until(lambda: asyncio.to_thread(lambda: health_status(port) == "200"), "serving")
        run = _InProcess(tmp_path, port, "unplaced", adapter, verify_timeout_seconds=5.0)
        try:
            good = await _release(adapter, "unplaced")
            assert good.image_ids() == {"unplaced": image}
            run.store.upsert_release(good.fingerprint, release=good.to_dict(),
                                     first_seen=time.time())
            plan = run.plan(good, good)
            verdict = await run.run.execute(plan, run.request, run.run.begin(plan, run.request))
            assert verdict.result == "failed" and verdict.stage == "verify_images", verdict
            assert "1 of 2 replicas run the known-good spec" in verdict.message, verdict.message
            assert "max replicas per node" in verdict.message, verdict.message
            assert run.hub.frozen() and run.escalated == ["rollback_failed"]
            record = run.store.release(good.fingerprint)
            assert record is not None and record.failed_verification_at is not None
        finally:
            run.store.close()
    finally:
        adapter.close()
        swarm.client.services.get(service_id).remove()


async def _two_replicas_deployed_bad(engine: PrivateSwarm, root: Path, image_ref: str,
                                     name: str, adapter: SwarmAdapter
                                     ) -> tuple[str, int, Release, Release]:
    """A 2-replica service that ran a known-good release, then a bad deploy (health 404) that
    both replicas run: (service id, slot 1's port, good, bad)."""
    service_id, ports, image = create_replicated_service(engine, root, image_ref, name, 2)
    await _recovered(adapter, service_id, image, ports[0])
    good = await _release(adapter, name)
    _update(engine, service_id, args=slot_args("/"))
    await _until(lambda: asyncio.to_thread(converged_on, engine.client, service_id, image),
                 "both replicas on the bad spec")
    bad = await _release(adapter, name)
    assert bad.config_hashes() != good.config_hashes()
    return service_id, ports[0], good, bad


@pytest.mark.parametrize("resumed", [False, True])
async def test_a_two_replica_rollback_is_verified_once_both_replicas_run_the_known_good_spec(
        swarm: PrivateSwarm, tmp_path: Path, busybox_image: str, resumed: bool) -> None:
    """Carried out, or resumed after the daemon died (or lost leadership) right after its
    `service rollback`: the rollback neither completes while an old task runs nor — resumed —
    escalates while Swarm is still converging."""
    name = "resumed" if resumed else "pair"
    adapter = SwarmAdapter(swarm.host)
    service_id, port, good, bad = await _two_replicas_deployed_bad(
        swarm, tmp_path, busybox_image, name, adapter)
    run = _InProcess(tmp_path, port, name, adapter)
    try:
        plan = run.plan(good, bad)
        action_id = run.run.begin(plan, run.request)
        if resumed:
            await adapter.rollback(service_id)  # the step it took, journalled; then it died
            run.store.journal_step(action_id, "swarm_rollback", evidence={"service": name})
            action = run.store.action(action_id)
            assert action is not None
            verdict = await run.run.recover(action)
        else:
            verdict = await run.run.execute(plan, run.request, action_id)
        assert verdict.result == "succeeded", verdict
        _assert_verified_after_convergence(swarm, service_id, good.config_hashes()[name],
                                           run.verified_at())
    finally:
        run.store.close()
        adapter.close()
        swarm.client.services.get(service_id).remove()
