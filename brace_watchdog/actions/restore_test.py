"""The restore-test component: schedules tests, runs one at a time, records and announces results.

:class:`RestoreTestScheduler` (component ``restore_test``) keeps its cycle short: it checks
whether a test is due (``[restore_test] interval_hours`` since the last recorded result) and
starts :class:`~brace_watchdog.actions.restore_run.RestoreRun` in a task of its own on the newest
valid dump the backups monitor saw. The control socket calls :meth:`request`, :meth:`progress`
and :meth:`last_result`; a request during a run raises :class:`AlreadyRunning` with the progress.
Orphaned throwaway servers are removed at :meth:`start`; a container a run could not remove
itself is swept on the first idle cycle after that run ended (again each idle cycle while the
engine does not answer; never on an idle cycle with nothing to find); a running test is
cancelled (and cleaned) at :meth:`stop`.

:func:`cli_restore_test` is the one-shot ``brace-watchdog restore-test`` command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brace_watchdog.actions.restore_policy import is_due
from brace_watchdog.actions.restore_run import (
    STAGES,
    RestoreResult,
    RestoreRun,
    ServerFactory,
    server_factory,
)
from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.adapters.postgres import remove_docker_orphans, remove_local_orphans
from brace_watchdog.component import Component
from brace_watchdog.config import Config
from brace_watchdog.dumps import newest_dump, resolve_dump
from brace_watchdog.errors import (
    ActionError,
    DockerError,
    RefusedError,
    StateError,
    WatchdogError,
)
from brace_watchdog.leadership import LeadershipLostError
from brace_watchdog.runtime import Hub
from brace_watchdog.state import StateStore

__all__ = ["AlreadyRunning", "RestoreTestScheduler", "cli_restore_test", "record_result"]

log = logging.getLogger("brace_watchdog.restore_test")
FIRST_SCAN_WAIT_SECONDS = 1.0


class AlreadyRunning(RefusedError):
    """A restore test is already running; ``progress`` describes it."""

    def __init__(self, progress: dict[str, Any]) -> None:
        super().__init__(str(progress.get("stage", "")),
                         f"a restore test is already running: {progress.get('line', '')}")
        self.progress = progress


def record_result(store: StateStore, result: RestoreResult) -> int:
    """Store a result in ``restore_results`` (details hold counts, stage times, errors)."""
    return store.record_restore_result(
        started_at=result.started_at, finished_at=result.finished_at,
        dump_name=result.dump_name, dump_size=result.dump_size, passed=result.passed,
        dump_sha256=result.dump_sha256,
        stage=result.stage, message=result.message, backend=result.backend,
        pg_version=result.pg_version, alembic_revision=result.alembic_revision,
        duration_seconds=result.duration_seconds, rto_exceeded=result.rto_exceeded,
        details={"table_counts": result.table_counts, "stage_seconds": result.stage_seconds,
                 "recovery_seconds": result.recovery_seconds, "errors": list(result.errors)})


class RestoreTestScheduler(Component):
    """Component ``restore_test``: one restore test at a time, on schedule or on request.

    A failed test also waits ``interval_hours`` before the next scheduled one (no retry storm);
    an operator can always :meth:`request` one. Injected for tests: ``docker`` (adapter),
    ``clock``, ``make_server`` (throwaway-server factory), ``work_root`` (temp dir).
    """

    name = "restore_test"

    def __init__(self, hub: Hub, *, docker: DockerAdapter | None = None,
                 clock: Callable[[], float] | None = None,
                 make_server: ServerFactory | None = None, work_root: Path | None = None,
                 check_interval: float = 30.0) -> None:
        self.hub = hub
        self.config = hub.config
        self.docker = docker
        self.clock = clock or hub.clock
        self._make_server = make_server
        self.work_root = work_root
        self.check_interval = check_interval
        self._show_stage(None)
        self._task: asyncio.Task[RestoreResult] | None = None
        self._run: RestoreRun | None = None
        self._line = ""
        self._sweep_due = False  # a run ended (its cleanup may have failed), or a sweep failed

    def interval(self) -> float:
        """``check_interval``; 1 s until the backups monitor's first scan, so a due test starts
        right after it rather than one whole interval later (after every restart)."""
        if self.hub.observations.backups is None:
            return min(self.check_interval, FIRST_SCAN_WAIT_SECONDS)
        return self.check_interval

    def progress_deadline(self) -> float:
        return max(3 * self.check_interval, self.check_interval + 30.0)

    def reconfigure(self, config: Config) -> None:
        self.config = config

    def _factory(self) -> ServerFactory:
        if self._make_server is not None:
            return self._make_server
        if self.config.restore_test.backend == "docker" and self.docker is None:
            self.docker = DockerAdapter()
        return server_factory(self.config.restore_test, docker=self.docker,
                              work_root=self.work_root)

    async def start(self) -> None:
        cfg = self.config.restore_test
        removed: list[str] = [str(p) for p in await remove_local_orphans(
            self.work_root, user=cfg.local_user, bin_dir=cfg.local_bin_dir)]
        if cfg.backend == "docker":
            self.docker = self.docker or DockerAdapter()
            try:
                removed += await remove_docker_orphans(self.docker)
            except DockerError as exc:
                self._sweep_due = True
                log.warning("restore test: cannot look for orphaned containers: %s", exc)
        if removed:
            self.hub.record("restore_test.orphans_removed", self.name,
                            f"removed {len(removed)} throwaway server(s) left by an earlier run",
                            evidence={"removed": removed}, severity="warning")
        success = self.hub.store.latest_restore_result(passed=True)
        if success is not None:
            self._publish_last(success)
        last = self.last_result()
        if last is not None:
            self._publish_last(last)

    async def cycle(self) -> str:
        if self.running:
            self.hub.progress.beat(self.name)
            return f"running: {self._line}"
        cfg = self.config.restore_test
        if not cfg.enabled:
            return "disabled"
        if self._sweep_due:
            self._sweep_due = not await self._remove_leftovers()
        leader = self.hub.leadership.decision()
        if not leader.acts:
            return f"not scheduling ({leader.message})"
        last = self.last_result()
        if not is_due(last["finished_at"] if last else None, self.clock(), cfg.interval_hours):
            return _describe_last(last)
        scan = self.hub.observations.backups
        newest = scan.newest if scan is not None else None
        if newest is None:
            return "due, but no valid dump seen yet"
        self._launch(newest.path, origin="schedule")
        return f"started: {self._line}"

    async def _remove_leftovers(self) -> bool:
        """Containers of ours that a run could not remove (the engine was down during its
        cleanup): removed once the engine answers again, while no run is active. False when
        the engine did not answer (the sweep stays due)."""
        if self.config.restore_test.backend != "docker" or self.docker is None:
            return True
        try:
            removed = await remove_docker_orphans(self.docker,
                                                  own_idle=lambda: not self.running)
        except DockerError as exc:
            log.debug("restore test: cannot look for leftover containers: %s", exc)
            return False
        if removed:
            self.hub.record("restore_test.leftovers_removed", self.name,
                            f"removed {len(removed)} throwaway container(s) an earlier restore "
                            "test could not remove", evidence={"removed": removed},
                            severity="warning")
        return True

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def request(self, dump_name: str | None, *, origin: str = "control"
                      ) -> asyncio.Task[RestoreResult]:
        """Start a test now on ``dump_name`` (resolved strictly inside the backups folder) or on
        the newest valid dump; returns the running task (await it for the RestoreResult).

        Raises AlreadyRunning (with :meth:`progress`) during a run, RefusedError for a bad name.
        """
        if self.running:
            raise AlreadyRunning(self.progress())
        directory = self.config.backups.directory
        if dump_name:
            dump = await asyncio.to_thread(resolve_dump, directory, dump_name)
        else:
            scan = self.hub.observations.backups
            newest = scan.newest if scan is not None else None
            dump = newest.path if newest is not None else await asyncio.to_thread(
                newest_dump, directory, self.config.backups.patterns)
        return self._launch(dump, origin=origin)

    def progress(self) -> dict[str, Any]:
        run = self._run
        if not self.running or run is None:
            return {"running": False}
        return {"running": True, "stage": run.stage, "dump": run.dump.name,
                "elapsed_seconds": round(run.elapsed(), 1), "line": self._line}

    def last_result(self) -> dict[str, Any] | None:
        """The newest recorded result (a row of ``restore_results``) or None."""
        return self.hub.store.latest_restore_result()

    def _launch(self, dump: Path, *, origin: str) -> asyncio.Task[RestoreResult]:
        # a scheduled test acts for the leader: no lock, no step (a requested one may run anywhere)
        before = self.hub.leadership.confirm if origin == "schedule" else None
        run = RestoreRun(self.config.restore_test, dump, self._factory(), clock=self.clock,
                         on_stage=self._on_stage, before=before)
        self._run = run
        self._line = f"checking {dump.name}"
        self.hub.metrics.restore_running.set(1)
        self._show_stage(run.stage)
        self.hub.record("restore_test.started", self.name, f"restore test of {dump.name} started",
                        evidence={"dump": str(dump), "origin": origin,
                                  "backend": self.config.restore_test.backend})
        self._task = asyncio.create_task(self._execute(run), name="restore-test")
        return self._task

    def _on_stage(self, stage: str, line: str) -> None:
        self._line = line
        self._show_stage(stage)
        self.hub.set_status(self.name, line)
        self.hub.progress.beat(self.name)

    def _show_stage(self, current: str | None) -> None:
        """``brace_restore_test_stage``: 1 for ``current``, 0 for every other stage."""
        for stage in STAGES:
            self.hub.metrics.restore_stage.labels(stage=stage).set(1 if stage == current else 0)

    async def _execute(self, run: RestoreRun) -> RestoreResult:
        try:
            result = await run.execute()
        except asyncio.CancelledError:
            self.hub.record("restore_test.cancelled", self.name,
                            f"restore test of {run.dump.name} cancelled at {run.stage} (daemon "
                            "shutdown); the throwaway server was removed", severity="warning")
            self.hub.set_status(self.name, f"cancelled: {run.dump.name}")
            raise
        except LeadershipLostError as exc:
            # no result recorded: the test stays due, and the new leader runs it
            self.hub.record("restore_test.leadership_lost", self.name,
                            f"restore test of {run.dump.name} stopped: {exc.message}; the "
                            "throwaway server was removed", severity="warning",
                            evidence={"dump": str(run.dump), "stopped_before": exc.stage})
            self.hub.set_status(self.name, f"interrupted (leadership lost): {run.dump.name}")
            raise
        finally:
            self.hub.metrics.restore_running.set(0)
            self._show_stage(None)
            self._sweep_due = True  # whatever its cleanup could not remove
        await self._finish(result)
        return result

    async def _finish(self, result: RestoreResult) -> None:
        m = self.hub.metrics
        try:
            record_result(self.hub.store, result)
        except StateError:
            log.exception("restore test: cannot record the result")
        m.restore_runs.labels(result="passed" if result.passed else "failed").inc()
        self._publish_last({"passed": result.passed, "finished_at": result.finished_at,
                            "duration_seconds": result.duration_seconds,
                            "rto_exceeded": result.rto_exceeded,
                            "details": {"table_counts": result.table_counts,
                                        "stage_seconds": result.stage_seconds}})
        evidence = result.to_dict()
        self.hub.set_status(self.name, result.summary()[:200])
        if result.passed:
            self.hub.record("restore_test.passed", self.name, result.summary(), evidence=evidence,
                            severity="warning" if result.rto_exceeded else "info")
            return
        self.hub.record("restore_test.failed", self.name, result.summary(), evidence=evidence,
                        severity="error")
        await self.hub.notifier.send("restore_test.failed", evidence)

    def _publish_last(self, last: dict[str, Any]) -> None:
        m = self.hub.metrics
        m.restore_last_run.set(last["finished_at"])
        m.restore_success.set(1 if last["passed"] else 0)
        m.restore_duration.set(last["duration_seconds"])
        m.restore_rto_exceeded.set(1 if last["rto_exceeded"] else 0)
        details = last.get("details", {})
        m.restore_tables.set(len(details.get("table_counts", {})))
        for stage, seconds in details.get("stage_seconds", {}).items():
            m.restore_stage_duration.labels(stage=stage).set(seconds)
        if last["passed"]:
            m.restore_last_success.set(last["finished_at"])

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, WatchdogError):
                await task


def _describe_last(last: dict[str, Any] | None) -> str:
    if last is None:
        return "no restore test yet"
    verdict = "passed" if last["passed"] else f"failed at {last['stage']}"
    return f"last test {verdict} ({last['dump_name']})"


def cli_restore_test(config: Config, dump: str | None) -> int:
    """``brace-watchdog restore-test``: 0 on pass, 1 on fail, 2 on usage/config errors."""
    try:
        if dump:
            path = resolve_dump(config.backups.directory, dump)
        else:
            path = newest_dump(config.backups.directory, config.backups.patterns)
    except ActionError as exc:
        print(f"brace-watchdog restore-test: {exc.message}")
        return 2
    cfg = config.restore_test
    try:
        result = asyncio.run(RestoreRun(cfg, path, server_factory(cfg)).execute())
    except KeyboardInterrupt:
        print("brace-watchdog restore-test: interrupted; throwaway server removed")
        return 1
    print(_render(result))
    try:
        store = StateStore(config.daemon.state_path, clock=time.time).open()
        try:
            record_result(store, result)
        finally:
            store.close()
    except StateError as exc:
        print(f"warning: result not recorded in the state store: {exc}")
    return 0 if result.passed else 1


def _render(result: RestoreResult) -> str:
    lines = [result.summary(), f"  dump size:  {result.dump_size} bytes",
             f"  sha256:     {result.dump_sha256 or '-'}",
             f"  backend:    {result.backend} (PostgreSQL {result.pg_version or '?'})",
             f"  alembic:    {result.alembic_revision or '-'}",
             f"  duration:   {result.duration_seconds:.1f}s (recovery "
             f"{result.recovery_seconds:.1f}s)",
             "  stages:     " + ", ".join(f"{k} {v:.1f}s"
                                          for k, v in result.stage_seconds.items())]
    lines += [f"  table {name}: {count} rows"
              for name, count in sorted(result.table_counts.items())]
    lines += [f"  error: {error}" for error in result.errors[:20]]
    return "\n".join(lines)
