"""The database monitor: is production PostgreSQL up, reachable with our credentials, and which
Alembic revision does it carry?

Each cycle runs :func:`~brace_watchdog.adapters.postgres_probe.probe_database` — a fresh
connection every time, because authentication (the runbook's broken ``pg_hba.conf``) is only
exercised when connecting. It publishes ``hub.observations.database``, the ``brace_database_*``
metrics, and records events only on transitions: ``database.down`` (with the failure kind; again
when the kind changes), ``database.up``, and ``database.revision_changed`` with ``old``/``new``
(the rollback relies on it). The last state lives in the state store (flag ``monitor.database``)
so a restart neither re-announces an outage nor misses a migration made while the daemon was down.
The DSN is a :class:`~brace_watchdog.config.Secret`; only ``user@host:port/dbname`` is shown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from brace_watchdog.adapters.postgres_probe import (
    DatabaseReading,
    ProbeFailure,
    classify_failure,
    describe_dsn,
    probe_database,
)
from brace_watchdog.component import Component
from brace_watchdog.monitors.memory import MonitorMemory
from brace_watchdog.observations import DatabaseStatus
from brace_watchdog.runtime import Hub

__all__ = ["DatabaseMonitor", "classify_failure"]

log = logging.getLogger("brace_watchdog.database")



class DatabaseMonitor(Component):
    """Checks ``[database] dsn`` every ``[database] interval_seconds``."""

    name = "database"

    def __init__(self, hub: Hub, *, clock: Callable[[], float] | None = None) -> None:
        self._hub = hub
        self._clock = clock or hub.clock
        self._state = MonitorMemory(hub.store, self.name)

    def interval(self) -> float:
        return self._hub.config.database.interval_seconds

    async def cycle(self) -> str:
        cfg = self._hub.config.database
        if not cfg.enabled:
            return "disabled ([database] dsn is empty)"
        where = describe_dsn(cfg.dsn.reveal())
        try:
            reading = await probe_database(cfg.dsn.reveal(), password=cfg.password.reveal(),
                                           timeout_seconds=cfg.timeout_seconds)
        except ProbeFailure as exc:
            return await self._down(exc, where)
        return await self._up(reading, where)

    async def _down(self, exc: ProbeFailure, where: str) -> str:
        metrics = self._hub.metrics
        metrics.database_up.set(0)
        metrics.database_failures.labels(kind=exc.kind).inc()
        message = f"{exc.kind} failure at {where}: {exc}"
        self._hub.observations.database = DatabaseStatus(
            checked_at=self._clock(), up=False, revision=self._state.get("revision"),
            failure_kind=exc.kind, message=message)
        if self._state.get("up") is not False or self._state.get("kind") != exc.kind:
            self._hub.record("database.down", self.name, f"database is down: {message}",
                             severity="error", evidence={"kind": exc.kind, "target": where,
                                                         "detail": str(exc)})
            self._state.update(up=False, kind=exc.kind)
            await self._hub.notifier.send("database.down", {"kind": exc.kind, "target": where,
                                                            "message": message})
        return f"DOWN ({exc.kind}) {where}: {exc}"

    async def _up(self, reading: DatabaseReading, where: str) -> str:
        metrics = self._hub.metrics
        metrics.database_up.set(1)
        metrics.database_latency.observe(reading.latency_seconds)
        metrics.database_revision.info({"revision": reading.revision or ""})
        self._hub.observations.database = DatabaseStatus(
            checked_at=self._clock(), up=True, revision=reading.revision,
            latency_seconds=reading.latency_seconds, message=reading.revision_note)
        if self._state.get("up") is False:
            self._hub.record("database.up", self.name, f"database is up again at {where}",
                             evidence={"previous_kind": self._state.get("kind")})
        old, known = self._state.get("revision"), "revision" in self._state
        self._state.update(up=True, kind=None, revision=reading.revision)
        if known and old != reading.revision:
            await self._revision_changed(old, reading.revision, where)
        revision = reading.revision or f"none ({reading.revision_note})"
        return (f"up {where} (PostgreSQL {reading.server_version}), revision {revision}, "
                f"select 1 in {reading.latency_seconds * 1000:.1f} ms")

    async def _revision_changed(self, old: str | None, new: str | None, where: str) -> None:
        evidence = {"old": old, "new": new, "target": where}
        self._hub.record("database.revision_changed", self.name,
                         f"Alembic revision changed from {old or 'none'} to {new or 'none'}",
                         severity="warning", evidence=evidence)
        await self._hub.notifier.send("database.revision_changed", evidence)

