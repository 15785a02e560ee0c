"""The control socket's commands, one module per family; :data:`REGISTRY` maps name → Command."""

from __future__ import annotations

from brace_watchdog.control.commands import gated, operate, read, releases
from brace_watchdog.control.commands.base import Command, Context

__all__ = ["REGISTRY", "Command", "Context"]

REGISTRY: dict[str, Command] = {c.name: c for c in (*read.COMMANDS, *releases.COMMANDS,
                                                     *operate.COMMANDS, *gated.COMMANDS)}
