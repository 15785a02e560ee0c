"""The release model: what runs in the compose project, its identity, deploys and liveness.

Pure values and functions, no I/O. The docker adapter reports the compose project's containers
as :class:`ComposeContainer` values (from the ``com.docker.compose.*`` labels); this module turns
them into a :class:`Release` — per service the image ID and the compose config hash, plus the
project's working dir — fingerprints it and tells what a deploy changed (:func:`diff`);
:func:`redeployed` tells which services were rolled out again without changing the release
(Swarm's spec versions, :func:`service_rollouts`); :func:`service_liveness` reads each
service's containers as evidence of health (crash loops, exits, docker health checks);
:func:`health_checks` tells, per service with a docker health check, its status now and how long
the check needs to reach a verdict.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

from brace_watchdog.observations import ProbeResult

__all__ = [
    "Change",
    "ComposeContainer",
    "HealthCheck",
    "Release",
    "ReleaseDiff",
    "ReleaseObservation",
    "ServiceLiveness",
    "ServiceRelease",
    "TagUser",
    "build_release",
    "check_seconds",
    "config_digest",
    "deployed_at",
    "diff",
    "health_checks",
    "pin_tag",
    "redeployed",
    "reidentified",
    "service_liveness",
    "service_rollouts",
]

Change = Literal["none", "image", "config", "both"]
PIN_REPOSITORY = "brace-watchdog/pin"


@dataclass(frozen=True)
class ComposeContainer:
    """One container of a compose project, as the engine reports it (plain values)."""

    id: str
    name: str
    project: str
    service: str
    image_id: str
    image_ref: str
    config_hash: str
    working_dir: str
    config_files: tuple[str, ...]
    state: str
    created: str
    oneoff: bool = False
    config_digest: str = ""
    restart_count: int = 0
    health: str = ""
    """Docker's health status (``healthy``/``unhealthy``/``starting``); ``""`` without one."""
    rollout: str = ""
    """What its service's tasks are rolled out from (Swarm: a hash of the task template, which
    a redeploy moves — ``--force`` too); ``""`` where the engine tells none (compose)."""
    check_seconds: float = 0.0
    """The longest a failing health check takes to turn the container ``unhealthy``:
    ``retries`` checks, each ``interval`` plus ``timeout`` (0 without a check)."""

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class TagUser:
    """A container (running or not) created from ``image_ref`` (``project``/``service`` empty
    outside compose); what a retag of that tag would affect."""

    name: str
    project: str
    service: str
    image_ref: str
    image_id: str


@dataclass(frozen=True)
class ServiceRelease:
    """One service of a release. ``config_digest`` (not part of the fingerprint) hashes the
    container's runtime config, to tell a config change from an image change where the compose
    config hash covers both (``docker-compose`` 1.x folds the image ID into it)."""

    service: str
    image_id: str
    image_ref: str
    config_hash: str
    config_digest: str = ""


@dataclass(frozen=True)
class Release:
    """The identity of what a compose project runs: per service image ID and config hash."""

    project: str
    working_dir: str
    config_files: tuple[str, ...]
    services: tuple[ServiceRelease, ...]

    @property
    def fingerprint(self) -> str:
        identity = [self.working_dir, *((s.service, s.image_id, s.config_hash)
                                        for s in sorted(self.services, key=lambda s: s.service))]
        return hashlib.sha256(json.dumps(identity).encode()).hexdigest()

    @property
    def short(self) -> str:
        return self.fingerprint[:12]

    def service(self, name: str) -> ServiceRelease | None:
        return next((s for s in self.services if s.service == name), None)

    def config_hashes(self) -> dict[str, str]:
        """Each service's config hash."""
        return {s.service: s.config_hash for s in self.services}

    def image_ids(self) -> dict[str, str]:
        return {s.service: s.image_id for s in self.services}

    def to_dict(self) -> dict[str, Any]:
        return {"project": self.project, "working_dir": self.working_dir,
                "config_files": list(self.config_files),
                "services": [asdict(s) for s in self.services], "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Release:
        return cls(project=str(data["project"]), working_dir=str(data.get("working_dir", "")),
                   config_files=tuple(data.get("config_files", ())),
                   services=tuple(ServiceRelease(**s) for s in data["services"]))


@dataclass(frozen=True)
class ReleaseObservation:
    """What the engine showed: the release (None when a service has no container) and gaps."""

    release: Release | None
    missing: tuple[str, ...] = ()
    not_running: tuple[str, ...] = ()
    mixed: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [f"{label}: {', '.join(names)}" for label, names in (
            ("no container", self.missing), ("not running", self.not_running),
            ("mixed images", self.mixed)) if names]
        return "; ".join(parts) or "all services running"


def _by_service(project: str, services: Sequence[str],
                containers: Iterable[ComposeContainer]) -> dict[str, list[ComposeContainer]]:
    """Each of ``services`` that has a container (not a one-off run), with its containers, in
    the order of ``services``."""
    by_service: dict[str, list[ComposeContainer]] = {name: [] for name in services}
    for c in containers:
        if c.project == project and c.service in by_service and not c.oneoff:
            by_service[c.service].append(c)
    return {name: group for name, group in by_service.items() if group}


def _newest(group: Sequence[ComposeContainer]) -> ComposeContainer:
    """The container a service's release is read from: its newest running one, or newest."""
    return max([c for c in group if c.running] or group, key=lambda c: c.created)


def build_release(project: str, services: Sequence[str],
                  containers: Iterable[ComposeContainer]) -> ReleaseObservation:
    """The release of ``services`` from the project's containers (newest container per service)."""
    by_service = _by_service(project, services, containers)
    missing = tuple(s for s in services if s not in by_service)
    if missing:
        return ReleaseObservation(None, missing=missing)
    chosen: list[ServiceRelease] = []
    not_running: list[str] = []
    mixed: list[str] = []
    for name in services:
        group = by_service[name]
        running = [c for c in group if c.running]
        newest = _newest(group)
        if not running:
            not_running.append(name)
        if len({(c.image_id, c.config_hash) for c in running}) > 1:
            mixed.append(name)
        chosen.append(ServiceRelease(name, newest.image_id, newest.image_ref, newest.config_hash,
                                     newest.config_digest))
    first = by_service[services[0]][0]
    release = Release(project, first.working_dir, first.config_files, tuple(chosen))
    return ReleaseObservation(release, not_running=tuple(not_running), mixed=tuple(mixed))


def deployed_at(project: str, services: Sequence[str], containers: Iterable[ComposeContainer],
                *, not_before: float, now: float) -> float:
    """When the running release was deployed: the creation of its newest container, as the
    engine reports it, kept between ``not_before`` (the look that last saw the release before)
    and ``now`` (this look), so neither a clock the engine reports oddly nor an unreadable time
    moves a deploy outside what the daemon itself saw; ``now`` when no time can be read."""
    created = [_timestamp(c.created) for c in containers
               if c.project == project and c.service in services and not c.oneoff]
    newest = max((t for t in created if t is not None), default=now)
    return min(now, max(not_before, newest))


def _timestamp(text: str) -> float | None:
    """An engine timestamp (RFC 3339, nanoseconds allowed) as seconds since the epoch."""
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class ReleaseDiff:
    change: Change
    services: dict[str, Change]

    def describe(self) -> str:
        if self.change == "none":
            return "no change"
        return ", ".join(f"{name}: {what}" for name, what in sorted(self.services.items()))


def _combine(image: bool, config: bool) -> Change:
    if image and config:
        return "both"
    return "image" if image else "config" if config else "none"


def _config_moved(before: ServiceRelease, after: ServiceRelease) -> bool:
    if before.config_hash == after.config_hash:
        return False
    if before.image_id == after.image_id or not (before.config_digest and after.config_digest):
        return True
    return before.config_digest != after.config_digest


def config_digest(attrs: dict[str, Any]) -> str:
    """Digest of a container's runtime config (``docker inspect`` attrs): env, command, mounts,
    network, user, working dir — what a compose file sets, without the compose labels."""
    config = attrs.get("Config") or {}
    host = attrs.get("HostConfig") or {}
    parts = [sorted(config.get("Env") or []), config.get("Cmd"), config.get("Entrypoint"),
             config.get("User"), config.get("WorkingDir"), sorted(host.get("Binds") or []),
             host.get("NetworkMode")]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


_NS = 1e9
_DEFAULT_INTERVAL = _DEFAULT_TIMEOUT = 30.0  # docker's, for a health check field left 0
_DEFAULT_RETRIES = 3


def check_seconds(healthcheck: Mapping[str, Any] | None) -> float:
    """The longest a failing docker health check (a container's ``Config.Healthcheck``) takes
    to turn its container ``unhealthy``: ``Retries`` * (``Interval`` + ``Timeout``), docker's
    defaults for a field left 0; 0 without a check (none, or ``["NONE"]``)."""
    test = (healthcheck or {}).get("Test") or []
    if not healthcheck or not test or test[0] == "NONE":
        return 0.0
    interval = float(healthcheck.get("Interval") or 0) / _NS or _DEFAULT_INTERVAL
    timeout = float(healthcheck.get("Timeout") or 0) / _NS or _DEFAULT_TIMEOUT
    retries = int(healthcheck.get("Retries") or 0) or _DEFAULT_RETRIES
    return retries * (interval + timeout)


def diff(old: Release, new: Release) -> ReleaseDiff:
    """What a deploy changed, per service and overall (a moved working dir is a config change)."""
    per_service: dict[str, Change] = {}
    moved = old.working_dir != new.working_dir
    for name in sorted({s.service for s in (*old.services, *new.services)}):
        before, after = old.service(name), new.service(name)
        if before is None or after is None:
            per_service[name] = "both"
            continue
        change = _combine(before.image_id != after.image_id, moved or _config_moved(before, after))
        if change != "none":
            per_service[name] = change
    images = any(c in ("image", "both") for c in per_service.values())
    configs = moved or any(c in ("config", "both") for c in per_service.values())
    return ReleaseDiff(_combine(images, configs), per_service)


def service_rollouts(project: str, services: Sequence[str],
                     containers: Iterable[ComposeContainer]) -> dict[str, str]:
    """Each of ``services``' rollout (:attr:`ComposeContainer.rollout`) where one is told, read
    from the container its release is read from (:func:`build_release`)."""
    chosen = {name: _newest(group).rollout
              for name, group in _by_service(project, services, containers).items()}
    return {name: rollout for name, rollout in chosen.items() if rollout}


def redeployed(before: Mapping[str, str], after: Mapping[str, str]) -> tuple[str, ...]:
    """The services rolled out again between two looks (sorted): their rollout moved. A
    service not seen before (or without a rollout) is not counted."""
    return tuple(sorted(name for name, rollout in after.items()
                        if before.get(name, rollout) != rollout))


def reidentified(old: Release, new: Release) -> bool:
    """``new`` is ``old`` named better, not deployed: the same services with the same configs,
    each image the same or, where ``old`` named a bare tag (a Swarm release read before tags
    were resolved to the image they run), the image that tag runs as now."""
    if old.working_dir != new.working_dir or len(old.services) != len(new.services):
        return False
    for after in new.services:
        before = old.service(after.service)
        if before is None or before.config_hash != after.config_hash:
            return False
        tag = not before.image_id.startswith("sha256:") and "@sha256:" not in before.image_id
        if before.image_id != after.image_id and not (tag and before.image_id == after.image_ref):
            return False
    return True


def pin_tag(project: str, service: str, fingerprint: str) -> tuple[str, str]:
    """The daemon-owned (repository, tag) that keeps a known-good image from being pruned."""
    return PIN_REPOSITORY, f"{project}-{service}-{fingerprint[:12]}"


@dataclass(frozen=True)
class ServiceLiveness:
    """One service's liveness at one look: ``ok``, ``container_down`` (no container running,
    one restarting, or a restart count that rose since the last look), ``container_unhealthy``
    or ``container_starting`` (docker's health check, where the service defines one)."""

    service: str
    result: ProbeResult
    detail: str


def service_liveness(project: str, services: Sequence[str],
                     containers: Iterable[ComposeContainer],
                     restarts_before: Mapping[str, int]) -> tuple[ServiceLiveness, ...]:
    """The liveness of each of ``services`` that has a container; ``restarts_before`` maps
    container IDs to the restart counts of the previous look (a container not in it has not
    restarted since). A service without any container gives nothing: the release is unknown
    then (:func:`build_release`), which the rollback policy escalates when failures trigger."""
    return tuple(ServiceLiveness(name, *_liveness(group, restarts_before))
                 for name, group in _by_service(project, services, containers).items())


CheckStatus = Literal["starting", "healthy", "unhealthy"]


@dataclass(frozen=True)
class HealthCheck:
    """A service's docker health check at one look: the worst status among its running
    containers (``unhealthy`` before ``starting`` before ``healthy``) and the longest any of
    them needs to reach a verdict (:attr:`ComposeContainer.check_seconds`)."""

    service: str
    status: CheckStatus
    verdict_seconds: float


_WORST_FIRST: tuple[CheckStatus, ...] = ("unhealthy", "starting", "healthy")


def health_checks(project: str, services: Sequence[str],
                  containers: Iterable[ComposeContainer]) -> tuple[HealthCheck, ...]:
    """The health check of each of ``services`` whose running containers have one."""
    found: list[HealthCheck] = []
    for name, group in _by_service(project, services, containers).items():
        checked = [c for c in group if c.running and c.health in _WORST_FIRST]
        if checked:
            status = next(s for s in _WORST_FIRST if any(c.health == s for c in checked))
            found.append(HealthCheck(name, status, max(c.check_seconds for c in checked)))
    return tuple(found)


def _liveness(group: list[ComposeContainer],
              restarts_before: Mapping[str, int]) -> tuple[ProbeResult, str]:
    rose = [f"{c.name} restarted ({restarts_before[c.id]} -> {c.restart_count})" for c in group
            if c.restart_count > restarts_before.get(c.id, c.restart_count)]
    if rose:
        return "container_down", "; ".join(rose)
    down = [f"{c.name} {c.state}" for c in group if c.state in ("restarting", "dead")]
    running = [c for c in group if c.running]
    if down or not running:
        return "container_down", "; ".join(down or [f"{c.name} {c.state}" for c in group])
    for health in ("unhealthy", "starting"):
        named = [c.name for c in running if c.health == health]
        if named:
            result: ProbeResult = ("container_unhealthy" if health == "unhealthy"
                                   else "container_starting")
            return result, f"{', '.join(named)} {health}"
    return "ok", f"{len(running)} running"
