"""The backups monitor: is there a fresh, plausible pg_dump in ``[backups] directory``?

Owns three things:

* :func:`parse_backup_name` — pure: the UTC time written in a runbook dump name
  (``brace_YYYYMMDD_HHMMSS.dump`` or ``brace_tg_YYYYMMDDHHMMSS.dump``), ``None`` otherwise.
* :func:`scan_backups` — one ``os.scandir`` pass over the folder (blocking; the monitor runs it in a
  worker thread). A file matching the patterns is *invalid*, with a reason, when it is empty, when
  its first five bytes are not the custom-format magic ``PGDMP``, when it was modified within
  ``settle_seconds`` (still being written), when it is not a regular file, or when it is a symlink
  leading out of the folder. Only the five header bytes are read. A truncated dump still starts
  with ``PGDMP`` and counts as valid here: only a restore test can prove that a dump restores.
* :class:`BackupsMonitor` — the ``backups`` component: publishes the scan in
  ``hub.observations.backups``, exports the ``brace_backup_*`` metrics and records an event only
  when something changes (fresh ↔ stale, a new newest backup, the folder going missing). The last
  state is kept in the state store (flag ``monitor.backups``) so a restart does not re-announce it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from brace_watchdog.component import Component
from brace_watchdog.dumps import MAGIC as DUMP_MAGIC
from brace_watchdog.errors import AdapterError
from brace_watchdog.monitors.memory import MonitorMemory
from brace_watchdog.observations import BackupFile, BackupScan
from brace_watchdog.runtime import Hub

__all__ = ["BackupsMonitor", "backup_status_line", "parse_backup_name",
           "scan_backups"]

log = logging.getLogger("brace_watchdog.backups")

FUTURE_TOLERANCE_SECONDS = 3600.0

_NAME = re.compile(r"brace_(?:([0-9]{8})_([0-9]{6})|tg_([0-9]{8})([0-9]{6}))\.dump")


def parse_backup_name(name: str) -> datetime | None:
    """The UTC time in a runbook dump name, or ``None`` for any other name or an impossible date."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    digits = "".join(group for group in match.groups() if group)
    try:
        return datetime(int(digits[0:4]), int(digits[4:6]), int(digits[6:8]), int(digits[8:10]),
                        int(digits[10:12]), int(digits[12:14]), tzinfo=UTC)
    except ValueError:
        return None


@dataclass(frozen=True)
class _Entry:
    """What one ``scandir`` entry told us, before judging it."""

    path: Path
    size: int
    mtime: float
    problem: str


HeaderCache = dict[tuple[str, int, int, int], str]
"""(path, inode, size, mtime_ns) → header problem ("" = valid magic), kept between scans."""


def scan_backups(directory: Path, patterns: Sequence[str], *, now: float, settle_seconds: float,
                 max_age_seconds: float,
                 future_tolerance_seconds: float = FUTURE_TOLERANCE_SECONDS,
                 header_cache: HeaderCache | None = None) -> BackupScan:
    """Scan ``directory`` once; raise AdapterError when it is missing or unreadable.

    With ``header_cache`` (the monitor keeps one between cycles) a file whose inode, size and
    mtime are unchanged is not opened again; the cache is pruned to the files seen this scan.
    """
    matcher = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
    files: list[BackupFile] = []
    seen: HeaderCache = {}
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if matcher.match(entry.name):
                    inspected = _inspect(entry, directory, header_cache, seen)
                    files.append(_judge(inspected, now=now,
                                        settle_seconds=settle_seconds,
                                        future_tolerance_seconds=future_tolerance_seconds))
    except FileNotFoundError:
        raise AdapterError(f"backup directory {directory} does not exist; create it or fix "
                           "[backups] directory") from None
    except NotADirectoryError:
        raise AdapterError(f"backup directory {directory} is not a directory; fix "
                           "[backups] directory") from None
    except PermissionError:
        raise AdapterError(f"backup directory {directory} is not readable by the daemon; fix its "
                           "permissions") from None
    except OSError as exc:
        raise AdapterError(f"cannot read backup directory {directory}: {exc.strerror}") from None
    if header_cache is not None:
        header_cache.clear()
        header_cache.update(seen)
    files.sort(key=lambda f: (f.timestamp, f.name))
    return BackupScan(scanned_at=now, files=tuple(files), max_age_seconds=max_age_seconds)


def _inspect(entry: os.DirEntry[str], directory: Path, cache: HeaderCache | None,
             seen: HeaderCache) -> _Entry:
    path = Path(entry.path)
    try:
        if entry.is_symlink() and not Path(os.path.realpath(path)).is_relative_to(
                os.path.realpath(directory)):
            return _Entry(path, 0, 0.0, "symlink leads out of the backup folder; not followed")
        info = entry.stat(follow_symlinks=True)
    except OSError as exc:
        return _Entry(path, 0, 0.0, f"cannot stat: {exc.strerror}")
    if not stat.S_ISREG(info.st_mode):
        return _Entry(path, 0, info.st_mtime, "not a regular file")
    if info.st_size == 0:
        return _Entry(path, 0, info.st_mtime, "empty file")
    key = (entry.path, info.st_ino, info.st_size, info.st_mtime_ns)
    problem = cache.get(key) if cache is not None else None
    if problem is None:
        problem = _header_problem(entry.path)
    seen[key] = problem
    return _Entry(path, info.st_size, info.st_mtime, problem)


def _header_problem(path: str) -> str:
    """Read the first five bytes only; ``""`` when they are the pg_dump custom-format magic."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot open: {exc.strerror}"
    try:
        head = os.read(fd, len(DUMP_MAGIC))
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    finally:
        os.close(fd)
    if head != DUMP_MAGIC:
        return f"not a pg_dump custom-format file (starts with {head!r}, expected b'PGDMP')"
    return ""


def _judge(entry: _Entry, *, now: float, settle_seconds: float,
           future_tolerance_seconds: float) -> BackupFile:
    named = parse_backup_name(entry.path.name)
    timestamp = named.timestamp() if named is not None else entry.mtime
    reason = entry.problem
    if not reason and entry.mtime > now - settle_seconds:
        reason = (f"still being written (modified {max(0.0, now - entry.mtime):.0f}s ago, "
                  f"settle time {settle_seconds:.0f}s)")
    if not reason and timestamp > now + future_tolerance_seconds:
        reason = "timestamp lies in the future; check the backup host's clock"
    return BackupFile(path=entry.path, size=entry.size, timestamp=timestamp,
                      timestamp_source="name" if named is not None else "mtime",
                      valid=not reason, reason=reason)


def backup_status_line(scan: BackupScan, now: float) -> str:
    """``newest brace_20261125_030000.dump 3.2h old, fresh (12 valid, 1 invalid)``."""
    valid = len(scan.valid)
    counts = f"({valid} valid, {len(scan.files) - valid} invalid)"
    newest = scan.newest
    if newest is None:
        return f"no valid backup, stale {counts}"
    age_hours = (scan.age_seconds(now) or 0.0) / 3600
    state = "fresh" if scan.fresh(now) else "stale"
    return f"newest {newest.name} {age_hours:.1f}h old, {state} {counts}"


class BackupsMonitor(Component):
    """Scans the backup folder every ``[backups] interval_seconds``."""

    name = "backups"

    def __init__(self, hub: Hub, *, clock: Callable[[], float] | None = None) -> None:
        self._hub = hub
        self._clock = clock or hub.clock
        self._newest_ts: float | None = None
        self._header_cache: HeaderCache = {}
        self._state = MonitorMemory(hub.store, self.name)
        hub.metrics.backup_newest_age.set_function(self._newest_age)
        hub.metrics.backup_max_age.set(hub.config.backups.max_age_hours * 3600)

    def interval(self) -> float:
        return self._hub.config.backups.interval_seconds

    def _newest_age(self) -> float:
        if self._newest_ts is None:
            return float("inf")
        return max(0.0, self._clock() - self._newest_ts)

    async def cycle(self) -> str:
        cfg = self._hub.config.backups
        max_age = cfg.max_age_hours * 3600
        self._hub.metrics.backup_max_age.set(max_age)
        now = self._clock()
        started = time.perf_counter()
        try:
            scan = await asyncio.to_thread(scan_backups, cfg.directory, cfg.patterns, now=now,
                                           settle_seconds=cfg.settle_seconds,
                                           max_age_seconds=max_age,
                                           header_cache=self._header_cache)
        except AdapterError as exc:
            return await self._failed(str(exc), max_age, now)
        finally:
            self._hub.metrics.backup_scan_duration.set(time.perf_counter() - started)
        self._publish(scan, now)
        await self._transitions(scan, now)
        return backup_status_line(scan, now)

    async def _failed(self, message: str, max_age: float, now: float) -> str:
        scan = BackupScan(scanned_at=now, files=(), max_age_seconds=max_age)
        self._publish(scan, now)
        if self._state.get("state") != "error" or self._state.get("error") != message:
            self._hub.record("backup.error", self.name, message, severity="error",
                             evidence={"directory": str(self._hub.config.backups.directory)})
            self._state.update(state="error", error=message)
            await self._hub.notifier.send("backup.error", {"message": message})
        return f"ERROR: {message}"

    def _publish(self, scan: BackupScan, now: float) -> None:
        metrics = self._hub.metrics
        self._hub.observations.backups = scan
        newest = scan.newest
        self._newest_ts = newest.timestamp if newest else None
        valid = len(scan.valid)
        metrics.backup_files.labels(validity="valid").set(valid)
        metrics.backup_files.labels(validity="invalid").set(len(scan.files) - valid)
        metrics.backup_fresh.set(1 if scan.fresh(now) else 0)
        metrics.backup_newest_timestamp.set(newest.timestamp if newest else 0)
        metrics.backup_newest_size.set(newest.size if newest else 0)

    async def _transitions(self, scan: BackupScan, now: float) -> None:
        newest = scan.newest
        state = "fresh" if scan.fresh(now) else "stale"
        evidence = _evidence(scan, now)
        previous_newest = self._state.get("newest")
        if newest is not None and previous_newest not in (None, newest.name):
            self._newest_changed(newest, previous_newest, evidence)
        previous = self._state.get("state")
        if newest is not None:
            self._state.update(newest=newest.name, newest_timestamp=newest.timestamp)
        self._state.update(state=state, error=None)
        line = backup_status_line(scan, now)
        if state == "stale" and previous != "stale":
            self._hub.record("backup.stale", self.name, f"backups are stale: {line}",
                             evidence=evidence, severity="warning")
            await self._hub.notifier.send("backup.stale", {"message": line, **evidence})
        elif state == "fresh" and previous not in (None, "fresh"):
            self._hub.record("backup.fresh", self.name, f"backups are fresh again: {line}",
                             evidence=evidence)

    def _newest_changed(self, newest: BackupFile, previous: str,
                        evidence: dict[str, Any]) -> None:
        if newest.timestamp > float(self._state.get("newest_timestamp") or 0.0):
            self._hub.record("backup.new", self.name,
                             f"new backup {newest.name} ({newest.size} bytes)", evidence=evidence)
        else:
            self._hub.record("backup.newest_changed", self.name,
                             f"newest valid backup is now the older {newest.name}: {previous} "
                             "was removed or became invalid", evidence=evidence,
                             severity="warning")


def _evidence(scan: BackupScan, now: float) -> dict[str, Any]:
    newest = scan.newest
    invalid = [f"{f.name}: {f.reason}" for f in scan.files if not f.valid]
    return {
        "newest": newest.name if newest else None,
        "newest_timestamp_source": newest.timestamp_source if newest else None,
        "age_seconds": scan.age_seconds(now),
        "max_age_seconds": scan.max_age_seconds,
        "valid": len(scan.valid),
        "invalid": invalid[-20:],
    }
