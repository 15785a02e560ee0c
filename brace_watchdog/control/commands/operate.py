"""Operator commands that act at once (role ``operator``): restore-test, app_rollback, freeze,
unfreeze, ack. Each reuses the machinery of the component that owns the capability."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from brace_watchdog.actions.app_rollback import AppRollback
from brace_watchdog.actions.restore_test import RestoreTestScheduler
from brace_watchdog.control.commands.base import Command, Context, component, on_the_leader
from brace_watchdog.control.protocol import ArgSpec

__all__ = ["COMMANDS", "jsonable"]

POLL_SECONDS = 0.5


def jsonable(value: Any) -> Any:
    """Dataclasses, mappings and sequences as plain JSON values; anything else as text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _who(ctx: Context) -> str:
    return f"{ctx.peer.user} (uid {ctx.peer.uid})"


async def restore_test(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Start a test (the scheduler resolves the dump strictly) and stream its stages."""
    scheduler = component(ctx, "restore_test", RestoreTestScheduler)
    task: asyncio.Task[Any] = await scheduler.request(args.get("dump"),
                                                      origin=f"control:{_who(ctx)}")
    shown: Any = None
    while not task.done():
        current = scheduler.progress()
        stage = (current.get("stage"), current.get("line"))
        if stage != shown and current.get("running"):
            await ctx.progress(str(current.get("stage", "restore_test")),
                               str(current.get("line", "")))
        shown = stage
        await asyncio.wait({task}, timeout=POLL_SECONDS)
    return {"result": jsonable(task.result())}


async def rollback_app(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Roll the app back now (``plan_only``: show what it would do and what the policy says);
    ``to`` names the target release, ``expect`` the target the operator confirmed."""
    rollback = component(ctx, "rollback", AppRollback)
    if args.get("plan_only"):
        return {"plan": jsonable(await rollback.plan(args.get("to")))}
    verdict = await rollback.manual_rollback(_who(ctx), progress=ctx.progress,
                                             to=args.get("to"), expect=args.get("expect"))
    return {"result": verdict.to_dict()}


async def freeze(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    on_the_leader(ctx, "freeze")
    ctx.hub.freeze(args.get("reason", "frozen by an operator"), by=_who(ctx))
    return {"frozen": ctx.hub.frozen()}


async def unfreeze(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    on_the_leader(ctx, "unfreeze")
    ctx.hub.unfreeze(by=_who(ctx))
    return {"frozen": None}


async def ack(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    on_the_leader(ctx, "ack")
    pending = ctx.hub.escalation()
    ctx.hub.acknowledge(by=_who(ctx))
    return {"acknowledged": pending}


COMMANDS = (
    Command("restore-test", "operator", restore_test, {"dump": ArgSpec("str", max_chars=1024)},
            summary="run a restore test now (newest dump, or --dump NAME)"),
    Command("app_rollback", "operator", rollback_app,
            {"plan_only": ArgSpec("bool"), "to": ArgSpec("str", max_chars=64),
             "expect": ArgSpec("str", max_chars=64)},
            summary="roll the app back to the last known-good release (or --to RELEASE)"),
    Command("freeze", "operator", freeze, {"reason": ArgSpec("str", max_chars=500)},
            summary="freeze automatic actions"),
    Command("unfreeze", "operator", unfreeze, summary="resume automatic actions"),
    Command("ack", "operator", ack, summary="acknowledge the pending escalation"),
)
