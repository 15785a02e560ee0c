"""The whole daemon, every component on, and the fault matrix it survives (docs/faults.md).

One ``brace-watchdog run`` process with health probes and rollback against a real compose stack,
backups with a real ``pg_dump -Fc`` dump, alerts from a real Alertmanager, the database monitor
and local restore tests against a real PostgreSQL, and webhooks to a real local receiver. It
runs several cycles of each, rolls a bad deploy back, then takes the faults one after another
on the same process. After each: it still probes and serves metrics, the watchdog pings flow,
every event stored before is still there and every counted event is stored (nothing lost), and
the one rollback stays the only action (nothing repeated).

What the test breaks sits between the daemon and the real thing: the backend's health endpoint
behind a TCP proxy that hangs, resets or answers garbage (:mod:`tests.support.tcp_fault`), the
docker engine behind a unix socket the test cuts (the shared engine is never stopped), the state
file on a small tmpfs the test fills.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.alertmanager import Alertmanager, start_alertmanager
from tests.support.daemon import Daemon
from tests.support.docker_proxy import ThreadedDockerProxy, threaded_docker_proxy
from tests.support.faults import fill_up, hold_write_lock, small_tmpfs
from tests.support.pg import DEFAULT_HBA, PG_BIN, PgCluster, make_brace_dump
from tests.support.stack import Stack, wait_for_event, write_daemon_config
from tests.support.tcp_fault import FaultProxy, Mode, fault_proxy
from tests.support.webhooks import Receiver, webhook_receiver

pytestmark = pytest.mark.docker

COMPONENTS = ("health", "backups", "alerts", "database", "restore_test", "rollback", "control")
FAST = ("health", "backups", "alerts", "database", "rollback")  # cycles of at most 0.5 s
LOCK_SECONDS = 30.0
OUTAGE_SECONDS = 30.0
PROBES = "brace_health_probes_total{"
ROLLBACK_UP = 'brace_watchdog_component_up{component="rollback"}'


def _env(am: Alertmanager, pg: PgCluster, dbname: str, hooks: Receiver) -> dict[str, str]:
    pre = "BRACE_WATCHDOG__"
    return {f"{pre}DAEMON__LOG_LEVEL": "INFO",
            "BRACE_WATCHDOG_WEBHOOK_URL": hooks.url().reveal(),
            f"{pre}BACKUPS__INTERVAL_SECONDS": "0.5", f"{pre}BACKUPS__SETTLE_SECONDS": "2",
            f"{pre}ALERTS__ALERTMANAGER_URL": am.url, f"{pre}ALERTS__INTERVAL_SECONDS": "0.5",
            f"{pre}ALERTS__TIMEOUT_SECONDS": "2",
            "BRACE_WATCHDOG_DB_DSN": pg.dsn(dbname=dbname),
            f"{pre}DATABASE__INTERVAL_SECONDS": "0.5", f"{pre}DATABASE__TIMEOUT_SECONDS": "2",
            f"{pre}RESTORE_TEST__ENABLED": "true", f"{pre}RESTORE_TEST__BACKEND": "local",
            f"{pre}RESTORE_TEST__LOCAL_BIN_DIR": str(PG_BIN),
            f"{pre}RESTORE_TEST__INTERVAL_HOURS": "0.003",
            f"{pre}RESTORE_TEST__TIMEOUT_SECONDS": "120"}


@contextmanager
def _breakable(stack: Stack, tmp_path: Path) -> Iterator[tuple[dict[str, str], FaultProxy,
                                                               ThreadedDockerProxy, Path]]:
    """What the test breaks, wired into the daemon's environment: the backend's health
    endpoint behind a proxy that can reset or answer garbage, the engine behind a socket the
    test can cut (the shared engine is never stopped), the state file on a small tmpfs."""
    backend = urlsplit(stack.backend_url)
    assert backend.hostname is not None and backend.port is not None
    with ExitStack() as stack_of:
        health = stack_of.enter_context(fault_proxy((backend.hostname, backend.port)))
        engine = stack_of.enter_context(threaded_docker_proxy())
        statefs = stack_of.enter_context(small_tmpfs(tmp_path / "statefs", "16m"))
        env = {"BRACE_WATCHDOG__HEALTH__URL": health.url(backend.path or "/"),
               "BRACE_WATCHDOG__DAEMON__STATE_PATH": json.dumps(str(statefs / "state.db")),
               "DOCKER_HOST": engine.url}
        yield env, health, engine, statefs


def _until(daemon: Daemon, what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s\n" + \
            daemon.output()[-4000:]
        daemon.messages += daemon.drain(0.3)


def _is(daemon: Daemon, metric: str, value: float) -> Callable[[], bool]:
    return lambda: daemon.sample(metric) == value


def _still_working(daemon: Daemon, seconds: float = 2.5) -> list[str]:
    """Probes go on, metrics answer, watchdog pings flow; the notify messages seen."""
    before = daemon.total(PROBES)
    seen = daemon.drain(seconds)
    assert daemon.total(PROBES) > before
    assert "WATCHDOG=1" in seen, seen
    assert daemon.sample("brace_watchdog_watchdog_healthy") == 1.0
    return seen


def _rows(state: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(state) as conn:
        return list(conn.execute(sql, params))


def test_whole_daemon_every_component_on_through_the_fault_matrix(
        stack: Stack, pg_cluster: PgCluster, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    name = datetime.now(UTC).strftime("brace_%Y%m%d_%H%M%S.dump")
    dump = make_brace_dump(pg_cluster, backups / name)
    stack.deploy("v1")
    config = write_daemon_config(stack, tmp_path)
    am = start_alertmanager(tmp_path / "am")
    am.post(alertname="BraceDiskSpace", severity="warning")
    with webhook_receiver() as hooks, _breakable(stack, tmp_path) as (env, health, engine, fs):
        daemon = Daemon(tmp_path, config=config,
                        env={**_env(am, pg_cluster, dump.dbname, hooks), **env})
        try:
            daemon.wait_for("READY=1", timeout=60)
            _every_component_cycles(daemon, stack, hooks)
            with _nothing_lost_nothing_repeated(daemon):
                am = _alertmanager_down(daemon, am, tmp_path)
            with _nothing_lost_nothing_repeated(daemon):
                _postgres_down_then_up(daemon, pg_cluster)
            with _nothing_lost_nothing_repeated(daemon):
                _postgres_refuses_auth(daemon, pg_cluster)
            with _nothing_lost_nothing_repeated(daemon):
                _health_endpoint_hangs(daemon, health)
            with _nothing_lost_nothing_repeated(daemon):
                _health_endpoint_resets(daemon, health)
            with _nothing_lost_nothing_repeated(daemon):
                _health_endpoint_answers_garbage(daemon, health)
            with _nothing_lost_nothing_repeated(daemon):
                _state_file_locked(daemon)
            with _nothing_lost_nothing_repeated(daemon):
                _state_disk_full(daemon, fs, health)
            with _nothing_lost_nothing_repeated(daemon):
                _engine_cut(daemon, engine)
            with _nothing_lost_nothing_repeated(daemon):
                _backups_folder_gone(daemon, backups)
            with _nothing_lost_nothing_repeated(daemon):
                _dump_half_written_while_scanned(daemon, backups, dump.path)
        finally:
            daemon.close()
            am.stop()


def _every_component_cycles(daemon: Daemon, stack: Stack, hooks: Receiver) -> None:
    assert wait_for_event(daemon.state_path, ("release.known_good",), 60), daemon.output()
    stack.deploy("v2")
    assert wait_for_event(daemon.state_path, ("rollback.succeeded",), 90), daemon.output()
    _until(daemon, "two restore tests passed",
           lambda: (daemon.sample('brace_restore_test_runs_total{result="passed"}') or 0) >= 2,
           timeout=120)
    first = daemon.scrape()
    seen = _still_working(daemon, 3.0)
    for component in COMPONENTS:
        label = f'{{component="{component}"}}'
        assert daemon.sample(f"brace_watchdog_component_up{label}") == 1.0, component
        metric = f"brace_watchdog_component_last_run_timestamp_seconds{label}"
        if component in FAST:  # restore tests: two passed runs above; control: 30 s cycles
            assert daemon.sample(metric) > _value(first, metric), component
    for metric, value in (('brace_health_up{target="backend"}', 1.0), ("brace_backup_fresh", 1.0),
                          ("brace_alertmanager_up", 1.0), ("brace_alerts_stale", 0.0),
                          ('brace_alerts_firing{alertname="BraceDiskSpace",severity="warning"}',
                           1.0),
                          ("brace_database_up", 1.0), ("brace_restore_test_success", 1.0),
                          ('brace_rollbacks_total{result="succeeded"}', 1.0),
                          ("brace_watchdog_state_store_up", 1.0)):
        assert daemon.sample(metric) == value, metric
    status = next(m for m in reversed(seen) if m.startswith("STATUS="))
    # one line, components sorted, cut to systemd's length with an ellipsis
    assert status.startswith("STATUS=alerts: 1 firing: BraceDiskSpace | backups: newest "), status
    assert "control: " in status and "error" not in status, status
    assert stack.running_images()["backend"] == stack.images["v1"]
    events = {b.get("event") for b in hooks.bodies}
    assert {"rollback.started", "rollback.succeeded"} <= events, hooks.bodies


def _value(scrape: str, metric: str) -> float:
    line = next(x for x in scrape.splitlines() if x.startswith(metric + " "))
    return float(line.rsplit(" ", 1)[1])


def _alertmanager_down(daemon: Daemon, am: Alertmanager, tmp_path: Path) -> Alertmanager:
    port = int(am.url.rsplit(":", 1)[1])
    am.stop()
    _until(daemon, "alerts stale", _is(daemon, "brace_alerts_stale", 1.0))
    assert daemon.sample("brace_alertmanager_up") == 0.0
    _still_working(daemon)
    restarted = start_alertmanager(tmp_path / "am2", port=port)
    _until(daemon, "alerts fresh again", _is(daemon, "brace_alerts_stale", 0.0))
    return restarted


def _postgres_down_then_up(daemon: Daemon, pg: PgCluster) -> None:
    pg.pg_ctl("stop", "-m", "fast", "-w")
    _until(daemon, "database down", _is(daemon, "brace_database_up", 0.0))
    _still_working(daemon)
    pg.pg_ctl("start", "-w", "-t", "60", "-l", str(pg.log_file), "-o", f"-p {pg.port}")
    _until(daemon, "database up again", _is(daemon, "brace_database_up", 1.0))


def _postgres_refuses_auth(daemon: Daemon, pg: PgCluster) -> None:
    pg.write_hba(["host all all 127.0.0.1/32 reject"])
    pg.reload()
    _until(daemon, "authentication refused", lambda: (daemon.sample(
        'brace_database_failures_total{kind="authentication"}') or 0) >= 1)
    assert daemon.sample("brace_database_up") == 0.0
    _still_working(daemon)
    pg.write_hba(DEFAULT_HBA)
    pg.reload()
    _until(daemon, "database up after pg_hba fixed", _is(daemon, "brace_database_up", 1.0))


def _health_endpoint_fails(daemon: Daemon, health: FaultProxy, mode: Mode, result: str,
                           detail: str) -> None:
    """The backend's health endpoint fails in ``mode`` (its backend itself still runs): probed
    as ``result`` with ``detail`` in the transition event; ok again afterwards."""
    since = time.time()
    errors = _backend_probes(daemon, result)
    health.switch(mode)
    _until(daemon, f"backend down ({mode})", _is(daemon, 'brace_health_up{target="backend"}', 0.0))
    _still_working(daemon)
    assert _backend_probes(daemon, result) > errors + 1
    health.switch("pass")
    _until(daemon, "backend up again", _is(daemon, 'brace_health_up{target="backend"}', 1.0))
    details = [json.loads(str(e[0]))["detail"] for e in _rows(
        daemon.state_path, "SELECT evidence FROM events WHERE kind = 'health.transition' AND "
        "ts >= ? AND json_extract(evidence, '$.to') = ?", since, result)]
    assert details and all(detail in d for d in details), details


def _backend_probes(daemon: Daemon, result: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in daemon.scrape().splitlines()
               if line.startswith(PROBES) and 'target="backend"' in line
               and f'result="{result}"' in line)


def _health_endpoint_hangs(daemon: Daemon, health: FaultProxy) -> None:
    _health_endpoint_fails(daemon, health, "hang", "timeout", "no answer within the timeout")


def _health_endpoint_resets(daemon: Daemon, health: FaultProxy) -> None:
    _health_endpoint_fails(daemon, health, "reset", "connection_error", "ConnectionResetError")


def _health_endpoint_answers_garbage(daemon: Daemon, health: FaultProxy) -> None:
    _health_endpoint_fails(daemon, health, "garbage", "connection_error",
                           "not an HTTP/1.x answer")


def _state_disk_full(daemon: Daemon, fs: Path, health: FaultProxy) -> None:
    """The state file's disk fills up while health changes (events to write): degraded, said in
    a metric and STATUS=; the queued events land once space returns."""
    filler = fill_up(fs)
    transitions = daemon.total('brace_watchdog_events_total{kind="health.transition"}')
    health.switch("reset")
    _until(daemon, "state store full", _is(daemon, "brace_watchdog_state_store_up", 0.0))
    health.switch("pass")
    seen = _still_working(daemon, 6.0)  # STATUS= goes out every 5 s
    assert any(m.startswith("STATUS=STATE STORE UNAVAILABLE (database or disk is full")
               for m in seen), seen
    assert (daemon.sample('brace_watchdog_state_write_failures_total{reason="full"}') or 0) > 0
    filler.unlink()
    _until(daemon, "state store writable", _is(daemon, "brace_watchdog_state_store_up", 1.0))
    assert daemon.sample("brace_watchdog_state_pending_writes") == 0.0
    assert daemon.total('brace_watchdog_events_total{kind="health.transition"}') >= transitions + 2


def _engine_cut(daemon: Daemon, engine: ThreadedDockerProxy) -> None:
    """The engine unreachable for 30 s while idle: the rollback component's cycles fail and say
    so, the rest goes on, no action is taken; back to normal once it answers."""
    engine.cut()
    _until(daemon, "rollback component down", _is(daemon, ROLLBACK_UP, 0.0))
    deadline = time.monotonic() + OUTAGE_SECONDS
    while time.monotonic() < deadline:
        _still_working(daemon, 2.0)
    assert (daemon.sample('brace_watchdog_component_errors_total{component="rollback"}')
            or 0) > 1
    engine.mend()
    _until(daemon, "rollback component up", _is(daemon, ROLLBACK_UP, 1.0))
    _still_working(daemon)


def _state_file_locked(daemon: Daemon) -> None:
    with hold_write_lock(daemon.state_path):
        _until(daemon, "state store unavailable",
               _is(daemon, "brace_watchdog_state_store_up", 0.0), timeout=LOCK_SECONDS)
        deadline = time.monotonic() + LOCK_SECONDS
        while time.monotonic() < deadline:
            _still_working(daemon, 2.0)
        assert daemon.sample("brace_watchdog_event_loop_lag_seconds") < 5.0  # type: ignore[operator]
    _until(daemon, "state store writable", _is(daemon, "brace_watchdog_state_store_up", 1.0))
    assert daemon.sample("brace_watchdog_state_pending_writes") == 0.0


def _backups_folder_gone(daemon: Daemon, backups: Path) -> None:
    aside = backups.with_name("backups.aside")
    backups.rename(aside)
    _until(daemon, "backups error", _is(daemon, "brace_backup_fresh", 0.0))
    seen = _still_working(daemon, 6.0)  # STATUS= goes out every 5 s
    assert any("backups: ERROR: backup directory" in m for m in seen), seen
    aside.rename(backups)
    _until(daemon, "backups fresh again", _is(daemon, "brace_backup_fresh", 1.0))


def _dump_half_written_while_scanned(daemon: Daemon, backups: Path, dump: Path) -> None:
    newest = daemon.sample("brace_backup_newest_timestamp_seconds")
    data = dump.read_bytes()
    later = backups / datetime.now(UTC).strftime("brace_%Y%m%d_%H%M%S.dump")
    assert later.name != dump.name
    with later.open("wb") as out:
        out.write(data[: len(data) // 2])
        out.flush()
        _still_working(daemon, 1.0)  # scanned while half-written: not the newest backup
        assert daemon.sample("brace_backup_newest_timestamp_seconds") == newest
        out.write(data[len(data) // 2:])
    _until(daemon, "the completed dump is the newest", lambda: (daemon.sample(
        "brace_backup_newest_timestamp_seconds") or 0) > (newest or 0))


def _events(daemon: Daemon) -> list[tuple[object, ...]]:
    return _rows(daemon.state_path, "SELECT id, kind, ts, message FROM events ORDER BY id")


def _all_stored(daemon: Daemon) -> bool:
    """Every event the daemon counted (``brace_watchdog_events_total``) is in the state file, and
    a restore result per completed restore test."""
    runs = daemon.total("brace_restore_test_runs_total{")
    if _rows(daemon.state_path, "SELECT count(*) FROM restore_results")[0][0] != runs:
        return False
    for line in daemon.scrape().splitlines():
        if line.startswith('brace_watchdog_events_total{kind="'):
            kind = line.split('"')[1]
            rows = _rows(daemon.state_path, "SELECT count(*) FROM events WHERE kind = ?", kind)
            if rows[0][0] != float(line.rsplit(" ", 1)[1]):
                return False
    return True


@contextmanager
def _nothing_lost_nothing_repeated(daemon: Daemon) -> Iterator[None]:
    """Around one fault: the events stored before are all still there, every counted event is
    stored, the one rollback stays the only action, and a restore result per completed run."""
    before = _events(daemon)
    actions = _rows(daemon.state_path, "SELECT id, kind, status FROM actions")
    yield
    _until(daemon, "every counted event and restore result stored",
           lambda: _all_stored(daemon), 15)
    assert _events(daemon)[:len(before)] == before
    assert _rows(daemon.state_path, "SELECT id, kind, status FROM actions") == actions
    assert [kind for _, kind, _ in actions] == ["rollback"]
