"""The one exception tree of brace-watchdog.

::

    WatchdogError                     base of everything we raise on purpose
    ├── FatalError                    the daemon cannot go on; the supervisor stops
    │   ├── ConfigError               invalid configuration (all problems at once)
    │   └── StateError                state store corrupt, unwritable or from the future
    ├── StateUnavailableError         state store locked or its disk full for now (writes queue)
    ├── AdapterError                  an external system misbehaved; a cycle logs it and carries on
    │   ├── CommandError              a subprocess failed or timed out
    │   ├── DockerError               the docker engine refused or is unreachable
    │   ├── PostgresError             PostgreSQL refused, timed out or answered wrongly
    │   └── HttpError                 an HTTP peer (Alertmanager, webhook) misbehaved
    └── ActionError                   a restore test, rollback or gated action failed at a stage
        ├── RefusedError              an action was refused by a guard (not a failure of anything)
        └── OutageError               it stopped because the docker engine stayed unavailable:
                                      no verdict on its target

Messages are written for the operator: what was wrong and what to do.
"""

from __future__ import annotations

__all__ = [
    "ActionError",
    "AdapterError",
    "CommandError",
    "ConfigError",
    "DockerError",
    "FatalError",
    "HttpError",
    "OutageError",
    "PostgresError",
    "RefusedError",
    "StateError",
    "StateUnavailableError",
    "WatchdogError",
]


class WatchdogError(Exception):
    """Base of every error brace-watchdog raises on purpose."""


class FatalError(WatchdogError):
    """The daemon cannot continue; components re-raise it instead of carrying on."""


class ConfigError(FatalError):
    """The configuration is invalid; ``problems`` lists every error as ``key.path: message``."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(
            f"invalid configuration{where}:\n" + "\n".join(f"  {p}" for p in self.problems)
        )


class StateError(FatalError):
    """The state store cannot be opened, migrated or written."""


class StateUnavailableError(WatchdogError):
    """The state store is locked by another process or its disk is full, for now.

    Not fatal: writes that can wait are queued and retried; a caller that needs a write to land
    before it goes on (an action's first journal row, an approval token) gets this error instead.
    """


class AdapterError(WatchdogError):
    """An external system failed; the calling cycle logs it and carries on."""


class CommandError(AdapterError):
    """A subprocess exited non-zero or timed out. ``argv`` is already masked."""

    def __init__(
        self,
        message: str,
        *,
        argv: list[str] | None = None,
        returncode: int | None = None,
        output: str = "",
        timed_out: bool = False,
    ) -> None:
        super().__init__(message)
        self.argv = argv or []
        self.returncode = returncode
        self.output = output
        self.timed_out = timed_out


class DockerError(AdapterError):
    """The docker engine refused a request or could not be reached. ``status`` is the HTTP
    status the engine answered with; None when no answer came (connection-level)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PostgresError(AdapterError):
    """PostgreSQL refused, timed out or answered something unexpected."""


class HttpError(AdapterError):
    """An HTTP peer failed or answered something unexpected."""


class ActionError(WatchdogError):
    """An action failed; ``stage`` names where (``restoring``, ``verifying``, ...)."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message


class RefusedError(ActionError):
    """A guard refused the action before anything was changed."""


class OutageError(ActionError):
    """An action stopped because the docker engine (or compose through it) stayed unavailable
    past the step's deadline; it says nothing about the release it was rolling back to."""
