"""The compose CLI adapter: every compose command line (``<compose_command> -f FILE… -p PROJECT
[--project-directory DIR] [--env-file FILE] <subcommand>…``, see :class:`ComposeProject`) and the
rollback's ``up -d --no-build [--pull never] --no-deps …``.

Works with both ``docker compose`` (the v2+ plugin; tested with v5) and ``docker-compose`` (1.29):
the argv prefix comes from ``[rollback] compose_command``. A rollback never builds and never
pulls: ``--no-build`` always, and ``--pull never`` where the compose version has it (v2.8+, learnt
once from ``version --short`` by :meth:`ComposeCLI.detect`). 1.29 has no ``--pull``; it pulls only
an image that is missing, and the rollback makes sure none is (it points every tag at a present
known-good image first). Every run goes through
:func:`~brace_watchdog.adapters.process.run_command` — argv list, timeout, output captured — and
a failure is a :class:`~brace_watchdog.errors.CommandError` carrying the output's tail, which
:func:`lost_the_engine` reads for the signs that compose could not reach the docker engine.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brace_watchdog.adapters.process import CommandResult, run_command
from brace_watchdog.errors import AdapterError

__all__ = ["ComposeCLI", "ComposeProject", "UpPlan", "has_pull_option", "lost_the_engine"]

PULL_SINCE = (2, 8)  # ``up --pull never`` exists from compose v2.8 on

# What compose prints when it could not reach the engine or lost it mid-run (lowercase).
ENGINE_LOST = (
    "error while fetching server api version",  # 1.29: its client's first request failed
    "couldn't connect to docker daemon",  # 1.29's own hint
    "connection aborted",  # 1.29 (requests): a request's connection dropped
    "connectionpool(",  # 1.29 (urllib3): "UnixHTTPConnectionPool(...): Read timed out"
    "cannot connect to the docker daemon",  # v2
    "failed to connect to the docker api",  # v5
    "error during connect",  # v2+: a request's connection failed
)

Runner = Callable[..., Awaitable[CommandResult]]


@dataclass(frozen=True)
class ComposeProject:
    """One compose project as the CLI addresses it: the argv prefix (``["docker", "compose"]``),
    its files, its name, and optionally its project directory and env file."""

    command: tuple[str, ...]
    files: tuple[str, ...]
    name: str
    project_directory: str = ""
    env_file: str = ""

    def argv(self, *args: str) -> list[str]:
        """``<command> -f FILE… -p NAME [--project-directory DIR] [--env-file FILE] ARGS…``."""
        argv = list(self.command)
        for file in self.files:
            argv += ["-f", file]
        argv += ["-p", self.name]
        if self.project_directory:
            argv += ["--project-directory", self.project_directory]
        if self.env_file:
            argv += ["--env-file", self.env_file]
        return [*argv, *args]


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


def has_pull_option(version: str) -> bool:
    """Whether compose ``version`` (``1.29.2``, ``v2.27.0``, ``5.6.1``) has ``up --pull``."""
    numbers: list[int] = []
    for part in version.strip().lstrip("v").split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            return False
        numbers.append(int(digits))
    return tuple(numbers) >= PULL_SINCE


def lost_the_engine(output: str) -> bool:
    """Whether compose's ``output`` says it could not talk to the docker engine: its failure is
    then the engine's outage, not the release's — however the engine answers by the time the
    failure is judged."""
    text = output.lower()
    return any(sign in text for sign in ENGINE_LOST)


class ComposeCLI:
    """Runs the compose CLI given as an argv prefix (``["docker", "compose"]``)."""

    def __init__(self, command: Sequence[str], *, timeout: float,
                 runner: Runner = run_command, version: str | None = None) -> None:
        self.command = tuple(command)
        self.timeout = timeout
        self._run = runner
        self.version = version

    async def detect(self) -> str:
        """The compose version (asked once; ``""`` while it cannot be learnt, asked again)."""
        if self.version is None:
            try:
                result = await self._run([*self.command, "version", "--short"],
                                         timeout=min(self.timeout, 10.0))
            except AdapterError:
                return ""
            self.version = result.stdout.strip()
        return self.version

    @property
    def pull_never(self) -> bool:
        return has_pull_option(self.version or "")

    def project(self, files: Sequence[str], name: str, *, project_directory: str = "",
                env_file: str = "") -> ComposeProject:
        """The project ``files``/``name`` addressed through this CLI."""
        return ComposeProject(self.command, tuple(files), name,
                              project_directory=project_directory, env_file=env_file)

    def up_argv(self, plan: UpPlan) -> list[str]:
        """The rollback's ``up``: only ``plan.services``, from local images, no dependencies."""
        project = self.project(plan.files, plan.project, project_directory=plan.project_directory,
                               env_file=plan.env_file)
        return project.argv(*self.up_args(), "--no-deps", *plan.services)

    def up_args(self) -> list[str]:
        """``up -d --no-build [--pull never]``: recreate from local images only."""
        return ["up", "-d", "--no-build", *(["--pull", "never"] if self.pull_never else [])]

    async def config_json(self, files: Sequence[str], project: str,
                          cwd: str) -> dict[str, Any] | None:
        """The stack's config with its ``env_file:`` paths (``config --no-env-resolution
        --format json``); None under a compose that cannot print it (1.29) or when it fails."""
        if not has_pull_option(await self.detect()):  # 1.29: no JSON, env files merged away
            return None
        argv = self.project(files, project).argv("config", "--no-env-resolution",
                                                 "--format", "json")
        try:
            result = await self._run(argv, timeout=min(self.timeout, 30.0),
                                     cwd=Path(cwd) if cwd else None)
            config = json.loads(result.stdout)
        except (AdapterError, ValueError):
            return None
        return config if isinstance(config, dict) else None

    async def up(self, plan: UpPlan) -> CommandResult:
        """Recreate ``plan.services`` from the given files; CommandError on failure."""
        return await self._run(self.up_argv(plan), timeout=self.timeout,
                               cwd=Path(plan.cwd) if plan.cwd else None)
