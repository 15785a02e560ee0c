"""Benchmark: on a real single-node Swarm, first failing probe → verified rollback, vs its floor.

A private dockerd (own data-root, exec-root, socket; never the shared engine) is put in swarm
mode; a ``brace`` stack service serves ``/api/health`` from busybox on a loopback port. The real
components run in-process with ``[rollback] driver = "swarm"`` (health probes every
``--interval`` s, the rollback component). Each round: the service becomes known-good, a bad
update (its args now serve a folder without ``/api/health``: 404) is deployed, and we measure

* ``recovery`` — from the first failing probe *after the bad update was issued* (a probe that
  failed while the service was still starting before known-good does not count) to the
  ``rollback.succeeded`` event (every task on the known-good image ID *and* spec, then
  ``verify_successes`` consecutive OK probes);
* ``floor`` — the window the policy needs (``min_samples`` = 90% of window / interval, no grace)
  plus what Swarm itself took in that round to converge after ``service rollback`` (journal
  ``swarm_rollback`` → ``images_verified``): detection + one service update.

Each round also records where the time went: update → first failure (Swarm stopping the old
task; not counted), first failure → deploy seen, deploy seen → decision (the window), decision →
``service rollback``, → tasks verified (Swarm's convergence: its stop grace, its 2 s "gossip
converge" delay before a task with a network attachment is stopped, the new task's start), →
probes verified.

Target: recovery <= 1.3x floor (median). Writes ``bench/results/swarm_rollback.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import docker

from bench.common import figure, print_figures, write_result
from brace_watchdog.config import parse_config
from tests.support.images import ensure_busybox_image
from tests.support.stack import Harness
from tests.support.swarm import STACK, PrivateSwarm, create_web_service, private_swarm

TARGET = 1.3


async def one_round(engine: PrivateSwarm, image: str, root: Path, window: float,
                    interval: float) -> dict[str, float]:
    service_id, port, _ = create_web_service(engine, root, image, "api")
    min_samples = int(0.9 * window / interval)
    config = parse_config({
        "daemon": {"state_path": str(root / "state.db")},
        "health": {"url": f"http://127.0.0.1:{port}/api/health", "interval_seconds": interval,
                   # the window must hold min_samples probes of a hang too (else refused)
                   "timeout_seconds": window / min_samples},
        "restore_test": {"enabled": False}, "notify": {"log_lines": 0},
        "rollback": {"enabled": True, "driver": "swarm", "project": STACK, "services": ["api"],
                     "failure_results": ["http_4xx", "http_5xx", "timeout", "connection_error"],
                     "stable_after_seconds": 2.0, "deploy_grace_seconds": 0.0,
                     "window_seconds": window, "min_samples": min_samples,
                     "verify_successes": 3, "verify_timeout_seconds": 120.0,
                     "interval_seconds": interval}}, {}, base_dir=root)
    try:
        async with Harness(config) as h:
            await h.wait_event("release.known_good", timeout=120)
            updated = time.time()
            engine.client.services.get(service_id).update(
                args=["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/"])
            await h.wait_event("rollback.succeeded", timeout=180)
            return _phases(h, updated, window)
    finally:
        engine.client.services.get(service_id).remove()


def _phases(h: Harness, updated: float, window: float) -> dict[str, float]:
    """Recovery, its floor, and where the time went, from one round's probes and journal."""
    # the first failing probe *of the bad update* (not the start-up's, before the service ran)
    first = min(s.ts for s in h.hub.observations.samples("backend")
                if s.result != "ok" and s.ts >= updated)
    at = {kind: min(e.ts for e in h.events(kind) if e.ts >= updated) for kind in (
        "deploy", "action.rollback.begin", "action.rollback.swarm_rollback",
        "action.rollback.images_verified", "rollback.succeeded")}
    swarm_seconds = at["action.rollback.images_verified"] - at["action.rollback.swarm_rollback"]
    recovery, floor = at["rollback.succeeded"] - first, window + swarm_seconds
    return {"recovery_seconds": round(recovery, 3), "floor_seconds": round(floor, 3),
            "ratio": round(recovery / floor, 3), "swarm_seconds": round(swarm_seconds, 3),
            # where the time went, in order
            "update_to_first_failure": round(first - updated, 3),
            "first_failure_to_deploy_seen": round(at["deploy"] - first, 3),
            "deploy_seen_to_decision": round(at["action.rollback.begin"] - at["deploy"], 3),
            "decision_to_service_rollback": round(
                at["action.rollback.swarm_rollback"] - at["action.rollback.begin"], 3),
            "service_rollback_to_tasks_verified": round(swarm_seconds, 3),
            "tasks_verified_to_probes_verified": round(
                at["rollback.succeeded"] - at["action.rollback.images_verified"], 3)}


async def main_async(args: argparse.Namespace) -> list[dict[str, float]]:
    shared = docker.from_env()
    image = ensure_busybox_image(shared)
    rounds = []
    with private_swarm(shared, [image]) as engine:
        os.environ["DOCKER_HOST"] = engine.host  # the in-process driver's engine
        for number in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="brace-bench-swarm-") as tmp:
                result = await one_round(engine, image, Path(tmp), args.window, args.interval)
            print(f"round {number + 1}: recovery {result['recovery_seconds']:.2f}s, floor "
                  f"{result['floor_seconds']:.2f}s -> {result['ratio']:.3f}x", flush=True)
            rounds.append(result)
    shared.close()
    return rounds


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 round instead of 3")
    parser.add_argument("--window", type=float, default=4.0)
    parser.add_argument("--interval", type=float, default=0.25)
    args, _ = parser.parse_known_args(argv)
    args.rounds = 1 if args.quick else 3
    rounds = asyncio.run(main_async(args))
    items = [figure("swarm_rollback_time_to_recovery",
                    value=statistics.median(r["recovery_seconds"] for r in rounds),
                    baseline_value=statistics.median(r["floor_seconds"] for r in rounds),
                    unit="s", baseline="floor (window + Swarm's convergence after the rollback)",
                    target=TARGET, ratio_value=statistics.median(r["ratio"] for r in rounds),
                    note=f"median of {args.rounds}; window {args.window} s, probes every "
                         f"{args.interval} s; single-node Swarm on a private dockerd")]
    print_figures(items)
    path = write_result("swarm_rollback", items, {"rounds": rounds}, quick=args.quick)
    print(f"results: {path}")
    return 0 if items[0]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
