"""Planning a rollback (pure): retag vs snapshot vs release dir, and the compose argv."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from brace_watchdog.actions.config_snapshot import ConfigSnapshot
from brace_watchdog.actions.rollback_steps import RollbackPlan, build_plan, split_ref
from brace_watchdog.adapters.compose import ComposeCLI, UpPlan, has_pull_option, lost_the_engine
from brace_watchdog.adapters.process import CommandResult
from brace_watchdog.config import RollbackConfig
from brace_watchdog.errors import CommandError
from brace_watchdog.releases import Release, ServiceRelease

CFG = RollbackConfig(enabled=True, compose_command=("docker", "compose"),
                     compose_file=Path("/srv/brace/infra/docker-compose.prod.yml"),
                     project="brace", services=("backend", "frontend"))
CLI = ComposeCLI(CFG.compose_command, timeout=60)
SNAP = ConfigSnapshot((("/srv/brace/infra/docker-compose.prod.yml", b"services: {}\n"),
                       ("/srv/brace/infra/.env", None),
                       ("/srv/brace/infra/conf/backend.env", b"A=1\n")))


def release(image: str = "sha256:good", config: str = "c1", digest: str = "d1",
            wd: str = "/srv/brace/infra") -> Release:
    return Release("brace", wd, (f"{wd}/docker-compose.prod.yml",), (
        ServiceRelease("backend", image, "registry:5000/brace/backend:prod", config, digest),
        ServiceRelease("frontend", "sha256:front", "brace/frontend", "f1", "fd")))


def plan(**kwargs: object):  # type: ignore[no-untyped-def]
    args = {"snapshot": SNAP, "disk_matches_snapshot": True, "compose": CLI, **kwargs}
    cfg = args.pop("cfg", CFG)
    current = args.pop("current", release("sha256:bad", "c2", "d1"))
    return build_plan(cfg, release(), current, **args)  # type: ignore[arg-type]


def test_retag_with_unchanged_file_uses_the_compose_file_on_disk() -> None:
    p = plan()
    assert p.retags == (("registry:5000/brace/backend:prod", "sha256:good"),
                        ("brace/frontend", "sha256:front"))
    assert not p.use_snapshot and not p.config_changed
    assert p.up == UpPlan(files=(str(CFG.compose_file),), project="brace",
                          services=("backend", "frontend"), cwd=str(CFG.compose_file.parent))
    assert p.argv == ("docker", "compose", "-f", str(CFG.compose_file), "-p", "brace", "up",
                      "-d", "--no-build", "--no-deps", "backend", "frontend")
    assert p.expected_images == {"backend": "sha256:good", "frontend": "sha256:front"}


def test_the_snapshot_is_written_back_and_compose_runs_with_the_original_files() -> None:
    p = plan(disk_matches_snapshot=False, current=release("sha256:good", "c9", "d9"))
    assert p.use_snapshot and p.config_changed and p.config_files == SNAP.paths
    assert p.up == UpPlan(files=("/srv/brace/infra/docker-compose.prod.yml",), project="brace",
                          services=("backend", "frontend"), cwd="/srv/brace/infra",
                          project_directory="/srv/brace/infra")
    assert "--env-file" not in p.argv
    journalled = RollbackPlan.from_dict(json.loads(json.dumps(p.to_dict())))
    assert journalled.config_files == SNAP.paths and journalled.up == p.up
    assert plan().config_files == ()  # disk still matches


def test_a_plan_journalled_by_an_older_daemon_still_reads() -> None:
    data = plan(disk_matches_snapshot=False).to_dict()
    assert RollbackPlan.from_dict({**data, "snapshot_dir": "/var/lib/x/releases/abc"}).up == (
        plan(disk_matches_snapshot=False).up)


def test_no_snapshot_kept_falls_back_to_the_file_on_disk() -> None:
    p = plan(disk_matches_snapshot=False, snapshot=None)
    assert not p.use_snapshot and p.up.files == (str(CFG.compose_file),)


def test_release_dir_mode_runs_in_the_known_good_directory_with_its_tags_pinned_back() -> None:
    p = plan(cfg=replace(CFG, mode="release_dir"), disk_matches_snapshot=False)
    # the release folder's compose file names mutable tags: they are pointed back first
    assert p.retags == (("registry:5000/brace/backend:prod", "sha256:good"),
                        ("brace/frontend", "sha256:front"))
    assert not p.use_snapshot
    assert p.up.cwd == "/srv/brace/infra"
    assert p.up.files == ("/srv/brace/infra/docker-compose.prod.yml",)


def test_digest_and_id_refs_are_not_retagged() -> None:
    target = replace(release(), services=(
        ServiceRelease("backend", "sha256:a", "brace/backend@sha256:abc", "c", "d"),
        ServiceRelease("frontend", "sha256:b", "sha256:b", "c", "d")))
    p = build_plan(CFG, target, None, snapshot=SNAP, disk_matches_snapshot=True, compose=CLI)
    assert p.retags == () and p.config_changed and p.current is None


@pytest.mark.parametrize(("ref", "expected"), [
    ("brace/backend:prod", ("brace/backend", "prod")),
    ("brace/backend", ("brace/backend", "latest")),
    ("registry:5000/brace/backend", ("registry:5000/brace/backend", "latest")),
    ("registry:5000/brace/backend:v2", ("registry:5000/brace/backend", "v2")),
])
def test_split_ref(ref: str, expected: tuple[str, str]) -> None:
    assert split_ref(ref) == expected


def test_compose_cli_supports_docker_compose_v1() -> None:
    cli = ComposeCLI(["docker-compose"], timeout=1)
    argv = cli.up_argv(UpPlan(files=("a.yml", "b.yml"), project="p", services=("x",), cwd="/"))
    assert argv == ["docker-compose", "-f", "a.yml", "-f", "b.yml", "-p", "p", "up", "-d",
                    "--no-build", "--no-deps", "x"]
    snapshot = UpPlan(files=("s.yml",), project="p", services=("x",), cwd="/",
                      project_directory="/srv", env_file="/snap/.env")
    assert cli.up_argv(snapshot)[:9] == ["docker-compose", "-f", "s.yml", "-p", "p",
                                         "--project-directory", "/srv", "--env-file", "/snap/.env"]


@pytest.mark.parametrize("kwargs", [{}, {"disk_matches_snapshot": False},
                                    {"current": None}])
def test_the_journalled_plan_reads_back_as_the_same_plan(kwargs: dict[str, object]) -> None:
    p = plan(**kwargs)
    again = RollbackPlan.from_dict(json.loads(json.dumps(p.to_dict())))
    assert again == p and again.expected_images == p.expected_images
    swarm = replace(p, argv=(), swarm_steps=("docker service rollback brace_backend — why",))
    assert RollbackPlan.from_dict(json.loads(json.dumps(swarm.to_dict()))) == swarm


@pytest.mark.parametrize(("version", "pull"), [
    ("1.29.2", False), ("v2.7.9", False), ("2.8.0", True), ("v2.27.1", True),
    ("5.6.1", True), ("", False), ("garbage", False), ("2", False), ("10.0.0-rc1", True),
])
def test_pull_option_by_compose_version(version: str, pull: bool) -> None:
    assert has_pull_option(version) is pull


async def test_compose_v2_and_later_never_pull_and_1_29_is_told_nothing_it_lacks() -> None:
    calls: list[list[str]] = []

    def runner_for(version: str):  # type: ignore[no-untyped-def]
        async def run(argv: list[str], **_: object) -> CommandResult:
            calls.append(list(argv))
            return CommandResult(tuple(argv), 0, version + "\n", "", 0.0)
        return run

    up = UpPlan(files=("a.yml",), project="p", services=("x",), cwd="/")
    v5 = ComposeCLI(["docker", "compose"], timeout=1, runner=runner_for("5.6.1"))
    assert await v5.detect() == "5.6.1" and await v5.detect() == "5.6.1"
    assert calls == [["docker", "compose", "version", "--short"]]  # asked once
    assert v5.up_argv(up)[-5:] == ["--no-build", "--pull", "never", "--no-deps", "x"]
    v1 = ComposeCLI(["docker-compose"], timeout=1, runner=runner_for("1.29.2"))
    await v1.detect()
    assert "--pull" not in v1.up_argv(up) and "--no-build" in v1.up_argv(up)


async def test_an_unknown_compose_version_is_asked_again() -> None:
    async def fails(argv: list[str], **_: object) -> CommandResult:
        raise CommandError("cannot run docker: No such file", argv=list(argv))

    cli = ComposeCLI(["docker", "compose"], timeout=1, runner=fails)
    assert await cli.detect() == "" and cli.version is None and not cli.pull_never


@pytest.mark.parametrize(("running", "config_changed", "runs"), [
    (release(), False, True),
    (release(), True, True),
    (release(config="c2"), False, True),       # an image rollback does not change config
    (release(config="c2"), True, False),       # a config rollback whose up never ran
    (release("sha256:bad"), False, False),
    (release("sha256:bad"), True, False),
    (None, False, False),
    (Release("brace", "/srv", (), ()), False, False),
])
def test_a_restart_finds_the_target_running_only_with_its_config_where_it_changes(
        running: Release | None, config_changed: bool, runs: bool) -> None:
    p = replace(plan(), config_changed=config_changed)
    assert p.runs_target(running) is runs


@pytest.mark.parametrize(("output", "lost"), [
    # 1.29, the engine's socket gone (the last line of its traceback)
    ("docker.errors.DockerException: Error while fetching server API version: ('Connection "
     "aborted.', FileNotFoundError(2, 'No such file or directory'))", True),
    # 1.29, the connection dropped as it asked / mid-run, and its own hint
    ("requests.exceptions.ConnectionError: ('Connection aborted.', RemoteDisconnected('Remote end "
     "closed connection without response'))", True),
    ("ERROR: for backend  UnixHTTPConnectionPool(host='localhost', port=None): Read timed out. "
     "(read timeout=60)", True),
    ("Couldn't connect to Docker daemon at http+docker://localhost - is it running?", True),
    # v5 and v2
    ("failed to connect to the docker API at unix:///run/x/docker.sock; check if the path is "
     "correct and if the daemon is running: dial unix /run/x/docker.sock: connect: no such file "
     "or directory", True),
    ('error during connect: Get "http://%2Frun%2Fx%2Fdocker.sock/_ping": read unix '
     "@->/run/x/docker.sock: read: connection reset by peer", True),
    ("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon "
     "running?", True),
    # the engine answered: a verdict on what compose was asked to do
    ("ERROR: for backend  Cannot start service backend: driver failed programming external "
     "connectivity on endpoint brace_backend_1: Bind for 0.0.0.0:8080 failed: port is already "
     "allocated", False),
    ("Error response from daemon: No such image: brace/backend:v1", False),
    ("no such service: worker", False),
    ("ERROR: The Compose file './docker-compose.yml' is invalid because:\nservices.backend.ports "
     "contains an invalid type", False),
    ("", False),
])
def test_compose_output_says_whether_it_lost_the_engine(output: str, lost: bool) -> None:
    assert lost_the_engine(output) is lost
    assert lost_the_engine(output.upper()) is lost
