"""Release commands: ``releases`` (role ``reader``) lists what the daemon knows about each
release; ``release-clear-failed`` (role ``operator``) clears the "a rollback to it failed
verification" mark that keeps the automatic rollback from trying that release again."""

from __future__ import annotations

from typing import Any

from brace_watchdog.actions.release_tracker import CURRENT_FLAG
from brace_watchdog.control.commands.base import Command, Context, on_the_leader
from brace_watchdog.control.protocol import ArgSpec, ProtocolError
from brace_watchdog.errors import RefusedError
from brace_watchdog.state import ReleaseRecord

__all__ = ["COMMANDS"]

MIN_PREFIX = 6


def _row(record: ReleaseRecord, *, current: str | None, newest_good: str | None) -> dict[str, Any]:
    return {"release": record.fingerprint[:12], "fingerprint": record.fingerprint,
            "first_seen": record.first_seen, "current": record.fingerprint == current,
            "known_good_at": record.known_good_at,
            "newest_known_good": record.fingerprint == newest_good,
            "failed_at": record.failed_verification_at, "pinned": record.pinned,
            "rolled_back_at": record.rolled_back_at, "rolled_back_by": record.rolled_back_by}


async def releases(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    store = ctx.hub.store
    tracked = store.flag(CURRENT_FLAG)
    current = (tracked.get("release") or {}).get("fingerprint") if isinstance(tracked, dict) \
        else None
    good = store.known_good_releases(1)
    newest_good = good[0].fingerprint if good else None
    return {"releases": [_row(r, current=current, newest_good=newest_good)
                         for r in store.releases(limit=args.get("limit", 50))]}


async def clear_failed(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    on_the_leader(ctx, "release-clear-failed")
    prefix = args["release"].strip().lower()
    if len(prefix) < MIN_PREFIX:
        raise ProtocolError("bad_args", f"release-clear-failed: give at least {MIN_PREFIX} "
                            "characters of the release (see `releases`)")
    found = ctx.hub.store.releases(prefix=prefix, limit=2)
    if not found:
        raise ProtocolError("bad_args", f"release-clear-failed: no release {prefix}; see "
                            "`releases`")
    if len(found) > 1:
        raise ProtocolError("bad_args", f"release-clear-failed: {prefix} matches several "
                            "releases; give more characters")
    record = found[0]
    if record.failed_verification_at is None:
        raise RefusedError("clear-failed", f"release {record.fingerprint[:12]} is not marked "
                           "failed; nothing to clear")
    ctx.hub.store.clear_release_failed(record.fingerprint)
    who = f"{ctx.peer.user} (uid {ctx.peer.uid})"
    ctx.hub.record("release.failed_cleared", "control", f"{who} cleared the failed mark of "
                   f"release {record.fingerprint[:12]}: the automatic rollback may target it "
                   "again", evidence={"fingerprint": record.fingerprint,
                                      "failed_at": record.failed_verification_at, "by": who},
                   severity="warning")
    return {"cleared": record.fingerprint, "failed_at": record.failed_verification_at}


COMMANDS = (
    Command("releases", "reader", releases, {"limit": ArgSpec("int", minimum=1, maximum=1000)},
            summary="releases: current, known-good, failed, pinned, rolled back from"),
    Command("release-clear-failed", "operator", clear_failed,
            {"release": ArgSpec("str", required=True, max_chars=64)},
            summary="clear a release's failed-verification mark (audited)"),
)
