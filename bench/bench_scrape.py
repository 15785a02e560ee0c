"""Benchmark: ``/metrics`` scrape latency and health-probe jitter while a restore test runs vs idle.

Runs the real daemon (health interval 0.5 s against the loopback target, restore tests on the
``local`` backend) and, in the same run:

* idle: ``--scrapes`` scrapes of ``/metrics`` at 20/s, nothing else running;
* during a restore: restore tests of a generated ``pg_dump -Fc`` (tests/support/pg.py,
  ``--rows`` rows; cached under the temp folder) started one after another with
  ``brace-watchdogctl restore-test --dump NAME`` while scraping at 20/s; only scrapes whose body
  says ``brace_restore_test_running 1`` count, until ``--scrapes`` of them.

Probe jitter = deviation of each probe's arrival at the target (the target's request log) from
the daemon's fixed schedule (slot = round((t - first) / interval), phase = median offset);
probes inside a restore test's run count as "during". The backups folder's ``settle_seconds``
is set high so the scheduler never starts a test by itself. Targets: scrape p99 <= 20 ms and
jitter p99 <= 100 ms during a restore; the during/idle ratios are reported alongside.
Writes ``bench/results/scrape.json``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    VENV_BIN,
    TargetServer,
    daemon_config,
    figure,
    parse_metric,
    percentile,
    report,
    running_daemon,
    schedule_deviations,
    target_server,
)
from brace_watchdog.adapters.postgres import free_port
from tests.support.pg import make_brace_dump, start_cluster

INTERVAL = 0.5
RATE = 20.0
DUMP_NAME = "brace_20260101_000000.dump"


def ensure_dump(rows: int) -> Path:
    """A brace-shaped dump with ``rows`` rows per table, made once and reused."""
    folder = Path(tempfile.gettempdir()) / f"brace-bench-scrape-{rows}"
    dump = folder / DUMP_NAME
    if dump.exists():
        return dump
    folder.mkdir(parents=True, exist_ok=True)
    print(f"generating a dump with {rows} rows per table ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="brace-bench-scrape-pg-") as tmp:
        cluster = start_cluster(tmp)
        try:
            make_brace_dump(cluster, folder / "partial.dump", rows=rows)
        finally:
            cluster.stop()
    (folder / "partial.dump").rename(dump)
    return dump


def restore_config(backups: Path) -> str:
    return f"""[backups]
directory = "{backups}"
settle_seconds = 864000.0
[restore_test]
enabled = true
backend = "local"
interval_hours = 100000.0
jobs = 1
"""


class Scraper:
    """Scrapes at a fixed rate; keeps (latency, restore running) per scrape."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.client = httpx.Client(timeout=10.0)
        self.next_run = time.monotonic()

    def scrape(self) -> tuple[float, bool]:
        self.next_run += 1 / RATE
        time.sleep(max(0.0, self.next_run - time.monotonic()))
        started = time.perf_counter()
        body = self.client.get(self.url).text
        elapsed = time.perf_counter() - started
        return elapsed, parse_metric(body, "brace_restore_test_running") == 1.0

    def close(self) -> None:
        self.client.close()


def idle_phase(scraper: Scraper, count: int) -> tuple[list[float], tuple[float, float]]:
    t0 = time.time()
    latencies = [scraper.scrape()[0] for _ in range(count)]
    return latencies, (t0, time.time())


def restore_phase(scraper: Scraper, config: Path, count: int, limit: float
                  ) -> tuple[list[float], list[tuple[float, float]], list[int]]:
    """Scrape while restore tests run back to back; returns latencies, test windows, exit codes."""
    argv = [str(VENV_BIN / "brace-watchdogctl"), "--config", str(config), "restore-test",
            "--dump", DUMP_NAME]
    latencies: list[float] = []
    windows: list[tuple[float, float]] = []
    codes: list[int] = []
    deadline = time.monotonic() + limit
    ctl: subprocess.Popen[bytes] | None = None
    started = 0.0
    try:
        while len(latencies) < count and time.monotonic() < deadline:
            if ctl is None or ctl.poll() is not None:
                if ctl is not None:
                    windows.append((started, time.time()))
                    codes.append(ctl.returncode)
                    if ctl.returncode != 0:
                        raise RuntimeError(f"restore test failed: {ctl.communicate()[0]!r}")
                started = time.time()
                ctl = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            elapsed, running = scraper.scrape()
            if running:
                latencies.append(elapsed)
    finally:
        if ctl is not None:
            ctl.communicate(timeout=300)
            windows.append((started, time.time()))
            codes.append(ctl.returncode)
    return latencies, windows, codes


def jitter(server: TargetServer, windows: list[tuple[float, float]]) -> list[float]:
    """|deviation| of the probes that arrived inside ``windows`` from the probe schedule."""
    since, until = windows[0][0] - 5, windows[-1][1] + 5
    probes = server.requests("brace-watchdog", since, until)
    deviations = schedule_deviations(probes, INTERVAL)
    inside = [abs(d) for t, d in zip(sorted(probes), deviations, strict=True)
              if any(a <= t <= b for a, b in windows)]
    if not inside:
        raise RuntimeError("no health probe arrived during the measured windows")
    return inside


def measure(workdir: Path, dump: Path, scrapes: int) -> dict[str, Any]:
    backups = workdir / "backups"
    backups.mkdir()
    try:  # a hard link: the daemon refuses symlinks leading out of the backups folder
        (backups / dump.name).hardlink_to(dump)
    except OSError:
        shutil.copyfile(dump, backups / dump.name)
    metrics_port = free_port()
    with target_server(workdir) as server:
        config = daemon_config(workdir, health_url=server.url(), metrics_port=metrics_port,
                               interval=INTERVAL, extra=restore_config(backups))
        with running_daemon(config, metrics_port):
            time.sleep(3)
            scraper = Scraper(metrics_port)
            idle, idle_window = idle_phase(scraper, scrapes)
            during, windows, codes = restore_phase(scraper, config, scrapes,
                                                   limit=max(120.0, 6 * scrapes / RATE))
            scraper.close()
        idle_jitter = jitter(server, [idle_window])
        during_jitter = jitter(server, windows)
    if len(during) < scrapes // 2:
        raise RuntimeError(f"only {len(during)} scrapes saw a restore running; exit codes {codes}")
    return {"idle_ms": [x * 1000 for x in idle], "during_ms": [x * 1000 for x in during],
            "idle_jitter_ms": [x * 1000 for x in idle_jitter],
            "during_jitter_ms": [x * 1000 for x in during_jitter],
            "restore_tests": len(codes), "restore_exit_codes": codes,
            "restore_seconds": [round(b - a, 2) for a, b in windows]}


def figures(raw: dict[str, Any]) -> list[dict[str, Any]]:
    items = []
    for name, key, target in (("scrape_p50", "ms", None), ("scrape_p99", "ms", 20.0),
                              ("probe_jitter_p50", "jitter_ms", None),
                              ("probe_jitter_p99", "jitter_ms", 100.0)):
        q = 50 if name.endswith("p50") else 99
        during = percentile(raw[f"during_{key}"], q)
        idle = percentile(raw[f"idle_{key}"], q)
        items.append(figure(
            f"{name}_during_restore", value=during, baseline_value=idle, unit="ms",
            baseline="idle", target=target,
            target_on="value", note=f"{len(raw[f'during_{key}'])} during / "
                                    f"{len(raw[f'idle_{key}'])} idle samples"
            + ("" if target is not None else "; no target (informational)")))
    return items


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="150 scrapes per phase, not 500")
    parser.add_argument("--scrapes", type=int, default=None)
    parser.add_argument("--rows", type=int, default=3_000_000, help="rows per table in the dump")
    args, _ = parser.parse_known_args(argv)
    scrapes = args.scrapes or (150 if args.quick else 500)
    dump = ensure_dump(args.rows)
    print(f"scrape: {scrapes} scrapes idle and during restore tests of {dump.name} "
          f"({dump.stat().st_size / 1e6:.0f} MB)", flush=True)
    with tempfile.TemporaryDirectory(prefix="brace-bench-scrape-") as tmp:
        raw = measure(Path(tmp), dump, scrapes)
    items = figures(raw)
    details = {k: v for k, v in raw.items() if not k.endswith("_ms")}
    details |= {"dump_bytes": dump.stat().st_size, "rows_per_table": args.rows,
                "health_interval_seconds": INTERVAL, "scrape_rate_per_second": RATE,
                "max_ms": {k: max(v) for k, v in raw.items() if k.endswith("_ms")}}
    return report("scrape", items, details, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
