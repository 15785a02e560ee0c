"""Every Prometheus metric brace-watchdog exports, defined in one place, and the exporter.

``Metrics(registry)`` takes its registry as a parameter, so each test builds its own
``CollectorRegistry()`` and asserts with ``registry.get_sample_value(name, labels)``. Values that
only make sense at scrape time (ages) are computed then via ``Gauge.set_function``. Names follow
the Prometheus conventions and pass ``promtool check metrics``. Secrets never become label values.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)

from brace_watchdog import __version__

__all__ = ["Metrics", "MetricsServer", "start_metrics_server"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """All metric objects, grouped by the component that feeds them."""

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 clock: Callable[[], float] = time.time, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.clock = clock
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self._daemon()
        self._components()
        self._state_store()
        self._leadership()
        self._health()
        self._backups()
        self._alerts()
        self._database()
        self._restore_test()
        self._rollback()
        self._control()

    def _c(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def _g(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry)

    def _h(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Histogram:
        return Histogram(name, doc, labels, buckets=LATENCY_BUCKETS, registry=self.registry)

    def _daemon(self) -> None:
        self.info = Info("brace_watchdog", "brace-watchdog build information.",
                         registry=self.registry)
        self.info.info({"version": __version__})
        self.dry_run = self._g("brace_watchdog_dry_run", "1 when [daemon] dry_run is on.")
        self.watchdog_healthy = self._g(
            "brace_watchdog_watchdog_healthy",
            "1 while every component makes progress within its deadline (systemd pings flow).")
        self.config_reloads = self._c(
            "brace_watchdog_config_reloads", "SIGHUP reloads by result.", ("result",))
        self.loop_lag = self._g(
            "brace_watchdog_event_loop_lag_seconds",
            "How late the event loop ran a timer it was asked to run (last measurement).")
        self.events = self._c(
            "brace_watchdog_events", "Events written to the state store.", ("kind",))
        self.notifications = self._c(
            "brace_watchdog_notifications", "Webhook notifications by result.", ("result",))

    def _components(self) -> None:
        self.component_up = self._g(
            "brace_watchdog_component_up", "1 when the component's last cycle succeeded.",
            ("component",))
        self.component_last_run = self._g(
            "brace_watchdog_component_last_run_timestamp_seconds",
            "Unix time the component last finished a cycle.", ("component",))
        self.component_last_success = self._g(
            "brace_watchdog_component_last_success_timestamp_seconds",
            "Unix time the component last finished a cycle without error.", ("component",))
        self.component_errors = self._c(
            "brace_watchdog_component_errors", "Cycles that ended in an error.", ("component",))
        self.component_cycle_seconds = self._g(
            "brace_watchdog_component_cycle_duration_seconds",
            "How long the component's last cycle took.", ("component",))
        self.component_overruns = self._c(
            "brace_watchdog_component_overruns",
            "Cycles that took longer than the component's interval.", ("component",))

    def _state_store(self) -> None:
        self.state_store_up = self._g(
            "brace_watchdog_state_store_up",
            "1 while state store writes land; 0 while it is locked or its disk is full.")
        self.state_pending_writes = self._g(
            "brace_watchdog_state_pending_writes",
            "Writes queued in memory until the state store accepts them again.")
        self.state_write_failures = self._c(
            "brace_watchdog_state_write_failures",
            "State store writes that failed for a reason that may pass.", ("reason",))
        self.state_writes_dropped = self._c(
            "brace_watchdog_state_writes_dropped",
            "Queued state store writes given up (queue full, or a write that cannot succeed).")

    def _leadership(self) -> None:
        self.leader = self._g(
            "brace_watchdog_leader",
            "1 while this instance holds the leadership lock and acts ([leadership]); 1 when "
            "leadership is off (a single instance always acts).")
        self.leader.set(1)
        self.leadership_changes = self._c(
            "brace_watchdog_leadership_changes",
            "Times this instance acquired or lost the leadership lock.", ("change",))
        self.actions_adopted = self._c(
            "brace_watchdog_actions_adopted",
            "Actions another host's leader left open in the shared journal that this instance "
            "adopted on taking over ([leadership]).", ("kind",))
        self.shared_journal_dropped = self._c(
            "brace_watchdog_shared_journal_dropped",
            "Shared-journal entries dropped unwritten: more than 1000 waited, even folded "
            "([leadership]); the local journal keeps them.")

    def _health(self) -> None:
        self.health_up = self._g("brace_health_up", "1 when the last probe of the target was ok.",
                                 ("target",))
        self.health_status_code = self._g(
            "brace_health_status_code", "HTTP status of the last probe (0 when none).", ("target",))
        self.health_latency = self._h(
            "brace_health_probe_duration_seconds", "Probe latency.", ("target",))
        self.health_probes = self._c(
            "brace_health_probes", "Probes by classified result.", ("target", "result"))
        self.health_last_probe = self._g(
            "brace_health_last_probe_timestamp_seconds", "Unix time of the last probe.",
            ("target",))

    def _backups(self) -> None:
        self.backup_newest_timestamp = self._g(
            "brace_backup_newest_timestamp_seconds", "Unix time of the newest valid backup.")
        self.backup_newest_age = self._g(
            "brace_backup_newest_age_seconds",
            "Age of the newest valid backup at scrape time (+Inf when there is none).")
        self.backup_newest_age.set(float("inf"))
        self.backup_newest_size = self._g(
            "brace_backup_newest_size_bytes", "Size of the newest valid backup.")
        self.backup_files = self._g(
            "brace_backup_files", "Backup files found, by validity.", ("validity",))
        self.backup_fresh = self._g(
            "brace_backup_fresh", "1 when the newest valid backup is within max_age_hours.")
        self.backup_max_age = self._g(
            "brace_backup_max_age_seconds", "The configured freshness threshold.")
        self.backup_scan_duration = self._g(
            "brace_backup_scan_duration_seconds", "How long the last backup folder scan took.")
        self.backup_scan_up = self._g(
            "brace_backup_scan_up", "1 when the last scan could read the backups folder; 0 when "
            "it is missing, not a folder or unreadable.")

    def _alerts(self) -> None:
        self.alertmanager_up = self._g(
            "brace_alertmanager_up", "1 when the last Alertmanager poll succeeded.")
        self.alerts_stale = self._g(
            "brace_alerts_stale",
            "1 while the known alerts are stale (Alertmanager down or not polled); stale alerts "
            "never trigger actions.")
        self.alertmanager_last_success = self._g(
            "brace_alertmanager_last_success_timestamp_seconds",
            "Unix time of the last successful Alertmanager poll.")
        self.alerts_firing = self._g(
            "brace_alerts_firing", "Active, unsilenced alerts matching the configured matchers.",
            ("alertname", "severity"))

    def _database(self) -> None:
        self.database_up = self._g("brace_database_up", "1 when select 1 succeeded.")
        self.database_latency = self._h(
            "brace_database_query_duration_seconds", "Latency of the health query.")
        self.database_revision = Info(
            "brace_database_alembic_revision", "The production database's Alembic revision.",
            registry=self.registry)
        self.database_failures = self._c(
            "brace_database_failures",
            "Failed checks by kind (authentication, refused, timeout, other).", ("kind",))

    def _restore_test(self) -> None:
        self.restore_running = self._g(
            "brace_restore_test_running", "1 while a restore test runs.")
        self.restore_stage = self._g(
            "brace_restore_test_stage",
            "1 for the stage the running restore test is in, 0 for the others.", ("stage",))
        self.restore_last_run = self._g(
            "brace_restore_test_last_run_timestamp_seconds", "Unix time the last test finished.")
        self.restore_last_success = self._g(
            "brace_restore_test_last_success_timestamp_seconds",
            "Unix time the last passing test finished.")
        self.restore_success = self._g(
            "brace_restore_test_success", "1 when the last restore test passed.")
        self.restore_duration = self._g(
            "brace_restore_test_duration_seconds", "Duration of the last restore test.")
        self.restore_stage_duration = self._g(
            "brace_restore_test_stage_duration_seconds",
            "Duration of each stage of the last restore test.", ("stage",))
        self.restore_tables = self._g(
            "brace_restore_test_restored_tables", "Tables restored by the last test.")
        self.restore_rto_exceeded = self._g(
            "brace_restore_test_rto_exceeded", "1 when the last passing test was slower than RTO.")
        self.restore_runs = self._c(
            "brace_restore_test_runs", "Restore tests by result.", ("result",))

    def _rollback(self) -> None:
        self.rollbacks = self._c(
            "brace_rollbacks", "App rollbacks by result (succeeded, failed, outage, interrupted, "
            "dry_run).", ("result",))
        self.rollback_last = self._g(
            "brace_rollback_last_timestamp_seconds", "Unix time of the last rollback action.")
        self.automation_frozen = self._g(
            "brace_automation_frozen", "1 while automatic actions are frozen.")
        self.escalation_pending = self._g(
            "brace_escalation_pending", "1 while an escalation waits for an operator.")
        self.escalations = self._c(
            "brace_escalations", "Escalations to a human, by reason.", ("reason",))
        self.release_info = self._g(
            "brace_release_info", "The current and known-good release (value 1).",
            ("role", "fingerprint"))
        self.deploys = self._c("brace_deploys", "Deploys detected, by what changed.", ("change",))
        self.swarm_rollbacks = self._c(
            "brace_swarm_rollbacks", "Updates Swarm rolled back itself (failure_action: "
            "rollback), per service.", ("service",))
        self.known_good_images = self._g(
            "brace_known_good_images",
            "Images of the kept known-good releases: present, archived_only, missing.",
            ("state",))
        self.known_good_images_held = self._g(
            "brace_known_good_images_held",
            "1 while this node holds every image of the kept known-good releases, pinned.")
        self.known_good_images_loaded = self._c(
            "brace_known_good_images_loaded",
            "Known-good images loaded back from this node's archive into its engine.")
        self.service_up = self._g(
            "brace_service_up", "1 while the engine shows the service's containers live "
            "(running, not restarting, not unhealthy).", ("service",))
        self.rollback_time_to_action = self._g(
            "brace_rollback_time_to_action_seconds",
            "Last rollback: time from first failing sample to the action starting.")
        self.rollback_time_to_recovery = self._g(
            "brace_rollback_time_to_recovery_seconds",
            "Last rollback: time from first failing sample to verified recovery.")

    def _control(self) -> None:
        self.control_requests = self._c(
            "brace_control_requests", "Control socket requests by command and outcome.",
            ("command", "outcome"))
        self.gated_actions = self._c(
            "brace_gated_actions", "Operator-approved actions by action and result.",
            ("action", "result"))


# A copy of prometheus_client 0.26's _SilentHandler: private (not in exposition.__all__); its one
# public user, start_wsgi_server, runs serve_forever's polling (see _ExporterServer).
class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class _ExporterServer(ThreadingMixIn, WSGIServer):
    """prometheus_client's threaded WSGI exporter, served without ``serve_forever``'s polling.

    ``serve_forever`` wakes its thread every 0.5 s to look for a shutdown request: two wakeups a
    second for the daemon's whole life, a fifth of its idle CPU (``bench/bench_footprint.py``).
    Here the thread sleeps in ``select`` until a scrape arrives or :meth:`stop` writes to a pipe.
    """

    daemon_threads = True
    timeout = 0.0  # handle_request() after select() said ready: never blocks, even on a reset

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._wake_r, self._wake_w = socket.socketpair()  # first: a failed bind closes them
        super().__init__(*args, **kwargs)

    def serve_until_stopped(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in selector.select()}
                if self._wake_r in ready:
                    return
                self.handle_request()

    def stop(self) -> None:
        self._wake_w.send(b"x")

    def server_close(self) -> None:
        super().server_close()
        self._wake_r.close()
        self._wake_w.close()


class MetricsServer:
    """The exporter's HTTP server (prometheus_client's WSGI app, in its own thread)."""

    def __init__(self, server: _ExporterServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.stop()
        self._thread.join(timeout=5)
        self._server.server_close()


def start_metrics_server(metrics: Metrics, host: str, port: int) -> MetricsServer:
    """Serve ``metrics`` on ``host:port`` (IPv4 or IPv6 by the address); raises OSError."""
    # prometheus_client's private _get_best_family, copied for the same reason as _QuietHandler
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                  flags=socket.AI_PASSIVE)[0]
    server_class = type("_Exporter", (_ExporterServer,), {"address_family": family})
    server: _ExporterServer = make_server(str(address[0]), port, make_wsgi_app(metrics.registry),
                                          server_class, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_until_stopped, name="metrics-exporter",
                              daemon=True)
    thread.start()
    return MetricsServer(server, thread)
