"""One app rollback, carried out: journal, steps, verification, verdict — and crash recovery.

:mod:`~brace_watchdog.actions.app_rollback` (the component) decides *whether* to roll back and
builds the :class:`~brace_watchdog.actions.rollback_steps.RollbackPlan`; a :class:`RollbackRun`
takes that plan and a :class:`RollbackRequest` (who asked, why, since when the release fails) and
returns a :class:`RollbackVerdict`. It never raises for a failed rollback, like
:mod:`~brace_watchdog.actions.restore_run` for a failed restore test.

The journal of one action (each arrow a step, so a restarted daemon knows where it stood)::

    begin → [images_loaded] → retagged → snapshot_written → compose_done → verifying
          → images_verified → probes_verified → succeeded | failed

Success: event, metric, notification. Failure: the target release is marked as having failed
verification, automation is frozen and an operator is asked; never retried.
:meth:`RollbackRun.recover` resolves an action a restart left open: completed (verification
only) if the known-good images run — on Swarm, if every service's spec is the known-good one,
its tasks then awaited to the verification's deadline — otherwise marked interrupted, frozen
and escalated; a destructive step is never repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from brace_watchdog.actions.gated import Progress
from brace_watchdog.actions.image_archive import ImageArchive, archive_folder
from brace_watchdog.actions.rollback_steps import (
    EngineRetry,
    Polling,
    ProbeStreak,
    RollbackPlan,
    RollbackSteps,
    engine_answers,
    verify_images,
    verify_probes,
)
from brace_watchdog.actions.swarm_steps import SwarmSteps, targets_of, verify_tasks
from brace_watchdog.adapters.compose import ComposeCLI
from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.adapters.process import CommandResult
from brace_watchdog.adapters.swarm import SwarmAdapter
from brace_watchdog.config import RollbackConfig
from brace_watchdog.errors import ActionError, AdapterError, OutageError
from brace_watchdog.journal_handover import adopted_from, interrupted_by
from brace_watchdog.leadership import LeadershipLostError
from brace_watchdog.monitors.health import build_probers
from brace_watchdog.releases import ReleaseObservation, build_release
from brace_watchdog.runtime import Hub
from brace_watchdog.state import ActionRecord
from brace_watchdog.swarm_release import spec_restored, specs_from_blob

__all__ = ["Escalate", "FailingLogs", "RollbackChecks", "RollbackRequest", "RollbackRun",
           "RollbackVerdict", "Verdict"]

Verdict = Literal["dry_run", "succeeded", "failed", "outage", "interrupted"]
Escalate = Callable[[str, str, dict[str, Any]], Awaitable[None]]
FailingLogs = Callable[[], Awaitable[dict[str, str]]]
SOURCE = "rollback"


@dataclass(frozen=True)
class RollbackRequest:
    """Why a rollback runs: origin (``automatic``/``manual``), requester, the decision's
    sentence and evidence, and when the failures it answers began."""

    origin: str
    requester: str
    reason: str
    first_failure_ts: float | None
    evidence: dict[str, Any]
    target_fingerprint: str | None = None


@dataclass(frozen=True)
class RollbackChecks:
    """What verification proved: the image IDs running, the probe streak, the compose run."""

    running: dict[str, str]
    probes: ProbeStreak
    compose: CommandResult | None = None
    resumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"images": {"running": self.running},
                               "probes": asdict(self.probes)}
        if self.compose is not None:
            out["compose"] = asdict(self.compose)
        if self.resumed:
            out["resumed"] = True
        return out


@dataclass(frozen=True)
class RollbackVerdict:
    """How one rollback ended (``dry_run`` when it only said what it would do)."""

    result: Verdict
    message: str
    plan: RollbackPlan
    action_id: int | None = None
    stage: str = ""
    checks: RollbackChecks | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"result": self.result, "message": self.message, "action_id": self.action_id,
                "stage": self.stage, "plan": self.plan.to_dict(),
                "checks": self.checks.to_dict() if self.checks else None}


async def _silent(stage: str, message: str) -> None:
    del stage, message


class RollbackRun:
    """Carries out, or recovers, one journalled rollback; see the module docstring."""

    def __init__(self, hub: Hub, cfg: RollbackConfig, docker: DockerAdapter, compose: ComposeCLI,
                 *, escalate: Escalate, failing_logs: FailingLogs,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 monotonic: Callable[[], float] = time.monotonic,
                 retry_wait: float = 1.0) -> None:
        self.hub = hub
        self.cfg = cfg
        self._docker = docker
        self._compose = compose
        self._escalate = escalate
        self._failing_logs = failing_logs
        self._sleep = sleep
        self._monotonic = monotonic
        self._retry_wait = retry_wait

    # -- one rollback ----------------------------------------------------------------------
    async def execute(self, plan: RollbackPlan, request: RollbackRequest, action_id: int,
                      progress: Progress | None = None) -> RollbackVerdict:
        """Run the steps of the action :meth:`begin` journalled, verify; the verdict says how
        it ended."""
        say = progress or _silent
        async with self._heartbeat():
            await self._notify("rollback.started", action_id, request.reason,
                               journal_data(plan, request), logs=True)
            try:
                output = await (await self._steps(action_id, plan, say)).run(plan)
                await say("verifying", "verifying the known-good images and health probes")
                checks = await self._verify(action_id, plan, output)
            except LeadershipLostError as exc:
                return await self._handed_over(action_id, plan, exc.message, say)
            except asyncio.CancelledError:
                if not self.hub.leadership.decision().acts:
                    await self._handed_over(action_id, plan, "leadership lost mid-step", say)
                raise
            except Exception as exc:  # any failure ends in freeze + escalate, never a retry
                verdict = await self._fail(action_id, plan, request, exc)
                await say("failed", verdict.message)
                return verdict
        verdict = await self._succeed(action_id, plan, request, checks)
        await say("succeeded", verdict.message)
        return verdict

    async def _steps(self, action_id: int, plan: RollbackPlan,
                     say: Progress) -> RollbackSteps | SwarmSteps:
        """The driver's steps: compose (retag, snapshot, up) or Swarm (per-service rollback)."""
        journal, confirm = self._journal(action_id), self.hub.leadership.confirm
        if isinstance(self._docker, SwarmAdapter):
            await say("running", f"rolling back the services of stack {self.cfg.project}")
            record = self.hub.store.release(plan.target.fingerprint)
            return SwarmSteps(self._docker, self.cfg.project, journal, confirm,
                              specs=specs_from_blob(record.service_specs if record else None))
        await say("running", f"running: {' '.join(plan.argv)}")
        archive = ImageArchive(self._docker, archive_folder(self.hub.config.daemon.state_path))
        return RollbackSteps(self._docker, self._compose, journal, before=confirm,
                             archive=archive, retry=EngineRetry(self.cfg.engine_retry_seconds,
                                                                wait=self._retry_wait))

    def begin(self, plan: RollbackPlan, request: RollbackRequest) -> int:
        """Journal the action; raises StateUnavailableError (nothing done) when the store is."""
        started = self.hub.clock()
        action_id = self.hub.store.begin_action(
            "rollback", origin=request.origin, plan=journal_data(plan, request),
            requester=request.requester)
        if plan.current is not None:
            self.hub.store.mark_release_rolled_back(plan.current.fingerprint, at=started,
                                                    action_id=action_id)
        if request.first_failure_ts is not None:
            self.hub.metrics.rollback_time_to_action.set(started - request.first_failure_ts)
        self.hub.metrics.rollback_last.set(started)
        self.hub.record("rollback.started", SOURCE, f"{request.origin} rollback {action_id}: "
                        f"{request.reason}", action_id=action_id,
                        evidence={"decision": request.evidence, "argv": list(plan.argv)})
        return action_id

    async def _handed_over(self, action_id: int, plan: RollbackPlan, why: str,
                           say: Progress) -> RollbackVerdict:
        """No lock, no action: journal where this instance stopped and leave the action open,
        so the new leader reconciles it like a restarted daemon (never repeating a step)."""
        action = self.hub.store.action(action_id)
        step = action.step if action else "?"
        message = (f"rollback {action_id} interrupted after step '{step}': {why}; the new "
                   "leader completes the verification or escalates")
        self.hub.store.journal_step(action_id, "leadership_lost", result=message,
                                    evidence={"after_step": step})
        self.hub.metrics.rollbacks.labels(result="interrupted").inc()
        with contextlib.suppress(Exception):
            await say("interrupted", message)
        return RollbackVerdict("interrupted", message, plan, action_id, stage=step)

    async def _verify(self, action_id: int, plan: RollbackPlan,
                      output: CommandResult) -> RollbackChecks:
        await self.hub.leadership.confirm("verify")
        self.hub.store.journal_step(action_id, "verifying")
        if isinstance(self._docker, SwarmAdapter):
            running, probes = await self._swarm_checks(self._docker, action_id, plan)
        else:  # compose returned with the containers replaced: probe at once, while the
            # images are being checked
            images = verify_images(self._docker, self.cfg.project, self.cfg.services,
                                   plan.expected_images, self._polling())
            running, probes = await self._images_and_probes(action_id, images,
                                                            self.cfg.verify_timeout_seconds)
        self.hub.store.journal_step(action_id, "probes_verified", evidence=asdict(probes))
        return RollbackChecks(running=running, probes=probes, compose=output)

    def _polling(self) -> Polling:
        return Polling(self.cfg.verify_timeout_seconds, min(0.5, self.cfg.interval_seconds),
                       self._monotonic, self._sleep, self._beat)

    async def _swarm_checks(self, swarm: SwarmAdapter, action_id: int,
                            plan: RollbackPlan) -> tuple[dict[str, str], ProbeStreak]:
        """Swarm converges after its command returned: wait until every service's tasks run
        the known-good spec, as many as its replicas, then probe — both within one deadline."""
        polling = self._polling()
        deadline = self._monotonic() + polling.within
        running = await verify_tasks(swarm, self.cfg.project, targets_of(plan), polling)
        self.hub.store.journal_step(action_id, "images_verified", evidence={"running": running})
        return running, await self._verify_probes(max(0.0, deadline - self._monotonic()))

    async def _images_and_probes(self, action_id: int, images: Awaitable[dict[str, str]],
                                 within: float) -> tuple[dict[str, str], ProbeStreak]:
        """The image check and the probe streak side by side; the images' error wins."""
        probing = asyncio.create_task(self._verify_probes(within), name="rollback:verify")
        try:
            running = await images
            self.hub.store.journal_step(action_id, "images_verified",
                                        evidence={"running": running})
            return running, await probing
        finally:
            probing.cancel()  # images not verified (or this task cancelled): stop probing
            if probing.done() and not probing.cancelled():
                probing.exception()  # retrieved: the images' error is the one reported

    async def _verify_probes(self, within: float) -> ProbeStreak:
        """The verification's own probes, over the health monitor's lean prober (no TLS set-up
        for a plain-HTTP URL, so the first round starts at once)."""
        health = self.hub.config.health
        probers = build_probers(health)
        try:
            return await verify_probes(probers, successes=self.cfg.verify_successes,
                                       within=within, interval=health.interval_seconds,
                                       ok_statuses=health.ok_statuses, clock=self._monotonic,
                                       sleep=self._sleep, beat=self._beat)
        finally:
            for prober in probers.values():
                prober.close()

    # -- endings ---------------------------------------------------------------------------
    async def _succeed(self, action_id: int, plan: RollbackPlan, request: RollbackRequest,
                       checks: RollbackChecks) -> RollbackVerdict:
        now = self.hub.clock()
        message = (f"rolled back to known-good release {plan.target.short}; images and health "
                   "verified")
        if plan.use_snapshot:
            message += ("; the known-good config was written back over the bad one: "
                        + ", ".join(plan.config_files))
        evidence = checks.to_dict()
        self.hub.store.journal_step(action_id, "succeeded", status="succeeded", result=message,
                                    evidence=evidence)
        self.hub.metrics.rollbacks.labels(result="succeeded").inc()
        first = request.first_failure_ts
        if first is not None:
            self.hub.metrics.rollback_time_to_recovery.set(now - first)
        self.hub.record("rollback.succeeded", SOURCE, message, action_id=action_id,
                        evidence={"checks": evidence, "first_failure_ts": first,
                                  "time_to_recovery": None if first is None else now - first})
        await self._notify("rollback.succeeded", action_id, message, {"checks": evidence})
        return RollbackVerdict("succeeded", message, plan, action_id, checks=checks)

    async def _fail(self, action_id: int, plan: RollbackPlan, request: RollbackRequest,
                    exc: Exception) -> RollbackVerdict:
        """End a rollback that did not succeed: a verdict on the target, or an outage (the
        target's record untouched). Either way automation freezes and a human is asked."""
        error = await self._judge(exc)
        short = plan.target.short
        outage = isinstance(error, OutageError)
        result: Verdict = "outage" if outage else "failed"
        if outage:
            message = (f"rollback to {short} stopped at {error.stage}: {error.message}; an "
                       f"engine outage is no verdict on release {short}, which is not marked "
                       "failed; automatic actions frozen until an operator resumes them")
        else:
            message = (f"rollback to {short} failed at {error.stage}: {error.message}; "
                       "automatic actions frozen until an operator resumes them")
            self.hub.store.mark_release_failed_verification(plan.target.fingerprint,
                                                            self.hub.clock())
        self.hub.store.journal_step(action_id, result, status="failed", result=message,
                                    evidence={"stage": error.stage})
        self.hub.metrics.rollbacks.labels(result=result).inc()
        evidence = {"action_id": action_id, "stage": error.stage, "error": error.message,
                    "plan": journal_data(plan, request)}
        why = "stopped by an engine outage" if outage else "failed"
        self.hub.freeze(f"rollback {action_id} {why}", by=SOURCE, evidence=evidence)
        await self._notify(f"rollback.{result}", action_id, message, evidence)
        await self._escalate(f"rollback_{result}", message, evidence)
        return RollbackVerdict(result, message, plan, action_id, stage=error.stage)

    async def _judge(self, exc: Exception) -> ActionError:
        """The error as an operator reads it; any failure while the engine does not answer is
        an outage, not a verdict."""
        error = exc if isinstance(exc, ActionError) else ActionError("internal", repr(exc))
        if isinstance(error, OutageError) or await engine_answers(self._docker):
            return error
        return OutageError(error.stage, f"{error.message} (and the docker engine does not "
                           "answer)")

    # -- crash recovery --------------------------------------------------------------------
    async def recover(self, action: ActionRecord) -> RollbackVerdict:
        """Resolve an action a restart left open; never repeats a step that changed anything."""
        plan, request = RollbackPlan.from_dict(action.plan), request_from_journal(action)
        self._mark_left(action, plan)
        async with self._heartbeat():
            try:
                obs = build_release(self.cfg.project, self.cfg.services,
                                    await self._docker.compose_containers(self.cfg.project))
            except AdapterError as exc:
                obs = ReleaseObservation(None, missing=(f"engine error: {exc}",))
            running = obs.release.image_ids() if obs.release else {}
            if not await self._rolled_back(plan, obs):
                return await self._interrupted(action, plan, running, obs)
            swarm = self._docker if isinstance(self._docker, SwarmAdapter) else None
            self.hub.store.journal_step(
                action.id, "resumed", evidence={"running": running},
                result=f"interrupted mid-rollback {interrupted_by(action.plan)}; " + (
                    "the known-good specs are set; waiting for their tasks, then verifying"
                    if swarm else "known-good images run; completing verification"))
            try:
                if swarm is not None:
                    running, probes = await self._swarm_checks(swarm, action.id, plan)
                else:
                    probes = await self._verify_probes(self.cfg.verify_timeout_seconds)
            except ActionError as exc:
                return await self._fail(action.id, plan, request, exc)
            checks = RollbackChecks(running=running, probes=probes, resumed=True)
            return await self._succeed(action.id, plan, request, checks)

    async def _rolled_back(self, plan: RollbackPlan, obs: ReleaseObservation) -> bool:
        """Whether the interrupted rollback's changes were all made: compose — the known-good
        release runs; Swarm — every service's own spec is the known-good one (its tasks may
        still be converging: the verification waits for them, to its deadline)."""
        if not isinstance(self._docker, SwarmAdapter):
            return plan.runs_target(obs.release) and not obs.not_running
        try:
            services = {s.name: s for s in await self._docker.services(self.cfg.project)}
        except AdapterError:
            return False
        return all(spec_restored(services.get(name), target)
                   for name, target in targets_of(plan).items())

    def _mark_left(self, action: ActionRecord, plan: RollbackPlan) -> None:
        """Mark the release the open rollback set out to leave, as :meth:`begin` does — here
        too when another host began it (its mark is in that host's state file) or the daemon
        died before the mark: one automatic attempt per bad release, on every host."""
        current = plan.current
        if current is None:
            return
        record = self.hub.store.upsert_release(current.fingerprint, release=current.to_dict(),
                                               first_seen=action.created_at)
        if record.rolled_back_by != action.id:
            self.hub.store.mark_release_rolled_back(current.fingerprint, at=action.created_at,
                                                    action_id=action.id)

    async def _interrupted(self, action: ActionRecord, plan: RollbackPlan,
                           running: dict[str, str], obs: ReleaseObservation) -> RollbackVerdict:
        message = (f"rollback {action.id} was interrupted at step '{action.step}' "
                   f"{interrupted_by(action.plan)} and the known-good release (its images, and "
                   "its config where the rollback changes it) is not running; not repeating it "
                   "— an operator must decide")
        evidence = {"action_id": action.id, "step": action.step, "running": running,
                    "expected": plan.expected_images, "observed": obs.describe(),
                    "adopted_from": adopted_from(action.plan)}
        self.hub.store.journal_step(action.id, "interrupted", status="interrupted",
                                    result=message, evidence=evidence)
        self.hub.metrics.rollbacks.labels(result="interrupted").inc()
        self.hub.freeze(f"rollback {action.id} interrupted", by=SOURCE, evidence=evidence)
        await self._escalate("rollback_interrupted", message, evidence)
        return RollbackVerdict("interrupted", message, plan, action.id, stage=action.step)

    # -- helpers ---------------------------------------------------------------------------
    def _journal(self, action_id: int) -> Callable[[str, dict[str, Any]], None]:
        def step(name: str, evidence: dict[str, Any]) -> None:
            self.hub.store.journal_step(action_id, name, evidence=evidence)
            self._beat()
        return step

    def _beat(self) -> None:
        self.hub.progress.beat(SOURCE)

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


def journal_data(plan: RollbackPlan, request: RollbackRequest) -> dict[str, Any]:
    """What the action row keeps: the plan, and why it runs."""
    return {**plan.to_dict(), "first_failure_ts": request.first_failure_ts,
            "decision": request.reason}


def request_from_journal(action: ActionRecord) -> RollbackRequest:
    first = action.plan.get("first_failure_ts")
    return RollbackRequest(origin=action.origin, requester=action.requester,
                           reason=str(action.plan.get("decision", "")),
                           first_failure_ts=float(first) if first is not None else None,
                           evidence={})
