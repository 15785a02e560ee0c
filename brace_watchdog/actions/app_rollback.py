"""The app-rollback component: track releases, roll a bad deploy back, verify, never loop.

Each short cycle (docker SDK calls in worker threads) does three things; the first two live in
:mod:`~brace_watchdog.actions.release_tracker`:

1. **track** — read the compose project's containers, build the running :class:`Release`; a new
   fingerprint is a *deploy* (event + ``brace_deploys_total{change}``, with what changed);
2. **promote** — the running release's health evidence (what the daemon itself watched,
   persisted; :mod:`~brace_watchdog.actions.promotion_policy`) is updated; a release watched
   unchanged and healthy for ``stable_after_seconds`` becomes the *known-good* release: stored
   with its tags, image IDs, the Alembic revision and the snapshot of its config taken when it
   was deployed (every ``-f`` compose file, ``.env``, every ``env_file:`` target); its images
   are pinned under daemon-owned tags and saved as archives, and the pins of releases no
   longer needed are released;
3. **decide** — :func:`~brace_watchdog.actions.rollback_policy.decide` over the health window;
   every decision that is not "nothing to do" is recorded once per episode with its evidence.

The target is chosen by :func:`~brace_watchdog.actions.rollback_target.choose_target` (the newest
usable known-good release, or the one an operator names with ``--to``); a plan whose retags
conflict (:func:`~brace_watchdog.actions.rollback_target.retag_conflicts`) is refused, and an
automatic one escalates instead. A rollback runs in its own task as a
:class:`~brace_watchdog.actions.rollback_run.RollbackRun`
(journal, steps, verification, verdict; after a restart, recovery of an open one). The control
socket uses :meth:`AppRollback.manual_rollback`, :meth:`AppRollback.plan` and
:meth:`AppRollback.status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from brace_watchdog.actions.config_snapshot import ConfigSnapshot, read_files
from brace_watchdog.actions.gated import Progress
from brace_watchdog.actions.release_tracker import ReleaseTracker
from brace_watchdog.actions.rollback_policy import DAY_SECONDS, Decision, PolicyInput, decide
from brace_watchdog.actions.rollback_run import RollbackRequest, RollbackRun, RollbackVerdict
from brace_watchdog.actions.rollback_steps import RollbackPlan, build_plan
from brace_watchdog.actions.rollback_target import (
    Candidate,
    TargetChoice,
    choose_target,
    retag_conflicts,
)
from brace_watchdog.actions.swarm_watch import SwarmRollbackWatch
from brace_watchdog.adapters.compose import ComposeCLI
from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.adapters.swarm import SwarmAdapter
from brace_watchdog.component import Component
from brace_watchdog.config import Config
from brace_watchdog.errors import AdapterError, RefusedError, StateUnavailableError
from brace_watchdog.monitors.policy import WindowVerdict, assess_window, is_failing
from brace_watchdog.observations import (
    ProbeSample,
    alerts_stale_after,
    service_target,
    target_service,
)
from brace_watchdog.releases import Release, ReleaseObservation
from brace_watchdog.runtime import Hub
from brace_watchdog.state import ReleaseRecord
from brace_watchdog.swarm_release import plan_steps, specs_from_blob

__all__ = ["AppRollback"]

KIND = "rollback"  # the action kind in the store and the action lock
CANDIDATES = 20  # known-good releases an operator may name with --to


class PlanRefused(RefusedError):
    """The plan itself may not run (its retags conflict); nothing was changed."""


class AppRollback(Component):
    name = "rollback"

    def __init__(self, hub: Hub, *, docker: DockerAdapter | None = None,
                 compose: ComposeCLI | None = None, clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.hub = hub
        self.cfg = hub.config.rollback
        self._docker = docker or hub.engine
        self._compose = compose or ComposeCLI(self.cfg.compose_command,
                                              timeout=self.cfg.compose_timeout_seconds)
        self._clock = clock or hub.clock
        self._sleep = sleep
        self._monotonic = monotonic
        self._node = (DockerAdapter(self.cfg.node_docker_host)
                      if self.cfg.driver == "swarm" and self.cfg.node_docker_host else None)
        self.tracker = ReleaseTracker(hub, self._docker, self.cfg, self._clock(), self._compose,
                                      node=self._node)
        self._episode: tuple[str, str, str | None] | None = None
        self._decision: Decision | None = None
        self._engine_error = ""
        self._task: asyncio.Task[RollbackVerdict] | None = None
        self._generation = -1  # the leadership generation whose open actions were reconciled
        self._detect: asyncio.Task[str] | None = None
        self._swarm_watch = SwarmRollbackWatch(hub, self.cfg.project)
        self._swarm_in_charge: tuple[str, ...] = ()
        self._swarm_done_at: float | None = None  # when Swarm last stopped being in charge
        self._news = asyncio.Event()  # a failing probe arrived since the last decision
        self._woken = False
        self._sustained = False  # the window of the last decision was sustained

    # -- component contract ----------------------------------------------------------------
    def interval(self) -> float:
        return self.cfg.interval_seconds

    def reconfigure(self, config: Config) -> None:
        self.cfg = self.tracker.cfg = config.rollback
        self._compose = self.tracker.compose = ComposeCLI(
            self.cfg.compose_command, timeout=self.cfg.compose_timeout_seconds)

    async def start(self) -> None:
        self.tracker.load()
        # learn the compose version now, so the first rollback does not wait for it
        self._detect = asyncio.create_task(self._compose.detect(), name="rollback:compose")
        self.hub.leadership.on_lost.append(self._leadership_lost)
        self.hub.observations.failure_listeners.append(self._on_failure)
        self._reconcile()

    def _reconcile(self) -> bool:
        """Once per leadership (at start, or when this instance became the leader): resolve a
        rollback that a crash or a lost leader left open. True when a recovery started."""
        gate = self.hub.leadership
        if self._generation == gate.generation or not gate.decision().acts:
            return False
        self._generation = gate.generation
        open_actions = self.hub.store.open_actions("rollback")
        if not open_actions:
            return False
        try:
            lease = self.hub.action_lock.acquire(KIND, "recovery")
        except RefusedError:
            self._generation = -1  # another action runs: try again next cycle
            return False
        self._task = asyncio.create_task(self._run().recover(open_actions[0]),
                                         name="rollback:recover")
        self._task.add_done_callback(lambda _: self.hub.action_lock.release(lease))
        return True

    def _leadership_lost(self, reason: str) -> None:
        """No lock, no action: the running step stops now; the journal says where."""
        if self._task is not None and not self._task.done():
            self._task.cancel(f"leadership lost: {reason}")

    async def cycle(self) -> str:
        """A scheduled cycle tracks, records evidence, promotes and decides; a cycle woken by a
        failing probe (:meth:`pause`) only looks for a deploy and decides."""
        woken, self._woken = self._woken, False
        self._news.clear()
        now = self._clock()
        if not woken:
            self._reconcile()
        obs, engine_error = await self._track(now, liveness=not woken)
        if self.busy:
            return "rollback in progress"
        leader = self.hub.leadership.decision()
        if not leader.acts:
            if not woken:
                await self._watch_releases(now, obs, engine_error)
            return f"watching only ({leader.message})"
        await self._watch_swarm(now, engine_error is None)
        holder = self.hub.action_lock.holder
        if holder is not None:
            return f"not deciding while {holder.describe()} runs"
        if not woken:
            await self._watch_releases(now, obs, engine_error)
        decision = await self._decide()
        if engine_error is not None:
            raise engine_error  # decided on it; the supervisor still counts the failed cycle
        return self._status_line(obs, decision)

    async def _watch_releases(self, now: float, obs: ReleaseObservation,
                              engine_error: AdapterError | None) -> None:
        """What every instance does, leader or follower: fold its own probes into the running
        release's evidence, promote it to known-good in its own store (with its pins, archives
        and config snapshot on this host), keep the kept releases' images on this node (pins,
        archives, loads back) — so a follower that takes over has a rollback target, and a
        Swarm node the leader's rollback starts a task on has its image (docs/swarm.md).
        Nothing while the engine does not answer."""
        if engine_error is None:
            self.tracker.record_health(now, targets=self._evidence_targets(),
                                       max_gap_seconds=self._max_gap(),
                                       alert_firing=bool(self._trigger_alerts(now)))
            if obs.release is not None:
                await self.tracker.maybe_promote(now, obs)
            await self.tracker.keep_images()  # not while the engine is down: engine_down

    async def pause(self, seconds: float) -> bool:
        """Sleep until the next cycle; a failing probe wakes the decision at once."""
        if not self._news.is_set():
            try:
                await asyncio.wait_for(self._news.wait(), seconds)
            except TimeoutError:
                return False
        self._woken = True
        return True

    def _on_failure(self, sample: ProbeSample) -> None:
        """A failing sample wakes the decision until the window is sustained; from then on the
        scheduled cycles decide (an episode is recorded once), so a long outage adds no work."""
        if (not self._sustained and is_failing(sample, self.cfg.failure_results)
                and self.hub.leadership.decision().acts):
            self._news.set()

    async def _decide(self) -> Decision:
        """Decide over the window as it is now and act on it."""
        self._news.clear()  # every failing sample so far is in the window read here
        inp = self._policy_input(self._clock(), manual=False)
        decision = decide(inp, self.cfg)
        self._sustained = inp.verdict.sustained
        await self._handle(decision, inp)
        return decision

    async def _track(self, now: float, *, liveness: bool = True
                     ) -> tuple[ReleaseObservation, AdapterError | None]:
        """The tracker's look at the engine (``liveness``: publish each service's liveness
        sample); when the engine does not answer, the last observation and the error (the
        policy escalates instead of acting on it)."""
        # a follower sees the leader's rollback in the shared journal: not a deploy
        elsewhere = (self.hub.leadership.view.enabled and not self.busy
                     and bool(self.hub.store.open_actions("rollback")))
        try:
            obs = await self.tracker.track(now, by_rollback=self.busy or elsewhere,
                                           failing=lambda: self._window_verdict(now).sustained,
                                           liveness=liveness)
        except AdapterError as exc:
            self._engine_error = str(exc)[:200]
            return self.tracker.observation or ReleaseObservation(None), exc
        self._engine_error = ""
        return obs, None

    async def _watch_swarm(self, now: float, engine_answers: bool) -> None:
        """Driver ``swarm``: record the updates Swarm rolled back itself; note the services
        whose update Swarm is judging or undoing now (the policy holds meanwhile) and when it
        stops: what failed while Swarm was in charge is not held against the release."""
        if not isinstance(self._docker, SwarmAdapter) or not engine_answers:
            return  # without a fresh look, Swarm is taken to be where it was last seen
        look = self._docker.last_look  # the tracker's look of this cycle: no second listing
        if look is None or look.stack != self.cfg.project:
            return
        self._swarm_watch.stack = self.cfg.project
        running: dict[str, set[tuple[str, str]]] = {}
        for task in look.containers:
            if task.running:
                running.setdefault(task.service, set()).add((task.image_id, task.config_hash))
        before, self._swarm_in_charge = (
            self._swarm_in_charge, await self._swarm_watch.observe(look.services, running))
        if before and not self._swarm_in_charge:
            self._swarm_done_at = now

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.hub.observations.failure_listeners.remove(self._on_failure)
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the journal keeps it open; the next start resolves it
            await asyncio.gather(self._task, return_exceptions=True)
        if self._detect is not None:
            self._detect.cancel()
            await asyncio.gather(self._detect, return_exceptions=True)
        self.tracker.save_health()
        self._docker.close()
        if self._node is not None:
            self._node.close()

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- deciding --------------------------------------------------------------------------
    def _target(self, requested: str | None = None) -> tuple[TargetChoice, ReleaseRecord | None]:
        """The rollback target's choice and record (RefusedError: ``requested`` names none)."""
        records = self.hub.store.known_good_releases(CANDIDATES)
        current = self.tracker.running
        choice = choose_target([Candidate(r.fingerprint, r.known_good_at or 0.0,
                                          r.failed_verification_at) for r in records],
                               current.fingerprint if current else None, requested)
        fingerprint = choice.target.fingerprint if choice.target else None
        return choice, next((r for r in records if r.fingerprint == fingerprint), None)

    def _policy_input(self, now: float, *, manual: bool,
                      requested: str | None = None) -> PolicyInput:
        verdict = self._window_verdict(now)
        choice, known_good = self._target(requested)
        db = self.hub.observations.database
        current = self.tracker.running
        current_record = self.hub.store.release(current.fingerprint) if current else None
        left_by = current_record.rolled_back_by if current_record else None
        rollback = self.hub.store.action(left_by) if left_by is not None else None
        return PolicyInput(
            now=now, verdict=verdict,
            current_fingerprint=current.fingerprint if current else None,
            known_good_fingerprint=known_good.fingerprint if known_good else None,
            firing_alerts=self._trigger_alerts(now),
            known_good_failed_at=known_good.failed_verification_at if known_good else None,
            schema_tracked=self.hub.config.database.enabled,
            known_good_revision=known_good.alembic_revision if known_good else None,
            current_revision=db.revision if db is not None and db.up else None,
            last_deploy_at=self.tracker.deploy_at,
            rollback_times=tuple(self.hub.store.rollback_starts(since=now - DAY_SECONDS).values()),
            frozen=self.hub.frozen() is not None, manual=manual,
            current_rolled_back_at=current_record.rolled_back_at if current_record else None,
            current_rollback_outcome=rollback.status if rollback else None,
            newest_known_good=choice.newest.fingerprint if choice.newest else None,
            requested=choice.requested, target_note=choice.note,
            failing_before_deploy=self.tracker.failing_before_deploy,
            database_up=None if db is None or not self.hub.config.database.enabled else db.up,
            database_problem="" if db is None or db.up else f"{db.failure_kind}: {db.message}",
            engine_error=self._engine_error, swarm_in_charge=self._swarm_in_charge)

    def _trigger_alerts(self, now: float) -> tuple[str, ...]:
        """Configured trigger alerts firing now; stale ones (Alertmanager down) never count."""
        alerts = self.hub.config.alerts
        current = self.hub.observations.current_alerts(
            now, alerts_stale_after(alerts.interval_seconds, alerts.timeout_seconds))
        return tuple(a.name for a in current if a.name in self.cfg.trigger_alerts)

    def _evidence_targets(self) -> tuple[str, ...]:
        """Every target that must report before a span counts as watched healthy."""
        return (*(target for target, _ in self.hub.config.health.targets()),
                *(service_target(s) for s in self.cfg.services))

    def _max_gap(self) -> float:
        """The longest span between two evidence updates that still counts as watched."""
        health = self.hub.config.health
        return 2 * (health.interval_seconds + health.timeout_seconds + self.cfg.interval_seconds)

    def _window_verdict(self, now: float) -> WindowVerdict:
        """The window per probe target (backend, frontend); a sustained one decides."""
        cfg = self.cfg
        deployed = self.tracker.deploy_at
        # neither a deploy's grace period, nor what another action (a DB rollback stopping the
        # writers) caused before it released the lock, nor what failed while Swarm itself was
        # updating or rolling back (driver swarm) counts
        marks = [t for t in (None if deployed is None else deployed + cfg.deploy_grace_seconds,
                             self.hub.action_lock.released_at, self._swarm_done_at)
                 if t is not None]
        ignore = max(marks, default=None)
        observations = self.hub.observations
        targets = sorted(observations.probes) or ["none probed yet"]
        verdicts = [assess_window(observations.samples(target), now=now,
                                  window_seconds=cfg.window_seconds, min_samples=cfg.min_samples,
                                  error_ratio=cfg.error_ratio,
                                  failure_results=cfg.failure_results, ignore_before=ignore)
                    for target in targets]
        sustained = [v for v in verdicts if v.sustained]
        return sustained[0] if sustained else max(verdicts, key=lambda v: v.ratio)

    async def _handle(self, decision: Decision, inp: PolicyInput) -> None:
        self._decision = decision
        if decision.action == "none":
            if inp.verdict.failing == 0 and inp.verdict.total > 0:
                # a clean window ends the episode; an empty one (just after an action released
                # the lock: its samples are ignored) is no news either way
                self._episode = None
            return
        key = (decision.action, decision.reason, inp.current_fingerprint)
        if key == self._episode:
            return  # already recorded for this episode
        self._episode = key
        if decision.action == "rollback":
            try:
                await self._start(self._request(decision, inp, origin="automatic"))
            except PlanRefused as exc:
                await self._refuse_plan(exc, decision)
            except RefusedError:
                self._episode = None  # another action took the lock meanwhile: decide again
            except StateUnavailableError:
                self._episode = None  # not started: decide again once the store is writable
                raise
            return
        self.hub.record("rollback.decision", self.name, decision.message,
                        evidence={"reason": decision.reason, **decision.evidence},
                        severity="warning")
        if decision.action == "escalate":
            await self._escalate(decision.reason, decision.message, decision.evidence)

    @staticmethod
    def _request(decision: Decision, inp: PolicyInput, *, origin: str,
                 requester: str = "") -> RollbackRequest:
        return RollbackRequest(origin=origin, requester=requester, reason=decision.message,
                               first_failure_ts=inp.verdict.first_failure_ts,
                               evidence=decision.evidence,
                               target_fingerprint=inp.known_good_fingerprint)

    async def _refuse_plan(self, exc: PlanRefused, decision: Decision) -> None:
        message = f"no automatic rollback: {exc.message}; escalated"
        evidence = {"reason": "retag_conflict", **decision.evidence}
        self.hub.record("rollback.decision", self.name, message, evidence=evidence,
                        severity="warning")
        await self._escalate("retag_conflict", message, decision.evidence)

    async def _escalate(self, reason: str, message: str, evidence: dict[str, Any]) -> None:
        extra: dict[str, Any] = {"logs": await self._failing_logs()}
        if reason in ("schema_moved", "schema_unknown"):
            extra["db_plan"] = self._db_plan(evidence)
        await self.hub.escalate(reason, message, source=self.name, evidence={**evidence, **extra})

    # -- acting ----------------------------------------------------------------------------
    async def _build_plan(self, target_fingerprint: str | None) -> RollbackPlan:
        known_good = (self.hub.store.release(target_fingerprint) if target_fingerprint
                      else None)
        if known_good is None:
            raise RefusedError("plan", "no known-good release recorded yet")
        target = Release.from_dict(known_good.release)
        snapshot = ConfigSnapshot.from_blob(known_good.config_files)
        matches = snapshot is None or await asyncio.to_thread(_disk_matches, snapshot)
        current = self.tracker.running
        if self.cfg.driver == "compose":
            await self._compose.detect()  # the argv depends on the version (--pull never)
        plan = build_plan(self.cfg, target, current, snapshot=snapshot,
                          disk_matches_snapshot=matches, compose=self._compose)
        users = await self._docker.tag_users([ref for ref, _ in plan.retags])
        conflicts = retag_conflicts(plan.retags, project=self.cfg.project,
                                    services=self.cfg.services, users=users)
        return replace(plan, conflicts=conflicts)

    async def _start(self, request: RollbackRequest,
                     progress: Progress | None = None) -> RollbackVerdict | None:
        """Take the action lock, start the rollback task (which releases it when done); in
        dry-run mode only record the plan (its verdict). RefusedError when another action runs."""
        lease = self.hub.action_lock.acquire(KIND, request.origin)
        task: asyncio.Task[RollbackVerdict] | None = None
        try:
            plan = await self._build_plan(request.target_fingerprint)
            if plan.conflicts:
                raise PlanRefused("plan", "the retags conflict: " + "; ".join(plan.conflicts))
            if self.hub.config.daemon.dry_run:
                return self._dry_run(plan, request)
            run = self._run()
            action_id = run.begin(plan, request)  # journalled before anything runs, or refused
            task = self._task = asyncio.create_task(
                run.execute(plan, request, action_id, progress), name="rollback:execute")
            return None
        finally:
            if task is None:
                self.hub.action_lock.release(lease)
            else:
                task.add_done_callback(lambda _: self.hub.action_lock.release(lease))

    def _dry_run(self, plan: RollbackPlan, request: RollbackRequest) -> RollbackVerdict:
        message = (f"dry run: would roll back {_short(plan.current)} -> {plan.target.short} "
                   f"({request.reason})")
        self.hub.metrics.rollbacks.labels(result="dry_run").inc()
        self.hub.record("rollback.would", self.name, message,
                        evidence={"decision": request.evidence, "plan": plan.to_dict()})
        return RollbackVerdict("dry_run", message, plan)

    def _run(self) -> RollbackRun:
        return RollbackRun(self.hub, self.cfg, self._docker, self._compose,
                           escalate=self._escalate, failing_logs=self._failing_logs,
                           sleep=self._sleep,
                           monotonic=self._monotonic)

    # -- control socket --------------------------------------------------------------------
    async def manual_rollback(self, requester: str, *, progress: Progress | None = None,
                              to: str | None = None, expect: str | None = None) -> RollbackVerdict:
        """Operator-initiated rollback: skips the trigger and rate guards, never verification.
        ``to`` names the target (a fingerprint prefix); ``expect`` is the target's fingerprint
        the operator confirmed from the plan — refused when the target is another one now."""
        self.hub.action_lock.check(KIND)
        now = self._clock()
        await self.tracker.track(now)
        inp = self._policy_input(now, manual=True, requested=to)
        decision = decide(inp, self.cfg)
        if expect is not None and expect != inp.known_good_fingerprint:
            raise RefusedError("rollback", f"the target is now {_fp(inp.known_good_fingerprint)}"
                               f", not the confirmed {expect[:12]}; plan again")
        self.hub.record("rollback.requested", self.name, f"{requester} requested a rollback: "
                        f"{decision.message}", evidence={"reason": decision.reason,
                                                          **decision.evidence})
        if not decision.acts:
            raise RefusedError("rollback", decision.message)
        request = self._request(decision, inp, origin="manual", requester=requester)
        dry_run = await self._start(request, progress)
        if dry_run is not None:
            return dry_run
        assert self._task is not None  # _start created it
        return await asyncio.shield(self._task)

    async def plan(self, to: str | None = None) -> dict[str, Any]:
        """What a rollback (to ``to``, or the automatic choice) would do now, and what the
        automatic policy currently decides. ``target`` is what the operator confirms."""
        now = self._clock()
        manual_input = self._policy_input(now, manual=True, requested=to)
        manual = decide(manual_input, self.cfg)
        automatic = decide(self._policy_input(now, manual=False), self.cfg)
        out: dict[str, Any] = {"automatic": _decision_dict(automatic),
                               "manual": _decision_dict(manual),
                               "target": manual_input.known_good_fingerprint}
        if manual.acts:
            plan = await self._build_plan(manual_input.known_good_fingerprint)
            if isinstance(self._docker, SwarmAdapter):
                services = await self._docker.services(self.cfg.project)
                record = self.hub.store.release(plan.target.fingerprint)
                plan = replace(plan, swarm_steps=plan_steps(
                    self.cfg.project, services, plan.target,
                    kept=specs_from_blob(record.service_specs if record else None)))
            out["plan"] = plan.to_dict()
            if plan.conflicts:
                out["refused"] = "the retags conflict: " + "; ".join(plan.conflicts)
        return out

    def status(self) -> dict[str, Any]:
        known_good = self._known_good()
        current, observed = self.tracker.running, self.tracker.observation
        health = self.tracker.health
        return {"current": current.to_dict() if current else None,
                "observed": observed.describe() if observed else "not yet",
                "health": health.to_dict() if health else None,
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

    async def _failing_logs(self) -> dict[str, str]:
        """The last ``[notify] log_lines`` of the failing services' containers."""
        lines = self.hub.config.notify.log_lines
        if lines <= 0:
            return {}
        failing = {target_service(s.target) for s in self.hub.observations.samples()
                   if is_failing(s, self.cfg.failure_results)}
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


def _fp(fingerprint: str | None) -> str:
    return fingerprint[:12] if fingerprint else "none"


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


def _disk_matches(snapshot: ConfigSnapshot) -> bool:
    """Whether the config files on disk are still the known-good ones (blocking)."""
    return read_files(snapshot.paths) == snapshot
