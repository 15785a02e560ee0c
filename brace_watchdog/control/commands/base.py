"""What a control command is: its name, the role it needs, its arguments and its handler.

Handlers receive a :class:`Context` (the hub, the authenticated peer, the approval book, the
gated actions and a progress callback) and the validated arguments, and return JSON-able data.
They raise :class:`~brace_watchdog.control.protocol.ProtocolError`,
:class:`~brace_watchdog.errors.RefusedError` or :class:`~brace_watchdog.errors.ActionError`;
the server turns each into the matching error response.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from brace_watchdog.actions.gated import GatedAction
from brace_watchdog.control.approvals import ApprovalBook
from brace_watchdog.control.auth import Peer, Role
from brace_watchdog.control.protocol import ArgSpec, ProtocolError
from brace_watchdog.runtime import Hub

__all__ = ["Command", "Context", "Handler", "ProgressSink", "component", "on_the_leader"]

ProgressSink = Callable[[str, str], Awaitable[None]]
C = TypeVar("C")


@dataclass
class Context:
    hub: Hub
    peer: Peer
    approvals: ApprovalBook
    gated: Mapping[str, GatedAction]
    progress: ProgressSink
    run_exclusive: Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]


Handler = Callable[[Context, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Command:
    name: str
    role: Role
    handler: Handler
    args: Mapping[str, ArgSpec] = field(default_factory=dict)
    summary: str = ""


def component(ctx: Context, name: str, kind: type[C]) -> C:
    """The running component ``name`` as its concrete type (so a handler's calls are checked),
    or an ``unavailable`` error naming what to enable."""
    found = ctx.hub.components.get(name)
    if not isinstance(found, kind):
        raise ProtocolError("unavailable", f"the {name} component is not running in this daemon "
                            "(disabled in the config, or not built in)")
    return found


def on_the_leader(ctx: Context, command: str) -> None:
    """Commands that change a guard every leader shares (freeze, unfreeze, ack, clearing a
    failed mark) are refused on a follower, naming the leader to ask: there they hold for
    every instance that leads later."""
    gate = ctx.hub.leadership
    if gate.view.enabled and not gate.view.held:
        gate.check(command)
