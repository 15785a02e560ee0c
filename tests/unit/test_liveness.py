"""A service's liveness from what the engine shows: every state, restart counts, health checks."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from brace_watchdog.releases import ComposeContainer, service_liveness
from tests.unit.test_releases import container

SERVICES = ("backend", "scheduler")


def live(*containers: ComposeContainer, before: dict[str, int] | None = None) -> dict[str, str]:
    found = service_liveness("brace", SERVICES, containers, before or {})
    return {f.service: f.result for f in found}


def test_running_containers_are_ok() -> None:
    found = service_liveness("brace", SERVICES, [container("backend"), container("scheduler")], {})
    assert [(f.service, f.result, f.detail) for f in found] == [
        ("backend", "ok", "1 running"), ("scheduler", "ok", "1 running")]


@pytest.mark.parametrize("state", ["restarting", "exited", "dead", "created", "paused"])
def test_a_service_without_a_live_container_is_down(state: str) -> None:
    result = service_liveness("brace", SERVICES, [container("backend"),
                                                  container("scheduler", state=state)], {})
    assert result[1].result == "container_down"
    assert state in result[1].detail
    assert result[0].result == "ok"


def test_a_service_without_any_container_gives_no_sample() -> None:
    """Nothing to judge (a wrong project, a service not deployed): the release is unknown."""
    assert live(container("backend")) == {"backend": "ok"}
    assert live() == {}


def test_a_rising_restart_count_is_down_even_when_running_now() -> None:
    crashed = replace(container("scheduler"), restart_count=4)
    found = service_liveness("brace", SERVICES, [container("backend"), crashed],
                             {crashed.id: 3})
    assert found[1].result == "container_down"
    assert "restarted (3 -> 4)" in found[1].detail


def test_a_restart_count_seen_first_or_unchanged_is_not_a_restart() -> None:
    """A new container (a deploy) has no previous count; a steady count is an old restart."""
    old = replace(container("scheduler"), restart_count=2)
    assert live(container("backend"), old)["scheduler"] == "ok"
    assert live(container("backend"), old, before={old.id: 2})["scheduler"] == "ok"


@pytest.mark.parametrize(("health", "result"), [("healthy", "ok"), ("", "ok"),
                                                ("unhealthy", "container_unhealthy"),
                                                ("starting", "container_starting")])
def test_docker_health_status_where_defined(health: str, result: str) -> None:
    checked = replace(container("scheduler"), health=health)
    assert live(container("backend"), checked)["scheduler"] == result


def test_one_restarting_replica_among_running_ones_is_down() -> None:
    replicas = [replace(container("scheduler"), id="a"),
                replace(container("scheduler", state="restarting"), id="b")]
    assert live(container("backend"), *replicas)["scheduler"] == "container_down"


def test_an_old_exited_container_beside_a_running_one_is_ok() -> None:
    replicas = [replace(container("scheduler"), id="a"),
                replace(container("scheduler", state="exited"), id="b")]
    assert live(container("backend"), *replicas)["scheduler"] == "ok"


def test_other_projects_oneoffs_and_other_services_are_ignored() -> None:
    noise = [container("scheduler", state="exited", project="other"),
             replace(container("scheduler", state="exited", oneoff=True), id="x"),
             container("db", state="exited")]
    assert live(container("backend"), container("scheduler"), *noise) == {
        "backend": "ok", "scheduler": "ok"}


@pytest.mark.parametrize(("state", "health", "rose"), list(itertools.product(
    ["running", "restarting", "exited"], ["", "healthy", "unhealthy", "starting"],
    [False, True])))
def test_every_single_container_combination(state: str, health: str, rose: bool) -> None:
    """Brute force: down beats unhealthy beats starting beats ok."""
    c = replace(container("scheduler", state=state), health=health, restart_count=5)
    result = live(container("backend"), c, before={c.id: 4 if rose else 5})["scheduler"]
    if rose or state != "running":
        assert result == "container_down"
    elif health in ("unhealthy", "starting"):
        assert result == f"container_{health}"
    else:
        assert result == "ok"
