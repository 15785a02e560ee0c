"""The release model: building a release from compose containers, fingerprints, diffs, the
services' docker health checks."""

from __future__ import annotations

from dataclasses import replace

from brace_watchdog.observations import ProbeSample
from brace_watchdog.releases import (
    ComposeContainer,
    HealthCheck,
    Release,
    ServiceRelease,
    build_release,
    check_seconds,
    deployed_at,
    diff,
    health_checks,
    pin_tag,
    redeployed,
    reidentified,
    service_rollouts,
)

SERVICES = ("backend", "frontend")


def container(service: str, image: str = "sha256:1", config: str = "c1", *,
              state: str = "running", created: str = "2026-01-01T00:00:00Z",
              project: str = "brace", oneoff: bool = False, wd: str = "/srv") -> ComposeContainer:
    return ComposeContainer(id=f"id-{service}-{created}", name=f"{project}_{service}_1",
                            project=project, service=service, image_id=image,
                            image_ref=f"brace/{service}:latest", config_hash=config,
                            working_dir=wd, config_files=(f"{wd}/docker-compose.yml",),
                            state=state, created=created, oneoff=oneoff)


def release(**images: str) -> Release:
    return Release("brace", "/srv", ("/srv/docker-compose.yml",), tuple(
        ServiceRelease(name, images.get(name, "sha256:1"), f"brace/{name}:latest", "c1")
        for name in SERVICES))


def test_build_release_from_running_containers() -> None:
    obs = build_release("brace", SERVICES, [container("backend"), container("frontend")])
    assert obs.release is not None
    assert obs.release.image_ids() == {"backend": "sha256:1", "frontend": "sha256:1"}
    assert obs.describe() == "all services running"
    assert obs.release.working_dir == "/srv"


def test_build_release_ignores_other_projects_services_and_oneoffs() -> None:
    obs = build_release("brace", SERVICES, [
        container("backend"), container("frontend"), container("backend", "sha256:x",
                                                               project="other"),
        container("db", "sha256:db"), container("backend", "sha256:run", oneoff=True)])
    assert obs.release is not None
    assert obs.release.image_ids()["backend"] == "sha256:1"


def test_build_release_missing_service_has_no_release() -> None:
    obs = build_release("brace", SERVICES, [container("backend")])
    assert obs.release is None
    assert obs.missing == ("frontend",)
    assert "no container: frontend" in obs.describe()


def test_build_release_prefers_running_then_newest() -> None:
    obs = build_release("brace", SERVICES, [
        container("backend", "sha256:old", state="exited", created="2026-01-02"),
        container("backend", "sha256:run", created="2026-01-01"), container("frontend")])
    assert obs.release is not None and obs.release.image_ids()["backend"] == "sha256:run"
    exited = build_release("brace", SERVICES, [
        container("backend", "sha256:a", state="exited", created="2026-01-01"),
        container("backend", "sha256:b", state="exited", created="2026-01-02"),
        container("frontend")])
    assert exited.release is not None and exited.release.image_ids()["backend"] == "sha256:b"
    assert exited.not_running == ("backend",)


def test_build_release_reports_mixed_images() -> None:
    obs = build_release("brace", SERVICES, [container("backend", "sha256:a"),
                                            container("backend", "sha256:b", created="2"),
                                            container("frontend")])
    assert obs.mixed == ("backend",)


def test_fingerprint_is_stable_and_order_independent() -> None:
    a = release(backend="sha256:2")
    b = replace(a, services=tuple(reversed(a.services)))
    assert a.fingerprint == b.fingerprint
    assert len(a.fingerprint) == 64 and a.short == a.fingerprint[:12]
    assert a.fingerprint != release().fingerprint
    assert replace(a, working_dir="/other").fingerprint != a.fingerprint


def test_round_trip_through_dict() -> None:
    a = release(backend="sha256:2")
    assert Release.from_dict(a.to_dict()) == a
    assert a.to_dict()["fingerprint"] == a.fingerprint


def test_diff_image_config_both_none() -> None:
    v1 = release()
    assert diff(v1, v1).change == "none"
    assert diff(v1, v1).describe() == "no change"
    image = diff(v1, release(backend="sha256:2"))
    assert (image.change, image.services) == ("image", {"backend": "image"})
    config = replace(v1, services=(replace(v1.services[0], config_hash="c2"), v1.services[1]))
    assert diff(v1, config).change == "config"
    both = replace(config, services=(replace(config.services[0], image_id="sha256:9"),
                                     v1.services[1]))
    assert diff(v1, both).services == {"backend": "both"}
    mixed = replace(config, services=(config.services[0], replace(v1.services[1],
                                                                  image_id="sha256:9")))
    result = diff(v1, mixed)
    assert result.change == "both"
    assert result.describe() == "backend: config, frontend: image"


def test_diff_moved_working_dir_is_config_and_new_service_is_both() -> None:
    v1 = release()
    assert diff(v1, replace(v1, working_dir="/srv/v2")).change == "config"
    grown = replace(v1, services=(*v1.services, ServiceRelease("bot", "sha256:b", "b", "c")))
    assert diff(v1, grown).services == {"bot": "both"}


def sample(ts: float, result: str = "ok") -> ProbeSample:
    return ProbeSample(ts=ts, target="backend", result=result)  # type: ignore[arg-type]


def test_pin_tag_is_project_scoped() -> None:
    assert pin_tag("brace", "admin-bot", "abcdef0123456789") == (
        "brace-watchdog/pin", "brace-admin-bot-abcdef012345")


T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def test_a_deploy_is_dated_by_its_newest_container_within_what_the_daemon_saw() -> None:
    containers = [container("backend", created="2027-01-15T08:00:01.250000000Z"),
                  container("frontend", created="2027-01-15T07:00:00Z"),
                  container("backend", created="2027-01-15T08:00:05Z", oneoff=True),
                  container("backend", created="2027-01-15T08:00:06Z", project="other"),
                  container("worker", created="2027-01-15T08:00:07Z")]
    assert deployed_at("brace", SERVICES, containers, not_before=T0, now=T0 + 3) == T0 + 1.25
    # never before the previous look, never after this one
    assert deployed_at("brace", SERVICES, containers, not_before=T0 + 2, now=T0 + 3) == T0 + 2
    assert deployed_at("brace", SERVICES, containers, not_before=T0 - 5, now=T0 + 1) == T0 + 1


def test_a_deploy_whose_containers_tell_no_time_is_dated_by_the_look() -> None:
    unreadable = [container("backend", created=""), container("frontend", created="yesterday")]
    assert deployed_at("brace", SERVICES, unreadable, not_before=T0, now=T0 + 3) == T0 + 3
    assert deployed_at("brace", SERVICES, [], not_before=T0, now=T0 + 3) == T0 + 3


def test_a_services_rollout_is_read_from_the_container_its_release_is_read_from() -> None:
    old = replace(container("backend", created="2026-01-01"), rollout="r1")
    new_starting = replace(container("backend", state="starting", created="2026-01-02"),
                           rollout="r2")
    other = replace(container("backend", project="other"), rollout="rx")
    front = container("frontend")  # compose: no rollout told
    assert service_rollouts("brace", SERVICES, [old, new_starting, other, front]) == {
        "backend": "r1"}  # the new task does not run yet: the release is still the old one's
    assert service_rollouts("brace", SERVICES, [replace(old, state="shutdown"),
                                                new_starting]) == {"backend": "r2"}


def test_a_redeploy_is_a_rollout_that_moved_on_a_service_seen_before() -> None:
    assert redeployed({"backend": "r1", "frontend": "f1"},
                      {"backend": "r2", "frontend": "f1"}) == ("backend",)
    assert redeployed({"frontend": "f1"}, {"backend": "r2", "frontend": "f2"}) == ("frontend",)
    assert redeployed({"backend": "r1"}, {}) == ()  # no task this look: nothing moved
    assert redeployed({}, {}) == ()
def checked(service: str, health: str, seconds: float = 4.0, *, state: str = "running",
            created: str = "2026-01-01T00:00:00Z", project: str = "brace") -> ComposeContainer:
    return replace(container(service, state=state, created=created, project=project),
                   health=health, check_seconds=seconds)


def test_health_checks_name_the_worst_running_status_and_the_slowest_verdict() -> None:
    found = health_checks("brace", ("backend", "frontend", "admin-bot", "scheduler"), [
        checked("backend", "healthy", 4.0), checked("backend", "starting", 9.0, created="b"),
        checked("frontend", "healthy"), checked("frontend", "unhealthy", created="b"),
        checked("frontend", "starting", created="c"),
        checked("admin-bot", ""),  # no health check
        checked("scheduler", "unhealthy", state="exited"),  # not running: liveness says down
        checked("backend", "unhealthy", project="other"),
        replace(checked("frontend", "unhealthy"), oneoff=True)])
    assert found == (HealthCheck("backend", "starting", 9.0),
                     HealthCheck("frontend", "unhealthy", 4.0))


def test_check_seconds_from_the_containers_healthcheck_config() -> None:
    ns = 1_000_000_000
    assert check_seconds(None) == check_seconds({}) == 0
    assert check_seconds({"Test": ["NONE"]}) == check_seconds({"Test": []}) == 0
    assert check_seconds({"Test": ["CMD-SHELL", "true"], "Interval": 2 * ns, "Timeout": ns,
                          "Retries": 4}) == 12
    assert check_seconds({"Test": ["CMD", "true"]}) == 3 * (30 + 30)  # docker's defaults


def _swarm(**images: tuple[str, str]) -> Release:
    """A Swarm release: per service (image ID, image ref), one config hash."""
    return Release("brace", "", (), tuple(ServiceRelease(name, image_id, ref, "c1")
                                          for name, (image_id, ref) in sorted(images.items())))


def test_a_release_read_before_tags_were_resolved_is_the_same_release_renamed() -> None:
    tagged = _swarm(backend=("brace/backend:1.4", "brace/backend:1.4"),
                    frontend=("sha256:f", "sha256:f"))
    resolved = _swarm(backend=("sha256:b", "brace/backend:1.4"), frontend=("sha256:f", "sha256:f"))
    assert reidentified(tagged, resolved)
    assert reidentified(resolved, resolved)
    # anything else is a deploy: another image, another tag, a moved config, another service
    for other in (
            _swarm(backend=("sha256:b2", "brace/backend:1.4"), frontend=("sha256:x", "sha256:x")),
            _swarm(backend=("sha256:b", "brace/backend:1.5"), frontend=("sha256:f", "sha256:f")),
            replace(resolved, services=(replace(resolved.services[0], config_hash="c2"),
                                        resolved.services[1])),
            _swarm(backend=("sha256:b", "brace/backend:1.4"))):
        assert not reidentified(tagged, other), other
    # an image ID or a digest never "resolves" to another image
    assert not reidentified(_swarm(backend=("sha256:a", "sha256:a")),
                            _swarm(backend=("sha256:b", "sha256:a")))
    digest = "brace/backend@sha256:d"
    assert not reidentified(_swarm(backend=(digest, digest)), _swarm(backend=("sha256:b", digest)))
    assert not reidentified(release(), release(backend="sha256:2"))  # compose: image IDs
