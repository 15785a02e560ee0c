"""Benchmark: time from the first 5xx to a verified app rollback, next to its floor.

On the demo stack (real docker engine, real ``docker-compose``, busybox web images: v1 answers
``/api/health`` with 200, v2 with 500) the real components run in-process (health probes every
``--interval`` s, the rollback component) over a real state file. Each round: v1 becomes
known-good, v2 is deployed, and we measure

* ``recovery`` — from the first 5xx probe to the ``rollback.succeeded`` event (images verified
  and ``verify_successes`` consecutive OK probes of backend and frontend);
* ``floor`` — what no implementation of the policy can beat: the window length (the policy
  needs a window of failing samples: ``min_samples`` = 90% of window / interval, no grace)
  plus the time the compose command itself took to recreate the services in the same round.

Target: recovery <= 1.3x floor (median over ``--rounds``). Results go to
``bench/results/rollback.json``.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the stack helpers live in tests/support

import docker  # noqa: E402

from tests.support.images import ensure_busybox_image  # noqa: E402
from tests.support.stack import Harness, ensure_web_images, new_stack, rollback_config  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "rollback.json"
TARGET = 1.3


async def one_round(client: docker.DockerClient, images: dict[str, str], root: Path,
                    window: float, interval: float) -> dict[str, float]:
    stack = new_stack(client, root / "stack", images)
    try:
        stack.deploy("v1")
        config = rollback_config(stack, root, window_seconds=window, deploy_grace_seconds=0.0,
                                 min_samples=int(0.9 * window / interval),
                                 interval_seconds=interval, stable_after_seconds=2.0,
                                 verify_successes=3,
                                 probe_interval=interval)
        async with Harness(config) as h:
            await h.wait_event("release.known_good", timeout=30)
            stack.deploy("v2")
            done = await h.wait_event("rollback.succeeded", timeout=120)
            first = min(s.ts for s in h.hub.observations.samples("backend")
                        if s.result == "http_5xx")
            compose = h.events("action.rollback.compose_done")[0].evidence["duration_seconds"]
            started = h.events("action.rollback.begin")[0].ts
        recovery = done.ts - first
        floor = window + float(compose)
        return {"recovery_seconds": round(recovery, 3), "floor_seconds": round(floor, 3),
                "ratio": round(recovery / floor, 3), "compose_seconds": float(compose),
                "time_to_action_seconds": round(started - first, 3)}
    finally:
        stack.destroy()


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    client = docker.from_env()
    images = ensure_web_images(client, ensure_busybox_image(client))
    rounds = []
    for number in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="brace-bench-rollback-") as tmp:
            result = await one_round(client, images, Path(tmp), args.window, args.interval)
        print(f"round {number + 1}: recovery {result['recovery_seconds']:.2f}s, floor "
              f"{result['floor_seconds']:.2f}s (window {args.window:.1f}s + compose "
              f"{result['compose_seconds']:.2f}s) -> {result['ratio']:.3f}x", flush=True)
        rounds.append(result)
    client.close()
    recovery = statistics.median(r["recovery_seconds"] for r in rounds)
    floor = statistics.median(r["floor_seconds"] for r in rounds)
    ratio = statistics.median(r["ratio"] for r in rounds)
    return {"benchmark": "rollback", "window_seconds": args.window,
            "probe_interval_seconds": args.interval, "rounds": rounds,
            "median_recovery_seconds": recovery, "median_floor_seconds": floor,
            "median_ratio": ratio, "target_ratio": TARGET, "met": ratio <= TARGET,
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count() or 0},
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=8.0, help="window_seconds")
    parser.add_argument("--interval", type=float, default=0.25, help="probe interval seconds")
    args, _ = parser.parse_known_args()
    summary = asyncio.run(main_async(args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"median: recovery {summary['median_recovery_seconds']:.2f}s vs floor "
          f"{summary['median_floor_seconds']:.2f}s = {summary['median_ratio']:.3f}x "
          f"(target <= {TARGET}x) -> {RESULTS.relative_to(ROOT)}")
    return 0 if summary["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
