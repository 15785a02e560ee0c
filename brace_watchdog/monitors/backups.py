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
  With a :class:`ScanCache`, an unchanged folder is not listed again: see its docstring for what
  is re-checked every scan and what waits for the next full listing.
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from brace_watchdog.component import Component
from brace_watchdog.dumps import MAGIC as DUMP_MAGIC
from brace_watchdog.errors import AdapterError
from brace_watchdog.monitors.memory import MonitorMemory
from brace_watchdog.observations import BackupFile, BackupScan
from brace_watchdog.runtime import Hub

__all__ = ["BackupsMonitor", "ScanCache", "backup_status_line", "parse_backup_name",
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
    """What one folder entry told us, before judging it; equal when the file is unchanged."""

    path: Path
    size: int
    mtime: float
    problem: str
    symlink: bool = False
    identity: tuple[int, int] = (0, 0)


HeaderCache = dict[tuple[str, int, int, int], str]
"""(path, inode, size, mtime_ns) → header problem ("" = valid magic), kept between scans."""

FULL_LISTING_SECONDS = 600.0
"""How long a listing is trusted while the folder itself is unchanged (see :class:`ScanCache`)."""

_RACY_SECONDS = 2.0
_DIGITS = len("YYYYMMDDHHMMSS")


VERIFY_PER_SCAN = 500
"""Dumps older than the newest valid one that a monitor scan inspects beyond those it must."""


@dataclass
class ScanCache:
    """What the monitor keeps between scans, so a steady-state scan touches almost nothing.

    A listing stats every known match and opens only files whose (inode, size, mtime) is new
    (``headers``). Dumps never inspected yet (a first scan of a large folder) wait in ``pending``
    by the time in their name: a scan inspects every pending dump newer than the newest valid one
    (what freshness and restore tests depend on) and up to ``VERIFY_PER_SCAN`` more, so a folder
    of thousands of dumps is fully checked over a few cycles instead of stalling the first one.
    While the folder's own inode and mtime are unchanged — nothing created, removed or renamed —
    the next scans reuse the listing and re-inspect only the *watched* entries: those still
    settling or dated in the future, symlinks, and the newest valid dump with everything newer (so
    a truncated or rewritten newest dump is seen at once). Older files rewritten in place are seen
    at the next full listing, at most ``FULL_LISTING_SECONDS`` later. A listing made within
    ``_RACY_SECONDS`` of the folder's mtime is not reused: a file created in the same timestamp
    tick would not move the mtime (git's "racily clean" index entries).
    """

    headers: HeaderCache = field(default_factory=dict)
    folder_key: tuple[int, int, int] | None = None
    listed_at: float = 0.0
    entries: tuple[_Entry, ...] = ()
    files: tuple[BackupFile, ...] = ()
    watched: tuple[int, ...] = ()
    pending: list[str] = field(default_factory=list)
    """Name time (``YYYYMMDDHHMMSS``) + name of each dump not inspected yet, oldest first."""


@dataclass(frozen=True)
class _ScanRules:
    """How one scan judges and how much it inspects: fixed for the scan, shared by its steps."""

    directory: Path
    judge: Callable[[_Entry], BackupFile]
    verify_budget: int | None


def scan_backups(directory: Path, patterns: Sequence[str], *, now: float, settle_seconds: float,
                 max_age_seconds: float,
                 future_tolerance_seconds: float = FUTURE_TOLERANCE_SECONDS,
                 cache: ScanCache | None = None, verify_budget: int | None = None,
                 wall_clock: Callable[[], float] = time.time) -> BackupScan:
    """Scan ``directory`` once; raise AdapterError when it is missing or unreadable.

    With ``cache`` (the monitor keeps one between cycles) an unchanged folder costs one ``stat``
    of the folder plus one per watched entry, and ``verify_budget`` bounds how many dumps older
    than the newest valid one are inspected per scan (``None``: all); see :class:`ScanCache`.
    """
    rules = _ScanRules(directory, partial(_judge, now=now, settle_seconds=settle_seconds,
                                          future_tolerance_seconds=future_tolerance_seconds),
                       verify_budget if cache is not None else None)
    work = cache if cache is not None else ScanCache()
    try:
        if not _reuse(rules, work, wall_clock()):
            _list(rules, patterns, work, wall_clock)
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
    return BackupScan(scanned_at=now, files=work.files, max_age_seconds=max_age_seconds,
                      unverified=len(work.pending))


def _folder_key(directory: Path) -> tuple[tuple[int, int, int], float]:
    info = os.stat(directory)
    return (info.st_dev, info.st_ino, info.st_mtime_ns), info.st_mtime


def _name_digits(name: str) -> str | None:
    """``YYYYMMDDHHMMSS`` of a runbook dump name: sorts as its time does, without parsing it."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    day, time_of_day, tg_day, tg_time = match.groups()
    return day + time_of_day if day else tg_day + tg_time


def _list(rules: _ScanRules, patterns: Sequence[str], cache: ScanCache,
          wall_clock: Callable[[], float]) -> None:
    """List the folder: known and unnamed matches inspected, new runbook names left pending."""
    listed_at = wall_clock()
    folder_key, folder_mtime = _folder_key(rules.directory)
    matcher = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
    known = {entry.path.name for entry in cache.entries}
    seen: HeaderCache = {}
    inspect: list[str] = []
    pending: list[str] = []
    for name in os.listdir(rules.directory):
        if matcher.match(name):
            digits = _name_digits(name)
            if digits is None or name in known:
                inspect.append(name)
            else:
                pending.append(digits + name)
    pending.sort()
    entries = [_inspect_path(rules.directory / name, rules.directory, cache.headers, seen)
               for name in inspect]
    cache.headers = seen
    trusted = folder_mtime < listed_at - _RACY_SECONDS
    cache.folder_key = folder_key if trusted else None
    cache.listed_at = listed_at
    cache.pending = pending
    _settle(rules, cache, [(rules.judge(entry), entry) for entry in entries])


def _settle(rules: _ScanRules, cache: ScanCache,
            judged: list[tuple[BackupFile, _Entry]]) -> None:
    """Inspect the pending dumps that matter (and the budget's worth more), then sort and keep."""
    newest = max((file.timestamp for file, _ in judged if file.valid), default=None)
    newest_digits = _digits_of(newest)
    budget = rules.verify_budget
    while cache.pending:
        must = cache.pending[-1][:_DIGITS] >= newest_digits
        if not must and budget is not None and budget <= 0:
            break
        name = cache.pending.pop()[_DIGITS:]
        entry = _inspect_path(rules.directory / name, rules.directory, None, cache.headers)
        file = rules.judge(entry)
        judged.append((file, entry))
        if file.valid and (newest is None or file.timestamp > newest):
            newest, newest_digits = file.timestamp, _digits_of(file.timestamp)
        if not must and budget is not None:
            budget -= 1
    judged.sort(key=lambda pair: (pair[0].timestamp, pair[0].name))
    cache.entries = tuple(entry for _, entry in judged)
    cache.files = tuple(file for file, _ in judged)
    cache.watched = _watched(cache.entries, cache.files)


def _digits_of(timestamp: float | None) -> str:
    """The name digits of ``timestamp`` ("" when none: every pending name sorts after it)."""
    return "" if timestamp is None else f"{datetime.fromtimestamp(timestamp, UTC):%Y%m%d%H%M%S}"


def _watched(entries: tuple[_Entry, ...], files: tuple[BackupFile, ...]) -> tuple[int, ...]:
    """Indexes (in sorted order) of the entries a reused listing must look at again."""
    newest_valid = max((i for i, file in enumerate(files) if file.valid), default=-1)
    return tuple(i for i, (entry, file) in enumerate(zip(entries, files, strict=True))
                 if i >= newest_valid or entry.symlink or (not file.valid and not entry.problem))


def _reuse(rules: _ScanRules, cache: ScanCache, wall_now: float) -> bool:
    """Reuse the last listing, re-judged where time matters; ``False`` when a listing is due."""
    if cache.folder_key is None or wall_now - cache.listed_at >= FULL_LISTING_SECONDS:
        return False
    if _folder_key(rules.directory)[0] != cache.folder_key:
        return False
    entries = cache.entries
    for index in cache.watched:
        if _inspect_path(entries[index].path, rules.directory, cache.headers) != entries[index]:
            return False
    files = list(cache.files)
    for index in cache.watched:
        files[index] = rules.judge(entries[index])
    if cache.pending:
        _settle(rules, cache, list(zip(files, entries, strict=True)))
    else:
        cache.files = tuple(files)
    return True


def _inspect_path(path: Path, directory: Path, known: HeaderCache | None,
                  seen: HeaderCache | None = None) -> _Entry:
    """Stat ``path`` (following a symlink only inside the folder) and check its header."""
    seen = known if seen is None else seen
    symlink = False
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            symlink = True
            if not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(directory)):
                return _Entry(path, 0, 0.0, "symlink leads out of the backup folder; not followed",
                              symlink=True)
            info = os.stat(path)
    except OSError as exc:
        return _Entry(path, 0, 0.0, f"cannot stat: {exc.strerror}", symlink=symlink)
    identity = (info.st_ino, info.st_mtime_ns)
    if not stat.S_ISREG(info.st_mode):
        return _Entry(path, 0, info.st_mtime, "not a regular file", symlink, identity)
    if info.st_size == 0:
        return _Entry(path, 0, info.st_mtime, "empty file", symlink, identity)
    key = (str(path), info.st_ino, info.st_size, info.st_mtime_ns)
    problem = known.get(key) if known is not None else None
    if problem is None:
        problem = _header_problem(str(path))
    if seen is not None:
        seen[key] = problem
    return _Entry(path, info.st_size, info.st_mtime, problem, symlink, identity)


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
    unchecked = f", {scan.unverified} not checked yet" if scan.unverified else ""
    counts = f"({valid} valid, {len(scan.files) - valid} invalid{unchecked})"
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
        self._scan_cache = ScanCache()
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
                                           cache=self._scan_cache,
                                           verify_budget=VERIFY_PER_SCAN)
        except AdapterError as exc:
            return await self._failed(str(exc), max_age, now)
        finally:
            self._hub.metrics.backup_scan_duration.set(time.perf_counter() - started)
        self._hub.metrics.backup_scan_up.set(1)
        self._publish(scan, now)
        await self._transitions(scan, now)
        return backup_status_line(scan, now)

    async def _failed(self, message: str, max_age: float, now: float) -> str:
        scan = BackupScan(scanned_at=now, files=(), max_age_seconds=max_age)
        self._hub.metrics.backup_scan_up.set(0)
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
        metrics.backup_files.labels(validity="unverified").set(scan.unverified)
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
        "unverified": scan.unverified,
        "invalid": invalid[-20:],
    }
