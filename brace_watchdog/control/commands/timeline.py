"""Render an incident's events as a Markdown post-mortem draft (pure: values in, text out).

The runbook ends every DB rollback with "post-mortem + root cause"; this gives the operator the
facts to start from: when the first failure was seen, what was decided on which evidence, which
actions ran with which steps, who approved what, and how verification went. Root cause and
follow-ups are left as headings for the humans.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from brace_watchdog.state import ActionRecord, Event

__all__ = ["incident_bounds", "render_timeline"]

DETECTION_PREFIXES = ("health.", "probe.", "backup.", "database.", "alert.")


def _ts(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")[:200]


def incident_bounds(actions: Sequence[ActionRecord], events: Sequence[Event], *,
                    lookback_seconds: float, settle_seconds: float) -> tuple[float, float] | None:
    """The time span of the incident around ``actions`` (or the escalations among ``events``).

    Starts ``lookback_seconds`` before the first action (to catch the first failing samples),
    ends ``settle_seconds`` after the last action update (to catch verification).
    """
    if actions:
        start = min(a.created_at for a in actions) - lookback_seconds
        return start, max(a.updated_at for a in actions) + settle_seconds
    marks = [e.ts for e in events if e.kind == "escalation" or e.severity == "error"]
    if not marks:
        return None
    return min(marks) - lookback_seconds, max(marks) + settle_seconds


def _summary(events: Sequence[Event], actions: Sequence[ActionRecord]) -> list[str]:
    first_failure = next((e for e in events if e.severity in ("warning", "error")
                          and e.kind.startswith(DETECTION_PREFIXES)), None)
    lines = [f"- Window: {_ts(events[0].ts)} → {_ts(events[-1].ts)} UTC ({len(events)} events)"
             if events else "- No events in the window."]
    if first_failure:
        lines.append(f"- First failure seen: {_ts(first_failure.ts)} UTC — "
                     f"{_cell(first_failure.message)} (event #{first_failure.id})")
    for action in actions:
        lines.append(f"- Action #{action.id} `{action.kind}` by {action.origin}"
                     f"{' for ' + action.requester if action.requester else ''}: "
                     f"**{action.status}** at step `{action.step}`"
                     f"{' — ' + _cell(action.result) if action.result else ''}")
    return lines


def _approvals(approvals: Sequence[dict[str, Any]]) -> list[str]:
    if not approvals:
        return ["- None."]
    lines = []
    for row in approvals:
        approved = (f"approved by {row['approver_name']} at {_ts(row['used_at'])} UTC"
                    if row.get("used_at") else "not approved")
        lines.append(f"- `{row['action']}` {row['params'].get('args', {})} planned by "
                     f"{row['requester_name']} at {_ts(row['created_at'])} UTC, {approved}"
                     f"{' → action #' + str(row['action_id']) if row.get('action_id') else ''}")
    return lines


def render_timeline(title: str, events: Sequence[Event], actions: Sequence[ActionRecord],
                    approvals: Sequence[dict[str, Any]]) -> str:
    """The post-mortem draft: summary, approvals, full event table, open questions."""
    lines = [f"# Post-mortem draft: {title}", "", "## Summary", *_summary(events, actions), "",
             "## Approvals", *_approvals(approvals), "", "## Timeline (UTC)", "",
             "| time | # | severity | kind | source | what happened |",
             "|---|---|---|---|---|---|"]
    for event in events:
        action = f" (action #{event.action_id})" if event.action_id else ""
        lines.append(f"| {_ts(event.ts)} | {event.id} | {event.severity} | {event.kind} | "
                     f"{_cell(event.source)} | {_cell(event.message)}{action} |")
    lines += ["", "## Root cause", "", "_To be written: what changed, why it broke, why it was "
              "not caught earlier._", "", "## Follow-ups", "", "- [ ] _owner — action_", ""]
    return "\n".join(lines)
