"""How the gated DB rollback stops and starts the writers, per ``[rollback] driver``.

:func:`writers_for` gives the DB rollback the one object it asks to stop and start the writers
(:class:`Writers`), for the engine the hub runs the stack on (``Hub.engine``).

:class:`ComposeWriters`: ``compose stop`` and a check that none still runs; afterwards
``compose up -d --no-build``. :class:`SwarmWriters`: each writer service's replica count is
journalled (``writer_replicas``) *before* anything changes, then every writer is scaled to 0 and
the step waits until the manager's task API shows no live task of them (tasks on any node);
afterwards each is scaled back to its recorded count and the step waits until that many tasks
run. A global-mode writer cannot be scaled to 0: the plan refuses it before anything changes.

Both say, from the journalled state alone, how to start the writers again by hand
(:meth:`Writers.restart_argv`): that is what a failure or a restarted daemon reports.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from brace_watchdog.actions.gated import StepJournal, wait_until
from brace_watchdog.adapters.compose import ComposeCLI, ComposeProject
from brace_watchdog.adapters.process import CommandResult
from brace_watchdog.adapters.swarm import SwarmAdapter
from brace_watchdog.errors import ActionError, AdapterError, RefusedError
from brace_watchdog.runtime import Hub
from brace_watchdog.swarm_release import (
    SwarmService,
    running_tasks,
    scale_argv,
    swarm_name,
    tasks_gone,
    writers_problem,
)

__all__ = ["ComposeWriters", "SwarmWriters", "Writers", "writers_for"]

Run = Callable[[Sequence[str]], Awaitable[CommandResult]]
POLL_SECONDS = 0.5


class Writers(Protocol):
    async def check(self) -> dict[str, int]:
        """Plan-time check (RefusedError if they cannot be stopped); replica counts if any."""

    def describe(self, replicas: Mapping[str, int]) -> tuple[str, str]:
        """The plan's "stop writers" and "start writers" lines."""

    def restart_argv(self, state: Mapping[str, Any]) -> list[str]:
        """The command that starts the writers again as they were, from the journalled state."""

    async def stop(self, journal: StepJournal) -> None: ...

    async def start(self, journal: StepJournal) -> None: ...


async def writers_for(hub: Hub, cli: ComposeCLI, project: ComposeProject, run: Run, *,
                      detect: bool) -> Writers:
    """The ``[db_rollback] writers`` of ``project`` on the hub's engine: its services scaled when
    the engine is a Swarm manager (``project.name``: the stack), else stopped and started by
    ``cli``; ``detect`` asks the compose CLI for its exact ``up`` flags — ``up -d --no-build
    [--pull never]``: writers come back from the images they ran, never rebuilt or pulled."""
    cfg = hub.config.db_rollback
    if isinstance(hub.engine, SwarmAdapter):
        return SwarmWriters(hub.engine, project.name, cfg.writers,
                            timeout=cfg.step_timeout_seconds,
                            beat=lambda: hub.progress.beat("control"))
    up = ["up", "-d"]
    if detect:
        await cli.detect()
        up = cli.up_args()
    return ComposeWriters(run, project.argv, cfg.writers, project.argv(*up, *cfg.writers))


class ComposeWriters:
    def __init__(self, run: Run, compose: Callable[..., list[str]], writers: Sequence[str],
                 up_argv: Sequence[str]) -> None:
        self._run = run
        self._compose = compose
        self._writers = tuple(writers)
        self._up = list(up_argv)

    async def check(self) -> dict[str, int]:
        return {}

    def describe(self, replicas: Mapping[str, int]) -> tuple[str, str]:
        return (f"stop writers: {' '.join(self._compose('stop', *self._writers))}",
                f"start writers: {' '.join(self._compose('up', '-d', *self._writers))}")

    def restart_argv(self, state: Mapping[str, Any]) -> list[str]:
        return self._up

    async def stop(self, journal: StepJournal) -> None:
        journal.checkpoint(writers="stopping")
        await self._run(self._compose("stop", *self._writers))
        running = await self._run(self._compose("ps", "--services", "--filter",
                                                "status=running"))
        still = sorted(set(running.stdout.split()) & set(self._writers))
        if still:
            raise ActionError("stopping_writers", f"still running after stop: {still}")
        journal.checkpoint(writers="stopped")

    async def start(self, journal: StepJournal) -> None:
        journal.checkpoint(writers="starting")
        await self._run(self._up)
        journal.checkpoint(writers="started")


class SwarmWriters:
    def __init__(self, swarm: SwarmAdapter, stack: str, writers: Sequence[str], *,
                 timeout: float, beat: Callable[[], None]) -> None:
        self._swarm = swarm
        self._stack = stack
        self._writers = tuple(writers)
        self._attempts = max(1, int(timeout / POLL_SECONDS))
        self._beat = beat

    def _full(self, name: str) -> str:
        return swarm_name(self._stack, name)

    def _replicas(self, services: Sequence[SwarmService]) -> dict[str, int]:
        """Each service's replica count, by its full name (what is journalled and restored)."""
        return {self._full(s.name): s.replicas or 0 for s in services}

    async def _services(self, stage: str) -> list[SwarmService]:
        try:
            found = await self._swarm.services(self._stack)
        except AdapterError as exc:
            raise RefusedError(stage, str(exc)) from None
        problem = writers_problem(found, self._writers, self._stack)
        if problem:
            raise RefusedError(stage, problem)
        return [s for s in found if s.name in self._writers]

    async def check(self) -> dict[str, int]:
        return self._replicas(await self._services("checking"))

    def describe(self, replicas: Mapping[str, int]) -> tuple[str, str]:
        counts = ", ".join(f"{name} ({count})" for name, count in sorted(replicas.items()))
        zero = scale_argv(dict.fromkeys(replicas, 0))
        return (f"stop writers: record the replica counts of {counts}, scale them to 0 "
                f"({' '.join(zero)}) and wait until no task of them is alive",
                "start writers: scale each back to its recorded count "
                f"({' '.join(scale_argv(replicas))}) and wait until its tasks run")

    def restart_argv(self, state: Mapping[str, Any]) -> list[str]:
        recorded = state.get("writer_replicas")
        if isinstance(recorded, dict) and recorded:
            return scale_argv({str(k): int(v) for k, v in recorded.items()})
        # nothing journalled yet means nothing was scaled; the counts are not known here
        return ["docker", "service", "scale", *(f"{self._full(name)}=<replicas>"
                                                for name in self._writers)]

    async def stop(self, journal: StepJournal) -> None:
        services = await self._services("stopping_writers")
        journal.checkpoint(writers="stopping", writer_replicas=self._replicas(services))
        for service in services:
            await self._scale(service, 0, "stopping_writers")
        alive = await self._wait(services, lambda service, states: tasks_gone(states))
        if alive:
            raise ActionError("stopping_writers", f"tasks of {', '.join(alive)} still alive "
                              "after scaling to 0")
        journal.checkpoint(writers="stopped")

    async def start(self, journal: StepJournal) -> None:
        recorded = {str(k): int(v) for k, v in dict(journal.state["writer_replicas"]).items()}
        services = [s for s in await self._services("starting_writers")
                    if self._full(s.name) in recorded]
        journal.checkpoint(writers="starting")
        for service in services:
            await self._scale(service, recorded[self._full(service.name)], "starting_writers")
        short = await self._wait(services, lambda service, states: running_tasks(states)
                                 == recorded[self._full(service.name)])
        if short:
            raise ActionError("starting_writers", f"{', '.join(short)} did not reach their "
                              "recorded replica counts")
        journal.checkpoint(writers="started")

    async def _scale(self, service: SwarmService, replicas: int, stage: str) -> None:
        try:
            await self._swarm.scale(service.id, replicas)
        except AdapterError as exc:
            raise ActionError(stage, f"{self._full(service.name)}: {exc}") from None

    async def _wait(self, services: Sequence[SwarmService],
                    done: Callable[[SwarmService, list[str]], bool]) -> list[str]:
        """Poll every service's tasks (``Status.State``) until ``done`` holds for each, within
        the step timeout; the full names of those where it does not."""
        async def pending() -> list[str]:
            self._beat()
            left = []
            for service in services:
                try:
                    states = await self._swarm.task_states(service.id)
                except AdapterError:
                    states = ["unknown"]  # the engine did not answer: not done, ask again
                if not done(service, states):
                    left.append(self._full(service.name))
            return left

        return await wait_until(pending, lambda left: not left, attempts=self._attempts,
                                wait_seconds=POLL_SECONDS)
