"""The Swarm release model (pure): spec hash, fingerprint, how a service goes back, convergence,
a task's health check."""

from __future__ import annotations

import pytest

from brace_watchdog.adapters.swarm import SpecHashes
from brace_watchdog.releases import (
    HealthCheck,
    Release,
    ServiceRelease,
    build_release,
    diff,
    health_checks,
    service_liveness,
)
from brace_watchdog.swarm_release import (
    NO_TASK,
    ServiceTarget,
    StackTask,
    SwarmService,
    SwarmTask,
    choose_step,
    fingerprint,
    identify,
    not_converged,
    pick_spec,
    pinned,
    plan_steps,
    rollout,
    running_tasks,
    scale_argv,
    spec_hash,
    spec_restored,
    specs_blob,
    specs_from_blob,
    stack_containers,
    swarm_in_charge,
    swarm_rolled_back,
    task_health,
    tasks_gone,
    writers_problem,
)

SPEC = {"Image": "a", "Env": ["B=2", "A=1"], "Args": ["httpd"],
        "Mounts": [{"Source": "/www", "Target": "/www"}]}
GOOD = ServiceTarget("sha256:good", spec_hash(SPEC))
NEW_CONFIG = ServiceTarget("sha256:good", spec_hash({**SPEC, "Env": ["A=2"]}))
NEW_IMAGE = ServiceTarget("sha256:bad", GOOD.spec_hash)
BOTH = ServiceTarget("sha256:bad", NEW_CONFIG.spec_hash)


def _service(current: ServiceTarget, previous: ServiceTarget | None = None) -> SwarmService:
    return SwarmService("id", "backend", 7, current, previous, 1)


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


@pytest.mark.parametrize(("current", "previous", "method"), [
    (GOOD, None, "none"),
    (NEW_CONFIG, GOOD, "rollback"),      # Swarm's previous spec still wins: all of it, at once
    (NEW_IMAGE, NEW_IMAGE, "update"),
    (NEW_CONFIG, None, "restore"),       # config moved, no known-good previous: the kept spec
    (NEW_CONFIG, NEW_CONFIG, "restore"),  # a bad config deployed twice
    (BOTH, NEW_IMAGE, "restore"),
])
def test_choose_step_with_the_known_good_spec_kept(
        current: ServiceTarget, previous: ServiceTarget | None, method: str) -> None:
    step = choose_step(_service(current, previous), GOOD, kept=True)
    assert step.method == method and "backend" in step.why


def test_the_known_good_spec_is_picked_by_its_hash_and_kept_as_json() -> None:
    other = {**SPEC, "Env": ["A=2"]}
    reordered = {**SPEC, "Env": ["A=1", "B=2"], "Image": "sha256:other"}
    assert pick_spec([other, reordered, SPEC], GOOD.spec_hash) == reordered
    assert pick_spec([other], GOOD.spec_hash) is None
    assert specs_from_blob(specs_blob({"backend": SPEC})) == {"backend": SPEC}
    assert specs_from_blob(None) == {}


AUTO = "update rolled back due to failure or early termination of task kt7g9"


def _update(state: str, message: str = "", started: str = "t1",
            auto: bool = True) -> SwarmService:
    return SwarmService("id", "backend", 7, GOOD, None, 1, state, message, started, auto)


UPDATING = _update("updating", "update in progress")
SWARMS_OWN = _update("rollback_started", AUTO)
DONE = _update("rollback_completed", "rollback completed")
BY_HAND = _update("rollback_started", "manually requested rollback", started="t2")


@pytest.mark.parametrize(("service", "before", "rolled_back"), [
    (_update(""), None, False),
    (UPDATING, None, False),
    (_update("completed", "update completed"), UPDATING, False),
    (_update("paused", "update paused"), UPDATING, False),
    (SWARMS_OWN, None, True),   # its message names the failed task
    (SWARMS_OWN, UPDATING, True),
    (_update("rollback_paused", "rollback paused due to failure"), None, True),
    (DONE, UPDATING, True),      # the same update (StartedAt) seen updating
    (DONE, SWARMS_OWN, True),
    (DONE, None, False),         # "rollback completed" alone cannot say who asked
    (DONE, _update("updating", started="t0"), False),  # another update
    (BY_HAND, UPDATING, False),  # `docker service rollback`, or the watchdog's own
    (_update("rollback_completed", "rollback completed", started="t2"), BY_HAND, False),
])
def test_swarms_own_rollback_is_told_from_a_requested_one(
        service: SwarmService, before: SwarmService | None, rolled_back: bool) -> None:
    assert swarm_rolled_back(service, before) is rolled_back


@pytest.mark.parametrize(("service", "in_charge"), [
    (_update(""), False),
    (UPDATING, True),
    (_update("updating", auto=False), False),  # no failure_action: rollback: nobody watches
    (SWARMS_OWN, True),
    (BY_HAND, False),
    (DONE, False),
    (_update("rollback_paused", "rollback paused"), False),
    (_update("completed"), False),
])
def test_swarm_in_charge(service: SwarmService, in_charge: bool) -> None:
    assert swarm_in_charge(service) is in_charge


def _task(target: ServiceTarget, state: str = "running", desired: str = "running",
          note: str = "") -> SwarmTask:
    return SwarmTask("s", target, state, desired, note)


BAD_TASK = ServiceTarget("sha256:bad", "h")


@pytest.mark.parametrize(("tasks", "replicas", "why"), [
    ([], 1, "0 of 1 replicas run the known-good spec"),
    ([_task(GOOD)], 1, None),
    ([_task(GOOD)], 2, "1 of 2 replicas run the known-good spec"),
    ([_task(GOOD), _task(GOOD, "pending", note="no suitable node (max replicas per node "
                                               "limit exceed)")], 2,
     "1 of 2 replicas run the known-good spec (1 not running: pending: no suitable node "
     "(max replicas per node limit exceed))"),
    ([_task(GOOD), _task(GOOD)], 2, None),
    ([_task(GOOD), _task(BAD_TASK)], 2,
     "1 running task(s) still on another spec, 1 on the known-good"),
    # told to stop, still running: an old task counts until it has stopped
    ([_task(GOOD), _task(GOOD, "preparing"), _task(BAD_TASK, desired="shutdown")], 1,
     "1 running task(s) still on another spec, 1 on the known-good (1 not running: preparing)"),
    ([_task(GOOD), _task(BAD_TASK, "shutdown", "shutdown"), _task(GOOD, "failed", "shutdown")],
     1, None),
    ([_task(GOOD, "starting")], 1, "0 of 1 replicas run the known-good spec (1 not running: "
                                   "starting)"),
    ([], 0, None),
    # the known-good task Swarm is stopping (a deploy began) is no replica, its successor is
    ([_task(GOOD, desired="shutdown"), _task(GOOD, "ready", "ready")], 1,
     "0 of 1 replicas run the known-good spec (1 not running: ready)"),
    ([_task(GOOD, desired="shutdown"), _task(GOOD)], 1, None),
    # global: every task Swarm places (one per eligible node) on the known-good spec
    ([_task(GOOD), _task(GOOD)], None, None),
    ([], None, "0 task(s) run the known-good spec (none scheduled)"),
    ([_task(GOOD), _task(GOOD, "rejected", "ready", "no such image")], None,
     "1 task(s) run the known-good spec (1 not running: rejected: no such image)"),
    ([_task(GOOD), _task(BAD_TASK)], None,
     "1 running task(s) still on another spec, 1 on the known-good"),
])
def test_not_converged(tasks: list[SwarmTask], replicas: int | None, why: str | None) -> None:
    assert not_converged(tasks, GOOD, replicas) == why


def test_spec_restored() -> None:
    assert spec_restored(_writer("backend", 1), GOOD)
    assert not spec_restored(_writer("backend", 1), BAD_TASK)
    assert not spec_restored(None, GOOD)


def _writer(name: str, replicas: int | None) -> SwarmService:
    return SwarmService(f"id-{name}", name, 3, GOOD, None, replicas)


def test_writers_problem_refuses_missing_and_global_writers() -> None:
    services = [_writer("backend", 2), _writer("scheduler", 0), _writer("cron", None)]
    assert writers_problem(services, ["backend", "scheduler"], "brace") is None
    assert writers_problem(services, [], "brace") is None
    missing = writers_problem(services, ["backend", "admin-bot"], "brace")
    assert missing and "admin-bot not found in stack brace" in missing
    is_global = writers_problem(services, ["backend", "cron"], "brace")
    assert is_global and "brace_cron run in global mode" in is_global
    assert "nothing was changed" in is_global


@pytest.mark.parametrize(("states", "gone", "running"), [
    ([], True, 0),
    (["shutdown", "complete", "failed", "rejected", "remove", "orphaned"], True, 0),
    (["running"], False, 1),
    (["shutdown", "running", "running"], False, 2),
    (["new"], False, 0), (["pending"], False, 0), (["assigned"], False, 0),
    (["accepted"], False, 0), (["preparing"], False, 0), (["starting"], False, 0),
    (["unknown"], False, 0),
])
def test_tasks_gone_and_running(states: list[str], gone: bool, running: int) -> None:
    assert tasks_gone(states) is gone
    assert running_tasks(states) == running


def test_scale_argv_names_every_service_with_its_count() -> None:
    assert scale_argv({"brace_scheduler": 1, "brace_backend": 2}) == [
        "docker", "service", "scale", "brace_backend=2", "brace_scheduler=1"]


# a crash loop as the manager's task API shows it, look by look: the restarted task waits out
# its restart delay (desired ready, no container), is started, runs for a moment, fails
CRASH_LOOP = [
    [StackTask("t1", "id", NEW_IMAGE, "ready", "2026-01-01T00:00:01Z")],
    [StackTask("t1", "id", NEW_IMAGE, "ready", "2026-01-01T00:00:01Z")],  # desired running now
    [StackTask("t1", "id", NEW_IMAGE, "starting", "2026-01-01T00:00:01Z", "c1")],
    [StackTask("t1", "id", NEW_IMAGE, "running", "2026-01-01T00:00:01Z", "c1")],
    [StackTask("t2", "id", NEW_IMAGE, "assigned", "2026-01-01T00:00:07Z")],
    [],  # the moment between the failure and the restarted task
]


@pytest.mark.parametrize("tasks", CRASH_LOOP)
def test_a_crash_looping_service_is_always_the_same_known_release(
        tasks: list[StackTask]) -> None:
    """Between two crashes no container exists: the release is still the tasks' spec (the
    policy would escalate an unknown release: no_current_release), the same release as while
    a task runs (no deploy is seen), and the service reads down, not running."""
    service = _service(NEW_IMAGE, GOOD)
    running = build_release("brace", ["backend"], stack_containers(
        "brace", [service], [StackTask("t0", "id", NEW_IMAGE, "running", "", "c0")])).release
    containers = stack_containers("brace", [service], tasks)
    obs = build_release("brace", ["backend"], containers)
    assert obs.release is not None and running is not None
    assert obs.release.fingerprint == running.fingerprint
    assert obs.release.image_ids() == {"backend": NEW_IMAGE.image}
    assert obs.release.config_hashes() == {"backend": NEW_IMAGE.spec_hash}
    if not any(t.state == "running" for t in tasks):
        assert obs.not_running == ("backend",)
        (live,) = service_liveness("brace", ["backend"], containers, {})
        assert live.result == "container_down"


def test_stack_containers_take_each_tasks_own_spec_and_container() -> None:
    backend, frontend = _service(GOOD, None), SwarmService("id2", "frontend", 3, BOTH, None, 2)
    tasks = [StackTask("t1", "id", GOOD, "running", "2026-01-01T00:00:01Z", "c1",
                       rollout="r1"),
             StackTask("t2", "id", NEW_IMAGE, "pending", "2026-01-01T00:00:02Z"),  # mid-update
             StackTask("t3", "other", BOTH, "running", "", "c3")]  # not a service of the stack
    found = {c.name: c for c in stack_containers("brace", [backend, frontend], tasks)}
    assert set(found) == {"t1", "t2", "brace_frontend"}
    assert (found["t1"].id, found["t1"].image_id, found["t1"].config_hash, found["t1"].state,
            found["t1"].created) == ("c1", GOOD.image, GOOD.spec_hash, "running",
                                     "2026-01-01T00:00:01Z")
    assert (found["t2"].id, found["t2"].image_ref, found["t2"].running) == (
        "t2", NEW_IMAGE.image, False)
    assert found["t1"].rollout == "r1" and found["brace_frontend"].rollout == ""
    # no task Swarm means to run (scaled to 0, restarts exhausted): its current spec, down
    no_task = found["brace_frontend"]
    assert (no_task.service, no_task.image_id, no_task.config_hash, no_task.state) == (
        "frontend", BOTH.image, BOTH.spec_hash, NO_TASK)
    assert all(c.project == "brace" and not c.oneoff for c in found.values())
    obs = build_release("brace", ["backend", "frontend"], found.values())
    assert obs.release is not None and obs.not_running == ("frontend",) and not obs.mixed
    assert obs.release.image_ids() == {"backend": GOOD.image, "frontend": BOTH.image}


def test_spec_hashes_are_computed_once_per_service_spec_version() -> None:
    hashes = SpecHashes()
    task_spec = {**SPEC}  # a task's copy of its service's spec: equal, not the same object
    assert hashes.target("id", 7, SPEC) == ServiceTarget("a", spec_hash(SPEC))
    assert hashes.target("id", 7, task_spec) == hashes.target("id", None, task_spec)
    assert hashes.computed == 1
    older = {**SPEC, "Env": ["A=0"]}  # an old task mid-rollout: hashed once, then known
    assert hashes.target("id", 7, older).spec_hash == spec_hash(older)
    hashes.target("id", 7, older)
    assert hashes.computed == 2
    assert hashes.target("other", 7, SPEC).spec_hash == spec_hash(SPEC)  # per service
    assert hashes.computed == 3
    hashes.target("id", 8, SPEC)  # a new spec version: hashed anew, the old one forgotten
    hashes.target("id", 8, SPEC)
    hashes.target("id", 8, older)
    assert hashes.computed == 5


def test_a_tasks_rollout_is_hashed_once_per_spec_and_moves_with_a_forced_update() -> None:
    hashes = SpecHashes()
    task = {"ContainerSpec": SPEC, "ForceUpdate": 0}
    assert hashes.rollout("id", 7, task) == hashes.rollout("id", None, {**task}) == rollout(task)
    assert hashes.computed == 1
    forced = {**task, "ForceUpdate": 1}  # `service update --force`: same container spec
    assert rollout(forced) != rollout(task)
    assert hashes.rollout("id", 8, forced) == rollout(forced)
    assert hashes.target("id", 8, SPEC).spec_hash == spec_hash(SPEC)  # its own cache
    assert hashes.computed == 3


@pytest.mark.parametrize(("image", "is_pinned"), [
    ("sha256:1f2e", True),
    ("brace/backend:1.4@sha256:9a8b", True),
    ("registry.local:5000/brace/backend@sha256:9a8b", True),
    ("brace/backend:1.4", False),
    ("brace/backend", False),
    ("registry.local:5000/brace/backend:1.4", False),
])
def test_only_an_image_id_or_a_registry_digest_is_pinned(image: str, is_pinned: bool) -> None:
    assert pinned(image) is is_pinned


def test_a_bare_tag_is_identified_by_the_image_its_node_resolved() -> None:
    tag = ServiceTarget("brace/backend:1.4", GOOD.spec_hash)
    assert identify(tag, "sha256:good") == GOOD
    assert identify(tag, "") == tag  # nothing resolved it: the tag, as it is
    for ref in ("sha256:old", "brace/backend:1.4@sha256:9a8b"):  # pinned: its own identity
        assert identify(ServiceTarget(ref, "h"), "sha256:other") == ServiceTarget(ref, "h")


def test_a_retagged_image_redeployed_under_the_same_tag_is_a_new_release() -> None:
    """Same tag, same spec, another image: another release, the images moved (not the
    config), and each task's container names the tag it was created with."""
    tag = ServiceTarget("brace/backend:1.4", GOOD.spec_hash)
    service = _service(identify(tag, "sha256:new"), identify(tag, "sha256:new"))

    def release(image_id: str) -> Release:
        task = StackTask("t1", "id", identify(tag, image_id), "running", "", "c1",
                         image_ref=tag.image)
        (container,) = stack_containers("brace", [service], [task])
        assert (container.image_id, container.image_ref) == (image_id, tag.image)
        found = build_release("brace", ["backend"], [container]).release
        assert found is not None
        return found
    before, after = release("sha256:good"), release("sha256:new")
    assert before.fingerprint != after.fingerprint
    assert diff(before, after).change == "image"
    # the known-good release names the image ID: pinning it back is an image update (Swarm's
    # previous spec is the same tag, which names the new image now)
    step = choose_step(service, ServiceTarget(before.image_ids()["backend"], GOOD.spec_hash))
    assert step.method == "update", step


STATES = ("new", "pending", "assigned", "ready", "starting", "running", "failed", "shutdown")


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("seconds", [0.0, 6.0])
def test_a_tasks_health_check_status_as_the_task_api_tells_it(state: str,
                                                              seconds: float) -> None:
    """Swarm holds a checked task ``starting`` until its check passes and fails it when docker
    calls it unhealthy: a running checked task is healthy; the promotion rule reads it with its
    verdict time, the liveness reads a task that does not run as down (as before)."""
    task = StackTask("t1", "id", GOOD, state, "", "c1", check_seconds=seconds)
    assert task_health(task) == ({"running": "healthy", "starting": "starting"}.get(state, "")
                                 if seconds else "")
    containers = stack_containers("brace", [_service(GOOD)], [task])
    assert containers[0].check_seconds == seconds
    expected = (HealthCheck("backend", "healthy", seconds),) if (
        seconds and state == "running") else ()
    assert health_checks("brace", ["backend"], containers) == expected
    (live,) = service_liveness("brace", ["backend"], containers, {})
    assert live.result == ("ok" if state == "running" else "container_down")


def test_the_plan_names_each_services_docker_service_step_and_why() -> None:
    """Every method of :func:`choose_step`, and a service the stack lost: one line each, in
    the target's service order, as the ``docker service`` command the API call amounts to."""
    services = [SwarmService("i1", "backend", 4, NEW_CONFIG, GOOD, 1),  # previous = known-good
                SwarmService("i2", "frontend", 4, NEW_IMAGE, BOTH, 1),  # only the image moved
                SwarmService("i3", "admin-bot", 4, GOOD, None, 1),  # already known-good
                SwarmService("i4", "scheduler", 4, BOTH, NEW_IMAGE, 1),  # config moved: refuse
                SwarmService("i5", "worker", 4, BOTH, NEW_IMAGE, 1)]  # ... its spec kept
    target = Release("brace", "", (), tuple(
        ServiceRelease(name, GOOD.image, "", GOOD.spec_hash)
        for name in ("backend", "frontend", "admin-bot", "scheduler", "worker", "gone")))
    assert plan_steps("brace", services, target, kept={"worker"}) == (
        "docker service rollback brace_backend — backend: Swarm's previous spec is the "
        "known-good one; `service rollback` restores all of it at once",
        "docker service update --image sha256:good brace_frontend — frontend: only the image "
        "changed; `service update --image sha256:good` pins the known-good image",
        "nothing to do — admin-bot already runs the known-good spec",
        "REFUSED — scheduler: its config changed, Swarm's previous spec is not the known-good "
        "one and the known-good container spec was not kept (promoted before brace-watchdog "
        "kept specs); the image alone would keep the new config — an operator must decide",
        "docker service update brace_worker back to the known-good container spec kept at its "
        "promotion, image sha256:good — worker: its config changed and Swarm's previous spec "
        "is not the known-good one; `service update` with the known-good container spec kept "
        "at its promotion (image sha256:good)",
        "REFUSED — service brace_gone is gone; nothing to roll back")
