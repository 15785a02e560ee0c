"""The supervisor: one asyncio loop, one task per component, signals, reload and the watchdog.

Lifecycle of ``brace-watchdog run``::

    open state → start metrics exporter → build components → start each → READY=1
    → run: component tasks (deadline-scheduled cycles)
           + housekeeping (STATUS=, WATCHDOG=1, event-loop lag)
    → SIGHUP: reload config (invalid → keep the old one, log, count)
    → SIGTERM/SIGINT: STOPPING=1, cancel tasks, stop each component in its own try, exit

Signal handlers only set events; the loop acts on them. A component's cycle error is logged with
context and counted; only a :class:`~brace_watchdog.errors.FatalError` stops the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from functools import partial
from pathlib import Path

from brace_watchdog.actions.app_rollback import AppRollback
from brace_watchdog.actions.restore_test import RestoreTestScheduler
from brace_watchdog.component import Component
from brace_watchdog.config import Config, load_config
from brace_watchdog.control.server import ControlServer
from brace_watchdog.errors import ConfigError, FatalError, WatchdogError
from brace_watchdog.leader_election import LeaderElection, leadership_active, leadership_unused
from brace_watchdog.metrics import Metrics, MetricsServer, start_metrics_server
from brace_watchdog.monitors.alerts import AlertsMonitor
from brace_watchdog.monitors.backups import BackupsMonitor
from brace_watchdog.monitors.database import DatabaseMonitor
from brace_watchdog.monitors.health import HealthMonitor
from brace_watchdog.notify import WebhookNotifier
from brace_watchdog.runtime import Hub, Notifier
from brace_watchdog.state import StateStore
from brace_watchdog.systemd import SystemdNotify

__all__ = ["Supervisor", "build_components"]

log = logging.getLogger("brace_watchdog.daemon")

ComponentFactory = Callable[[Hub], list[Component]]
HOUSEKEEPING_SECONDS = 5.0  # STATUS= and loop-lag cadence; watchdog pings may need it faster
STATE_FLUSH_SECONDS = 1.0  # how often writes queued by an unavailable state store are retried


def build_components(hub: Hub) -> list[Component]:
    """The production set of components, chosen by configuration."""
    config = hub.config
    components: list[Component] = []
    if leadership_active(config):  # first: it decides whether the others may act
        components.append(LeaderElection(hub))
    elif unused := leadership_unused(config):
        hub.record("leadership.unused", "daemon", unused, severity="warning")
    components += [HealthMonitor(hub), BackupsMonitor(hub)]
    if config.alerts.alertmanager_url:
        components.append(AlertsMonitor(hub))
    if config.database.enabled:
        components.append(DatabaseMonitor(hub))
    if config.restore_test.enabled:
        components.append(RestoreTestScheduler(hub))
    if config.rollback.enabled:
        components.append(AppRollback(hub))
    components.append(ControlServer(hub))
    return components


class Supervisor:
    """Owns the hub and the component tasks for one run of the daemon."""

    def __init__(self, config: Config, *, factory: ComponentFactory = build_components,
                 notify: SystemdNotify | None = None, metrics: Metrics | None = None,
                 config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path or config.source
        self.factory = factory
        self.notify = notify or SystemdNotify()
        self.metrics = metrics or Metrics()
        self.hub: Hub | None = None
        self.components: list[Component] = []
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._fatal: BaseException | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._server: MetricsServer | None = None

    # -- entry point -----------------------------------------------------------------------
    async def run(self) -> int:
        """Run until SIGTERM/SIGINT or a fatal error; return the process exit code."""
        self._install_signal_handlers()
        try:
            await self._start()
            while not self._stop.is_set():
                await self._wait_for_signal()
                if self._reload.is_set() and not self._stop.is_set():
                    self._reload.clear()
                    self.reload()
        except FatalError as exc:
            self._fatal = exc
        finally:
            await self._shutdown()
        if self._fatal is not None:
            log.error("fatal: %s", self._fatal)
            return 1
        return 0

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    async def _wait_for_signal(self) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        reload = asyncio.ensure_future(self._reload.wait())
        try:
            await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            reload.cancel()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    # -- start and stop --------------------------------------------------------------------
    async def _start(self) -> None:
        store = StateStore(self.config.daemon.state_path).open()
        self.hub = hub = Hub(config=self.config, store=store, metrics=self.metrics)
        hub.notifier = _build_notifier(hub)
        self._server = _start_exporter(self.metrics, self.config)
        self.components = self.factory(hub)
        for component in self.components:
            hub.components[component.name] = component
            await self._start_component(component)
            hub.progress.register(component.name, component.progress_deadline())
        names = ", ".join(c.name for c in self.components)
        hub.record("daemon.started", "daemon", f"started with {len(self.components)} "
                   f"components: {names}",
                   evidence={"config": str(self.config_path),
                             "dry_run": self.config.daemon.dry_run})
        self._tasks = [asyncio.create_task(self._run_component(c), name=f"component:{c.name}")
                       for c in self.components]
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        self._tasks.append(asyncio.create_task(self._flush_state(), name="state-flush"))
        self.notify.ready(hub.status_line() or "started")

    async def _start_component(self, component: Component) -> None:
        """Start one component; only a FatalError aborts start-up, others are logged and counted."""
        try:
            await component.start()
        except FatalError:
            raise
        except Exception as exc:
            self._cycle_failed(component, exc)

    async def _shutdown(self) -> None:
        self.notify.stopping()
        log.info("stopping")
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.config.daemon.shutdown_timeout_seconds / 2)
        for component in reversed(self.components):
            try:
                await asyncio.wait_for(component.stop(), timeout=5)
            except Exception:
                log.exception("component %s failed to stop cleanly", component.name)
        if self.hub is not None:
            with contextlib.suppress(Exception):
                self.hub.record("daemon.stopped", "daemon", "stopped")
            self.hub.store.close()
        if self._server is not None:
            self._server.stop()
        self.notify.close()

    # -- component loop ----------------------------------------------------------------------
    async def _run_component(self, component: Component) -> None:
        """Cycle on a deadline schedule (a woken cycle in between keeps it); survive errors;
        stop the daemon on a FatalError."""
        loop = asyncio.get_running_loop()
        next_run = loop.time()
        overrunning = woken = False
        while True:
            started = loop.time()
            try:
                self._cycle_done(component, await component.cycle(), loop.time() - started)
            except asyncio.CancelledError:
                raise
            except FatalError as exc:
                self._fatal = exc
                self._stop.set()
                return
            except Exception as exc:
                self._cycle_failed(component, exc)
            assert self.hub is not None
            self.hub.progress.beat(component.name)
            if not woken:
                next_run, overrunning = self._next_run(component, next_run, overrunning)
            woken = await component.pause(max(0.0, next_run - loop.time()))

    def _next_run(self, component: Component, next_run: float,
                  overrunning: bool) -> tuple[float, bool]:
        """The next scheduled cycle's start after a scheduled cycle; an overrun is counted
        (and logged once per episode) and the schedule restarts from now."""
        next_run += component.interval()
        now = asyncio.get_running_loop().time()
        if next_run < now:
            self.metrics.component_overruns.labels(component=component.name).inc()
            if not overrunning:  # once per episode; the counter counts every overrun
                log.warning("%s: cycle overran its %.1fs interval by %.1fs (further "
                            "overruns are counted, not logged, until it keeps time again)",
                            component.name, component.interval(), now - next_run)
            return now, True
        if overrunning:
            log.info("%s: cycles keep their %.1fs interval again", component.name,
                     component.interval())
        return next_run, False

    def _cycle_done(self, component: Component, status: str, duration: float) -> None:
        assert self.hub is not None
        now, name = self.hub.clock(), component.name
        self.metrics.component_up.labels(component=name).set(1)
        self.metrics.component_last_run.labels(component=name).set(now)
        self.metrics.component_last_success.labels(component=name).set(now)
        self.metrics.component_cycle_seconds.labels(component=name).set(duration)
        self.hub.set_status(name, status)
        log.debug("%s: %s", name, status)

    def _cycle_failed(self, component: Component, exc: Exception) -> None:
        assert self.hub is not None
        name = component.name
        self.metrics.component_up.labels(component=name).set(0)
        self.metrics.component_last_run.labels(component=name).set(self.hub.clock())
        self.metrics.component_errors.labels(component=name).inc()
        self.hub.set_status(name, f"error: {exc}"[:120])
        log.error("%s: cycle failed: %s", name, exc, exc_info=not _expected(exc))

    # -- housekeeping: STATUS=, watchdog pings, loop lag -----------------------------------------
    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.notify.watchdog_interval
        period = min(HOUSEKEEPING_SECONDS, interval) if interval else HOUSEKEEPING_SECONDS
        last_ping = 0.0
        while True:
            expected = loop.time() + period
            await asyncio.sleep(period)
            self.metrics.loop_lag.set(max(0.0, loop.time() - expected))
            assert self.hub is not None
            healthy = self._watchdog_healthy()
            if interval and healthy and loop.time() - last_ping >= interval * 0.95:
                self.notify.watchdog()
                last_ping = loop.time()
            self.notify.status(self.hub.status_line())

    async def _flush_state(self) -> None:
        """Retry the writes an unavailable state store queued; a failure here is never fatal.

        Sleeps until a write fails (``hub.store_trouble``, called from any thread), then flushes
        every ``STATE_FLUSH_SECONDS`` until the store is writable again: an idle daemon is not
        woken once a second for nothing.
        """
        assert self.hub is not None
        hub, trouble = self.hub, asyncio.Event()
        hub.store_trouble = partial(_set_soon, asyncio.get_running_loop(), trouble)
        while True:
            await trouble.wait()
            self.notify.status(hub.status_line())
            while not await self._flush_once():
                pass
            # the failed flushes above signalled trouble too; what fails from now on signals anew
            trouble.clear()
            self.notify.status(hub.status_line())

    async def _flush_once(self) -> bool:
        """One flush after ``STATE_FLUSH_SECONDS``; True once the store is writable."""
        assert self.hub is not None
        await asyncio.sleep(STATE_FLUSH_SECONDS)
        try:
            return self.hub.flush_store().writable
        except WatchdogError as exc:
            log.error("state store flush failed: %s", exc)
            return False

    def _watchdog_healthy(self) -> bool:
        assert self.hub is not None
        stalls = self.hub.progress.stalls()
        self.metrics.watchdog_healthy.set(0 if stalls else 1)
        for stall in stalls:
            log.error("watchdog pings withheld: %s made no progress for %.0fs (deadline %.0fs)",
                      stall.component, stall.silent_seconds, stall.deadline_seconds)
        return not stalls

    # -- reload ----------------------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read the config file; keep the running config when the new one is invalid."""
        assert self.hub is not None
        self.notify.reloading()
        try:
            if self.config_path is None:
                raise ConfigError(["no config file to reload from"])
            new = load_config(self.config_path)
        except ConfigError as exc:
            self.metrics.config_reloads.labels(result="failure").inc()
            self.hub.record("config.reload_failed", "daemon", "reload refused, keeping the "
                            "running config: " + "; ".join(exc.problems), severity="error",
                            evidence={"problems": exc.problems})
            self.notify.ready(self.hub.status_line())
            return False
        for note in _restart_only_changes(self.config, new):
            log.warning("reload: %s changed; takes effect after a restart", note)
        self.config = self.hub.config = new
        for component in self.components:
            component.reconfigure(new)
            self.hub.progress.register(component.name, component.progress_deadline())
        self.metrics.dry_run.set(1 if new.daemon.dry_run else 0)
        self.metrics.config_reloads.labels(result="success").inc()
        self.hub.record("config.reloaded", "daemon",
                        f"configuration reloaded from {self.config_path}")
        self.notify.ready(self.hub.status_line())
        return True


def _restart_only_changes(old: Config, new: Config) -> list[str]:
    pairs = {"daemon.state_path": (old.daemon.state_path, new.daemon.state_path),
             "metrics.listen": (old.metrics.listen, new.metrics.listen),
             "control.socket": (old.control.socket, new.control.socket),
             # components are chosen at start-up (build_components)
             "alerts.alertmanager_url (on/off)": (bool(old.alerts.alertmanager_url),
                                                  bool(new.alerts.alertmanager_url)),
             "database.dsn (on/off)": (old.database.enabled, new.database.enabled),
             "restore_test.enabled": (old.restore_test.enabled, new.restore_test.enabled),
             "rollback.enabled": (old.rollback.enabled, new.rollback.enabled),
             "leadership": (old.leadership, new.leadership)}
    return [key for key, (a, b) in pairs.items() if a != b]


def _set_soon(loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
    """Set ``event`` on ``loop`` from any thread (nothing once the loop is closed)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(event.set)


def _expected(exc: Exception) -> bool:
    return isinstance(exc, WatchdogError)


def _start_exporter(metrics: Metrics, config: Config) -> MetricsServer:
    try:
        return start_metrics_server(metrics, config.metrics.host, config.metrics.port)
    except OSError as exc:
        raise FatalError(f"cannot listen for metrics on {config.metrics.listen}: {exc.strerror}; "
                         "is another brace-watchdog running? change [metrics] listen") from None


def _build_notifier(hub: Hub) -> Notifier:
    if not hub.config.notify.webhook_urls:
        return hub.notifier
    return WebhookNotifier(hub.config.notify, hub.metrics)

