"""``make demo`` (``python -m demo``): watch brace-watchdog roll a bad release back.

1. builds the demo images offline (busybox ``docker import`` + two web releases: v1 answers
   ``/api/health`` with 200, v2 with 500) — nothing is pulled from a registry;
2. starts a compose project (``docker-compose``, host networking, free loopback ports) on v1;
3. starts the real daemon (``brace-watchdog run``) with a small demo config;
4. waits until v1 is recorded as the known-good release, then deploys v2 the way a release
   pipeline would (re-point the tag, ``docker-compose up -d``);
5. waits for the automatic rollback and its verification, prints the timeline from the event
   log, and tears everything down (daemon, containers, tags, pins, temp folder).

Exit status 0 when the rollback was verified, 1 otherwise.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

from brace_watchdog.state import StateStore
from tests.support.images import ensure_busybox_image
from tests.support.stack import (
    ensure_web_images,
    new_stack,
    wait_for_event,
    write_daemon_config,
)

TIMELINE_KINDS = ("daemon.started", "deploy", "health.transition", "release.known_good",
                  "rollback.decision", "rollback.would", "rollback.started", "rollback.succeeded",
                  "escalation",
                  "automation.frozen", "action.rollback.begin", "action.rollback.retagged",
                  "action.rollback.compose_done", "action.rollback.images_verified",
                  "action.rollback.probes_verified", "action.rollback.succeeded",
                  "action.rollback.failed")

def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def print_timeline(store_path: Path, since: float) -> None:
    store = StateStore(store_path).open()
    try:
        events = [e for e in store.events(kinds=TIMELINE_KINDS, limit=500) if e.ts >= since]
    finally:
        store.close()
    print("\n   time  event                          what happened")
    print("  -----  -----------------------------  " + "-" * 60)
    for event in events:
        detail = event.message
        if event.kind == "action.rollback.compose_done":
            detail = (f"{' '.join(event.evidence['argv'])} exited {event.evidence['returncode']} "
                      f"in {event.evidence['duration_seconds']}s")
        print(f"{event.ts - since:6.1f}s  {event.kind:<30} {detail[:160]}")
    print()


def run_demo(root: Path, timeout: float) -> bool:
    client = docker.from_env()
    say("building the demo images offline (busybox + web v1/v2) ...")
    images = ensure_web_images(client, ensure_busybox_image(client))
    stack = new_stack(client, root / "stack", images)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        say(f"starting compose project {stack.project} on release v1 (health 200)")
        stack.deploy("v1")
        config = write_daemon_config(stack, root)
        state = root / "state.db"
        started = time.time()
        daemon = subprocess.Popen([sys.executable, "-m", "brace_watchdog", "run", "--config",
                                   str(config)])
        say("daemon started; waiting for v1 to become the known-good release ...")
        if wait_for_event(state, ("release.known_good",), timeout) is None:
            say("v1 never became known-good")
            return False
        say("deploying the bad release v2 (health 500) with docker-compose up -d ...")
        stack.deploy("v2")
        outcome = wait_for_event(state, ("rollback.succeeded", "action.rollback.failed",
                                         "escalation"), timeout)
        print_timeline(state, started)
        ok = outcome is not None and outcome.kind == "rollback.succeeded"
        running = stack.running_images()
        back = running.get("backend") == images["v1"]
        say(f"backend now runs {'v1 (known-good)' if back else running.get('backend')}")
        say("rollback verified" if ok and back else f"no verified rollback ({outcome})")
        return ok and back
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
        say("tearing down the stack, images tags and pins")
        stack.destroy()
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for each phase (default 60)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="brace-watchdog-demo-") as tmp:
        return 0 if run_demo(Path(tmp), args.timeout) else 1


if __name__ == "__main__":
    sys.exit(main())
