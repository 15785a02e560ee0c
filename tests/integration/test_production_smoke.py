"""The production example's smoke command, run by a real ``docker compose`` against a stack whose
``smoke-tests`` service fails: its exit status must be the smoke tests' status, or a failed smoke
test would read as a successful DB rollback; and the services it tested keep running."""

from __future__ import annotations

import subprocess
import tomllib
import uuid
from pathlib import Path

import docker

from brace_watchdog.config import parse_config

REPO = Path(__file__).resolve().parents[2]
SMOKE_EXIT = 7


def _production_smoke_command(compose_file: Path) -> list[str]:
    raw = tomllib.loads((REPO / "etc" / "brace-watchdog.production.toml").read_text())
    argv = list(parse_config(raw).db_rollback.smoke_command)
    argv[argv.index("-f") + 1] = str(compose_file)  # the same command, against a test stack
    return argv


def test_smoke_command_returns_the_smoke_tests_status(
        tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str) -> None:
    compose_file = tmp_path / "docker-compose.prod.yml"
    compose_file.write_text(
        "services:\n"
        "  backend:\n"
        f"    image: {busybox_image}\n"
        "    command: [\"sleep\", \"300\"]\n"
        "  smoke-tests:\n"
        f"    image: {busybox_image}\n"
        "    profiles: [\"smoke\"]\n"
        "    depends_on: [backend]\n"
        f"    command: [\"sh\", \"-c\", \"echo smoke failed; exit {SMOKE_EXIT}\"]\n")
    project = f"bwsmoke{uuid.uuid4().hex[:10]}"
    argv = _production_smoke_command(compose_file)
    try:
        run = subprocess.run(argv, env={"COMPOSE_PROJECT_NAME": project, "PATH": "/usr/bin:/bin:"
                                        "/usr/local/bin"},
                             capture_output=True, text=True, timeout=300, check=False)
        backend = docker_client.containers.list(filters={
            "label": [f"com.docker.compose.project={project}",
                      "com.docker.compose.service=backend"]})
    finally:
        subprocess.run(["docker", "compose", "-f", str(compose_file), "-p", project,
                        "--profile", "smoke", "down", "--remove-orphans", "-t", "0"],
                       capture_output=True, timeout=300, check=False)
    assert run.returncode == SMOKE_EXIT, (argv, run.stdout, run.stderr)
    assert "smoke failed" in run.stdout
    # --exit-code-from implies --abort-on-container-exit: it must not stop the app it tested
    assert [c.status for c in backend] == ["running"]
