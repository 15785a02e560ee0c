"""Benchmark: leader failover time of two real daemons on one PostgreSQL, against the lease.

Two ``brace-watchdog run`` processes share one local PostgreSQL cluster with ``[leadership]``
on (check every 0.5 s, timeout 1 s, lease 4 s). Each round kills the leader — ``SIGKILL`` (the
kernel closes its socket at once) or ``SIGSTOP`` (PostgreSQL must wait for the lease,
``idle_session_timeout``, before it frees the lock) — and measures from the signal to the
survivor's ``brace_watchdog_leader 1`` on its exporter, then restarts the victim. The floor
side by side: the lease for SIGSTOP (nothing can be faster), one check interval for SIGKILL.
Target: failover within lease + 2 check intervals + settle for both.

Then the time to the new leader's first allowed action: from that ``leader 1`` until it first
plans a gated action (a docker daemon.json rollback between two files it never applies; each
plan is journaled as ``approval.planned``), asked over its control socket every 20 ms. A new
leader refuses while it settles (the old one's check interval + timeout, so the old one has
noticed), which is the floor; target: within one lease of taking the lock. Writes
``bench/results/failover.json``.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.common import (
    VENV_BIN,
    daemon_config,
    figure,
    parse_metric,
    report,
    stop_process,
    target_server,
)
from brace_watchdog.adapters.postgres import free_port
from brace_watchdog.ctl import ControlClient
from tests.support.pg import PgCluster, start_cluster

INTERVAL, TIMEOUT, LEASE = 0.5, 1.0, 4.0
SETTLE = INTERVAL + TIMEOUT
TARGET = LEASE + 2 * INTERVAL + SETTLE


class Node:
    def __init__(self, root: Path, health_url: str, dsn: str, name: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        extra = (f'[restore_test]\nenabled = false\n[database]\ndsn = "{dsn}"\n'
                 f'interval_seconds = 5.0\n[leadership]\nenabled = true\nname = "{name}"\n'
                 f"check_interval_seconds = {INTERVAL}\ncheck_timeout_seconds = {TIMEOUT}\n"
                 f"lease_seconds = {LEASE}\n[network_rollback]\n"
                 f'docker_daemon_json = "{root / "daemon.json"}"\n'
                 'docker_restart_command = ["true"]\n')
        (root / "daemon.json").write_text('{"debug": true}\n')
        (root / "daemon.json.bak").write_text("{}\n")
        self.control = ControlClient(str(root / "control.sock"))
        self.config = daemon_config(root, health_url=health_url, metrics_port=self.port,
                                    interval=1.0, extra=extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        log = (self.config.parent / "daemon.log").open("ab")
        self.proc = subprocess.Popen([str(VENV_BIN / "brace-watchdog"), "run", "--config",
                                      str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.config.parent)
        log.close()

    def leader(self) -> float | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                        timeout=2) as response:
                return parse_metric(response.read().decode(), "brace_watchdog_leader")
        except OSError:
            return None

    def plans(self) -> bool:
        """Whether it plans a gated action now (a follower or a settling leader refuses)."""
        return bool(self.control.call("docker_daemon_rollback")["ok"])

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGCONT)
            stop_process(self.proc)


def wait_leader(nodes: list[Node], timeout: float = 60.0) -> Node:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        values = [n.leader() for n in nodes]
        leaders = [n for n, v in zip(nodes, values, strict=True) if v == 1.0]
        if len(leaders) == 1 and None not in values:
            return leaders[0]
        time.sleep(0.05)
    raise RuntimeError(f"no single leader within {timeout:.0f}s")


def one_failover(nodes: list[Node], how: signal.Signals) -> tuple[float, float]:
    """Seconds from killing/stopping the leader to the other one reporting leader = 1, and
    from then to its first allowed action."""
    old = wait_leader(nodes)
    survivor = next(n for n in nodes if n is not old)
    assert old.proc is not None
    started = time.monotonic()
    os.kill(old.proc.pid, how)
    while survivor.leader() != 1.0:
        if time.monotonic() - started > 120:
            raise RuntimeError("no takeover within 120 s")
        time.sleep(0.02)
    leads = time.monotonic()
    took = leads - started
    while not survivor.plans():
        if time.monotonic() - leads > 60:
            raise RuntimeError("the new leader did not act within 60 s")
        time.sleep(0.02)
    first_action = time.monotonic() - leads
    if how == signal.SIGSTOP:
        os.kill(old.proc.pid, signal.SIGCONT)
    old.stop()
    old.start()
    return took, first_action


def run(rounds: int, cluster: PgCluster, workdir: Path) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"SIGKILL": [], "SIGSTOP": [], "first_action_SIGKILL": [],
                                     "first_action_SIGSTOP": []}
    with target_server(workdir) as target:
        nodes = [Node(workdir / f"node{i}", target.url(), cluster.dsn(), f"node{i}")
                 for i in range(2)]
        try:
            for _ in range(rounds):
                for how in (signal.SIGKILL, signal.SIGSTOP):
                    took, first_action = one_failover(nodes, how)
                    times[how.name].append(took)
                    times[f"first_action_{how.name}"].append(first_action)
        finally:
            for node in nodes:
                node.stop()
    return times


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 round instead of 5")
    args, _ = parser.parse_known_args(argv)
    rounds = 1 if args.quick else 5
    with tempfile.TemporaryDirectory(prefix="brace-bench-failover-") as tmp:
        cluster = start_cluster(Path(tmp) / "pg")
        try:
            times = run(rounds, cluster, Path(tmp))
        finally:
            cluster.stop()
    note = (f"median of {rounds}; check {INTERVAL}s, timeout {TIMEOUT}s, lease {LEASE}s; the "
            f"new leader acts {SETTLE}s later (settle)")
    items = [figure("failover_sigkill", value=statistics.median(times["SIGKILL"]),
                    baseline_value=INTERVAL, unit="s", baseline="one check interval",
                    target=TARGET, target_on="value", note=note),
             figure("failover_sigstop", value=statistics.median(times["SIGSTOP"]),
                    baseline_value=LEASE, unit="s", baseline="the lease (idle_session_timeout)",
                    target=TARGET, target_on="value", note=note),
             figure("first_action_after_takeover", value=statistics.median(
                 times["first_action_SIGKILL"] + times["first_action_SIGSTOP"]),
                    baseline_value=SETTLE, unit="s",
                    baseline="settle (the old leader's check interval + timeout)",
                    target=LEASE, target_on="value",
                    note=f"median of {2 * rounds} (both kinds); lock gained -> first gated "
                         f"plan accepted; lease {LEASE}s")]
    print("failover: leader killed or stopped -> the other instance leads, then acts")
    return report("failover", items, times, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
