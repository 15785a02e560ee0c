"""Restore tests through the ``local`` backend: real pg_dump -Fc dumps, real throwaway clusters.

A module-scoped source cluster produces the dumps; each test restores one into a throwaway
cluster made by brace-watchdog (initdb/pg_ctl as user ``postgres``) and checks the result's
stage and message. Cancellation and orphan removal check that nothing is left in the temp dir.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from brace_watchdog.actions.restore_run import STAGES, RestoreResult, RestoreRun, server_factory
from brace_watchdog.actions.restore_test import (
    AlreadyRunning,
    RestoreTestScheduler,
    cli_restore_test,
)
from brace_watchdog.adapters.postgres import TEMPLATE_PREFIX, LocalServer, remove_local_orphans
from brace_watchdog.config import parse_config
from brace_watchdog.errors import RefusedError
from brace_watchdog.leader_election import LeaderElection
from brace_watchdog.leadership import LeadershipLostError
from brace_watchdog.observations import BackupFile, BackupScan
from brace_watchdog.runtime import Hub
from brace_watchdog.state import StateStore
from tests.integration.restore_fixtures import (
    brace_dump,
    leftovers,
    make_config,
    make_hub,
    others_alive,
    source_cluster,
)
from tests.support.pg import PG_BIN, BraceDump, PgCluster, make_brace_dump
from tests.support.pgwheel import PgInstall

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

TMP = Path(tempfile.gettempdir())


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    yield from source_cluster(tmp_path_factory)


@pytest.fixture(scope="module")
def good_dump(source: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return brace_dump(source, tmp_path_factory)


async def run_local(dump: Path, **restore: Any) -> RestoreResult:
    cfg = make_config(dump.parent, **restore).restore_test
    result = await RestoreRun(cfg, dump, server_factory(cfg)).execute()
    assert leftovers() == []
    return result


async def test_good_dump_passes_with_revision_and_counts(good_dump: Path) -> None:
    result = await run_local(good_dump, throwaway_settings=False)
    assert result.passed, result.message
    assert result.stage == "done"
    assert result.alembic_revision == "abc123"
    assert result.table_counts == {"public.alembic_version": 1, "public.users": 120,
                                   "public.orders": 120}
    assert result.pg_version.startswith("15.")
    assert result.backend == "local"
    assert result.dump_size == good_dump.stat().st_size
    assert set(result.stage_seconds) == {"checking", "starting", "restoring", "verifying",
                                         "cleaning"}
    assert not result.rto_exceeded


async def test_jobs_queries_freshness_and_rto_flag(good_dump: Path) -> None:
    result = await run_local(
        good_dump, jobs=2, rto_seconds=0.001,
        verify_queries=["select count(*) > 100 from users", "select 'yes'"],
        freshness_query="select max(created_at) from orders")
    assert result.passed, result.message
    assert result.rto_exceeded


async def test_not_a_dump_fails_at_checking(tmp_path: Path) -> None:
    bogus = tmp_path / "brace_20260101_000000.dump"
    bogus.write_text("-- plain SQL, not a custom-format archive\n")
    result = await run_local(bogus)
    assert (result.passed, result.stage) == (False, "checking")
    assert "does not start with PGDMP" in result.message


async def test_truncated_header_fails_at_checking(good_dump: Path, tmp_path: Path) -> None:
    cut = tmp_path / good_dump.name
    cut.write_bytes(good_dump.read_bytes()[:40])
    result = await run_local(cut)
    assert (result.passed, result.stage) == (False, "checking")
    assert "truncated" in result.message


async def test_truncated_body_fails_at_restoring(good_dump: Path, tmp_path: Path) -> None:
    data = good_dump.read_bytes()
    cut = tmp_path / good_dump.name
    cut.write_bytes(data[: len(data) * 2 // 3])
    result = await run_local(cut)
    assert (result.passed, result.stage) == (False, "restoring")
    assert "pg_restore" in result.message


@pytest.mark.parametrize(("extra", "alembic_rows", "expected"), [
    ("drop table alembic_version;", 1, "alembic_version is missing"),
    ("", 0, "alembic_version is empty"),
])
async def test_alembic_problems_fail_at_verifying(source: PgCluster, tmp_path: Path, extra: str,
                                                  alembic_rows: int, expected: str) -> None:
    dump = make_brace_dump(source, tmp_path / "brace_20260101_000000.dump", rows=5,
                           alembic_rows=alembic_rows, extra_sql=extra).path
    result = await run_local(dump)
    assert (result.passed, result.stage) == (False, "verifying")
    assert expected in result.message


async def test_failing_verification_query(good_dump: Path) -> None:
    result = await run_local(good_dump, verify_queries=["select count(*) from missing_table"])
    assert (result.passed, result.stage) == (False, "verifying")
    assert "missing_table" in result.message
    result = await run_local(good_dump, verify_queries=["select count(*) > 1000 from users"])
    assert (result.passed, result.stage) == (False, "verifying")
    assert "false/empty/zero" in result.message


async def test_pg_restore_errors_fail_and_are_quoted(good_dump: Path) -> None:
    # without the brace_user role the dump's GRANTs fail: pg_restore only warns and exits 1
    result = await run_local(good_dump, roles=[])
    assert (result.passed, result.stage) == (False, "restoring")
    assert 'role "brace_user" does not exist' in result.message
    assert result.errors and all("pg_restore: error:" in e for e in result.errors)


async def test_stale_data_fails_freshness(source: PgCluster, tmp_path: Path) -> None:
    dump = make_brace_dump(source, tmp_path / "brace_20260101_000000.dump", rows=5,
                           data_age_hours=72).path
    result = await run_local(dump, freshness_query="select max(created_at) from orders",
                             max_data_lag_hours=24)
    assert (result.passed, result.stage) == (False, "verifying")
    assert "stale data" in result.message


async def test_newer_major_dump_passes_with_matching_binaries(newer_dump: BraceDump,
                                                             newer_pg: PgInstall) -> None:
    """Production's situation: a dump of a newer major than Debian's, restored by that major's
    own binaries (a build without libxml/ICU/OpenSSL: verification needs none of them)."""
    result = await run_local(newer_dump.path, local_bin_dir=str(newer_pg.bin_dir), jobs=2,
                             verify_queries=["select count(*) = 120 from orders"],
                             freshness_query="select max(created_at) from orders")
    assert result.passed, result.message
    assert result.pg_version.startswith(f"{newer_pg.major}.")
    assert result.alembic_revision == "abc123"
    assert result.table_counts == {"public.alembic_version": 1, "public.users": 120,
                                   "public.orders": 120}


async def test_newer_major_dump_with_older_binaries_is_refused(newer_dump: BraceDump,
                                                               newer_pg: PgInstall) -> None:
    result = await run_local(newer_dump.path)  # Debian's PostgreSQL 15
    assert (result.passed, result.stage) == (False, "starting")
    assert result.message.startswith(f"refused: the dump needs PostgreSQL {newer_pg.major} or "
                                      f"newer (pg_dump {newer_pg.version} of PostgreSQL "
                                      f"{newer_pg.version}) but the local restore-test server "
                                      "runs PostgreSQL 15."), result.message
    assert result.message.endswith(f"set [restore_test] local_bin_dir to the bin folder of "
                                   f"PostgreSQL {newer_pg.major} or newer"), result.message


async def test_cancel_mid_restore_leaves_nothing(good_dump: Path) -> None:
    cfg = make_config(good_dump.parent).restore_test
    task: asyncio.Task[RestoreResult] | None = None

    def on_stage(stage: str, line: str) -> None:
        if stage == "restoring" and task is not None:
            task.cancel()

    run = RestoreRun(cfg, good_dump, server_factory(cfg), on_stage=on_stage)
    task = asyncio.create_task(run.execute())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers() == []


async def test_timeout_fails_and_cleans(good_dump: Path) -> None:
    result = await run_local(good_dump, timeout_seconds=0.05)  # expires while starting
    assert not result.passed and result.stage in ("checking", "starting")
    assert "timed out after 0.05s" in result.message


async def test_orphans_of_dead_owner_are_removed(good_dump: Path) -> None:
    server = LocalServer(good_dump, bin_dir=str(PG_BIN))
    await server.start()
    assert server.workdir is not None and server.workdir.exists()
    kept = await remove_local_orphans()
    assert server.workdir.exists() and kept == []
    removed = await remove_local_orphans(alive=others_alive)
    assert server.workdir in removed and not server.workdir.exists()
    server.workdir = None
    await server.sql.close()      # the dead owner's connection would have died with it


async def test_scheduler_request_records_and_refuses_parallel_runs(good_dump: Path) -> None:
    hub = make_hub(make_config(good_dump.parent))
    scheduler = RestoreTestScheduler(hub)
    await scheduler.start()
    with pytest.raises(RefusedError, match=r"contains '\.\.'"):
        await scheduler.request("../etc/passwd")
    task = await scheduler.request(good_dump.name)
    with pytest.raises(AlreadyRunning) as info:
        await scheduler.request(None)
    assert info.value.progress["running"] and info.value.progress["dump"] == good_dump.name
    result = await task
    assert result.passed, result.message
    last = scheduler.last_result()
    assert last is not None and last["passed"] and last["alembic_revision"] == "abc123"
    assert last["details"]["table_counts"]["public.users"] == 120
    registry = hub.metrics.registry
    assert registry.get_sample_value("brace_restore_test_success") == 1
    assert registry.get_sample_value("brace_restore_test_restored_tables") == 3
    assert registry.get_sample_value("brace_restore_test_runs_total", {"result": "passed"}) == 1
    assert _stage_gauges(hub) == _only(None)
    kinds = [e.kind for e in hub.store.events()]
    assert "restore_test.started" in kinds and "restore_test.passed" in kinds
    assert await scheduler.cycle() == f"last test passed ({good_dump.name})"
    await scheduler.stop()


def test_cli_exit_codes(good_dump: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                        ) -> None:
    config = make_config(good_dump.parent)
    assert cli_restore_test(config, good_dump.name) == 0
    assert "PASSED" in capsys.readouterr().out
    assert cli_restore_test(config, "/etc/passwd") == 2
    assert "outside the backups folder" in capsys.readouterr().out
    (good_dump.parent / "brace_20200101_000000.dump").write_text("not a dump")
    assert cli_restore_test(config, "brace_20200101_000000.dump") == 1
    assert "FAILED at checking" in capsys.readouterr().out
    store = StateStore(config.daemon.state_path).open()
    assert [r["passed"] for r in store.restore_results()] == [False, True]
    store.close()


def _stage_gauges(hub: Hub) -> dict[str, float | None]:
    return {stage: hub.metrics.registry.get_sample_value("brace_restore_test_stage",
                                                         {"stage": stage}) for stage in STAGES}


def _only(current: str | None) -> dict[str, float | None]:
    return {stage: 1.0 if stage == current else 0.0 for stage in STAGES}


async def test_cycle_starts_a_due_test_and_stop_cancels_it(good_dump: Path) -> None:
    hub = make_hub(make_config(good_dump.parent, interval_hours=1))
    scheduler = RestoreTestScheduler(hub, clock=lambda: 10_000.0)
    await scheduler.start()
    assert await scheduler.cycle() == "due, but no valid dump seen yet"
    hub.observations.backups = BackupScan(scanned_at=0.0, max_age_seconds=3600.0, files=(
        BackupFile(good_dump, good_dump.stat().st_size, 1.0, "name", True),))
    assert (await scheduler.cycle()).startswith("started: ")
    assert scheduler.running and (await scheduler.cycle()).startswith("running: ")
    while scheduler.running and scheduler.progress()["stage"] in ("checking", "starting"):
        assert _stage_gauges(hub) == _only(scheduler.progress()["stage"])
        await asyncio.sleep(0.02)
    await scheduler.stop()  # daemon shutdown mid-test: cancelled and cleaned up
    assert not scheduler.running and leftovers() == []
    assert hub.metrics.registry.get_sample_value("brace_restore_test_running") == 0
    assert _stage_gauges(hub) == _only(None)
    kinds = {e.kind for e in hub.store.events()}
    assert kinds & {"restore_test.cancelled", "restore_test.passed"}


async def test_interval_gates_the_next_test(good_dump: Path) -> None:
    hub = make_hub(make_config(good_dump.parent, interval_hours=1))
    now = 10_000.0
    scheduler = RestoreTestScheduler(hub, clock=lambda: now)
    task = await scheduler.request(good_dump.name)
    result = await task
    hub.observations.backups = BackupScan(scanned_at=0.0, max_age_seconds=3600.0, files=(
        BackupFile(good_dump, good_dump.stat().st_size, 1.0, "name", True),))
    now = result.finished_at + 1800
    assert await scheduler.cycle() == f"last test passed ({good_dump.name})"
    now = result.finished_at + 3600
    assert (await scheduler.cycle()).startswith("started: ")
    await scheduler.stop()


class RecordingNotifier:
    """Collects notifications (the Notifier protocol; the webhook sender is tested elsewhere)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def send(self, event: str, payload: dict[str, Any]) -> None:
        self.sent.append((event, payload))


async def test_failure_is_recorded_announced_and_counted(tmp_path: Path) -> None:
    (tmp_path / "brace_20260101_000000.dump").write_bytes(b"PGDMP\x01")
    hub = make_hub(make_config(tmp_path))
    hub.notifier = notifier = RecordingNotifier()
    scheduler = RestoreTestScheduler(hub)
    with pytest.raises(RefusedError, match="no readable pg_dump"):
        await scheduler.request(None)
    result = await (await scheduler.request("brace_20260101_000000.dump"))
    assert (result.passed, result.stage) == (False, "checking")
    [(event, payload)] = notifier.sent
    assert event == "restore_test.failed" and payload["stage"] == "checking"
    assert [e.kind for e in hub.store.events(kinds=("restore_test.failed",))]
    registry = hub.metrics.registry
    assert registry.get_sample_value("brace_restore_test_success") == 0
    assert registry.get_sample_value("brace_restore_test_runs_total", {"result": "failed"}) == 1
    assert scheduler.last_result() is not None
    assert await scheduler.cycle() == "last test failed at checking (brace_20260101_000000.dump)"


async def test_initdb_template_is_reused_only_when_trusted(good_dump: Path) -> None:
    first = LocalServer(good_dump, bin_dir=str(PG_BIN))
    await first.start()
    await first.stop()
    templates = list(TMP.glob(f"{TEMPLATE_PREFIX}*"))
    assert templates, "the first start leaves a pristine initdb template"
    second = LocalServer(good_dump, bin_dir=str(PG_BIN))
    assert second._trusted_template(templates[0])
    async with second:
        assert (await second.server_major())[0] == 15
    os.chmod(templates[0], 0o755)  # a template others could have written is not used
    try:
        assert not second._trusted_template(templates[0])
        async with LocalServer(good_dump, bin_dir=str(PG_BIN)) as third:
            assert (await third.query("select 1")) == [["1"]]
    finally:
        os.chmod(templates[0], 0o700)


async def test_event_loop_stays_responsive_during_a_restore(good_dump: Path) -> None:
    """Health probing shares the loop: a restore must never block it (no blocking calls)."""
    hub = make_hub(make_config(good_dump.parent, jobs=2))
    scheduler = RestoreTestScheduler(hub)
    task = await scheduler.request(good_dump.name)
    worst = 0.0
    loop = asyncio.get_running_loop()
    while not task.done():
        before = loop.time()
        await asyncio.sleep(0.01)
        worst = max(worst, loop.time() - before - 0.01)
    assert (await task).passed
    # A blocking step (initdb, pg_restore: seconds each) would stall it far longer than the
    # scheduling jitter a loaded two-core machine adds (tens of ms); 1 s keeps both apart.
    assert worst < 1.0, f"the event loop stalled for {worst:.3f}s during a restore"


async def test_a_scheduled_test_stops_before_its_next_stage_when_the_lock_is_lost(
        good_dump: Path, source: PgCluster) -> None:
    """The leader's lock session (on the real source cluster) is terminated while the test is
    starting its throwaway server: the test confirms before ``restoring``, stops there, removes
    the server and records no result (the test stays due for the new leader)."""
    name = f"rt{os.getpid()}"
    config = parse_config({
        "backups": {"directory": str(good_dump.parent)},
        "daemon": {"state_path": str(good_dump.parent / f"{name}.db")},
        "database": {"dsn": source.dsn()},
        "leadership": {"enabled": True, "name": name, "check_interval_seconds": 0.2,
                       "check_timeout_seconds": 1.0, "lease_seconds": 5.0},
        "restore_test": {"backend": "local", "local_bin_dir": str(PG_BIN), "interval_hours": 1}})
    hub = make_hub(config)
    election = LeaderElection(hub)
    make = server_factory(config.restore_test)

    def start_server_and_lose_the_lock(dump: Path) -> Any:
        source.psql("select pg_terminate_backend(pid) from pg_stat_activity "
                    f"where application_name like 'brace-watchdog@{name}:%'")
        return make(dump)

    scheduler = RestoreTestScheduler(hub, clock=lambda: 10_000.0,
                                     make_server=start_server_and_lose_the_lock)
    try:
        await election.start()
        await asyncio.sleep(config.leadership.settle_seconds + 0.1)  # a new leader settles
        await election.cycle()
        assert hub.leadership.decision().acts, hub.leadership.decision().message
        await scheduler.start()
        hub.observations.backups = BackupScan(scanned_at=0.0, max_age_seconds=3600.0, files=(
            BackupFile(good_dump, good_dump.stat().st_size, 1.0, "name", True),))
        assert (await scheduler.cycle()).startswith("started: ")
        assert scheduler._task is not None
        with pytest.raises(LeadershipLostError, match="before step 'restoring'"):
            await scheduler._task
        assert leftovers() == []
        assert hub.store.latest_restore_result() is None
        kinds = [e.kind for e in hub.store.events(limit=100)]
        assert "restore_test.leadership_lost" in kinds and "leadership.lost" in kinds
        assert not set(kinds) & {"restore_test.passed", "restore_test.failed"}
        assert (await scheduler.cycle()).startswith("not scheduling")
    finally:
        await scheduler.stop()
        await election.stop()
        hub.store.close()
