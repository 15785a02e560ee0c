"""Unit tests: the restore-test scheduler looks again within a second until backups are scanned."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from brace_watchdog.actions.restore_test import RestoreTestScheduler
from brace_watchdog.config import parse_config
from brace_watchdog.metrics import Metrics
from brace_watchdog.observations import BackupScan
from brace_watchdog.runtime import Hub
from brace_watchdog.state import StateStore


def test_first_cycles_wait_for_the_first_backup_scan_not_a_whole_interval() -> None:
    hub = Hub(config=parse_config({}), store=StateStore(":memory:").open(),
              metrics=Metrics(CollectorRegistry(), process=False))
    scheduler = RestoreTestScheduler(hub, check_interval=30.0)
    deadline = scheduler.progress_deadline()
    assert scheduler.interval() == 1.0
    hub.observations.backups = BackupScan(scanned_at=0.0, files=(), max_age_seconds=3600.0)
    assert scheduler.interval() == 30.0
    assert deadline == scheduler.progress_deadline() == 90.0  # never the 1 s interval's
    hub.store.close()
