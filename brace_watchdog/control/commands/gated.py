"""Gated commands (role ``operator``, two steps): plan a DB / pg_hba / docker-daemon rollback,
inspect a token, approve a token.

``db_rollback``, ``pg_hba_rollback`` and ``docker_daemon_rollback`` (each command is named as
its action: the action kind in the store, the approval and the audit row are the same word)
only run pre-checks and return the plan with a token; nothing changes until ``approve`` with
that token (see
:mod:`brace_watchdog.control.approvals`). A follower refuses to plan, naming the leader's host.
The approved action runs under the hub's action lock, so no two actions (gated ones, app
rollbacks) ever overlap.
"""

from __future__ import annotations

from typing import Any

from brace_watchdog.actions.gated import GatedAction, GatedFailure
from brace_watchdog.control.approvals import Approval, hash_token
from brace_watchdog.control.commands.base import Command, Context, Handler
from brace_watchdog.control.protocol import ArgSpec, ProtocolError
from brace_watchdog.errors import ActionError, RefusedError

__all__ = ["COMMANDS"]

TOKEN_ARG = {"token": ArgSpec("str", required=True, max_chars=200)}


def _action(ctx: Context, name: str) -> GatedAction:
    action = ctx.gated.get(name)
    if action is None:
        raise ProtocolError("unavailable", f"the {name} action is not configured in this daemon")
    return action


def _planner(name: str) -> Handler:
    async def plan(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
        ctx.hub.leadership.check(name)  # a follower names the leader: plan (and approve) there
        planned = await _action(ctx, name).plan(args)
        token, expires = ctx.approvals.issue(name, planned.args, ctx.peer,
                                             plan=planned.as_dict())
        ctx.hub.record("approval.planned", "control",
                       f"{ctx.peer.user} (uid {ctx.peer.uid}) planned {name} {planned.args}",
                       evidence={"plan": planned.as_dict(), "expires_at": expires,
                                 "token_hash": hash_token(token)[:16]})
        two_person = ctx.approvals.two_person_rule
        return {**planned.as_dict(), "token": token, "expires_at": expires,
                "two_person_rule": two_person,
                "approve_with": "brace-watchdogctl approve (then paste the token)"}
    return plan


def _approval_view(approval: Approval) -> dict[str, Any]:
    target = approval.params.get("target", approval.params.get("dump", approval.action))
    return {"action": approval.action, "args": approval.params,
            "requester": approval.requester_name, "requester_uid": approval.requester_uid,
            "requester_login_uid": approval.requester_login_uid,
            "expires_at": approval.expires_at, "target": str(target), "plan": approval.plan}


async def inspect_token(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    return _approval_view(ctx.approvals.inspect(args["token"], ctx.peer))


async def approve(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        approval = ctx.approvals.redeem(args["token"], ctx.peer)
        action = _action(ctx, approval.action)
        ctx.hub.record("approval.approved", "control",
                       f"{ctx.peer.user} (uid {ctx.peer.uid}) approved {approval.action} "
                       f"planned by {approval.requester_name}",
                       evidence=_approval_view(approval))
        return await _execute(ctx, action, approval)
    kind = ctx.approvals.inspect(args["token"], ctx.peer).action  # refused tokens: as redeem
    result: dict[str, Any] = await ctx.run_exclusive(kind, run)
    return result


async def _execute(ctx: Context, action: GatedAction, approval: Approval) -> dict[str, Any]:
    metric = ctx.hub.metrics.gated_actions
    if ctx.hub.config.daemon.dry_run:
        plan = await action.plan(dict(approval.params))
        ctx.hub.record("approval.dry_run", "control", f"dry run: {approval.action} approved "
                       "but not executed ([daemon] dry_run)", evidence=plan.as_dict())
        metric.labels(action=approval.action, result="dry_run").inc()
        return {"dry_run": True, "would_run": list(plan.steps)}
    try:
        result = await action.execute(approval.params, requester=approval.requester_name,
                                      approver=ctx.peer.user, progress=ctx.progress)
    except GatedFailure as failure:
        ctx.approvals.store.link_approval(approval.token_hash, failure.action_id)
        metric.labels(action=approval.action, result="failed").inc()
        raise
    except RefusedError:
        metric.labels(action=approval.action, result="refused").inc()
        raise
    except ActionError:
        metric.labels(action=approval.action, result="failed").inc()
        raise
    if "action_id" in result:
        ctx.approvals.store.link_approval(approval.token_hash, int(result["action_id"]))
    metric.labels(action=approval.action, result="succeeded").inc()
    return result


def _plan_command(action: str, summary: str, args: dict[str, ArgSpec] | None = None
                  ) -> Command:
    """The command that plans ``action``: it bears the action's own name."""
    return Command(action, "operator", _planner(action), args or {}, summary=summary)


COMMANDS = (
    _plan_command("db_rollback", "plan a full DB rollback to a dump (then approve)",
                  {"dump": ArgSpec("str", required=True, max_chars=1024)}),
    _plan_command("pg_hba_rollback", "plan restoring pg_hba.conf from its .bak (then approve)"),
    _plan_command("docker_daemon_rollback",
                  "plan restoring daemon.json from its .bak and restarting docker"),
    Command("inspect", "operator", inspect_token, TOKEN_ARG,
            summary="show what a token would approve, without using it"),
    Command("approve", "operator", approve, TOKEN_ARG, summary="approve and run a planned action"),
)
