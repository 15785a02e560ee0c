"""Release tracking for the app rollback: what runs, what changed, what is known-good.

:class:`ReleaseTracker` reads the compose project's containers through the docker adapter (worker
threads), builds the running :class:`~brace_watchdog.releases.Release`, records a *deploy* when its
fingerprint changes (event + ``brace_deploys_total{change}``; dated by its newest container's
creation, :func:`~brace_watchdog.releases.deployed_at`) — and a *redeploy* when a service was
rolled out again with the release unchanged (Swarm: ``docker service update --force``; event
``redeploy``, ``brace_deploys_total{change="none"}``; the release keeps its evidence, known-good
mark and deploy time, as a compose recreate of the same release does) —, publishes each
service's liveness
(a ``service:<name>`` sample in the rollback window, ``brace_service_up``), keeps the running
release's health evidence in the state store (:mod:`~brace_watchdog.actions.promotion_policy`),
and promotes a release the daemon watched healthy for ``stable_after_seconds`` to *known-good*:
stored with its tags, image IDs, the Alembic revision and the snapshot of its config files
(:mod:`~brace_watchdog.actions.config_snapshot`: every ``-f`` file, ``.env`` and every
``env_file:`` target) taken when the release was first seen (its deploy: an edit during the
stability window is not "known-good"), its images pinned under daemon-owned tags and saved as
archives on this instance's node (:mod:`~brace_watchdog.actions.node_images`: a tag does not
survive ``docker system prune -af``, an archive does); the pins and archives of releases no
longer needed are released, and :meth:`ReleaseTracker.keep_images` keeps the kept ones on the
node every cycle. The
running release is kept in a state flag, so a restart neither mistakes it for a deploy nor
forgets a grace period. Every instance promotes in its own store, followers too (docs/swarm.md,
"Known-good on every instance"); instances sharing a state file promote a release once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection
from dataclasses import replace
from pathlib import Path

from brace_watchdog.actions.config_snapshot import (
    ConfigSnapshot,
    read_compose_files,
    snapshot_files,
)
from brace_watchdog.actions.image_upkeep import Upkeep
from brace_watchdog.actions.node_images import NodeImages
from brace_watchdog.actions.promotion_policy import (
    ReleaseHealth,
    health_save_due,
    observe,
    promotion,
)
from brace_watchdog.adapters.compose import ComposeCLI
from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.adapters.swarm import SwarmAdapter
from brace_watchdog.config import RollbackConfig
from brace_watchdog.errors import AdapterError
from brace_watchdog.observations import ProbeSample, service_target
from brace_watchdog.releases import (
    ComposeContainer,
    Release,
    ReleaseObservation,
    build_release,
    deployed_at,
    diff,
    health_checks,
    redeployed,
    reidentified,
    service_liveness,
    service_rollouts,
)
from brace_watchdog.runtime import Hub
from brace_watchdog.state import ReleaseRecord
from brace_watchdog.swarm_release import pick_spec, specs_blob

__all__ = ["CURRENT_FLAG", "ReleaseTracker"]

CURRENT_FLAG = "rollback.current_release"
KEEP_PINNED = 2
SOURCE = "rollback"


class ReleaseTracker:
    """The rollback component's memory of releases; ``cfg`` is replaced on reload."""

    def __init__(self, hub: Hub, docker: DockerAdapter, cfg: RollbackConfig, now: float,
                 compose: ComposeCLI | None = None, *, node: DockerAdapter | None = None) -> None:
        """``node``: the engine of the node this instance runs on, where the known-good images
        are pinned and archived (by default ``docker``, the engine the rollback talks to)."""
        self.hub = hub
        self.compose = compose
        self.cfg = cfg
        self._docker = docker
        self.current: Release | None = None
        self.containers: list[ComposeContainer] = []
        self.observation: ReleaseObservation | None = None
        self.seen_at = now
        self.deploy_at: float | None = None
        self.failing_before_deploy = False
        # the window verdict the last time the current release was seen whole (None: not yet)
        self._failing_while_whole: bool | None = None
        self._metric_fp: dict[str, str] = {}
        # with Swarm, the rollback runs on the leader's node but tasks start on any node: each
        # instance loads its own node's copy back at once (compose's rollback loads it here)
        self.images = NodeImages(hub, node or docker, load_back=cfg.driver == "swarm")
        self._restarts: dict[str, int] = {}
        self._started_at = now
        self.health: ReleaseHealth | None = None
        self._saved_health: ReleaseHealth | None = None
        self._liveness: dict[str, str] = {}
        self._looked_at: float | None = None  # when this run's last look began
        self._rollouts: dict[str, str] = {}  # each service's rollout at the last look

    @property
    def running(self) -> Release | None:
        """The release the last observation saw (None while a service has no container)."""
        return self.observation.release if self.observation is not None else None

    def load(self) -> None:
        """Adopt the release tracked before a restart, and publish the release metrics."""
        tracked = self.hub.store.flag(CURRENT_FLAG)
        if isinstance(tracked, dict) and tracked.get("release"):
            self.current = Release.from_dict(tracked["release"])
            self.seen_at = float(tracked.get("seen_at") or self.seen_at)
            self.deploy_at = tracked.get("deploy_at")
            self.failing_before_deploy = bool(tracked.get("failing_before"))
            rollouts = tracked.get("rollouts")
            self._rollouts = ({str(k): str(v) for k, v in rollouts.items()}
                              if isinstance(rollouts, dict) else {})
            self.set_release_metric("current", self.current.fingerprint)
            self._enter(self.current.fingerprint, self._started_at)
        known_good = self.known_good()
        if known_good is not None:
            self.set_release_metric("known_good", known_good.fingerprint)

    async def track(self, now: float, *, by_rollback: bool = False,
                    failing: Callable[[], bool] = lambda: False,
                    liveness: bool = True) -> ReleaseObservation:
        """Look at the project's containers; a new fingerprint is a deploy. ``failing`` tells
        whether failures are sustained now; a deploy's ``failing_before`` is its answer the last
        time the old release was seen whole (every service running one image): what fails
        after that — the old containers stopped, the new one failing before the tracker sees
        it, seconds under load — is the deploy's doing. ``liveness`` publishes each service's
        liveness sample (on the rollback's schedule, so a woken look does not sample the engine
        more densely)."""
        self.containers = await self._docker.compose_containers(self.cfg.project)
        looked_before, self._looked_at = self._looked_at, now
        if liveness:
            self._publish_liveness(now)
        obs = build_release(self.cfg.project, self.cfg.services, self.containers)
        self.observation = obs
        release = obs.release
        if release is None:
            return obs
        again = self._take_rollouts()
        if self.current is not None and release.fingerprint == self.current.fingerprint:
            if not (obs.not_running or obs.mixed):
                self._failing_while_whole = failing()
            if again is not None:
                self._save_current()
                if again:
                    self._record_redeploy(release, again, by_rollback)
            return obs
        previous, self.current, self.seen_at = self.current, release, now
        self.hub.store.upsert_release(release.fingerprint, release=release.to_dict(),
                                      first_seen=now)
        await self._keep_config(release)
        self._enter(release.fingerprint, now)
        if previous is not None and reidentified(previous, release):
            self._record_reidentified(previous, release)
        elif previous is not None:
            whole, self._failing_while_whole = self._failing_while_whole, None
            self.failing_before_deploy = failing() if whole is None else whole
            self.deploy_at = deployed_at(self.cfg.project, self.cfg.services, self.containers,
                                         not_before=looked_before or now, now=now)
            self._record_deploy(previous, release, by_rollback)
        self._save_current()
        self.set_release_metric("current", release.fingerprint)
        return obs

    def _take_rollouts(self) -> tuple[str, ...] | None:
        """Note each service's rollout at this look (one with no task keeps the last seen);
        the services rolled out again since the last look, None when nothing moved."""
        rollouts = service_rollouts(self.cfg.project, self.cfg.services, self.containers)
        before, self._rollouts = self._rollouts, {**self._rollouts, **rollouts}
        return None if self._rollouts == before else redeployed(before, rollouts)

    def _save_current(self) -> None:
        """Keep the running release and its deploy across a restart."""
        if self.current is not None:
            self.hub.store.set_flag(CURRENT_FLAG, {
                "release": self.current.to_dict(), "seen_at": self.seen_at,
                "deploy_at": self.deploy_at, "failing_before": self.failing_before_deploy,
                "rollouts": self._rollouts})

    def _record_reidentified(self, previous: Release, release: Release) -> None:
        """The running release read anew with its tags resolved (an upgrade from a version
        that named a Swarm image by its tag): no deploy, its deploy time and attribution kept."""
        self.hub.record("release.reidentified", SOURCE, f"release {previous.short} is now "
                        f"named {release.short}: its images by the IDs their tags run, no "
                        "deploy (its deploy time is kept)",
                        evidence={"from": previous.to_dict(), "to": release.to_dict()})

    def _record_redeploy(self, release: Release, services: tuple[str, ...],
                         by_rollback: bool) -> None:
        """The same release rolled out again: its identity, evidence, known-good mark and
        deploy time stay (the attribution of failures is the release's first deploy's)."""
        self.hub.metrics.deploys.labels(change="none").inc()
        who = " by the rollback" if by_rollback else ""
        self.hub.record("redeploy", SOURCE, f"redeploy detected{who}: release {release.short} "
                        f"rolled out again ({', '.join(services)}: same images and config); "
                        "still the same release: its evidence and deploy time are kept",
                        evidence={"release": release.fingerprint, "services": list(services),
                                  "deployed_at": self.deploy_at})

    def _record_deploy(self, previous: Release, release: Release, by_rollback: bool) -> None:
        change = diff(previous, release)
        self.hub.metrics.deploys.labels(change=change.change).inc()
        who = " by the rollback" if by_rollback else ""
        self.hub.record("deploy", SOURCE, f"deploy detected{who}: {previous.short} -> "
                        f"{release.short} ({change.describe()})",
                        evidence={"change": change.change, "services": change.services,
                                  "from": previous.to_dict(), "to": release.to_dict(),
                                  "failing_before": self.failing_before_deploy,
                                  "deployed_at": self.deploy_at})

    def _publish_liveness(self, now: float) -> None:
        """Each service's liveness: a sample in its window, a gauge, an event when it changes."""
        found = service_liveness(self.cfg.project, self.cfg.services, self.containers,
                                 self._restarts)
        self._restarts = {c.id: c.restart_count for c in self.containers}
        for live in found:
            self.hub.observations.add_probe(ProbeSample(
                ts=now, target=service_target(live.service), result=live.result,
                detail=live.detail))
            self.hub.metrics.service_up.labels(service=live.service).set(
                1 if live.result == "ok" else 0)
            previous = self._liveness.get(live.service)
            self._liveness[live.service] = live.result
            if previous != live.result:
                self.hub.record("service.transition", f"service.{live.service}",
                                f"{live.service} {previous or 'unknown'} -> {live.result} "
                                f"({live.detail})",
                                severity="info" if live.result == "ok" else "warning",
                                evidence={"service": live.service, "from": previous,
                                          "to": live.result, "detail": live.detail})

    def _enter(self, fingerprint: str, now: float) -> None:
        """Resume a release's evidence; the time since it was last watched never counts."""
        self.save_health()  # the release we leave: what was watched of it since the last save
        saved = self.hub.store.release_health(fingerprint)
        health = ReleaseHealth.from_dict(saved) if saved else ReleaseHealth(fingerprint, now)
        self._saved_health = health if saved else None
        self.health = replace(health, observed_until=max(health.observed_until, now))

    def record_health(self, now: float, *, targets: Collection[str], max_gap_seconds: float,
                      alert_firing: bool) -> None:
        """Fold the new samples into the running release's evidence and persist it: at once when
        something went wrong, else at least every ``HEALTH_SAVE_SECONDS`` of watched time (a
        crash loses at most that much healthy time, which only delays a promotion)."""
        if self.health is None:
            return
        self.health = observe(self.health, self.hub.observations.samples(), now=now,
                              targets=targets, failure_results=self.cfg.failure_results,
                              max_gap_seconds=max_gap_seconds, alert_firing=alert_firing)
        if health_save_due(self._saved_health, self.health):
            self.save_health()

    def save_health(self) -> None:
        """Persist the running release's evidence if it changed since it was last saved."""
        if self.health is not None and self.health != self._saved_health:
            self.hub.store.save_release_health(self.health.to_dict())
            self._saved_health = self.health

    async def maybe_promote(self, now: float, obs: ReleaseObservation) -> None:
        release = obs.release
        known_good = self.known_good()
        if release is None or obs.not_running or obs.mixed or self.health is None or (
                self.health.fingerprint != release.fingerprint) or (
                known_good is not None and known_good.fingerprint == release.fingerprint):
            return
        db = self.hub.observations.database
        if self.hub.config.database.enabled and (db is None or not db.up):
            return  # the known-good record needs the schema revision it ran on
        checks = health_checks(self.cfg.project, self.cfg.services, self.containers)
        verdict = promotion(self.health, stable_after_seconds=self.cfg.stable_after_seconds,
                            checks=checks)
        if verdict.ready:
            await self._promote(release, now, verdict.reason,
                                db.revision if db is not None and db.up else None)

    def _config_source(self, release: Release) -> Path:
        source = Path(release.config_files[0]) if release.config_files else self.cfg.compose_file
        return source if source.exists() else self.cfg.compose_file

    def _compose_files(self, release: Release, source: Path) -> list[str]:
        return [f for f in release.config_files if Path(f).exists()] or [str(source)]

    async def _read_config(self, release: Release) -> tuple[Path, ConfigSnapshot]:
        """The release's compose file and the snapshot of every file its stack reads (every
        ``-f`` file, ``.env``, every ``env_file:`` target), as they are on disk now; each file
        is read once."""
        source = self._config_source(release)
        files = self._compose_files(release, source)
        project_dir = release.working_dir or str(Path(files[0]).parent)
        read = await asyncio.to_thread(read_compose_files, files, project_dir)
        config = None
        if self.compose is not None and self.cfg.driver == "compose":
            config = await self.compose.config_json(files, self.cfg.project, project_dir)
        # compose 1.29 (no config as JSON): the env_file: keys from the files' kept text
        snapshot, scanned = await asyncio.to_thread(
            snapshot_files, read, config, files, project_dir,
            scan=config is None and self.compose is not None and self.cfg.driver == "compose")
        if scanned.unclear:
            self.hub.record("release.config_unclear", SOURCE,
                            f"the config snapshot of {release.short} may miss env files: "
                            f"{'; '.join(scanned.unclear)}", severity="warning",
                            evidence={"release": release.fingerprint,
                                      "unclear": list(scanned.unclear)})
        return source, snapshot

    async def _keep_config(self, release: Release) -> None:
        """Snapshot the config files when the release is first seen (its deploy), so an edit
        during the stability window never becomes the known-good config."""
        source, files = await self._read_config(release)
        self.hub.store.set_release_config(release.fingerprint, compose_file=str(source),
                                          config_files=files.to_blob())

    async def _promote(self, release: Release, now: float, why: str,
                       revision: str | None) -> None:
        kept = self.hub.store.release(release.fingerprint)
        files = ConfigSnapshot.from_blob(kept.config_files) if kept is not None else None
        if kept is not None and files is not None:  # taken at the deploy
            source = Path(kept.compose_file)
        else:
            source, files = await self._read_config(release)
        pins = await self.images.pin(self.cfg.project, release)
        archived = await self.images.archive_release(release)
        specs = await self._service_specs(release)
        if not self.hub.store.mark_known_good(
                release.fingerprint, at=now, alembic_revision=revision, compose_file=str(source),
                config_files=files.to_blob(), service_specs=specs,
                extra={"tags": {s.service: s.image_ref for s in release.services},
                       "pins": pins, "archived": archived}, since=self.seen_at):
            self.set_release_metric("known_good", release.fingerprint)
            return  # another instance on this state file promoted it meanwhile
        self.hub.store.set_release_pinned(release.fingerprint, bool(pins))
        self.hub.record("release.known_good", SOURCE,
                        f"release {release.short} is known-good ({why})",
                        evidence={"release": release.to_dict(), "alembic_revision": revision,
                                  "compose_file": str(source), "pins": pins,
                                  "archived": archived, "config_files": list(files.paths)})
        self.set_release_metric("known_good", release.fingerprint)
        await self.images.release_old(self.cfg.project, self.kept())

    async def _service_specs(self, release: Release) -> bytes | None:
        """A Swarm release's container spec per service (the one whose hash is the release's),
        kept so a rollback can write it back; None for compose, or when the engine cannot
        say (the rollback then refuses what only the spec could restore)."""
        if not isinstance(self._docker, SwarmAdapter):
            return None
        try:
            candidates = await self._docker.container_specs(self.cfg.project)
        except AdapterError as exc:
            self._spec_missing(release, f"the engine did not answer: {exc}")
            return None
        specs = {s.service: pick_spec(candidates.get(s.service, []), s.config_hash)
                 for s in release.services}
        missing = sorted(name for name, spec in specs.items() if spec is None)
        if missing:
            self._spec_missing(release, f"no spec of {', '.join(missing)} has its hash now")
            return None
        return specs_blob({name: spec for name, spec in specs.items() if spec is not None})

    def _spec_missing(self, release: Release, why: str) -> None:
        self.hub.record("release.spec_unkept", SOURCE, f"the container specs of {release.short} "
                        f"were not kept ({why}); a rollback to it can restore an image but not "
                        "a changed config", severity="warning",
                        evidence={"release": release.fingerprint})

    def kept(self) -> list[ReleaseRecord]:
        """The known-good releases kept for rollbacks (pinned, archived)."""
        return self.hub.store.known_good_releases(KEEP_PINNED)

    async def keep_images(self) -> Upkeep | None:
        """Keep the kept releases' images on this node (pins, archives, loads back)."""
        return await self.images.upkeep(self.cfg.project, self.kept())

    def known_good(self) -> ReleaseRecord | None:
        records = self.hub.store.known_good_releases(1)
        return records[0] if records else None

    def set_release_metric(self, role: str, fingerprint: str) -> None:
        gauge = self.hub.metrics.release_info
        old = self._metric_fp.get(role)
        if old is not None and old != fingerprint:
            with contextlib.suppress(KeyError):
                gauge.remove(role, old[:12])
        gauge.labels(role=role, fingerprint=fingerprint[:12]).set(1)
        self._metric_fp[role] = fingerprint
