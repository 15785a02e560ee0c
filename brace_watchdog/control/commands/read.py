"""Read-only commands (role ``reader``): status, events, explain, timeline, backups."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from brace_watchdog.actions.app_rollback import AppRollback
from brace_watchdog.actions.restore_test import RestoreTestScheduler
from brace_watchdog.control.commands.base import Command, Context
from brace_watchdog.control.commands.operate import jsonable
from brace_watchdog.control.commands.timeline import incident_bounds, render_timeline
from brace_watchdog.control.protocol import ArgSpec, ProtocolError
from brace_watchdog.errors import AdapterError
from brace_watchdog.leader_election import leadership_unused
from brace_watchdog.monitors.backups import scan_backups
from brace_watchdog.observations import BackupScan
from brace_watchdog.runtime import Hub
from brace_watchdog.state import ActionRecord, Event

__all__ = ["COMMANDS"]


def event_dict(event: Event) -> dict[str, Any]:
    return asdict(event)


def action_dict(action: ActionRecord) -> dict[str, Any]:
    return asdict(action)


async def status(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    hub = ctx.hub
    last = hub.store.restore_results(limit=1)
    return {
        "status_line": hub.status_line(),
        "components": dict(sorted(hub.status.items())),
        "frozen": hub.frozen(),
        "escalation": hub.escalation(),
        "open_actions": [action_dict(a) for a in hub.store.open_actions()],
        "action_lock": asdict(hub.action_lock.holder) if hub.action_lock.holder else None,
        "leadership": _leadership(hub),
        "last_restore_test": last[0] if last else None,
        "dry_run": hub.config.daemon.dry_run,
        "peer": {"uid": ctx.peer.uid, "user": ctx.peer.user},
        **_component_views(ctx),
    }


def _leadership(hub: Hub) -> dict[str, Any]:
    """Who acts: this instance (leadership off, or the leader) or another one, since when."""
    view, decision = hub.leadership.view, hub.leadership.decision()
    return {"enabled": view.enabled, "acts": decision.acts, "reason": decision.reason,
            "message": leadership_unused(hub.config) or decision.message,
            "leader": asdict(view.leader) if view.leader else None,
            "held_seconds": (hub.clock() - view.leader.since
                             if view.leader and view.leader.since is not None else None)}


def _component_views(ctx: Context) -> dict[str, Any]:
    """What the restore-test and rollback components say about themselves, when they run."""
    views: dict[str, Any] = {}
    scheduler = ctx.hub.components.get("restore_test")
    if isinstance(scheduler, RestoreTestScheduler):
        views["restore_test"] = jsonable(scheduler.progress())
    rollback = ctx.hub.components.get("rollback")
    if isinstance(rollback, AppRollback):
        views["rollback"] = jsonable(rollback.status())
    return views


async def events(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    kinds = (args["kind"],) if "kind" in args else ()
    found = ctx.hub.store.events(since_id=args.get("since_id", 0), limit=args.get("limit", 50),
                                 kinds=kinds)
    return {"events": [event_dict(e) for e in found]}


async def explain(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    store = ctx.hub.store
    event = store.event(args["id"])
    if event is None:
        raise ProtocolError("bad_args", f"explain: no event #{args['id']}; see `events`")
    data: dict[str, Any] = {"event": event_dict(event)}
    if event.action_id is not None:
        action = store.action(event.action_id)
        data["action"] = action_dict(action) if action else None
        data["journal"] = [event_dict(e) for e in
                           store.events(action_id=event.action_id, limit=500)]
    return data


async def timeline(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    store = ctx.hub.store
    actions: list[ActionRecord] = []
    if "action_id" in args:
        action = store.action(args["action_id"])
        if action is None:
            raise ProtocolError("bad_args", f"timeline: no action #{args['action_id']}")
        actions = [action]
    hours = args.get("hours", 24)
    recent = store.events(since_ts=ctx.hub.clock() - hours * 3600, limit=5000)
    if not actions:
        actions = store.actions(since_ts=ctx.hub.clock() - hours * 3600, limit=5)[::-1]
    bounds = incident_bounds(actions, recent, lookback_seconds=args.get("lookback_minutes", 60)
                             * 60, settle_seconds=900)
    if bounds is None:
        window, title = recent, f"last {hours}h (no incident found)"
    else:
        start, end = bounds
        window = [e for e in store.events(since_ts=start, limit=5000) if e.ts <= end]
        title = ", ".join(f"{a.kind} #{a.id}" for a in actions) or "escalation"
    approvals = [a for a in store.approvals(since_ts=window[0].ts if window else 0)
                 if not window or a["created_at"] <= window[-1].ts]
    return {"markdown": render_timeline(title, window, actions, approvals[::-1]),
            "events": len(window)}


async def backups(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    cfg = ctx.hub.config.backups
    scan = ctx.hub.observations.backups
    if scan is None:
        scan = await _scan_now(ctx)
    newest_first = sorted(scan.files, key=lambda f: (f.timestamp, f.name), reverse=True)
    rows = []
    for item in newest_first[:args.get("limit", 50)]:
        tests = ctx.hub.store.restore_results(dump_name=item.name, limit=1)
        rows.append({"name": item.name, "size": item.size, "timestamp": item.timestamp,
                     "timestamp_source": item.timestamp_source, "valid": item.valid,
                     "reason": item.reason,
                     "last_restore_test": ({"passed": tests[0]["passed"],
                                            "finished_at": tests[0]["finished_at"]}
                                           if tests else None)})
    return {"directory": str(cfg.directory), "total": len(scan.files), "backups": rows,
            "fresh": scan.fresh(ctx.hub.clock())}


async def _scan_now(ctx: Context) -> BackupScan:
    cfg = ctx.hub.config.backups
    try:
        return await asyncio.to_thread(scan_backups, cfg.directory, cfg.patterns,
                                       now=ctx.hub.clock(), settle_seconds=cfg.settle_seconds,
                                       max_age_seconds=cfg.max_age_hours * 3600)
    except AdapterError as exc:
        raise ProtocolError("failed", str(exc)) from None


COMMANDS = (
    Command("status", "reader", status, summary="daemon, components, freeze and escalation"),
    Command("events", "reader", events, {
        "limit": ArgSpec("int", minimum=1, maximum=1000),
        "since_id": ArgSpec("int", minimum=0),
        "kind": ArgSpec("str", max_chars=200)}, summary="the event log"),
    Command("explain", "reader", explain, {"id": ArgSpec("int", required=True, minimum=1)},
            summary="one event with its evidence and its action's journal"),
    Command("timeline", "reader", timeline, {
        "action_id": ArgSpec("int", minimum=1),
        "hours": ArgSpec("int", minimum=1, maximum=24 * 90),
        "lookback_minutes": ArgSpec("int", minimum=0, maximum=24 * 60)},
        summary="an incident as a Markdown post-mortem draft"),
    Command("backups", "reader", backups, {"limit": ArgSpec("int", minimum=1, maximum=10000)},
            summary="backups with their last restore test"),
)
