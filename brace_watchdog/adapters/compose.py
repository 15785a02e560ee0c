"""The compose CLI adapter: ``<compose_command> … up -d --no-build --no-deps SERVICES``.

Works with both ``docker compose`` (v2 plugin) and ``docker-compose`` (1.29): the argv prefix comes
from ``[rollback] compose_command`` and only options both understand are used (``-f``, ``-p``,
``--project-directory``, ``--env-file``). Every run goes through
:func:`~brace_watchdog.adapters.process.run_command` — argv list, timeout, output captured — and
a failure is a :class:`~brace_watchdog.errors.CommandError` carrying the output's tail.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brace_watchdog.adapters.process import CommandResult, run_command

__all__ = ["ComposeCLI", "UpPlan"]

Runner = Callable[..., Awaitable[CommandResult]]


@dataclass(frozen=True)
class UpPlan:
    """Everything one ``up`` needs; serialisable into the journal and the dry-run event."""

    files: tuple[str, ...]
    project: str
    services: tuple[str, ...]
    cwd: str
    project_directory: str = ""
    env_file: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"files": list(self.files), "project": self.project,
                "services": list(self.services), "cwd": self.cwd,
                "project_directory": self.project_directory, "env_file": self.env_file}


class ComposeCLI:
    """Runs the compose CLI given as an argv prefix (``["docker", "compose"]``)."""

    def __init__(self, command: Sequence[str], *, timeout: float,
                 runner: Runner = run_command) -> None:
        self.command = tuple(command)
        self.timeout = timeout
        self._run = runner

    def up_argv(self, plan: UpPlan) -> list[str]:
        argv = list(self.command)
        for file in plan.files:
            argv += ["-f", file]
        argv += ["-p", plan.project]
        if plan.project_directory:
            argv += ["--project-directory", plan.project_directory]
        if plan.env_file:
            argv += ["--env-file", plan.env_file]
        return [*argv, "up", "-d", "--no-build", "--no-deps", *plan.services]

    async def up(self, plan: UpPlan) -> CommandResult:
        """Recreate ``plan.services`` from the given files; CommandError on failure."""
        return await self._run(self.up_argv(plan), timeout=self.timeout,
                               cwd=Path(plan.cwd) if plan.cwd else None)
