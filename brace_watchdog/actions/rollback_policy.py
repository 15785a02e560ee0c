"""Pure guards of the app rollback: may the daemon roll back now, and if not, why not.

:func:`decide` takes plain values (:class:`PolicyInput`, the ``[rollback]`` config) and returns a
:class:`Decision` — ``rollback``, ``escalate`` (a human must look), ``hold`` (deliberately not
acting, e.g. frozen or inside a deploy's grace period) or ``none`` (nothing to do) — with a reason
code, a sentence for the operator and the evidence. No I/O, no clock; tested exhaustively in
``tests/unit/test_rollback_policy.py``.

Guards, in order (an operator's manual request skips those marked *auto*):

1. *auto* trigger: the sustained-failure window verdict or a named trigger alert firing;
2. *auto* deploy grace: an alert trigger inside ``deploy_grace_seconds`` after a deploy waits;
3. *auto* frozen: automation is frozen until an operator resumes it;
4. *auto* infrastructure: the database (where configured) is down, or the docker engine does not
   answer — failures then say nothing about the deploy; *auto* Swarm is in charge (an update
   under ``failure_action: rollback``, or Swarm's own rollback of it, is under way): hold,
   never fight it;
5. no current release / no known-good release / the running release *is* the newest known-good
   one (or, for an operator's ``--to RELEASE``, *is* that release);
6. *auto* attribution: the daemon saw the deploy, it is younger than
   ``max_deploy_age_seconds``, and the failures were not already sustained before it;
7. *auto* the known-good release already failed a rollback verification;
8. *auto* the running release was rolled back before (a redeploy of a bad release), or a
   rollback of it ended without completing (interrupted): one attempt per bad release,
   whatever the cooldown;
9. schema guard: the Alembic revision moved (or is unknown) since the known-good release;
10. *auto* cooldown after any rollback, and at most ``max_per_day`` rollbacks per 24 hours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from brace_watchdog.config import RollbackConfig
from brace_watchdog.journal_handover import RATE_RECORD_SECONDS
from brace_watchdog.monitors.policy import WindowVerdict

__all__ = ["Action", "Decision", "PolicyInput", "decide"]

Action = Literal["none", "hold", "escalate", "rollback"]
DAY_SECONDS = RATE_RECORD_SECONDS  # max_per_day counts the rollbacks of the last 24 h


@dataclass(frozen=True)
class PolicyInput:
    now: float
    verdict: WindowVerdict
    current_fingerprint: str | None
    known_good_fingerprint: str | None
    firing_alerts: tuple[str, ...] = ()
    known_good_failed_at: float | None = None
    schema_tracked: bool = False
    known_good_revision: str | None = None
    current_revision: str | None = None
    last_deploy_at: float | None = None
    rollback_times: tuple[float, ...] = ()
    frozen: bool = False
    manual: bool = False
    current_rolled_back_at: float | None = None
    current_rollback_outcome: str | None = None
    """The status of the rollback that started at ``current_rolled_back_at`` (None: unknown).
    Only a ``succeeded`` one left the release: running it again is then a redeploy."""
    # ``known_good_*`` describe the target (:mod:`~brace_watchdog.actions.rollback_target`);
    # these say what the newest known-good release is, and whether an operator named the target
    newest_known_good: str | None = None
    requested: bool = False
    target_note: str = ""
    failing_before_deploy: bool = False
    """The failures were already sustained when the last deploy was detected."""
    database_up: bool | None = None
    """None: no database configured, or not checked yet."""
    database_problem: str = ""
    engine_error: str = ""
    """Why the docker engine did not answer the last look ("" while it answers)."""
    swarm_in_charge: tuple[str, ...] = ()
    """Services whose update Swarm itself is judging or rolling back now (driver ``swarm``)."""


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def acts(self) -> bool:
        return self.action == "rollback"


def decide(inp: PolicyInput, cfg: RollbackConfig) -> Decision:
    """Run the guards in order; the first that holds decides."""
    evidence = _evidence(inp)
    for guard in (_trigger, _grace, _frozen, _infrastructure, _swarm_rollback, _releases,
                  _attribution, _failed_before, _rolled_back_before, _schema, _rate):
        decision = guard(inp, cfg, evidence)
        if decision is not None:
            return decision
    note = " (schema moved; on_schema_change = app_only)" if evidence.get("schema_moved") else ""
    who = "operator request" if inp.manual else "sustained failures"
    if inp.target_note:
        note += f" ({inp.target_note})"
    return Decision("rollback", "rollback",
                    f"rolling back to known-good release {_short(inp.known_good_fingerprint)} "
                    f"after {who}{note}", evidence)



def _evidence(inp: PolicyInput) -> dict[str, Any]:
    return {"window": inp.verdict.evidence(), "firing_alerts": list(inp.firing_alerts),
            "current_release": inp.current_fingerprint,
            "known_good_release": inp.known_good_fingerprint,
            "known_good_revision": inp.known_good_revision,
            "current_revision": inp.current_revision, "last_deploy_at": inp.last_deploy_at,
            "failing_before_deploy": inp.failing_before_deploy,
            "database_up": inp.database_up, "engine_error": inp.engine_error or None,
            "manual": inp.manual, "newest_known_good": inp.newest_known_good or
            inp.known_good_fingerprint, "requested_target": inp.requested,
            "target_note": inp.target_note}


def _trigger(inp: PolicyInput, cfg: RollbackConfig, ev: dict[str, Any]) -> Decision | None:
    if inp.manual or inp.verdict.sustained or inp.firing_alerts:
        return None
    return Decision("none", "not_triggered", inp.verdict.reason, ev)


def _grace(inp: PolicyInput, cfg: RollbackConfig, ev: dict[str, Any]) -> Decision | None:
    if inp.manual or inp.last_deploy_at is None:
        return None
    ends = inp.last_deploy_at + cfg.deploy_grace_seconds
    if inp.now >= ends:
        return None
    return Decision("hold", "deploy_grace", f"a deploy happened {inp.now - inp.last_deploy_at:.0f}s"
                    f" ago; waiting out the {cfg.deploy_grace_seconds:.0f}s grace period", ev)


def _swarm_rollback(inp: PolicyInput, cfg: RollbackConfig,
                    ev: dict[str, Any]) -> Decision | None:
    if inp.manual or not inp.swarm_in_charge:
        return None
    return Decision("hold", "swarm_in_charge", f"Swarm itself is updating or rolling back "
                    f"{', '.join(inp.swarm_in_charge)} (failure_action: rollback); not acting "
                    "against it", {**ev, "swarm_in_charge": list(inp.swarm_in_charge)})


def _frozen(inp: PolicyInput, cfg: RollbackConfig, ev: dict[str, Any]) -> Decision | None:
    if inp.manual or not inp.frozen:
        return None
    return Decision("hold", "frozen", "no rollback: automatic actions are frozen until an "
                    "operator resumes them", ev)


def _infrastructure(inp: PolicyInput, cfg: RollbackConfig,
                    ev: dict[str, Any]) -> Decision | None:
    if inp.manual:
        return None
    if inp.database_up is False:
        why = f" ({inp.database_problem})" if inp.database_problem else ""
        return Decision("escalate", "database_down", f"escalated: the database is down{why}; "
                        "the failures need not be the deploy's, so no automatic rollback", ev)
    if inp.engine_error:
        return Decision("escalate", "engine_down", "escalated: the docker engine does not "
                        f"answer ({inp.engine_error}); no automatic rollback", ev)
    return None


def _attribution(inp: PolicyInput, cfg: RollbackConfig, ev: dict[str, Any]) -> Decision | None:
    if inp.manual:
        return None
    if inp.last_deploy_at is None:
        return Decision("escalate", "deploy_unseen", "escalated: the daemon did not see the "
                        "running release being deployed, so it cannot tell that the deploy "
                        "caused the failures", ev)
    age = inp.now - inp.last_deploy_at
    if age > cfg.max_deploy_age_seconds:
        return Decision("escalate", "deploy_too_old", f"escalated: the last deploy was "
                        f"{age:.0f}s ago, older than max_deploy_age_seconds = "
                        f"{cfg.max_deploy_age_seconds:.0f}; failures this late are not "
                        "attributed to it", ev)
    if inp.failing_before_deploy:
        return Decision("escalate", "failures_predate_deploy", "escalated: the failures "
                        "predate the deploy (they were already sustained when it happened)", ev)
    return None


def _releases(inp: PolicyInput, cfg: RollbackConfig, ev: dict[str, Any]) -> Decision | None:
    if inp.current_fingerprint is None:
        return Decision("escalate", "no_current_release", "escalated: the services' containers "
                        "are missing, so the running release is unknown", ev)
    if inp.known_good_fingerprint is None:
        return Decision("escalate", "no_known_good", "escalated: no known-good release recorded "
                        "yet, nothing to roll back to", ev)
    if inp.requested:
        if inp.current_fingerprint == inp.known_good_fingerprint:
            return Decision("escalate", "target_running", f"no rollback: release "
                            f"{_short(inp.known_good_fingerprint)} is already running", ev)
        return None
    if inp.current_fingerprint == (inp.newest_known_good or inp.known_good_fingerprint):
        return Decision("escalate", "known_good_running", "no rollback: running release is "
                        "known-good, so the failures are not a deploy problem; escalated", ev)
    return None


def _failed_before(inp: PolicyInput, cfg: RollbackConfig, ev: dict[str, Any]) -> Decision | None:
    if inp.manual or inp.known_good_failed_at is None:
        return None
    return Decision("escalate", "target_failed_before", "escalated: a rollback to release "
                    f"{_short(inp.known_good_fingerprint)} already failed verification; "
                    "no second automatic attempt", ev)


def _rolled_back_before(inp: PolicyInput, cfg: RollbackConfig,
                        ev: dict[str, Any]) -> Decision | None:
    if inp.manual or inp.current_rolled_back_at is None:
        return None
    ago = inp.now - inp.current_rolled_back_at
    outcome = inp.current_rollback_outcome
    ev["rollback_outcome"] = outcome
    if outcome in (None, "succeeded"):
        what = f"was rolled back {ago:.0f}s ago and has been deployed again"
    else:
        what = (f"still runs: the rollback of it started {ago:.0f}s ago did not complete "
                f"(it is {outcome}), so this is no redeploy")
    return Decision("escalate", "rolled_back_before", f"escalated: release "
                    f"{_short(inp.current_fingerprint)} {what}; a bad release is rolled back "
                    "once, never automatically again — an operator must decide", ev)


def _schema(inp: PolicyInput, cfg: RollbackConfig, ev: dict[str, Any]) -> Decision | None:
    if not inp.schema_tracked:
        return None
    if inp.current_revision is not None and inp.current_revision == inp.known_good_revision:
        return None
    ev["schema_moved"] = True
    if cfg.on_schema_change == "app_only":
        return None
    if inp.current_revision is None or inp.known_good_revision is None:
        return Decision("escalate", "schema_unknown", "escalated: the Alembic revision is "
                        f"unknown (known-good {inp.known_good_revision}, now "
                        f"{inp.current_revision}); an app-only rollback may not be safe", ev)
    return Decision("escalate", "schema_moved", f"escalated: schema moved from "
                    f"{inp.known_good_revision} to {inp.current_revision} since the known-good "
                    "release; old code may not run on the new schema (DB rollback plan "
                    "attached)", ev)


def _rate(inp: PolicyInput, cfg: RollbackConfig, ev: dict[str, Any]) -> Decision | None:
    if inp.manual:
        return None
    recent = [t for t in inp.rollback_times if inp.now - t < DAY_SECONDS]
    last = max(inp.rollback_times, default=None)
    if last is not None and inp.now - last < cfg.cooldown_seconds:
        return Decision("escalate", "cooldown", f"escalated: the last rollback was "
                        f"{inp.now - last:.0f}s ago, inside the {cfg.cooldown_seconds:.0f}s "
                        "cooldown", ev)
    if len(recent) >= cfg.max_per_day:
        return Decision("escalate", "max_per_day", f"escalated: {len(recent)} rollbacks in the "
                        f"last 24h reached max_per_day = {cfg.max_per_day}", ev)
    return None


def _short(fingerprint: str | None) -> str:
    return (fingerprint or "?")[:12]
