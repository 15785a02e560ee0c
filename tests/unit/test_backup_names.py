"""Unit tests: runbook dump names -> UTC timestamps (both formats, edge cases, impossible dates)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from brace_watchdog.monitors.backups import backup_status_line, parse_backup_name
from brace_watchdog.observations import BackupFile, BackupScan


@pytest.mark.parametrize(("name", "expected"), [
    ("brace_20261125_030000.dump", datetime(2026, 11, 25, 3, 0, 0, tzinfo=UTC)),
    ("brace_tg_20260203045206.dump", datetime(2026, 2, 3, 4, 52, 6, tzinfo=UTC)),
    ("brace_20240229_235959.dump", datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)),
    ("brace_tg_20000101000000.dump", datetime(2000, 1, 1, tzinfo=UTC)),
    ("brace_19991231_000000.dump", datetime(1999, 12, 31, tzinfo=UTC)),
])
def test_parses_both_runbook_formats_as_utc(name: str, expected: datetime) -> None:
    parsed = parse_backup_name(name)
    assert parsed == expected
    assert parsed is not None and parsed.utcoffset() is not None
    assert parsed.timestamp() == expected.timestamp()


@pytest.mark.parametrize("name", [
    "brace_20230229_120000.dump",       # not a leap year
    "brace_20261301_000000.dump",       # month 13
    "brace_20260000_000000.dump",       # month 0
    "brace_20260431_000000.dump",       # 31 April
    "brace_20260100_000000.dump",       # day 0
    "brace_20261125_240000.dump",       # hour 24
    "brace_20261125_236000.dump",       # minute 60
    "brace_20261125_235960.dump",       # second 60 (no leap seconds)
    "brace_tg_20260230045206.dump",     # 30 February
    "brace_tg_00000101000000.dump",     # year 0
])
def test_impossible_dates_are_rejected(name: str) -> None:
    assert parse_backup_name(name) is None


@pytest.mark.parametrize("name", [
    "",
    "brace_20261125_030000.dump.tmp",       # a partial file
    "brace_20261125_030000.sql",            # wrong extension
    "brace_20261125030000.dump",            # tg digits without the tg_ prefix
    "brace_tg_20261125_030000.dump",        # tg prefix with the underscore form
    "brace_2026112_030000.dump",            # 7 date digits
    "brace_20261125_03000.dump",            # 5 time digits
    "brace_tg_2026020304520.dump",          # 13 digits
    "brace_tg_202602030452066.dump",        # 15 digits
    "Brace_20261125_030000.dump",           # case matters
    "xbrace_20261125_030000.dump",
    "brace_20261125_030000.DUMP",
    "brace_\uff12\uff10\uff12\uff161125_030000.dump",   # fullwidth (non-ASCII) digits
    "brace_manual.dump",
    "../brace_20261125_030000.dump",
])
def test_other_names_have_no_timestamp(name: str) -> None:
    assert parse_backup_name(name) is None


def _file(name: str, ts: float, *, valid: bool = True) -> BackupFile:
    return BackupFile(path=Path("/b") / name, size=10, timestamp=ts, timestamp_source="name",
                      valid=valid, reason="" if valid else "empty file")


def test_status_line_names_newest_age_and_counts() -> None:
    now = datetime(2026, 11, 25, 6, 12, tzinfo=UTC).timestamp()
    ts = datetime(2026, 11, 25, 3, 0, tzinfo=UTC).timestamp()
    scan = BackupScan(scanned_at=now, max_age_seconds=26 * 3600,
                      files=(_file("brace_20261125_030000.dump", ts),
                             _file("x.dump", ts, valid=False)))
    assert backup_status_line(scan, now) == (
        "newest brace_20261125_030000.dump 3.2h old, fresh (1 valid, 1 invalid)")
    assert backup_status_line(scan, now + 30 * 3600).endswith("old, stale (1 valid, 1 invalid)")
    empty = BackupScan(scanned_at=now, files=(), max_age_seconds=1.0)
    assert backup_status_line(empty, now) == "no valid backup, stale (0 valid, 0 invalid)"
