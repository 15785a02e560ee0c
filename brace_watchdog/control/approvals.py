"""Plan tokens: the second step of every gated action.

``plan`` issues a random token bound to the action, its exact parameters, the plan shown to the
requester and the requester's uid and login uid; the store keeps only ``sha256(token)`` plus a
binding digest over all of that, so neither a leaked state file nor an edited row can be turned
into an approval, and the approver is shown exactly the plan the requester saw. A token expires
after ``[control] token_ttl_seconds`` and works once (the "used" mark is an atomic conditional
UPDATE). Under the two-person rule the approver must be a different uid than the requester *and*
a different person: when both login uids (``/proc/PID/loginuid``, kept across ``sudo``) are
known they must differ too, so one person cannot plan as themself and approve as root.

:func:`check_redeemable` is the pure decision; :class:`ApprovalBook` wires it to the store.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from brace_watchdog.control.auth import Peer
from brace_watchdog.errors import RefusedError
from brace_watchdog.state import StateStore

__all__ = ["Approval", "ApprovalBook", "binding_digest", "check_redeemable", "hash_token"]

TOKEN_BYTES = 24
TOKEN_PREFIX = "bwt_"  # noqa: S105 - a visible prefix, not a secret


@dataclass(frozen=True)
class Approval:
    """A redeemed (or inspected) token: what it authorises and who asked for it."""

    token_hash: str
    action: str
    params: dict[str, Any]
    requester_uid: int
    requester_name: str
    created_at: float
    expires_at: float
    plan: dict[str, Any] = field(default_factory=dict)
    requester_login_uid: int | None = None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def binding_digest(token: str, action: str, params: dict[str, Any], requester_uid: int, *,
                   plan: dict[str, Any] | None = None, login_uid: int | None = None) -> str:
    """A MAC keyed by the token over what it authorises: any edit of the row breaks it."""
    body = json.dumps([action, params, requester_uid, plan or {}, login_uid], sort_keys=True,
                      default=str)
    return hmac.new(token.encode("utf-8"), body.encode("utf-8"), hashlib.sha256).hexdigest()


def check_redeemable(row: dict[str, Any] | None, token: str, approver: Peer, *, now: float,
                     two_person_rule: bool) -> Approval:
    """Decide whether ``token`` may be redeemed by ``approver``; raise RefusedError if not."""
    if row is None:
        raise RefusedError("approving", "unknown token: it was never issued or was altered; "
                           "run the plan again to get a new one")
    if row["used_at"] is not None:
        raise RefusedError("approving", f"token already used at {_when(row['used_at'])} by "
                           f"{row['approver_name']}; tokens work once: plan again")
    if now >= row["expires_at"]:
        raise RefusedError("approving", f"token expired at {_when(row['expires_at'])}; "
                           "plan again")
    stored = row["params"] if isinstance(row["params"], dict) else {}
    args, plan = stored.get("args", {}), stored.get("plan", {})
    login_uid = stored.get("requester_login_uid")
    expected = binding_digest(token, row["action"], args, row["requester_uid"], plan=plan,
                              login_uid=login_uid)
    if not hmac.compare_digest(expected, str(stored.get("binding", ""))):
        raise RefusedError("approving", "token does not match the stored plan (action, "
                           "parameters, plan or requester were changed); plan again")
    if two_person_rule:
        _second_person(approver, row["requester_uid"], row["requester_name"], login_uid)
    return Approval(row["token_hash"], row["action"], args, row["requester_uid"],
                    row["requester_name"], row["created_at"], row["expires_at"], plan, login_uid)


def _second_person(approver: Peer, requester_uid: int, requester_name: str,
                   requester_login_uid: int | None) -> None:
    if approver.uid == requester_uid:
        raise RefusedError("approving", f"two-person rule: {approver.user} requested this plan "
                           "and may not approve it; another operator must run approve")
    if approver.login_uid is not None and approver.login_uid == requester_login_uid:
        raise RefusedError("approving", f"two-person rule: {approver.user} (uid {approver.uid}) "
                           f"is logged in as the same person (login uid {approver.login_uid}) "
                           f"who planned this as {requester_name}; sudo does not make a second "
                           "person: another operator must approve from their own login")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


class ApprovalBook:
    """Issues and redeems plan tokens in the state store."""

    def __init__(self, store: StateStore, *, ttl_seconds: float, two_person_rule: bool,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.ttl_seconds = ttl_seconds
        self.two_person_rule = two_person_rule
        self.clock = clock

    def issue(self, action: str, args: dict[str, Any], requester: Peer, *,
              plan: dict[str, Any] | None = None) -> tuple[str, float]:
        """A new token for ``action(args)`` requested by ``requester``, who was shown ``plan``;
        returns (token, expiry)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        now = self.clock()
        expires = now + self.ttl_seconds
        shown = plan or {}
        params = {"args": args, "plan": shown, "requester_login_uid": requester.login_uid,
                  "binding": binding_digest(token, action, args, requester.uid, plan=shown,
                                            login_uid=requester.login_uid)}
        self.store.add_approval(token_hash=hash_token(token), action=action, params=params,
                                requester_uid=requester.uid, requester_name=requester.user,
                                created_at=now, expires_at=expires)
        return token, expires

    def inspect(self, token: str, viewer: Peer) -> Approval:
        """What the token would authorise, checked like a redemption but not consumed."""
        row = self.store.approval(hash_token(token))
        return check_redeemable(row, token, viewer, now=self.clock(),
                                two_person_rule=self.two_person_rule)

    def redeem(self, token: str, approver: Peer) -> Approval:
        """Check and consume the token (once, atomically); raise RefusedError when refused."""
        approval = self.inspect(token, approver)
        if not self.store.consume_approval(approval.token_hash, approver_uid=approver.uid,
                                           approver_name=approver.user, used_at=self.clock()):
            raise RefusedError("approving", "token was used or expired a moment ago; plan again")
        return approval
