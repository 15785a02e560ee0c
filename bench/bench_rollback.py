"""Benchmark: time from the first failing probe to a verified app rollback, against its floor.

On the test stack (real docker engine, real compose, the four app services; busybox web images:
v1 answers ``/api/health`` with 200) the real components run in-process (health probes every
``--interval`` s, the rollback component) over a real state file. Each round: v1 becomes
known-good, then a bad release is deployed — one scenario per round kind:

* ``5xx``   — an image whose ``/api/health`` answers 500;
* ``hang``  — a backend that accepts connections and never answers (each probe times out);
* ``crash`` — a backend that exits at start under ``restart: always`` (a crash loop: refused
  connections);

and we measure

* ``recovery`` — from the first failing probe to the ``rollback.succeeded`` event (images
  verified and ``verify_successes`` consecutive OK probes of backend and frontend);
* ``floor`` — what the policy itself cannot beat, measured in the same round: the deploy grace,
  then ``min_samples - 1`` more failing samples (a probe interval apart; a probe *timeout*
  apart for a hanging release, where each probe waits out its timeout), plus the one compose run
  that recreates the four services (its duration in this rollback's journal). The window length
  is not part of it: after a deploy the policy needs only ``min_samples``.

Target: recovery <= 1.3x floor (median over ``--rounds`` per scenario). ``--scenario`` picks
scenarios (default all three). Results go to ``bench/results/rollback.json``.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the stack helpers live in tests/support

import docker  # noqa: E402

from brace_watchdog.config import Config  # noqa: E402
from brace_watchdog.monitors.policy import assess_window  # noqa: E402
from tests.support.images import ensure_busybox_image  # noqa: E402
from tests.support.stack import (  # noqa: E402
    COMPOSE_V1,
    COMPOSE_VARIANTS,
    CRASHING,
    HANGING,
    Harness,
    Stack,
    ensure_web_images,
    new_stack,
    rollback_config,
)

RESULTS = ROOT / "bench" / "results" / "rollback.json"
TARGET = 1.3
SCENARIOS = ("5xx", "hang", "crash")
# the journal steps whose times each round reports, from the first failing probe on
STEPS = ("begin", "compose_done", "images_verified", "probes_verified", "succeeded")


@dataclass(frozen=True)
class Policy:
    """The detection settings every round uses (the floor is computed from them)."""

    interval: float
    timeout: float
    grace: float
    min_samples: int
    window: float

    def floor(self, scenario: str, compose_seconds: float) -> float:
        spacing = max(self.interval, self.timeout) if scenario == "hang" else self.interval
        return self.grace + (self.min_samples - 1) * spacing + compose_seconds


def deploy_bad(stack: Stack, scenario: str) -> None:
    if scenario == "5xx":
        stack.deploy("v2")
    else:
        stack.deploy("v1", backend_command=HANGING if scenario == "hang" else CRASHING,
                     wait=False)


async def one_round(stack: Stack, root: Path, scenario: str, policy: Policy) -> dict[str, Any]:
    stack.deploy("v1")
    config = rollback_config(stack, root, window_seconds=policy.window,
                             deploy_grace_seconds=policy.grace, min_samples=policy.min_samples,
                             interval_seconds=min(0.25, policy.interval), stable_after_seconds=2.0,
                             verify_successes=3, verify_timeout_seconds=60.0,
                             probe_interval=policy.interval, probe_timeout=policy.timeout)
    async with Harness(config) as h:
        await h.wait_event("release.known_good", timeout=60)
        # in a thread: the daemon keeps probing while compose deploys, as in production, so the
        # first failing probe is seen when the swap begins, not after compose returns
        await asyncio.to_thread(deploy_bad, stack, scenario)
        await h.wait_event("deploy", timeout=60)
        deployed = h.rollback.tracker.deploy_at or 0.0  # when the look that saw it began
        done = await h.wait_event("rollback.succeeded", timeout=180)
        rounds = h.events("action.rollback.probes_verified")[0].evidence["rounds"]
        first = min(s.ts for target in ("backend", "frontend")
                    for s in h.hub.observations.samples(target)
                    if s.ts >= deployed - 1.0 and s.result in config.rollback.failure_results)
        compose = float(h.events("action.rollback.compose_done")[0].evidence["duration_seconds"])
        started = h.events("action.rollback.begin")[0].ts
        marks = {"deploy_detected": deployed,
                 "sustained": sustained_at(h, config, deployed, done.ts),
                 **{step: h.events(f"action.rollback.{step}")[0].ts
                    for step in STEPS}}
    recovery = done.ts - first
    floor = policy.floor(scenario, compose)
    return {"recovery_seconds": round(recovery, 3), "floor_seconds": round(floor, 3),
            "ratio": round(recovery / floor, 3), "compose_seconds": compose,
            "time_to_action_seconds": round(started - first, 3),
            "timeline": {name: round(ts - first, 3) for name, ts in marks.items()
                         if ts is not None}, "verify_rounds": rounds}


def sustained_at(h: Harness, config: Config, deployed: float, until: float) -> float | None:
    """When the window first became sustained: the policy's verdict replayed after each sample
    of every target (the earliest moment the policy could decide)."""
    cfg = config.rollback
    found = []
    for target in list(h.hub.observations.probes):
        own = [s for s in h.hub.observations.samples(target) if s.ts <= until]
        found += [s.ts for s in own if assess_window(
            own, now=s.ts, window_seconds=cfg.window_seconds, min_samples=cfg.min_samples,
            error_ratio=cfg.error_ratio, failure_results=cfg.failure_results,
            ignore_before=deployed + cfg.deploy_grace_seconds).sustained]
    return min(found, default=None)


async def scenario_rounds(client: docker.DockerClient, images: dict[str, str], scenario: str,
                          args: argparse.Namespace, policy: Policy) -> dict[str, object]:
    rounds = []
    for number in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="brace-bench-rollback-") as tmp:
            stack = new_stack(client, Path(tmp) / "stack", images,
                              COMPOSE_VARIANTS.get(args.compose, COMPOSE_V1))
            try:
                result = await one_round(stack, Path(tmp), scenario, policy)
            finally:
                stack.destroy()
        print(f"{scenario} round {number + 1}: recovery {result['recovery_seconds']:.2f}s, "
              f"floor {result['floor_seconds']:.2f}s (compose {result['compose_seconds']:.2f}s)"
              f" -> {result['ratio']:.3f}x; timeline {result['timeline']}, "
              f"{result['verify_rounds']} verify rounds", flush=True)
        rounds.append(result)
    ratio = statistics.median(r["ratio"] for r in rounds)
    return {"rounds": rounds, "median_ratio": ratio, "met": ratio <= TARGET,
            "median_recovery_seconds": statistics.median(r["recovery_seconds"] for r in rounds),
            "median_floor_seconds": statistics.median(r["floor_seconds"] for r in rounds)}


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    policy = Policy(interval=args.interval, timeout=args.timeout, grace=args.grace,
                    min_samples=args.min_samples, window=args.window)
    client = docker.from_env()
    images = ensure_web_images(client, ensure_busybox_image(client))
    scenarios = {name: await scenario_rounds(client, images, name, args, policy)
                 for name in args.scenario or SCENARIOS}
    client.close()
    return {"benchmark": "rollback", "compose": args.compose, "policy": policy.__dict__,
            "scenarios": scenarios, "target_ratio": TARGET,
            "met": all(bool(s["met"]) for s in scenarios.values()),
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count() or 0},
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenario", action="append", choices=SCENARIOS,
                        help="repeatable; default all three")
    parser.add_argument("--interval", type=float, default=0.25, help="probe interval seconds")
    parser.add_argument("--timeout", type=float, default=1.0, help="probe timeout seconds")
    parser.add_argument("--grace", type=float, default=1.0, help="deploy_grace_seconds")
    parser.add_argument("--min-samples", type=int, default=6)
    parser.add_argument("--window", type=float, default=10.0, help="window_seconds")
    parser.add_argument("--compose", choices=sorted(COMPOSE_VARIANTS), default="compose-v5",
                        help="which compose deploys and rolls back (production runs v5)")
    args, _ = parser.parse_known_args()
    summary = asyncio.run(main_async(args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    for name, result in summary["scenarios"].items():  # type: ignore[attr-defined]
        print(f"{name}: median recovery {result['median_recovery_seconds']:.2f}s vs floor "
              f"{result['median_floor_seconds']:.2f}s = {result['median_ratio']:.3f}x "
              f"(target <= {TARGET}x)")
    return 0 if summary["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
