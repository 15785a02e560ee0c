"""Integration: the backups monitor against a real folder (real pg_dump output, real files).

A truncated dump still starts with ``PGDMP`` and is *valid* for this monitor: only the restore
test (issue 4) can prove that a dump restores.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from brace_watchdog.config import parse_config
from brace_watchdog.metrics import Metrics
from brace_watchdog.monitors.backups import (
    FULL_LISTING_SECONDS,
    VERIFY_PER_SCAN,
    BackupsMonitor,
    ScanCache,
    scan_backups,
)
from brace_watchdog.runtime import Hub
from brace_watchdog.state import StateStore
from tests.support.pg import PgCluster, make_brace_dump

NOW = datetime(2026, 11, 25, 6, 12, tzinfo=UTC).timestamp()
HOUR = 3600.0


class RecordingNotifier:
    """Stands in for the webhook notifier (another component's adapter): records what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def send(self, event: str, payload: dict[str, Any]) -> None:
        self.sent.append((event, payload))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _hub(directory: Path, store: StateStore | None = None, **backups: Any) -> Hub:
    config = parse_config({"backups": {"directory": str(directory), "max_age_hours": 26,
                                       "settle_seconds": 60, **backups}})
    return Hub(config=config, store=store or StateStore(":memory:").open(),
               metrics=Metrics(CollectorRegistry()), notifier=RecordingNotifier())


def _write(path: Path, data: bytes, mtime: float) -> Path:
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def _value(hub: Hub, name: str, labels: dict[str, str] | None = None) -> float | None:
    return hub.metrics.registry.get_sample_value(name, labels or {})


def _kinds(hub: Hub) -> list[str]:
    return [event.kind for event in hub.store.events(limit=1000)]


async def test_mixed_folder_good_truncated_empty_foreign_and_unsettled(
        pg_cluster: PgCluster, tmp_path: Path) -> None:
    folder = tmp_path / "backups"
    good = make_brace_dump(pg_cluster, folder / "brace_20261125_030000.dump").path
    os.utime(good, (NOW - 3 * HOUR, NOW - 3 * HOUR))
    whole = good.read_bytes()
    _write(folder / "brace_tg_20261124020000.dump", whole[: len(whole) // 2], NOW - 28 * HOUR)
    _write(folder / "brace_20261125_040000.dump", b"", NOW - 2 * HOUR)
    _write(folder / "brace_20261125_050000.dump", b"-- plain SQL, not -Fc\n", NOW - HOUR)
    _write(folder / "brace_20261125_061130.dump", whole[:4096], NOW - 30)   # still being written
    _write(folder / "brace_manual.dump", whole, NOW - 5 * HOUR)            # mtime fallback
    _write(folder / "notes.txt", b"PGDMP ignored: not a pattern match", NOW - HOUR)
    (folder / "brace_dir.dump").mkdir()
    outside = _write(tmp_path / "elsewhere.dump", whole, NOW - HOUR)
    (folder / "brace_20261125_060000.dump").symlink_to(outside)
    hub = _hub(folder)

    status = await BackupsMonitor(hub, clock=lambda: NOW).cycle()

    assert status == "newest brace_20261125_030000.dump 3.2h old, fresh (3 valid, 5 invalid)"
    scan = hub.observations.backups
    assert scan is not None
    by_name = {f.name: f for f in scan.files}
    assert "notes.txt" not in by_name
    assert by_name["brace_20261125_030000.dump"].valid
    assert by_name["brace_20261125_030000.dump"].timestamp_source == "name"
    assert by_name["brace_tg_20261124020000.dump"].valid    # header intact: restore test's job
    assert by_name["brace_manual.dump"].timestamp_source == "mtime"
    assert by_name["brace_manual.dump"].timestamp == NOW - 5 * HOUR
    reasons = {name: f.reason for name, f in by_name.items() if not f.valid}
    assert reasons["brace_20261125_040000.dump"] == "empty file"
    assert reasons["brace_20261125_050000.dump"].startswith("not a pg_dump custom-format file")
    assert reasons["brace_20261125_061130.dump"].startswith("still being written")
    assert reasons["brace_dir.dump"] == "not a regular file"
    assert "symlink leads out of the backup folder" in reasons["brace_20261125_060000.dump"]
    assert _value(hub, "brace_backup_files", {"validity": "valid"}) == 3
    assert _value(hub, "brace_backup_files", {"validity": "invalid"}) == 5
    assert _value(hub, "brace_backup_fresh") == 1
    named = datetime(2026, 11, 25, 3, 0, tzinfo=UTC).timestamp()       # the name, not the mtime
    assert _value(hub, "brace_backup_newest_timestamp_seconds") == named
    assert _value(hub, "brace_backup_newest_size_bytes") == len(whole)
    assert _value(hub, "brace_backup_newest_age_seconds") == NOW - named
    assert _value(hub, "brace_backup_max_age_seconds") == 26 * HOUR
    assert (_value(hub, "brace_backup_scan_duration_seconds") or 0) > 0


async def test_transitions_are_recorded_once_and_survive_a_restart(tmp_path: Path) -> None:
    folder = tmp_path / "backups"
    folder.mkdir()
    clock = Clock(NOW)
    hub = _hub(folder)
    notifier = hub.notifier
    assert isinstance(notifier, RecordingNotifier)
    monitor = BackupsMonitor(hub, clock=clock)

    assert await monitor.cycle() == "no valid backup, stale (0 valid, 0 invalid)"
    assert _kinds(hub) == ["backup.stale"]
    assert [event for event, _ in notifier.sent] == ["backup.stale"]
    assert _value(hub, "brace_backup_newest_age_seconds") == float("inf")

    _write(folder / "brace_20261125_050000.dump", b"PGDMP" + b"\0" * 64, NOW - HOUR)
    assert (await monitor.cycle()).startswith("newest brace_20261125_050000.dump 1.2h old, fresh")
    _write(folder / "brace_tg_20261125060000.dump", b"PGDMP" + b"\0" * 99, NOW - 600)
    await monitor.cycle()
    assert _kinds(hub) == ["backup.stale", "backup.fresh", "backup.new"]
    assert _value(hub, "brace_backup_newest_size_bytes") == 104

    clock.now = NOW + 27 * HOUR                         # nothing new for a day
    assert _value(hub, "brace_backup_newest_age_seconds") == 27 * HOUR + 12 * 60   # at scrape
    assert "stale" in await monitor.cycle()
    await monitor.cycle()
    assert _kinds(hub)[-1] == "backup.stale" and _kinds(hub).count("backup.stale") == 2
    assert _value(hub, "brace_backup_fresh") == 0
    stale_payload = notifier.sent[-1][1]
    assert stale_payload["newest"] == "brace_tg_20261125060000.dump"

    (folder / "brace_tg_20261125060000.dump").unlink()   # someone deletes the newest
    await monitor.cycle()
    assert _kinds(hub)[-1] == "backup.newest_changed"
    assert "brace_tg_20261125060000.dump was removed" in hub.store.events()[-1].message

    restarted = _hub(folder, store=hub.store)
    await BackupsMonitor(restarted, clock=clock).cycle()
    assert len(_kinds(restarted)) == 5                  # already announced before the restart


async def test_missing_directory_is_an_error_state_not_a_crash(tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    hub = _hub(folder)
    monitor = BackupsMonitor(hub, clock=lambda: NOW)
    status = await monitor.cycle()
    assert status == (f"ERROR: backup directory {folder} does not exist; create it or fix "
                      "[backups] directory")
    await monitor.cycle()
    assert _kinds(hub) == ["backup.error"]
    assert _value(hub, "brace_backup_fresh") == 0
    assert _value(hub, "brace_backup_files", {"validity": "valid"}) == 0
    assert hub.observations.backups is not None and not hub.observations.backups.fresh(NOW)

    folder.mkdir()
    _write(folder / "brace_20261125_050000.dump", b"PGDMP", NOW - HOUR)
    assert "fresh" in await monitor.cycle()
    assert _kinds(hub) == ["backup.error", "backup.fresh"]


async def test_ten_thousand_files_scan(tmp_path: Path) -> None:
    """Counts are right at 10,000 files; how fast is bench/bench_backup_scan.py's to say."""
    folder = tmp_path / "many"
    folder.mkdir()
    old = NOW - 2 * HOUR
    for i in range(10_000):
        stamp = datetime.fromtimestamp(NOW - 30 * 86_400 + i * 60, UTC)
        name = (f"brace_{stamp:%Y%m%d_%H%M%S}.dump" if i % 2 else
                f"brace_tg_{stamp:%Y%m%d%H%M%S}.dump")
        payload = b"PGDMP\x01\x0e" if i % 10 else b"garbage"
        _write(folder / name, payload, old)
    hub = _hub(folder)
    monitor = BackupsMonitor(hub, clock=lambda: NOW)

    first = await monitor.cycle()                      # the newest is valid: decided at once,
    unchecked = 10_000 - 1 - VERIFY_PER_SCAN           # 500 more, 1 in 10 of them garbage
    assert VERIFY_PER_SCAN == 500
    assert first.endswith(f"(451 valid, 50 invalid, {unchecked} not checked yet)")
    assert _value(hub, "brace_backup_files", {"validity": "unverified"}) == unchecked
    statuses = [await monitor.cycle() for _ in range(unchecked // VERIFY_PER_SCAN + 1)]
    assert statuses[-1].endswith("(9000 valid, 1000 invalid)")
    assert _value(hub, "brace_backup_files", {"validity": "unverified"}) == 0
    assert (_value(hub, "brace_backup_scan_duration_seconds") or 0.0) > 0


def test_scan_is_a_plain_function_usable_from_a_thread(tmp_path: Path) -> None:
    _write(tmp_path / "brace_20261125_050000.dump", b"PGDMP", NOW - HOUR)
    scan = scan_backups(tmp_path, ("brace_*.dump",), now=NOW, settle_seconds=60,
                        max_age_seconds=HOUR)
    assert scan.fresh(NOW) is False       # 1h12m old, max 1h
    assert scan.newest is not None and scan.newest.timestamp_source == "name"


def test_header_cache_skips_unchanged_files_and_sees_changes(tmp_path: Path) -> None:
    good = tmp_path / "brace_20260101_000000.dump"
    good.write_bytes(b"PGDMP" + b"\0" * 100)
    os.utime(good, (1_000, 1_000))
    cache = ScanCache()

    def scan() -> bool:
        result = scan_backups(tmp_path, ("brace_*.dump",), now=time.time(), settle_seconds=60,
                              max_age_seconds=3600, cache=cache)
        return result.files[0].valid

    assert scan() is True
    assert len(cache.headers) == 1
    good.write_bytes(b"garbage" + b"\0" * 98)  # same size, new content and mtime
    os.utime(good, (2_000, 2_000))
    assert scan() is False
    good.unlink()
    scan_backups(tmp_path, ("brace_*.dump",), now=time.time(), settle_seconds=60,
                 max_age_seconds=3600, cache=cache)
    assert cache.headers == {}


def test_an_unchanged_folder_reuses_its_listing_but_watches_what_decides(tmp_path: Path) -> None:
    folder = tmp_path / "backups"
    folder.mkdir()
    dump = b"PGDMP" + b"\0" * 100
    old = _write(folder / "brace_20261125_010000.dump", dump, NOW - 5 * HOUR)
    older = _write(folder / "brace_20261125_050000.dump", dump, NOW - HOUR)
    settling = _write(folder / "brace_20261125_061100.dump", dump, NOW - 30)
    os.utime(folder, (NOW - 10 * HOUR, NOW - 10 * HOUR))   # nothing created here for hours
    cache, wall = ScanCache(), [NOW]

    def scan(now: float) -> dict[str, Any]:
        files = scan_backups(folder, ("brace_*.dump",), now=now, settle_seconds=60,
                             max_age_seconds=26 * HOUR, cache=cache,
                             wall_clock=lambda: wall[0]).files
        return {f.name: f for f in files}

    assert scan(NOW)[settling.name].reason.startswith("still being written")
    _write(old, b"garbage" + b"\0" * 98, NOW - 5 * HOUR + 1)    # rewritten in place, not watched
    wall[0] += 60
    reused = scan(NOW + 60)
    assert reused[old.name].valid                               # the listing was reused...
    assert reused[settling.name].valid                          # ...re-judged where time matters
    wall[0] += FULL_LISTING_SECONDS
    assert not scan(NOW + 60)[old.name].valid                   # the next full listing sees it
    _write(settling, b"", NOW + 90)                            # the newest dump truncated in place
    wall[0] += 60
    assert scan(NOW + 180)[settling.name].reason == "empty file"   # watched: seen at once
    assert scan(NOW + 180)[older.name].valid
    _write(folder / "brace_20261125_070000.dump", dump, NOW - 600)   # the folder changes
    wall[0] += 60
    assert "brace_20261125_070000.dump" in scan(NOW + 240)


def test_a_large_first_scan_checks_what_decides_now_and_the_rest_over_later_cycles(
        tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    count = VERIFY_PER_SCAN * 2 + 10
    names = [f"brace_{datetime.fromtimestamp(NOW - (count - i) * 3600, UTC):%Y%m%d_%H%M%S}.dump"
             for i in range(count)]
    for name in names[:-3]:
        _write(folder / name, b"PGDMP" + b"\0" * 10, NOW - 2 * HOUR)
    _write(folder / names[-3], b"PGDMP" + b"\0" * 10, NOW - 2 * HOUR)   # the newest valid one
    _write(folder / names[-2], b"garbage", NOW - 2 * HOUR)              # newer, but broken
    _write(folder / names[-1], b"PGDMP", NOW - 10)                      # newest, still written
    cache = ScanCache()

    def scan() -> Any:
        return scan_backups(folder, ("brace_*.dump",), now=NOW, settle_seconds=60,
                            max_age_seconds=26 * HOUR, cache=cache,
                            verify_budget=VERIFY_PER_SCAN)

    first = scan()
    assert first.newest is not None and first.newest.name == names[-3]   # decided at once
    assert first.unverified == count - 3 - VERIFY_PER_SCAN
    assert len(first.files) == 3 + VERIFY_PER_SCAN
    assert scan().unverified == count - 3 - 2 * VERIFY_PER_SCAN
    done = scan()
    assert done.unverified == 0 and len(done.valid) == count - 2
    every = scan_backups(folder, ("brace_*.dump",), now=NOW, settle_seconds=60,
                         max_age_seconds=26 * HOUR)                     # no cache: everything
    assert every.unverified == 0 and [f.name for f in every.files] == names
