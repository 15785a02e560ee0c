"""The alerts monitor: which alerts does Alertmanager say are firing right now?

Polls Alertmanager's API v2 ``GET /api/v2/alerts?active=true&silenced=false&inhibited=false``
with one ``filter=`` parameter per ``[alerts] matchers`` entry, through one reused
``httpx.AsyncClient``. :func:`parse_alerts` (pure) turns the JSON answer into
:class:`~brace_watchdog.observations.FiringAlert` values and rejects anything malformed with an
:class:`~brace_watchdog.errors.HttpError` that says what was wrong.

:class:`AlertsMonitor` publishes ``hub.observations.alerts``/``alertmanager_up``, the metrics
``brace_alerts_firing{alertname,severity}`` (label sets that stopped firing are removed) and
``brace_alertmanager_up``, and records events on transitions only: ``alert.firing``,
``alert.resolved``, ``alertmanager.down``, ``alertmanager.up``. An unreachable or misbehaving
Alertmanager is a metric, an event and a status line, never a crash; the last known alerts stay
in ``hub.observations.alerts`` but are *stale* (``brace_alerts_stale``, computed at scrape time)
once a poll failed or none succeeded for :func:`~brace_watchdog.observations.alerts_stale_after`;
consumers read :meth:`~brace_watchdog.observations.Observations.current_alerts`, which gives
nothing while they are stale.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import httpx

from brace_watchdog.component import Component
from brace_watchdog.errors import HttpError
from brace_watchdog.monitors.memory import MonitorMemory
from brace_watchdog.observations import FiringAlert, alerts_fresh, alerts_stale_after
from brace_watchdog.runtime import Hub

__all__ = ["AlertsMonitor", "alert_key", "alerts_query", "parse_alerts"]

log = logging.getLogger("brace_watchdog.alerts")

NO_SEVERITY = "none"


def alerts_query(matchers: tuple[str, ...]) -> httpx.QueryParams:
    """Query parameters: active, unsilenced, uninhibited alerts matching every matcher."""
    return httpx.QueryParams([("active", "true"), ("silenced", "false"), ("inhibited", "false"),
            *(("filter", m) for m in matchers)])


def parse_alerts(payload: Any) -> tuple[FiringAlert, ...]:
    """Turn a decoded ``/api/v2/alerts`` answer into alerts; HttpError when it is malformed."""
    if not isinstance(payload, list):
        raise HttpError(f"alertmanager answered a {type(payload).__name__}, expected a list of "
                        "alerts; is [alerts] alertmanager_url pointing at Alertmanager?")
    alerts = []
    for index, item in enumerate(payload):
        alert = _parse_alert(item, index)
        if alert is not None:
            alerts.append(alert)
    return tuple(sorted(alerts, key=alert_key))


def _parse_alert(item: Any, index: int) -> FiringAlert | None:
    where = f"alert #{index}"
    if not isinstance(item, dict):
        raise HttpError(f"{where} is a {type(item).__name__}, expected an object")
    labels = item.get("labels")
    if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise HttpError(f"{where} has no 'labels' object of strings")
    name = labels.get("alertname")
    if not name:
        raise HttpError(f"{where} has no 'alertname' label")
    status = item.get("status", {})
    if isinstance(status, dict) and status.get("state") == "suppressed":
        return None
    starts_at = item.get("startsAt", "")
    return FiringAlert(name=name, severity=labels.get("severity") or NO_SEVERITY,
                       labels=tuple(sorted(labels.items())),
                       starts_at=starts_at if isinstance(starts_at, str) else "")


def alert_key(alert: FiringAlert) -> str:
    """A stable identity of one alert (its label set), for transition tracking."""
    return ",".join(f"{k}={v}" for k, v in alert.labels) or alert.name


class AlertsMonitor(Component):
    """Polls Alertmanager every ``[alerts] interval_seconds``."""

    name = "alerts"

    def __init__(self, hub: Hub, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._hub = hub
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._series: set[tuple[str, str]] = set()
        self._state = MonitorMemory(hub.store, self.name)
        hub.metrics.alerts_stale.set_function(self._stale)

    def interval(self) -> float:
        return self._hub.config.alerts.interval_seconds

    def stale_after(self) -> float:
        cfg = self._hub.config.alerts
        return alerts_stale_after(cfg.interval_seconds, cfg.timeout_seconds)

    def _stale(self) -> float:
        obs = self._hub.observations
        fresh = alerts_fresh(obs.alertmanager_up, obs.alerts_fetched_at, self._hub.clock(),
                             self.stale_after())
        return 0.0 if fresh else 1.0

    async def start(self) -> None:
        self._http()

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(transport=self._transport,
                                             headers={"Accept": "application/json"})
        return self._client

    async def fetch(self) -> tuple[FiringAlert, ...]:
        """One poll; HttpError when Alertmanager is unreachable or answers badly."""
        cfg = self._hub.config.alerts
        url = cfg.alertmanager_url.rstrip("/") + "/api/v2/alerts"
        try:
            response = await self._http().get(url, params=alerts_query(cfg.matchers),
                                              timeout=cfg.timeout_seconds)
        except httpx.TimeoutException:
            raise HttpError(f"alertmanager unreachable: no answer from {url} within "
                            f"{cfg.timeout_seconds:g}s") from None
        except httpx.ConnectError as exc:
            raise HttpError(f"alertmanager unreachable: cannot connect to {url} ({exc}); is it "
                            "running?") from None
        except httpx.HTTPError as exc:
            raise HttpError(f"alertmanager unreachable: {exc or type(exc).__name__} ({url})"
                            ) from None
        if response.status_code != 200:
            raise HttpError(f"alertmanager answered HTTP {response.status_code} at {url}: "
                            f"{response.text[:200].strip()}")
        try:
            payload = response.json()
        except ValueError:
            raise HttpError(f"alertmanager answered invalid JSON at {url}") from None
        try:
            return parse_alerts(payload)
        except HttpError as exc:
            raise HttpError(f"alertmanager answered a malformed alert list: {exc}") from None

    async def cycle(self) -> str:
        if not self._hub.config.alerts.alertmanager_url:
            return "disabled ([alerts] alertmanager_url is empty)"
        try:
            alerts = await self.fetch()
        except HttpError as exc:
            return await self._unreachable(str(exc))
        await self._reachable()
        self._publish(alerts)
        self._transitions(alerts)
        names = ", ".join(sorted({a.name for a in alerts}))
        return f"{len(alerts)} firing" + (f": {names}" if names else "")

    async def _unreachable(self, message: str) -> str:
        self._hub.metrics.alertmanager_up.set(0)
        self._hub.observations.alertmanager_up = False
        if self._state.get("up") is not False:
            self._hub.record("alertmanager.down", self.name, message, severity="warning")
            self._state.update(up=False)
        else:
            log.debug("%s", message)          # the transition already logged a warning
        return message

    async def _reachable(self) -> None:
        self._hub.metrics.alertmanager_up.set(1)
        if self._state.get("up") is False:
            self._hub.record("alertmanager.up", self.name, "alertmanager is reachable again")
        self._state.update(up=True)

    def _publish(self, alerts: tuple[FiringAlert, ...]) -> None:
        now = self._hub.clock()
        self._hub.observations.publish_alerts(alerts, now)
        self._hub.metrics.alertmanager_last_success.set(now)
        counts = Counter((a.name, a.severity) for a in alerts)
        gauge = self._hub.metrics.alerts_firing
        for name, severity in self._series - counts.keys():
            gauge.remove(name, severity)
        for (name, severity), count in counts.items():
            gauge.labels(alertname=name, severity=severity).set(count)
        self._series = set(counts)

    def _transitions(self, alerts: tuple[FiringAlert, ...]) -> None:
        current = {alert_key(a): a for a in alerts}
        previous = set(self._state.get("firing", []))
        for key in sorted(current.keys() - previous):
            alert = current[key]
            self._hub.record("alert.firing", self.name,
                             f"alert {alert.name} ({alert.severity}) is firing",
                             evidence={"labels": dict(alert.labels), "starts_at": alert.starts_at},
                             severity="warning")
        for key in sorted(previous - current.keys()):
            self._hub.record("alert.resolved", self.name,
                             f"alert {key} no longer fires (resolved or silenced)",
                             evidence={"key": key})
        self._state.update(firing=sorted(current))

