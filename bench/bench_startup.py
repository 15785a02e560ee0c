"""Benchmark: ``brace-watchdog run`` from exec to ``READY=1`` vs a bare import of its libraries.

The daemon is started the way systemd starts it: a fresh process with ``NOTIFY_SOCKET`` pointing
at a datagram socket this benchmark holds; the time is from just before ``Popen`` to the
``READY=1`` datagram (every component started, metrics listening, control socket bound). The
baseline, measured alternately in the same run, is the floor no Python daemon with these
dependencies can beat: ``python -c "import docker, psycopg, httpx, prometheus_client, sdnotify,
tenacity"`` from exec to exit. Config: the bench's usual daemon config (health probing a local
target, metrics, control socket; restore tests and rollback off — they start no work at boot).
Target (issue 12): at most 1.0 s on this machine. Writes ``bench/results/startup.json``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    VENV_BIN,
    daemon_config,
    figure,
    report,
    stop_process,
    target_server,
)
from brace_watchdog.adapters.postgres import free_port

TARGET_SECONDS = 1.0
LIBRARIES = "import docker, psycopg, httpx, prometheus_client, sdnotify, tenacity"


def time_to_ready(config: Path, notify_path: Path) -> float:
    """Seconds from exec to READY=1 for one daemon start; the daemon is stopped afterwards."""
    notify_path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(notify_path))
        listener.settimeout(30.0)
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        log = (config.parent / "daemon.log").open("ab")
        started = time.perf_counter()
        process = subprocess.Popen([str(VENV_BIN / "brace-watchdog"), "run", "--config",
                                    str(config)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=config.parent)
        try:
            while True:
                message = listener.recv(4096).decode("utf-8", errors="replace")
                if "READY=1" in message.splitlines():
                    return time.perf_counter() - started
        finally:
            stop_process(process)
            log.close()


def time_imports() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", LIBRARIES], check=True, timeout=60)
    return time.perf_counter() - started


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 11")
    args, _ = parser.parse_known_args(argv)
    rounds = 3 if args.quick else 11
    readies: list[float] = []
    imports: list[float] = []
    with tempfile.TemporaryDirectory(prefix="brace-bench-startup-") as tmp:
        workdir = Path(tmp)
        with target_server(workdir) as target:
            config = daemon_config(workdir, health_url=target.url(), metrics_port=free_port(),
                                   interval=1.0)
            time_imports()                                    # warm the page cache
            for _ in range(rounds):
                readies.append(time_to_ready(config, workdir / "notify.sock"))
                imports.append(time_imports())
    ready, baseline = statistics.median(readies), statistics.median(imports)
    items = [figure("startup_to_ready", value=ready, baseline_value=baseline, unit="s",
                    baseline="python -c 'import <the daemon's libraries>'",
                    target=TARGET_SECONDS, target_on="value",
                    note=f"median of {rounds}; exec to READY=1 under a NOTIFY_SOCKET")]
    print("startup: exec to READY=1", flush=True)
    return report("startup", items, {"rounds": rounds, "ready_seconds": readies,
                                     "import_seconds": imports}, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
