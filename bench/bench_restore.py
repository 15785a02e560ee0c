"""Benchmark: brace-watchdog's restore test vs the runbook's manual restore, side by side.

Generates a ~200 MB ``pg_dump -Fc`` dump (alembic_version + four tables of generated rows with
indexes) from a throwaway source cluster, then restores the same dump, in one run, through:

* ``manual``  — the runbook: a fresh server with default settings, then
  ``pg_restore -h 127.0.0.1 -p PORT -U postgres -d postgres DUMP`` and ``psql -c "select 1"``,
  then the server is removed;
* ``brace_same`` — brace-watchdog's full restore test (start, roles, pg_restore --clean
  --if-exists --no-owner, Alembic check, TOC comparison, row counts, cleanup) with the same
  server settings and no ``--jobs`` (target: <= 1.05x manual);
* ``brace_fast`` — the same with ``jobs = 2`` and the throwaway settings (target: <= 0.8x).

These three use the local backend (initdb/pg_ctl; the manual one runs a fresh initdb, brace
reuses its cached pristine initdb template), isolating what brace-watchdog adds. With
``--docker-image IMAGE`` (e.g. ``brace-test/postgres:15``, built by the docker tests) the trio
is repeated with containers: ``docker_manual`` is the runbook's ``docker run``
(host network, ``PGPORT``) + host ``pg_restore``; ``docker_same``/``docker_fast`` are
brace-watchdog's docker backend (pg_restore inside the container; ``docker_fast`` also with
``tmpfs_mb``, the data folder in RAM). Each timing covers server
start to server removal. ``--rounds N`` repeats everything in rotating order; a ratio is the
median over rounds of that round's brace/manual ratio (robust against load from other
processes on a shared machine). Results go to ``bench/results/restore.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.common import PG_BIN, pg_tool
from brace_watchdog.actions.restore_run import RestoreRun, server_factory
from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.adapters.postgres import LocalServer, free_port
from brace_watchdog.adapters.process import run_command
from brace_watchdog.config import parse_config
from brace_watchdog.errors import DockerError

RESULTS = Path(__file__).resolve().parent / "results" / "restore.json"
TABLES = ("events", "orders", "sessions", "audit_log")
DOCKER_FAST_TMPFS_MB = 4096  # [restore_test] tmpfs_mb of docker_fast: the ~1 GB restored, roomy


def _generate_sql(rows_per_table: int) -> list[str]:
    statements = ["create table alembic_version (version_num varchar(32) primary key)",
                  "insert into alembic_version values ('bench0001')"]
    for table in TABLES:
        statements += [
            f"create table {table} (id bigint primary key, user_id integer not null, "
            "created_at timestamptz not null, amount numeric(12, 2), payload text not null)",
            f"insert into {table} select g, (g::bigint * 7919) % 100000, "
            "now() - g * interval '1 second', (g % 10000) / 3.0, "
            "md5(g::text) || md5((g * 31)::text) || "
            f"substr(md5(random()::text), 1, (g % 24)) from generate_series(1, {rows_per_table}) g",
            f"create index {table}_user_idx on {table} (user_id)",
            f"create index {table}_created_idx on {table} (created_at)",
        ]
    return statements


async def make_dump(path: Path, rows_per_table: int) -> None:
    """Fill a throwaway cluster with generated rows and pg_dump -Fc it to ``path``."""
    source = LocalServer(path, throwaway_settings=True, bin_dir=str(PG_BIN))
    await source.start()
    try:
        for sql in _generate_sql(rows_per_table):
            await source.query(sql, time_limit=1800)
        await run_command([pg_tool("pg_dump"), "-Fc", "-h", "127.0.0.1", "-p", str(source.port),
                           "-U", "postgres", "-d", "postgres", "-f", str(path)], timeout=1800)
    finally:
        await source.stop()


async def manual_restore(dump: Path) -> None:
    """The runbook's commands against a fresh default-settings server."""
    server = LocalServer(dump, throwaway_settings=False, reuse_initdb=False,
                         bin_dir=str(PG_BIN))  # a fresh initdb
    await server.start()
    try:
        target = ["-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres"]
        await run_command([pg_tool("pg_restore"), *target, "-d", "postgres", str(dump)],
                          timeout=3600)
        await run_command([pg_tool("psql"), *target, "-c", "select 1;"], timeout=60)
    finally:
        await server.stop()


async def docker_manual_restore(dump: Path, image: str) -> None:
    """The runbook's docker commands (host network instead of -p: the engine has no bridge)."""
    port, name = free_port(), f"brace-bench-restore-{os.getpid()}"
    env = {"PGPASSWORD": "postgres"}
    await run_command(["docker", "run", "--rm", "-d", "--name", name, "--network", "host",
                       "--label", "brace-watchdog.test=1", "-e", "POSTGRES_PASSWORD=postgres",
                       "-e", f"PGPORT={port}", image], timeout=120)
    try:
        target = ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
        for _ in range(600):
            ready = await run_command([pg_tool("pg_isready"), *target], timeout=10, check=False)
            if ready.returncode == 0:
                break
            await asyncio.sleep(0.1)
        await run_command([pg_tool("pg_restore"), *target, "-d", "postgres", str(dump)],
                          timeout=3600, env=env)
        await run_command([pg_tool("psql"), *target, "-c", "select 1;"], timeout=60, env=env)
    finally:
        await run_command(["docker", "rm", "-f", name], timeout=120, check=False)


def brace_restore(*, jobs: int, throwaway: bool, image: str = "", tmpfs_mb: int = 0
                  ) -> Callable[[Path], Awaitable[None]]:
    async def run(dump: Path) -> None:
        backend = {"backend": "docker", "image": image, "network": "host",
                   "tmpfs_mb": tmpfs_mb} if image else {
            "backend": "local", "local_bin_dir": str(PG_BIN)}
        cfg = parse_config({"restore_test": {**backend, "jobs": jobs,
                                             "throwaway_settings": throwaway,
                                             "timeout_seconds": 3600}}).restore_test
        factory = server_factory(cfg, ready_wait=0.1, labels={"brace-watchdog.test": "1"})
        result = await RestoreRun(cfg, dump, factory).execute()
        if not result.passed:
            raise RuntimeError(f"brace restore failed: {result.summary()}")
        print(f"    {result.summary()}; stages {result.stage_seconds}", flush=True)
    return run


def variants(image: str | None) -> dict[str, Callable[[Path], Awaitable[None]]]:
    found: dict[str, Callable[[Path], Awaitable[None]]] = {
        "manual": manual_restore,
        "brace_same": brace_restore(jobs=1, throwaway=False),
        "brace_fast": brace_restore(jobs=2, throwaway=True),
    }
    if image:
        found |= {"docker_manual": lambda dump: docker_manual_restore(dump, image),
                  "docker_same": brace_restore(jobs=1, throwaway=False, image=image),
                  "docker_fast": brace_restore(jobs=2, throwaway=True, image=image,
                                               tmpfs_mb=DOCKER_FAST_TMPFS_MB)}
    return found


async def docker_image(image: str) -> str | None:
    """``image`` when the engine has it, else None (the docker variants are skipped)."""
    try:
        if await DockerAdapter().image_exists(image):
            return image
    except DockerError as exc:
        print(f"docker variants skipped: {exc}")
        return None
    print(f"docker variants skipped: image {image} not present (run the docker tests to build)")
    return None


async def measure(dump: Path, rounds: int, image: str | None) -> dict[str, list[float]]:
    chosen = variants(image)
    names = list(chosen)
    timings: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(rounds):
        order = names[round_no % len(names):] + names[:round_no % len(names)]
        for name in order:
            started = time.perf_counter()
            await chosen[name](dump)
            timings[name].append(time.perf_counter() - started)
            print(f"  round {round_no + 1} {name:11s} {timings[name][-1]:7.2f}s", flush=True)
    return timings


def report(timings: dict[str, list[float]], prefix: str, label: str) -> dict[str, float]:
    """Median over rounds of each round's ratio (variants of one round ran back to back)."""
    manual = timings[f"{prefix}manual" if prefix else "manual"]
    same = timings[f"{prefix}same" if prefix else "brace_same"]
    fast = timings[f"{prefix}fast" if prefix else "brace_fast"]
    ratios = {
        f"{prefix}same_settings": statistics.median(s / m for s, m in zip(same, manual,
                                                                           strict=True)),
        f"{prefix}jobs2_throwaway": statistics.median(f / m for f, m in zip(fast, manual,
                                                                             strict=True)),
    }
    print(f"[{label}] manual runbook restore           {statistics.median(manual):7.2f}s")
    print(f"[{label}] brace-watchdog, same settings    {statistics.median(same):7.2f}s  ratio "
          f"{ratios[f'{prefix}same_settings']:.3f}x (target <= 1.05x)")
    print(f"[{label}] brace-watchdog, jobs=2+throwaway {statistics.median(fast):7.2f}s  ratio "
          f"{ratios[f'{prefix}jobs2_throwaway']:.3f}x (target <= 0.8x)")
    return ratios


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=850_000, help="rows per table (4 tables)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dump", type=Path, default=Path(tempfile.gettempdir())
                        / "brace-bench-restore" / "brace_20260203_045206.dump",
                        help="dump path; reused when it exists (delete it to regenerate)")
    parser.add_argument("--docker-image", default="",
                        help="also run the docker variants with this image (e.g. "
                             "brace-test/postgres:15, built by the docker tests)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON results file")
    args, _ = parser.parse_known_args(argv)
    args.dump.parent.mkdir(parents=True, exist_ok=True)
    if not args.dump.exists():
        print(f"generating {args.rows} rows x {len(TABLES)} tables into {args.dump} ...",
              flush=True)
        started = time.perf_counter()
        asyncio.run(make_dump(args.dump, args.rows))
        print(f"  dump written in {time.perf_counter() - started:.0f}s", flush=True)
    size_mb = args.dump.stat().st_size / 1e6
    print(f"dump: {args.dump} ({size_mb:.0f} MB); {args.rounds} round(s)", flush=True)
    image = asyncio.run(docker_image(args.docker_image)) if args.docker_image else None
    timings = asyncio.run(measure(args.dump, args.rounds, image))
    median = {name: statistics.median(values) for name, values in timings.items()}
    ratios = report(timings, "", "local")
    if image:
        ratios |= report(timings, "docker_", f"docker {image}")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({
        "benchmark": "restore", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "dump_bytes": args.dump.stat().st_size, "rows_per_table": args.rows,
        "tables": len(TABLES), "rounds": args.rounds, "seconds": timings,
        "median_seconds": median, "ratios": ratios,
        "targets": {"same_settings": 1.05, "jobs2_throwaway": 0.8},
        "meets_targets": all(v <= (1.05 if k.endswith("same_settings") else 0.8)
                             for k, v in ratios.items()),
    }, indent=2) + "\n", encoding="utf-8")
    print(f"results: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
