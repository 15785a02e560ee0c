"""The shape every operator-approved ("gated") action shares, and the helpers they share.

A gated action has two halves: :meth:`GatedAction.plan` runs the pre-checks and returns a
:class:`Plan` (exact steps, the target name the operator must type, check results) without
changing anything; :meth:`GatedAction.execute` runs the approved plan. :class:`StepJournal` runs
each step with a progress line, a journal entry and a watchdog beat; a failing step raises
:class:`GatedFailure`, which records where everything stands and how to continue, escalates, and
is reported to the operator verbatim.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
from tenacity import AsyncRetrying, retry_if_result, stop_after_attempt, wait_fixed

from brace_watchdog.adapters.compose import ComposeCLI, ComposeProject
from brace_watchdog.config import Config
from brace_watchdog.errors import ActionError, WatchdogError
from brace_watchdog.journal_handover import adopted_from, interrupted_by
from brace_watchdog.leadership import LeadershipLostError
from brace_watchdog.monitors.health import probe
from brace_watchdog.runtime import Hub
from brace_watchdog.state import ActionRecord

__all__ = ["Advice", "GatedAction", "GatedFailure", "Plan", "Progress", "Step", "StepJournal",
           "Work", "compose_cli", "compose_project", "interrupted_message", "ordered",
           "probe_health", "resolve_interrupted", "stamp", "verify_health", "wait_until"]

T = TypeVar("T")
Progress = Callable[[str, str], Awaitable[None]]
Work = Callable[[], Awaitable[Any]]
Step = tuple[str, str, Work]


def ordered(names: Sequence[str], table: Mapping[str, tuple[str, Work]]) -> list[Step]:
    """``table``'s ``(message, work)`` steps in the order ``names`` declares.

    ``names`` is an action's ``STEPS``, the one list of its steps (kill tests enumerate it);
    a step missing from either side is a programming error, raised at once.
    """
    if sorted(names) != sorted(table):
        raise ValueError(f"declared steps {list(names)} differ from those built {sorted(table)}")
    return [(name, *table[name]) for name in names]


@dataclass(frozen=True)
class Plan:
    """What an approval would do: shown to the operator before they approve."""

    action: str
    args: dict[str, Any]
    target: str
    steps: tuple[str, ...]
    checks: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "args": self.args, "target": self.target,
                "steps": list(self.steps), "checks": self.checks, "warnings": list(self.warnings)}


class GatedAction(Protocol):
    name: str

    async def plan(self, args: dict[str, Any]) -> Plan: ...

    async def execute(self, args: dict[str, Any], *, requester: str, approver: str,
                      progress: Progress) -> dict[str, Any]: ...

    def leftover(self) -> Work | None:
        """After :func:`resolve_interrupted`: the work that ends what an interrupted run left
        running (run under the action lock), or None."""


class GatedFailure(ActionError):
    """A gated action stopped at ``stage``; ``state`` says where things stand, ``next_steps``
    what the operator can do now."""

    def __init__(self, stage: str, message: str, *, state: dict[str, Any],
                 next_steps: Sequence[str], action_id: int) -> None:
        super().__init__(stage, message)
        self.state = state
        self.next_steps = list(next_steps)
        self.action_id = action_id

    def details(self) -> dict[str, Any]:
        return {"stage": self.stage, "state": self.state, "next_steps": self.next_steps,
                "action_id": self.action_id}


Advice = Callable[[str, dict[str, Any]], list[str]]
"""``advice(stage, state)``: the next safe commands for an action stopped at ``stage``."""


class StepJournal:
    """Runs the steps of one journaled action: progress line, journal entry, watchdog beat.

    Every journal entry carries ``state`` (where things stand: writers, files, database) and
    ``advice(stage, state)`` — so a daemon killed at any point leaves, in its last entry, exactly
    what an operator needs (:func:`resolve_interrupted` reports it after the restart). Steps
    change ``state`` through :meth:`checkpoint`, which journals the change before going on.
    """

    def __init__(self, hub: Hub, action_id: int, progress: Progress, *,
                 state: dict[str, Any] | None = None, advice: Advice | None = None,
                 component: str = "control") -> None:
        self.hub = hub
        self.action_id = action_id
        self.progress = progress
        self.state = state if state is not None else {}
        self.advice: Advice = advice or (lambda stage, state: [])
        self.component = component
        self.current = "begin"
        self.done: list[str] = []

    def _evidence(self, **extra: Any) -> dict[str, Any]:
        return {**extra, "state": dict(self.state),
                "next_steps": self.advice(self.current, self.state)}

    def checkpoint(self, **changes: Any) -> None:
        """Update ``state`` and journal it at once (before the step does anything more)."""
        self.state.update(changes)
        self.hub.store.journal_step(self.action_id, self.current,
                                    evidence=self._evidence(checkpoint=sorted(changes)))

    async def step(self, name: str, message: str, work: Callable[[], Awaitable[T]]) -> T:
        await self.hub.leadership.confirm(name)  # no lock, no action
        self.current = name
        await self.progress(name, message)
        self.hub.store.journal_step(self.action_id, name, evidence=self._evidence(message=message))
        self.hub.progress.beat(self.component)
        result = await work()
        self.done.append(name)
        self.hub.progress.beat(self.component)
        return result

    async def run_all(self, steps: Sequence[Step], *, kind: str) -> None:
        """Run ``steps`` in order; the first failure journals, escalates and raises
        :class:`GatedFailure` with ``state`` as it stands and ``advice(stage, state)``."""
        for stage, message, work in steps:
            try:
                await self.step(stage, message, work)
            except LeadershipLostError as exc:
                # status stays "running" at the last step begun: the new leader escalates it
                # (resolve_interrupted); this step was never started
                self.hub.store.journal_step(
                    self.action_id, self.current, result=f"{stage} not started: {exc.message}",
                    evidence=self._evidence())
                raise
            except (WatchdogError, OSError) as exc:
                raise await self.fail(stage, exc, kind=kind) from None
            except asyncio.CancelledError:
                # status stays "running": the next start (or the new leader) escalates it
                self.hub.store.journal_step(
                    self.action_id, stage,
                    result=f"interrupted at {stage} (daemon stopping or leadership lost)",
                    evidence=self._evidence())
                raise

    def finish(self, result: str, evidence: dict[str, Any]) -> None:
        self.hub.store.journal_step(self.action_id, "done", evidence=evidence,
                                    status="succeeded", result=result)

    async def fail(self, stage: str, error: BaseException, *, kind: str) -> GatedFailure:
        """Journal, escalate and build the failure the operator sees."""
        message = str(getattr(error, "message", "") or error)
        state, next_steps = dict(self.state), self.advice(stage, self.state)
        evidence = {"stage": stage, "error": message, "state": state, "next_steps": next_steps}
        self.hub.store.journal_step(self.action_id, stage, evidence=evidence, status="failed",
                                    result=f"failed at {stage}: {message}")
        await self.hub.escalate(f"{kind}_failed", f"{kind} #{self.action_id} failed at {stage}: "
                                f"{message}", source="control", evidence=evidence)
        return GatedFailure(stage, message, state=state, next_steps=next_steps,
                            action_id=self.action_id)


def stamp(now: float) -> str:
    """``YYYYMMDD_HHMMSS`` in UTC, for file names."""
    return time.strftime("%Y%m%d_%H%M%S", time.gmtime(now))


async def probe_health(url: str, ok_statuses: Sequence[str], *,
                       timeout: float) -> str:
    """One GET of ``url``; returns the classified result (``ok``, ``http_5xx``, ...)."""
    async with httpx.AsyncClient(timeout=timeout) as client:
        sample = await probe(client, "backend", url, ok_statuses=tuple(ok_statuses))
    return sample.result


async def wait_until(check: Callable[[], Awaitable[T]], accept: Callable[[T], bool], *,
                     attempts: int, wait_seconds: float) -> T:
    """Call ``check`` until ``accept(result)``, at most ``attempts`` times; return the last result.

    ``check`` reports problems as values (never raises), so the caller decides what they mean.
    """
    retrying = AsyncRetrying(
        stop=stop_after_attempt(attempts), wait=wait_fixed(wait_seconds),
        retry=retry_if_result(lambda result: not accept(result)),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None)
    result: T = await retrying(check)
    return result


async def verify_health(hub: Hub, *, attempts: int, wait_seconds: float) -> str:
    """Probe ``[health] url`` until it answers ok; ActionError("verifying") if it never does."""
    cfg = hub.config.health

    async def probe() -> str:
        hub.progress.beat("control")
        return await probe_health(cfg.url, cfg.ok_statuses, timeout=cfg.timeout_seconds)

    result = await wait_until(probe, lambda r: r == "ok", attempts=attempts,
                              wait_seconds=wait_seconds)
    if result != "ok":
        raise ActionError("verifying", f"{cfg.url} still answers {result} after {attempts} "
                          "tries")
    return result


def compose_cli(config: Config, *, command: Sequence[str] = (),
                timeout: float | None = None) -> ComposeCLI:
    """The compose CLI a gated action runs; empty overrides inherit from ``[rollback]``."""
    rollback = config.rollback
    return ComposeCLI(command or rollback.compose_command,
                      timeout=timeout or rollback.compose_timeout_seconds)


def compose_project(config: Config, *, cli: ComposeCLI | None = None, file: Path | None = None,
                    project: str = "") -> ComposeProject:
    """The compose project a gated action addresses through ``cli`` (:func:`compose_cli`);
    empty overrides inherit from ``[rollback]``."""
    rollback = config.rollback
    return (cli or compose_cli(config)).project((str(file or rollback.compose_file),),
                                                project or rollback.project)


GATED_KINDS = ("db_rollback", "pg_hba_rollback", "docker_daemon_rollback")


def interrupted_message(action: ActionRecord, state: dict[str, Any],
                        next_steps: Sequence[str]) -> str:
    """What the operator is told about a gated action a restart interrupted: where it stopped,
    the ``state`` recorded (or known since) and the next safe commands."""
    known = "; ".join(f"{key}: {value}" for key, value in state.items()
                      if value not in (None, ""))
    return (f"{action.kind} #{action.id} was interrupted at step {action.step!r} "
            f"{interrupted_by(action.plan)}. Last recorded state: "
            f"{known or 'nothing changed yet'}. "
            f"Next: {' | '.join(next_steps) or 'check the database, writers and files'} "
            f"(brace-watchdogctl explain / timeline --action-id {action.id}). Automatic "
            "actions are frozen until brace-watchdogctl unfreeze.")


async def resolve_interrupted(hub: Hub) -> list[int]:
    """At start-up: gated actions a previous daemon left unfinished are marked interrupted,
    automation is frozen, and each is escalated with the state its last journal entry recorded
    and the next safe commands — only an operator can judge what happened after that entry."""
    found: list[int] = []
    for action in hub.store.open_actions():
        if action.kind not in GATED_KINDS:
            continue
        last = hub.store.last_journal_evidence(action.id)
        state = last.get("state", {}) if isinstance(last.get("state"), dict) else {}
        next_steps = [str(s) for s in last.get("next_steps", []) if isinstance(s, str)]
        if hub.frozen() is None:
            hub.freeze(f"{action.kind} #{action.id} was interrupted {interrupted_by(action.plan)}",
                       by="control", evidence={"action_id": action.id})
        message = interrupted_message(action, state, next_steps)
        hub.store.journal_step(action.id, action.step, status="interrupted", result=message,
                               evidence={"state": state, "next_steps": next_steps})
        await hub.escalate(f"{action.kind}_interrupted", message, source="control",
                           evidence={"action_id": action.id, "step": action.step,
                                     "state": state, "next_steps": next_steps,
                                     "adopted_from": adopted_from(action.plan)})
        found.append(action.id)
    return found
