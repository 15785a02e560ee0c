"""The Swarm release model (pure): spec hash, fingerprint, how a service goes back, convergence."""

from __future__ import annotations

import pytest

from brace_watchdog.swarm_release import (
    ServiceTarget,
    SwarmService,
    SwarmTask,
    choose_step,
    converged,
    fingerprint,
    spec_hash,
    swarm_rolled_back,
)

SPEC = {"Image": "a", "Env": ["B=2", "A=1"], "Args": ["httpd"],
        "Mounts": [{"Source": "/www", "Target": "/www"}]}
GOOD = ServiceTarget("sha256:good", spec_hash(SPEC))
NEW_CONFIG = ServiceTarget("sha256:good", spec_hash({**SPEC, "Env": ["A=2"]}))
NEW_IMAGE = ServiceTarget("sha256:bad", GOOD.spec_hash)
BOTH = ServiceTarget("sha256:bad", NEW_CONFIG.spec_hash)


def _service(current: ServiceTarget, previous: ServiceTarget | None = None,
             state: str = "") -> SwarmService:
    return SwarmService("id", "backend", 7, current, previous, 1, state)


def test_spec_hash_ignores_the_image_and_env_order_but_sees_every_behaviour_key() -> None:
    assert spec_hash({**SPEC, "Image": "b", "Env": ["A=1", "B=2"]}) == spec_hash(SPEC)
    for key, value in (("Env", ["A=1"]), ("Command", ["sh"]), ("Args", ["x"]),
                       ("Mounts", []), ("Configs", [{"ConfigName": "c"}]),
                       ("Secrets", [{"SecretName": "s"}]), ("User", "1000"), ("Dir", "/x")):
        assert spec_hash({**SPEC, key: value}) != spec_hash(SPEC), key


def test_fingerprint_follows_image_and_spec_of_every_service() -> None:
    base = fingerprint([_service(GOOD)])
    assert fingerprint([_service(GOOD)]) == base
    assert fingerprint([_service(NEW_IMAGE)]) != base
    assert fingerprint([_service(NEW_CONFIG)]) != base


@pytest.mark.parametrize(("current", "previous", "method"), [
    (GOOD, None, "none"),
    (GOOD, NEW_IMAGE, "none"),
    (NEW_CONFIG, GOOD, "rollback"),      # the previous spec IS the known-good one
    (NEW_IMAGE, GOOD, "rollback"),       # ... also when only the image changed
    (BOTH, GOOD, "rollback"),
    (NEW_IMAGE, NEW_IMAGE, "update"),    # deployed twice: pin the known-good image
    (NEW_IMAGE, None, "update"),
    (NEW_CONFIG, None, "refuse"),        # config moved, no known-good previous spec
    (BOTH, NEW_IMAGE, "refuse"),
])
def test_choose_step(current: ServiceTarget, previous: ServiceTarget | None,
                     method: str) -> None:
    step = choose_step(_service(current, previous), GOOD)
    assert step.method == method and "backend" in step.why


@pytest.mark.parametrize(("state", "rolled_back"), [
    ("", False), ("updating", False), ("completed", False), ("paused", False),
    ("rollback_started", True), ("rollback_completed", True), ("rollback_paused", True)])
def test_swarms_own_rollback_is_recognised(state: str, rolled_back: bool) -> None:
    assert swarm_rolled_back(_service(GOOD, state=state)) is rolled_back


@pytest.mark.parametrize(("tasks", "replicas", "done"), [
    ([], 1, False),
    ([SwarmTask("i", "running")], 1, True),
    ([SwarmTask("i", "running")], None, True),
    ([SwarmTask("i", "running")], 2, False),
    ([SwarmTask("i", "running"), SwarmTask("j", "running")], 2, False),
    ([SwarmTask("i", "running"), SwarmTask("", "starting")], 1, True),
    ([SwarmTask("j", "running")], 1, False),
    ([SwarmTask("i", "starting")], 1, False),
])
def test_converged(tasks: list[SwarmTask], replicas: int | None, done: bool) -> None:
    assert converged(tasks, "i", replicas) is done
