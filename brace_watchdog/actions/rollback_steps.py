"""How an app rollback is planned, carried out and verified — the steps, not the decision.

* :func:`build_plan` (pure) turns the known-good release and the running one into a
  :class:`RollbackPlan`: the tags the known-good containers ran with are pointed back at the
  known-good image IDs (in both modes: a tag is mutable, so compose must find exactly the
  known-good image under it and never pull); in ``retag`` mode, when the config changed too, the
  daemon's snapshot of the known-good config files (every ``-f`` file, ``.env``, every
  ``env_file:`` target) is written back to their places before compose runs in the original
  working dir and project; in ``release_dir`` mode the compose command runs in the known-good
  release's own directory.
* :class:`RollbackSteps` executes a plan through the docker and compose adapters.
* :func:`verify_images` and :func:`verify_probes` prove the result: the containers really run the
  known-good image IDs, then N consecutive OK probes of the backend and the frontend
  (:func:`wait_restored` is the waiting, shared with the Swarm driver's task check).

Every failure is an :class:`~brace_watchdog.errors.ActionError` naming its stage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_fixed

from brace_watchdog.actions.config_snapshot import ConfigSnapshot, write_back
from brace_watchdog.actions.image_archive import ImageArchive
from brace_watchdog.adapters.compose import ComposeCLI, UpPlan, lost_the_engine
from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.adapters.process import CommandResult
from brace_watchdog.config import RollbackConfig
from brace_watchdog.errors import ActionError, AdapterError, CommandError, DockerError, OutageError
from brace_watchdog.monitors.health import StatusGetter, probe_with
from brace_watchdog.monitors.policy import is_healthy
from brace_watchdog.releases import Release, build_release, diff

__all__ = [
    "EngineRetry",
    "Polling",
    "ProbeStreak",
    "RollbackPlan",
    "RollbackSteps",
    "build_plan",
    "engine_answers",
    "engine_lost",
    "engine_refused",
    "split_ref",
    "verify_images",
    "verify_probes",
    "wait_restored",
]

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RollbackPlan:
    mode: str
    target: Release
    current: Release | None
    retags: tuple[tuple[str, str], ...]
    config_changed: bool
    use_snapshot: bool
    up: UpPlan
    argv: tuple[str, ...]
    snapshot: ConfigSnapshot | None = field(default=None, compare=False)
    conflicts: tuple[str, ...] = ()
    config_files: tuple[str, ...] = ()  # the files the snapshot writes back
    swarm_steps: tuple[str, ...] = ()
    """Driver ``swarm``: each service's step as the plan shows it (``argv`` is compose's)."""

    @property
    def expected_images(self) -> dict[str, str]:
        return self.target.image_ids()

    @property
    def expected_config(self) -> dict[str, str]:
        return self.target.config_hashes()

    def runs_target(self, release: Release | None) -> bool:
        """Whether ``release`` (what runs now) is the target: its images, and its config too
        when the rollback changes the config (a config-only rollback keeps the same images)."""
        running = release.image_ids() if release is not None else {}
        if not running or running != self.expected_images:
            return False
        hashes = self.expected_config
        assert release is not None
        return not self.config_changed or all(
            hashes.get(service) == config for service, config in release.config_hashes().items())

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "target": self.target.to_dict(),
                "current": self.current.to_dict() if self.current else None,
                "retags": [{"tag": ref, "image_id": image} for ref, image in self.retags],
                "config_changed": self.config_changed, "use_snapshot": self.use_snapshot,
                "config_files": list(self.config_files),
                "up": self.up.to_dict(), "argv": list(self.argv),
                "swarm_steps": list(self.swarm_steps),
                "expected_images": self.expected_images, "conflicts": list(self.conflicts)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RollbackPlan:
        """The plan as journalled (without the snapshot bytes, which stay in the release)."""
        current = data.get("current")
        up = dict(data["up"])
        return cls(mode=str(data["mode"]), target=Release.from_dict(data["target"]),
                   current=Release.from_dict(current) if current else None,
                   retags=tuple((str(r["tag"]), str(r["image_id"])) for r in data["retags"]),
                   config_changed=bool(data["config_changed"]),
                   use_snapshot=bool(data["use_snapshot"]),
                   up=UpPlan(**{**up, "files": tuple(up["files"]),
                                "services": tuple(up["services"])}),
                   argv=tuple(data["argv"]), conflicts=tuple(data.get("conflicts", ())),
                   config_files=tuple(data.get("config_files", ())),
                   swarm_steps=tuple(data.get("swarm_steps", ())))


@dataclass(frozen=True)
class ProbeStreak:
    """The probe rounds that verified a rollback: how many, the OK streak, the last results."""

    rounds: int
    consecutive_ok: int
    last: dict[str, str]


def _config_changed(target: Release, current: Release | None) -> bool:
    return current is None or diff(current, target).change in ("config", "both")


def build_plan(cfg: RollbackConfig, target: Release, current: Release | None, *,
               snapshot: ConfigSnapshot | None, disk_matches_snapshot: bool,
               compose: ComposeCLI) -> RollbackPlan:
    """Decide the concrete steps; pure (writing the snapshot happens when the plan runs).

    In ``retag`` mode the snapshot is used when a config file on disk no longer matches what the
    known-good release ran with (a config deploy): every kept file is written back to its place
    and compose runs with them; otherwise the files on disk are the known-good config and only
    the tags need to move back.
    """
    changed = _config_changed(target, current)
    use_snapshot = snapshot is not None and not disk_matches_snapshot
    services = tuple(cfg.services)
    # In both modes the tags the known-good containers ran with are pointed back at their image
    # IDs first: a release folder's compose file names mutable tags too, which may have moved.
    # (Swarm pins each service to its image ID instead: a tag here is only the manager's.)
    retags = tuple(dict.fromkeys((s.image_ref, s.image_id) for s in target.services
                                 if cfg.driver == "compose" and s.image_ref
                                 and not s.image_ref.startswith("sha256:")
                                 and "@" not in s.image_ref))
    if cfg.mode == "release_dir":
        files = target.config_files or (str(cfg.compose_file),)
        up = UpPlan(files=tuple(files), project=cfg.project, services=services,
                    cwd=target.working_dir or str(Path(files[0]).parent))
    elif use_snapshot:
        files = target.config_files or (str(cfg.compose_file),)
        workdir = target.working_dir or str(Path(files[0]).parent)
        up = UpPlan(files=tuple(files), project=cfg.project, services=services, cwd=workdir,
                    project_directory=workdir)
    else:
        up = UpPlan(files=(str(cfg.compose_file),), project=cfg.project, services=services,
                    cwd=str(cfg.compose_file.parent))
    return RollbackPlan(mode=cfg.mode, target=target, current=current, retags=retags,
                        config_changed=changed, use_snapshot=use_snapshot and cfg.mode == "retag",
                        up=up, snapshot=snapshot,
                        argv=tuple(compose.up_argv(up)) if cfg.driver == "compose" else (),
                        config_files=(snapshot.paths if use_snapshot and snapshot is not None
                                      else ()))


Journal = Callable[[str, dict[str, Any]], None]
Before = Callable[[str], Awaitable[None]]


async def _go_ahead(step: str) -> None:
    del step


@dataclass(frozen=True)
class EngineRetry:
    """Adapter errors (the steps raise only those that mean the engine is away) are retried for
    ``within`` seconds (the step's deadline), ``wait`` seconds apart; then the step stops with
    :class:`OutageError` — no verdict."""

    within: float
    wait: float = 1.0

    async def call(self, stage: str, work: Callable[[], Awaitable[T]]) -> T:
        retrying = AsyncRetrying(retry=retry_if_exception_type(AdapterError), reraise=True,
                                 stop=stop_after_delay(self.within), wait=wait_fixed(self.wait))
        async def attempt() -> T:
            return await work()
        try:
            return await retrying(attempt)
        except AdapterError as exc:
            raise OutageError(stage, f"the docker engine stayed unavailable for "
                              f"{self.within:.0f}s: {exc}") from None


def engine_refused(exc: AdapterError) -> bool:
    """The engine answered the request with an error status (404 no such image, 409, ...): it
    is up and said no — a verdict, never retried."""
    return isinstance(exc, DockerError) and exc.status is not None


def engine_lost(exc: AdapterError) -> bool:
    """The request got no answer from the engine (connection-level), or compose says it could
    not reach the engine: an outage, retried until the step's deadline."""
    if isinstance(exc, DockerError):
        return exc.status is None
    return isinstance(exc, CommandError) and lost_the_engine(exc.output)


async def engine_answers(docker: DockerAdapter) -> bool:
    try:
        return await docker.ping()
    except AdapterError:
        return False


DEFAULT_RETRY = EngineRetry(60.0)


class RollbackSteps:
    """Carries out a plan: retag, write the snapshot, run compose. Each step is journalled;
    errors while the engine is away are retried (:class:`EngineRetry`), errors the engine
    answered with are verdicts at once."""

    def __init__(self, docker: DockerAdapter, compose: ComposeCLI, journal: Journal,
                 before: Before = _go_ahead, *, archive: ImageArchive | None = None,
                 retry: EngineRetry = DEFAULT_RETRY) -> None:
        self._docker = docker
        self._compose = compose
        self._journal = journal
        self._retry = retry
        self._before = before
        self._archive = archive

    async def run(self, plan: RollbackPlan) -> CommandResult:
        """Load pruned images, retag, write the snapshot, run compose; the compose run (output
        trimmed). ``before(step)`` runs before each step (leadership: raises when this instance
        may no longer act)."""
        await self._before("retag")
        await self._ensure_images(plan)
        await self._retag(plan)
        await self._before("snapshot")
        await self._write_snapshot(plan)
        await self._before("compose")
        result = await self._through_engine("compose", partial(self._compose.up, plan.up))
        output = replace(result, stdout=result.stdout[-4000:], stderr=result.stderr[-4000:],
                         duration_seconds=round(result.duration_seconds, 3))
        self._journal("compose_done", asdict(output))
        return output

    async def _ensure_images(self, plan: RollbackPlan) -> None:
        """Every known-good image in the engine: loaded from its archive when it was pruned."""
        loaded = []
        for image_id in sorted(set(plan.expected_images.values())):
            if await self._through_engine("images", partial(self._ensure_image, image_id)):
                loaded.append(image_id)
        if loaded:
            self._journal("images_loaded", {"loaded": loaded})

    async def _ensure_image(self, image_id: str) -> bool:
        """True when ``image_id`` had to be loaded from its archive."""
        if await self._docker.image_id(image_id) is not None:
            return False
        if self._archive is None or not await self._archive.restore(image_id):
            raise ActionError("images", f"known-good image {image_id[:19]} is gone from the "
                              "engine and not archived; cannot roll back to it")
        return True

    async def _through_engine(self, stage: str, work: Callable[[], Awaitable[T]]) -> T:
        """``work`` retried while the engine is away (:class:`EngineRetry`)."""
        return await self._retry.call(stage, partial(self._judged, stage, work))

    async def _judged(self, stage: str, work: Callable[[], Awaitable[T]]) -> T:
        """One try of ``work``; its adapter error is raised as is (to be retried) only when it
        is the engine's: no answer came or compose could not reach it (the engine may answer
        again by now), or — for an error that says neither — the engine does not answer now.
        An error the engine answered with, or one while it answers, is the step's verdict."""
        try:
            return await work()
        except AdapterError as exc:
            if not engine_refused(exc) and (engine_lost(exc)
                                            or not await engine_answers(self._docker)):
                raise
            raise ActionError(stage, f"{exc}") from None

    async def _retag(self, plan: RollbackPlan) -> None:
        for ref, image_id in plan.retags:
            await self._through_engine("retag", partial(self._docker.tag_image, image_id,
                                                        *split_ref(ref)))
        if plan.retags:
            self._journal("retagged", {"retags": [list(r) for r in plan.retags]})

    async def _write_snapshot(self, plan: RollbackPlan) -> None:
        if plan.use_snapshot and plan.snapshot is not None:
            await self._write_back(plan.snapshot)

    async def _write_back(self, files: ConfigSnapshot) -> None:
        try:
            written = await asyncio.to_thread(write_back, files)
        except OSError as exc:
            raise ActionError("snapshot", f"cannot write the known-good config back to "
                              f"{exc.filename}: {exc.strerror}") from None
        self._journal("snapshot_written", {"files": written})


Look = Callable[[], Awaitable[tuple[dict[str, str] | None, str]]]
"""One look at the engine: the image ID running per service once the release is restored
(None before), and what is still wrong."""


@dataclass(frozen=True)
class Polling:
    """How a verification waits: its deadline (``within`` seconds), the spacing of its looks,
    and the clock, sleep and progress beat it uses."""

    within: float
    interval: float = 0.5
    clock: Clock = time.monotonic
    sleep: Sleep = asyncio.sleep
    beat: Callable[[], None] = lambda: None


async def wait_restored(look: Look, polling: Polling, *, failure: str) -> dict[str, str]:
    """Look until ``look`` finds the release restored (returned: the running image IDs);
    ActionError at the deadline (``failure`` after what is still wrong), OutageError when the
    engine did not answer until then."""
    deadline = polling.clock() + polling.within
    while True:
        polling.beat()
        try:
            running, wrong = await look()
        except AdapterError as exc:
            if polling.clock() >= deadline:
                raise OutageError("verify_images", f"the docker engine did not answer until "
                                  f"the deadline ({polling.within:.0f}s): {exc}") from None
            await polling.sleep(polling.interval)
            continue
        if running is not None:
            return running
        if polling.clock() >= deadline:
            raise ActionError("verify_images", f"{wrong}; {failure}")
        await polling.sleep(polling.interval)


async def verify_images(docker: DockerAdapter, project: str, services: Sequence[str],
                        expected: dict[str, str], polling: Polling) -> dict[str, str]:
    """Wait until every service runs exactly the expected image ID (returned: the running
    image ID per service); ActionError otherwise, OutageError when the engine did not answer
    until the deadline."""
    async def look() -> tuple[dict[str, str] | None, str]:
        obs = build_release(project, services, await docker.compose_containers(project))
        running = obs.release.image_ids() if obs.release else {}
        wrong = {s: running.get(s) for s in services if running.get(s) != expected.get(s)}
        if not wrong and not obs.not_running and not obs.mixed:
            return running, ""
        return None, (f"services not on the known-good images: "
                      f"{sorted(wrong) or obs.describe()} (running {running}, expected "
                      f"{expected})")
    return await wait_restored(look, polling,
                               failure="the compose command did not restore the release")


async def verify_probes(getters: Mapping[str, StatusGetter], *, successes: int, within: float,
                        interval: float, ok_statuses: tuple[str, ...],
                        clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep,
                        beat: Callable[[], None] = lambda: None) -> ProbeStreak:
    """Require ``successes`` consecutive rounds where every target (its getter) answers OK;
    a round starts every ``interval`` (its probes' time is not added to the spacing)."""
    deadline = clock() + within
    streak, rounds, last = 0, 0, {}
    while True:
        beat()
        started = clock()
        samples = await asyncio.gather(*(probe_with(getter, target, ok_statuses=ok_statuses)
                                         for target, getter in getters.items()))
        rounds += 1
        last = {s.target: f"{s.result} {s.status}".strip() for s in samples}
        streak = streak + 1 if all(is_healthy(s) for s in samples) else 0
        if streak >= successes:
            return ProbeStreak(rounds=rounds, consecutive_ok=streak, last=last)
        if started + interval > deadline:
            raise ActionError("verify_probes", f"no {successes} consecutive OK probes within "
                              f"{within:.0f}s ({rounds} rounds, last {last})")
        await sleep(max(0.0, started + interval - clock()))


def split_ref(ref: str) -> tuple[str, str]:
    """``repo[:tag]`` → (repo, tag); a registry port is not a tag; no tag means ``latest``."""
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        return ref, "latest"
    return name, tag

