"""The app-rollback component: track releases, roll a bad deploy back, verify, never loop.

Each short cycle (docker SDK calls in worker threads) does three things; the first two live in
:mod:`~brace_watchdog.actions.release_tracker`:

1. **track** — read the compose project's containers, build the running :class:`Release`; a new
   fingerprint is a *deploy* (event + ``brace_deploys_total{change}``, with what changed);
2. **promote** — a release unchanged and healthy for ``stable_after_seconds`` becomes the
   *known-good* release: stored with its tags, image IDs, the Alembic revision and a snapshot of
   the compose file and ``.env``; its images are pinned under daemon-owned tags and the pins of
   releases no longer needed are released;
3. **decide** — :func:`~brace_watchdog.actions.rollback_policy.decide` over the health window;
   every decision that is not "nothing to do" is recorded once per episode with its evidence.

A rollback runs in its own task (beating ``hub.progress``), journalled before it starts and after
every step (:mod:`~brace_watchdog.actions.rollback_steps` does the steps). Success: event, metric,
notification. Failure: freeze automation, escalate, never retry. After a restart, an open
rollback is resolved: completed if the known-good images run, otherwise marked interrupted and
escalated. The control socket uses :meth:`AppRollback.manual_rollback`, :meth:`AppRollback.plan`
and :meth:`AppRollback.status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from brace_watchdog.actions.release_tracker import ReleaseTracker, read_snapshot
from brace_watchdog.actions.rollback_policy import Decision, PolicyInput, decide
from brace_watchdog.actions.rollback_steps import (
    RollbackPlan,
    RollbackSteps,
    Snapshot,
    build_plan,
    verify_images,
    verify_probes,
)
from brace_watchdog.adapters.compose import ComposeCLI
from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.component import Component
from brace_watchdog.config import Config
from brace_watchdog.errors import ActionError, AdapterError, RefusedError
from brace_watchdog.monitors.policy import WindowVerdict, assess_window
from brace_watchdog.releases import Release, ReleaseObservation, build_release
from brace_watchdog.runtime import Hub
from brace_watchdog.state import ActionRecord, ReleaseRecord

__all__ = ["AppRollback"]

DAY = 86400.0
Progress = Callable[[str], Awaitable[None]]


class AppRollback(Component):
    name = "rollback"

    def __init__(self, hub: Hub, *, docker: DockerAdapter | None = None,
                 compose: ComposeCLI | None = None, clock: Callable[[], float] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.hub = hub
        self.cfg = hub.config.rollback
        self._docker = docker or DockerAdapter()
        self._compose = compose or ComposeCLI(self.cfg.compose_command,
                                              timeout=self.cfg.compose_timeout_seconds)
        self._clock = clock or hub.clock
        self._transport = transport
        self._sleep = sleep
        self._monotonic = monotonic
        self._snapshot_root = hub.config.daemon.state_path.parent / "releases"
        self.tracker = ReleaseTracker(hub, self._docker, self.cfg, self._clock())
        self._episode: tuple[str, str, str | None] | None = None
        self._decision: Decision | None = None
        self._task: asyncio.Task[dict[str, Any]] | None = None

    # -- component contract ----------------------------------------------------------------
    def interval(self) -> float:
        return self.cfg.interval_seconds

    def reconfigure(self, config: Config) -> None:
        self.cfg = self.tracker.cfg = config.rollback
        self._compose = ComposeCLI(self.cfg.compose_command,
                                   timeout=self.cfg.compose_timeout_seconds)

    async def start(self) -> None:
        self.tracker.load()
        open_actions = self.hub.store.open_actions("rollback")
        if open_actions:
            self._task = asyncio.create_task(self._recover(open_actions[0]),
                                             name="rollback:recover")

    async def cycle(self) -> str:
        now = self._clock()
        obs = await self.tracker.track(now, by_rollback=self.busy)
        if self.busy:
            return "rollback in progress"
        if obs.release is not None:
            await self.tracker.maybe_promote(now, obs)
        decision = decide(self._policy_input(now, manual=False), self.cfg)
        await self._handle(decision)
        return self._status_line(obs, decision)

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the journal keeps it open; the next start resolves it
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._docker.close()

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- deciding --------------------------------------------------------------------------
    def _policy_input(self, now: float, *, manual: bool) -> PolicyInput:
        cfg = self.cfg
        verdict = self._window_verdict(now)
        known_good = self._known_good()
        db = self.hub.observations.database
        current = self.tracker.running
        return PolicyInput(
            now=now, verdict=verdict,
            current_fingerprint=current.fingerprint if current else None,
            known_good_fingerprint=known_good.fingerprint if known_good else None,
            firing_alerts=tuple(a.name for a in self.hub.observations.alerts
                                if a.name in cfg.trigger_alerts),
            known_good_failed_at=known_good.failed_verification_at if known_good else None,
            schema_tracked=self.hub.config.database.enabled,
            known_good_revision=known_good.alembic_revision if known_good else None,
            current_revision=db.revision if db is not None and db.up else None,
            last_deploy_at=self.tracker.deploy_at,
            rollback_times=tuple(a.created_at for a in self.hub.store.actions(
                kind="rollback", since_ts=now - DAY)),
            frozen=self.hub.frozen() is not None, manual=manual)

    def _window_verdict(self, now: float) -> WindowVerdict:
        """The window per probe target (backend, frontend); a sustained one decides."""
        cfg = self.cfg
        deployed = self.tracker.deploy_at
        ignore = None if deployed is None else deployed + cfg.deploy_grace_seconds
        observations = self.hub.observations
        targets = sorted(observations.probes) or ["none probed yet"]
        verdicts = [assess_window(observations.samples(target), now=now,
                                  window_seconds=cfg.window_seconds, min_samples=cfg.min_samples,
                                  error_ratio=cfg.error_ratio,
                                  failure_results=cfg.failure_results, ignore_before=ignore)
                    for target in targets]
        sustained = [v for v in verdicts if v.sustained]
        return sustained[0] if sustained else max(verdicts, key=lambda v: v.ratio)

    async def _handle(self, decision: Decision) -> None:
        self._decision = decision
        if decision.action == "none":
            if decision.evidence["window"]["failing"] == 0:
                self._episode = None  # a clean window ends the episode
            return
        key = (decision.action, decision.reason, decision.evidence.get("current_release"))
        if key == self._episode:
            return  # already recorded for this episode
        self._episode = key
        if decision.action == "rollback":
            await self._start(decision, origin="automatic", requester="", progress=None)
            return
        self.hub.record("rollback.decision", self.name, decision.message,
                        evidence={"reason": decision.reason, **decision.evidence},
                        severity="warning")
        if decision.action == "escalate":
            await self._escalate(decision.reason, decision.message, decision.evidence)

    async def _escalate(self, reason: str, message: str, evidence: dict[str, Any]) -> None:
        extra: dict[str, Any] = {"logs": await self._failing_logs()}
        if reason in ("schema_moved", "schema_unknown"):
            extra["db_plan"] = self._db_plan(evidence)
        await self.hub.escalate(reason, message, source=self.name, evidence={**evidence, **extra})

    # -- acting ----------------------------------------------------------------------------
    async def _build_plan(self) -> RollbackPlan:
        known_good = self._known_good()
        if known_good is None:
            raise RefusedError("plan", "no known-good release recorded yet")
        target = Release.from_dict(known_good.release)
        snapshot = Snapshot(Path(known_good.compose_file or self.cfg.compose_file).name,
                            known_good.compose_snapshot, known_good.env_snapshot)
        on_disk = await asyncio.to_thread(read_snapshot,
                                          Path(known_good.compose_file or self.cfg.compose_file),
                                          target.working_dir)
        current = self.tracker.running
        return build_plan(self.cfg, target, current, snapshot=snapshot,
                          disk_matches_snapshot=on_disk == (snapshot.compose, snapshot.env),
                          snapshot_dir=self._snapshot_root / target.short, compose=self._compose)

    async def _start(self, decision: Decision, *, origin: str, requester: str,
                     progress: Progress | None) -> dict[str, Any]:
        plan = await self._build_plan()
        if self.hub.config.daemon.dry_run:
            self.hub.metrics.rollbacks.labels(result="dry_run").inc()
            self.hub.record("rollback.would", self.name, f"dry run: would roll back "
                            f"{_short(plan.current)} -> {plan.target.short} ({decision.message})",
                            evidence={"decision": decision.evidence, "plan": plan.to_dict()})
            return {"result": "dry_run", "plan": plan.to_dict(), "message": decision.message}
        self._task = asyncio.create_task(
            self._execute(plan, decision, origin=origin, requester=requester, progress=progress),
            name="rollback:execute")
        return {"result": "started", "plan": plan.to_dict()}

    async def _execute(self, plan: RollbackPlan, decision: Decision, *, origin: str,
                       requester: str, progress: Progress | None) -> dict[str, Any]:
        first = decision.evidence["window"]["first_failure_ts"]
        started = self._clock()
        data = {**plan.to_dict(), "first_failure_ts": first, "decision": decision.message}
        action_id = self.hub.store.begin_action("rollback", origin=origin, plan=data,
                                                requester=requester)
        if first is not None:
            self.hub.metrics.rollback_time_to_action.set(started - first)
        self.hub.metrics.rollback_last.set(started)
        say = progress or _silent
        self.hub.record("rollback.started", self.name, f"{origin} rollback {action_id}: "
                        f"{decision.message}", action_id=action_id,
                        evidence={"decision": decision.evidence, "argv": list(plan.argv)})
        async with self._heartbeat():
            await self._notify("rollback.started", action_id, decision.message, data, logs=True)
            try:
                await say(f"running: {' '.join(plan.argv)}")
                steps = RollbackSteps(self._docker, self._compose, self._journal(action_id))
                output = await steps.run(plan)
                await say("verifying the known-good images and health probes")
                checks = await self._verify(action_id, data)
            except Exception as exc:  # any failure ends in freeze + escalate, never a retry
                error = exc if isinstance(exc, ActionError) else ActionError("internal", repr(exc))
                result = await self._fail(action_id, data, error)
                await say(f"failed: {error}")
                return result
        result = await self._succeed(action_id, data, {"compose": output, **checks})
        await say(f"succeeded: {result['message']}")
        return result

    async def _verify(self, action_id: int, data: dict[str, Any]) -> dict[str, Any]:
        self.hub.store.journal_step(action_id, "verifying")
        within = self.cfg.verify_timeout_seconds
        deadline = self._monotonic() + within
        images = await verify_images(self._docker, self.cfg.project, self.cfg.services,
                                     data["expected_images"], within=within,
                                     clock=self._monotonic, sleep=self._sleep, beat=self._beat)
        self.hub.store.journal_step(action_id, "images_verified", evidence=images)
        probes = await self._verify_probes(max(0.0, deadline - self._monotonic()))
        self.hub.store.journal_step(action_id, "probes_verified", evidence=probes)
        return {"images": images, "probes": probes}

    async def _verify_probes(self, within: float) -> dict[str, Any]:
        health = self.hub.config.health
        urls = {"backend": health.url}
        if health.frontend_url:
            urls["frontend"] = health.frontend_url
        async with httpx.AsyncClient(timeout=health.timeout_seconds,
                                     transport=self._transport) as client:
            return await verify_probes(client, urls, successes=self.cfg.verify_successes,
                                       within=within, interval=health.interval_seconds,
                                       ok_statuses=health.ok_statuses, clock=self._monotonic,
                                       sleep=self._sleep, beat=self._beat)

    async def _succeed(self, action_id: int, data: dict[str, Any],
                       checks: dict[str, Any]) -> dict[str, Any]:
        now = self._clock()
        target = data["target"]["fingerprint"][:12]
        message = f"rolled back to known-good release {target}; images and health verified"
        if data.get("use_snapshot"):
            message += ("; the compose file on disk still holds the bad config — fix it before "
                        "the next deploy")
        self.hub.store.journal_step(action_id, "succeeded", status="succeeded", result=message,
                                    evidence=checks)
        self.hub.metrics.rollbacks.labels(result="succeeded").inc()
        first = data.get("first_failure_ts")
        if first is not None:
            self.hub.metrics.rollback_time_to_recovery.set(now - first)
        self.hub.record("rollback.succeeded", self.name, message, action_id=action_id,
                        evidence={"checks": checks, "first_failure_ts": first,
                                  "time_to_recovery": None if first is None else now - first})
        await self._notify("rollback.succeeded", action_id, message, {"checks": checks})
        return {"result": "succeeded", "action_id": action_id, "message": message,
                "checks": checks}

    async def _fail(self, action_id: int, data: dict[str, Any],
                    error: ActionError) -> dict[str, Any]:
        now = self._clock()
        target = data["target"]["fingerprint"]
        message = (f"rollback to {target[:12]} failed at {error.stage}: {error.message}; "
                   "automatic actions frozen until an operator resumes them")
        self.hub.store.journal_step(action_id, "failed", status="failed", result=message,
                                    evidence={"stage": error.stage})
        self.hub.store.mark_release_failed_verification(target, now)
        self.hub.metrics.rollbacks.labels(result="failed").inc()
        evidence = {"action_id": action_id, "stage": error.stage, "error": error.message,
                    "plan": data}
        self.hub.freeze(f"rollback {action_id} failed", by=self.name, evidence=evidence)
        await self._notify("rollback.failed", action_id, message, evidence)
        await self._escalate("rollback_failed", message, evidence)
        return {"result": "failed", "action_id": action_id, "message": message,
                "stage": error.stage}

    # -- crash recovery --------------------------------------------------------------------
    async def _recover(self, action: ActionRecord) -> dict[str, Any]:
        data = action.plan
        expected: dict[str, str] = data.get("expected_images", {})
        async with self._heartbeat():
            try:
                obs = build_release(self.cfg.project, self.cfg.services,
                                    await self._docker.compose_containers(self.cfg.project))
            except AdapterError as exc:
                obs = ReleaseObservation(None, missing=(f"engine error: {exc}",))
            running = obs.release.image_ids() if obs.release else {}
            if running and running == expected and not obs.not_running:
                self.hub.store.journal_step(
                    action.id, "resumed", evidence={"running": running},
                    result="restarted mid-rollback; known-good images run; completing verification")
                try:
                    probes = await self._verify_probes(self.cfg.verify_timeout_seconds)
                except ActionError as exc:
                    return await self._fail(action.id, data, exc)
                return await self._succeed(action.id, data, {"images": {"running": running},
                                                             "probes": probes, "resumed": True})
            return await self._interrupted(action, running, expected, obs)

    async def _interrupted(self, action: ActionRecord, running: dict[str, str],
                           expected: dict[str, str], obs: ReleaseObservation) -> dict[str, Any]:
        message = (f"rollback {action.id} was interrupted at step '{action.step}' by a daemon "
                   "restart and the known-good images are not running; not repeating it — "
                   "an operator must decide")
        evidence = {"action_id": action.id, "step": action.step, "running": running,
                    "expected": expected, "observed": obs.describe()}
        self.hub.store.journal_step(action.id, "interrupted", status="interrupted",
                                    result=message, evidence=evidence)
        self.hub.metrics.rollbacks.labels(result="interrupted").inc()
        self.hub.freeze(f"rollback {action.id} interrupted", by=self.name, evidence=evidence)
        await self._escalate("rollback_interrupted", message, evidence)
        return {"result": "interrupted", "action_id": action.id, "message": message}

    # -- control socket --------------------------------------------------------------------
    async def manual_rollback(self, requester: str, *,
                              progress: Progress | None = None) -> dict[str, Any]:
        """Operator-initiated rollback: skips the trigger and rate guards, never verification."""
        if self.busy:
            raise RefusedError("rollback", "a rollback is already running")
        now = self._clock()
        await self.tracker.track(now)
        decision = decide(self._policy_input(now, manual=True), self.cfg)
        self.hub.record("rollback.requested", self.name, f"{requester} requested a rollback: "
                        f"{decision.message}", evidence={"reason": decision.reason,
                                                          **decision.evidence})
        if not decision.acts:
            raise RefusedError("rollback", decision.message)
        started = await self._start(decision, origin="manual", requester=requester,
                                    progress=progress)
        if self._task is None or started["result"] != "started":
            return started
        return await asyncio.shield(self._task)

    async def plan(self) -> dict[str, Any]:
        """What a rollback would do now, and what the automatic policy currently decides."""
        now = self._clock()
        manual = decide(self._policy_input(now, manual=True), self.cfg)
        automatic = decide(self._policy_input(now, manual=False), self.cfg)
        out: dict[str, Any] = {"automatic": _decision_dict(automatic),
                               "manual": _decision_dict(manual)}
        if manual.acts:
            out["plan"] = (await self._build_plan()).to_dict()
        return out

    def status(self) -> dict[str, Any]:
        known_good = self._known_good()
        current, observed = self.tracker.running, self.tracker.observation
        return {"current": current.to_dict() if current else None,
                "observed": observed.describe() if observed else "not yet",
                "known_good": _record_dict(known_good), "deploy_at": self.tracker.deploy_at,
                "busy": self.busy, "frozen": self.hub.frozen(),
                "decision": _decision_dict(self._decision) if self._decision else None,
                "last_actions": [{"id": a.id, "status": a.status, "step": a.step,
                                  "origin": a.origin, "created_at": a.created_at,
                                  "result": a.result}
                                 for a in self.hub.store.actions(kind="rollback", limit=5)]}

    # -- helpers ---------------------------------------------------------------------------
    def _known_good(self) -> ReleaseRecord | None:
        return self.tracker.known_good()

    def _journal(self, action_id: int) -> Callable[[str, dict[str, Any]], None]:
        def step(name: str, evidence: dict[str, Any]) -> None:
            self.hub.store.journal_step(action_id, name, evidence=evidence)
            self._beat()
        return step

    def _beat(self) -> None:
        self.hub.progress.beat(self.name)

    @contextlib.asynccontextmanager
    async def _heartbeat(self) -> AsyncIterator[None]:
        async def beat_forever() -> None:
            while True:
                self._beat()
                await self._sleep(1.0)
        task = asyncio.create_task(beat_forever(), name="rollback:heartbeat")
        try:
            yield
        finally:
            task.cancel()

    async def _notify(self, event: str, action_id: int, message: str, evidence: dict[str, Any],
                      *, logs: bool = False) -> None:
        payload = {"message": message, "action_id": action_id, "evidence": evidence}
        if logs:
            payload["logs"] = await self._failing_logs()
        await self.hub.notifier.send(event, payload)

    async def _failing_logs(self) -> dict[str, str]:
        """The last ``[notify] log_lines`` of the failing services' containers."""
        lines = self.hub.config.notify.log_lines
        if lines <= 0:
            return {}
        failing = {s.target for s in self.hub.observations.samples()
                   if s.result in self.cfg.failure_results}
        services = [s for s in self.cfg.services if s in failing] or list(self.cfg.services)
        logs: dict[str, str] = {}
        for container in self.tracker.containers:
            if container.service in services and container.service not in logs:
                try:
                    logs[container.service] = await self._docker.container_logs(container.id,
                                                                                tail=lines)
                except AdapterError as exc:
                    logs[container.service] = f"<logs unavailable: {exc}>"
        return logs

    def _db_plan(self, evidence: dict[str, Any]) -> dict[str, Any]:
        scan = self.hub.observations.backups
        before = [f for f in (scan.valid if scan else ())
                  if self.tracker.deploy_at is None or f.timestamp <= self.tracker.deploy_at]
        backup = max(before, key=lambda f: f.timestamp).name if before else None
        compose = f"{' '.join(self.cfg.compose_command)} -f {self.cfg.compose_file}"
        return {
            "action": "db_rollback", "backup": backup,
            "known_good_revision": evidence.get("known_good_revision"),
            "current_revision": evidence.get("current_revision"),
            "known_good_release": evidence.get("known_good_release"),
            "steps": [f"{compose} stop backend admin-bot scheduler",
                      f"RESTORE_CONFIRM=YES ./scripts/restore_db.sh ./backups/{backup or '<dump>'}",
                      "roll the app back to the known-good release (retag + compose up)",
                      f"{compose} up -d backend admin-bot scheduler",
                      "validate GET /api/health and run the smoke tests"],
            "approve": "gated db_rollback action through the control socket"}

    def _status_line(self, obs: ReleaseObservation, decision: Decision) -> str:
        known_good = self._known_good()
        current = obs.release.short if obs.release else "unknown"
        kg = known_good.fingerprint[:12] if known_good else "none"
        state = "" if decision.action == "none" else f"; {decision.action}: {decision.reason}"
        return f"release {current} (known-good {kg}){state}"


async def _silent(message: str) -> None:
    del message


def _short(release: Release | None) -> str:
    return release.short if release is not None else "unknown"


def _decision_dict(decision: Decision) -> dict[str, Any]:
    return {"action": decision.action, "reason": decision.reason, "message": decision.message,
            "evidence": decision.evidence}


def _record_dict(record: ReleaseRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {"fingerprint": record.fingerprint, "known_good_at": record.known_good_at,
            "release": record.release, "alembic_revision": record.alembic_revision,
            "compose_file": record.compose_file, "pinned": record.pinned,
            "failed_verification_at": record.failed_verification_at, "extra": record.extra}
