"""Benchmark: ``scan_backups`` over 10,000 files vs ``find DIR -name 'brace_*.dump'``.

The folder mixes runbook dump names (``brace_YYYYMMDD_HHMMSS.dump``, ``brace_tg_...dump``) with
the pg_dump magic, matching names with a bad header or no bytes, and unrelated files. Both
sides list the same folder, alternating, warm page cache; each timing is wall time of one full
pass (``find`` as the subprocess an operator would run, process start included; the scan as the
daemon runs it, in-process). The scan also stats each matching file and reads its 5 header
bytes, which ``find -name`` does not. Targets (issue 12): the monitor's steady-state scan at most
2x ``find``'s time, its first (cold) scan at most 3x. Writes ``bench/results/backup_scan.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import figure, report
from brace_watchdog.monitors.backups import VERIFY_PER_SCAN, ScanCache, scan_backups

TARGET_RATIO = 2.0
COLD_TARGET_RATIO = 3.0


def populate(directory: Path, count: int) -> dict[str, int]:
    """Write ``count`` small files: 60% valid dumps, 10% tg dumps, 10% bad, 20% other names."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    kinds = {"valid": 0, "valid_tg": 0, "bad_header": 0, "empty": 0, "other": 0}
    old = time.time() - 7200
    for number in range(count):
        stamp = start + timedelta(minutes=number)
        slot = number % 10
        if slot < 6:
            kind, name, body = "valid", f"brace_{stamp:%Y%m%d_%H%M%S}.dump", b"PGDMP" + b"\0" * 59
        elif slot == 6:
            kind, name, body = ("valid_tg", f"brace_tg_{stamp:%Y%m%d%H%M%S}.dump",
                                b"PGDMP" + b"\1" * 59)
        elif slot == 7:
            kind, name, body = ("bad_header" if number % 20 else "empty",
                                f"brace_{stamp:%Y%m%d_%H%M%S}.dump",
                                b"" if number % 20 == 0 else b"<html>not a dump</html>")
        else:
            kind, name, body = "other", f"notes_{number}.txt", b"other"
        path = directory / name
        path.write_bytes(body)
        os.utime(path, (old, old))
        kinds[kind] += 1
    os.utime(directory, (old, old))   # a real backups folder last changed at the last backup
    return kinds


def time_scan(directory: Path, cache: ScanCache | None) -> tuple[float, int, int]:
    """One scan as the monitor runs it (``cache``: warm, or a new one for its first scan), or
    without a cache, as ``brace-watchdogctl backups`` does: every match inspected at once.
    Returns (seconds, matching files, files not inspected yet)."""
    started = time.perf_counter()
    scan = scan_backups(directory, ("brace_*.dump",), now=time.time(), settle_seconds=60,
                        max_age_seconds=26 * 3600, cache=cache, verify_budget=VERIFY_PER_SCAN)
    return time.perf_counter() - started, len(scan.files) + scan.unverified, scan.unverified


def time_find(directory: Path) -> tuple[float, int]:
    started = time.perf_counter()
    done = subprocess.run(["find", str(directory), "-name", "brace_*.dump"], capture_output=True,
                          check=True, timeout=60)
    return time.perf_counter() - started, len(done.stdout.splitlines())


def measure(directory: Path, rounds: int) -> dict[str, Any]:
    scans: list[float] = []
    colds: list[float] = []
    fulls: list[float] = []
    finds: list[float] = []
    counts: set[tuple[int, int]] = set()
    cache = ScanCache()
    time_find(directory)                                 # warm the page cache
    while time_scan(directory, cache)[2]:                # the monitor's first cycles
        pass
    for _ in range(rounds):
        scan_seconds, scanned, _ = time_scan(directory, cache)
        colds.append(time_scan(directory, ScanCache())[0])
        fulls.append(time_scan(directory, None)[0])
        find_seconds, found = time_find(directory)
        scans.append(scan_seconds)
        finds.append(find_seconds)
        counts.add((scanned, found))
    if len(counts) != 1 or len({*next(iter(counts))}) != 1:
        raise RuntimeError(f"scan and find disagree on the matching files: {counts}")
    return {"rounds": rounds, "scan_seconds": scans, "find_seconds": finds,
            "matching_files": next(iter(counts))[0],
            "median_scan_seconds": statistics.median(scans),
            "median_cold_scan_seconds": statistics.median(colds),
            "median_full_scan_seconds": statistics.median(fulls),
            "median_find_seconds": statistics.median(finds)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="5 rounds instead of 21")
    parser.add_argument("--files", type=int, default=10_000)
    args, _ = parser.parse_known_args(argv)
    rounds = 5 if args.quick else 21
    with tempfile.TemporaryDirectory(prefix="brace-bench-scan-") as tmp:
        kinds = populate(Path(tmp), args.files)
        result = measure(Path(tmp), rounds)
    result |= {"files": args.files, "kinds": kinds}
    items = [figure("scan_10k_files", value=result["median_scan_seconds"] * 1000,
                    baseline_value=result["median_find_seconds"] * 1000, unit="ms",
                    baseline="find -name", target=TARGET_RATIO, target_on="ratio",
                    note=f"{args.files} files, {result['matching_files']} matching; median of "
                         f"{rounds}; the monitor's steady state: an unchanged folder costs a stat "
                         "of the folder and of the watched entries (newest, settling)"),
             figure("scan_10k_files_cold", value=result["median_cold_scan_seconds"] * 1000,
                    baseline_value=result["median_find_seconds"] * 1000, unit="ms",
                    baseline="find -name", target=COLD_TARGET_RATIO, target_on="ratio",
                    note="the monitor's first scan after start: the newest valid dump and "
                         f"{VERIFY_PER_SCAN} more inspected, the rest over the next cycles"),
             figure("scan_10k_files_full", value=result["median_full_scan_seconds"] * 1000,
                    baseline_value=result["median_find_seconds"] * 1000, unit="ms",
                    baseline="find -name", target=None, target_on="ratio",
                    note="informational: brace-watchdogctl backups, every match stat-ed and "
                         "its header read at once")]
    print(f"backup scan: {args.files} files", flush=True)
    return report("backup_scan", items, result, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
