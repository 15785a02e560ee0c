"""Docker daemon.json rollback against a REAL second ``dockerd`` that this test starts with its
own data-root, exec-root, pidfile and socket (the main engine is never touched). Its restart
command really stops and starts that dockerd; a compose project with ``restart: always`` runs in
it, so "services back and healthy" is checked for real after the restart."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from brace_watchdog.actions.config_rollback import _unix_socket_accepts
from tests.integration.control_helpers import control_server, ctl, short_dir
from tests.support.net import free_port, wait_for_port
from tests.support.skips import skip_missing

pytestmark = [pytest.mark.docker, pytest.mark.slow]

GOOD = {"log-level": "warn", "labels": ["brace-watchdog-test=1"]}
BROKEN_TEXT = '{"log-level": "warn",'  # a half-finished edit: dockerd refuses to start

RESTART_SCRIPT = r'''
"""Stand-in for `systemctl restart docker`: stop the test's dockerd, start it again, fail like
systemctl does when the new dockerd exits during start-up."""
import os, signal, subprocess, sys, time
pidfile, log, *argv = sys.argv[1:]

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

try:
    pid = int(open(pidfile).read())
    os.kill(pid, signal.SIGTERM)
except (FileNotFoundError, ValueError, ProcessLookupError):
    pid = None
deadline = time.time() + 30
while pid and alive(pid) and time.time() < deadline:
    time.sleep(0.1)
with open(log, "ab") as out:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                            start_new_session=True)
time.sleep(1.5)
if proc.poll() is not None:
    sys.exit(f"dockerd exited with {proc.returncode} during start-up; see {log}")
'''


@dataclass
class SecondEngine:
    folder: Path
    argv: list[str]
    restart: list[str]

    @property
    def host(self) -> str:
        return f"unix://{self.folder / 'd.sock'}"

    @property
    def daemon_json(self) -> Path:
        return self.folder / "daemon.json"

    def answers(self) -> bool:
        if not _unix_socket_accepts(self.host):
            return False
        try:
            client = docker.DockerClient(base_url=self.host, timeout=5)
        except docker.errors.DockerException:
            return False
        try:
            return bool(client.ping())
        except (docker.errors.DockerException, OSError):
            return False
        finally:
            client.close()

    def wait(self, up: bool = True, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.answers() != up:
            assert time.monotonic() < deadline, (self.folder / "dockerd.log").read_text()[-3000:]
            time.sleep(0.2)

    def stop(self) -> None:
        try:
            pid = int((self.folder / "d.pid").read_text())
            os.kill(pid, signal.SIGTERM)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return
        deadline = time.monotonic() + 30
        while (folder_pid := Path(f"/proc/{pid}/stat")).exists() and time.monotonic() < deadline:
            if folder_pid.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
            time.sleep(0.1)


def _unmount_below(folder: Path) -> None:
    """dockerd leaves its exec-root's netns mount behind; unmount it so the folder can go."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(f"{folder}/")), reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@pytest.fixture
def engine(docker_client: docker.DockerClient, busybox_image: str) -> Iterator[SecondEngine]:
    if not shutil.which("dockerd"):
        skip_missing("dockerd is not installed (Debian package docker.io)")
    folder = short_dir()
    (folder / "daemon.json").write_text(json.dumps(GOOD))
    shutil.copy(folder / "daemon.json", folder / "daemon.json.bak")
    argv = ["dockerd", "--data-root", str(folder / "data"), "--exec-root", str(folder / "x"),
            "--pidfile", str(folder / "d.pid"), "-H", f"unix://{folder / 'd.sock'}",
            "--config-file", str(folder / "daemon.json"), "--bridge=none", "--iptables=false",
            "--ip-masq=false"]
    script = folder / "restart.py"
    script.write_text(RESTART_SCRIPT)
    log = folder / "dockerd.log"
    second = SecondEngine(folder, argv, [sys.executable, str(script), str(folder / "d.pid"),
                                         str(log), *argv])
    with log.open("ab") as out:
        first = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 start_new_session=True)
    try:
        second.wait()
        other = docker.DockerClient(base_url=second.host, timeout=120)
        other.images.load(b"".join(docker_client.images.get(busybox_image).save(named=True)))
        other.close()
        yield second
    finally:
        second.stop()
        if first.poll() is None:
            first.terminate()
        first.wait(30)
        _unmount_below(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _compose(engine: SecondEngine, tmp_path: Path, image: str) -> tuple[Path, str, int]:
    port = free_port()
    (tmp_path / "www" / "api").mkdir(parents=True)
    (tmp_path / "www" / "api" / "health").write_text("ok\n")
    service = ("    image: {image}\n    network_mode: host\n    restart: always\n"
               "    stop_grace_period: 1s\n    labels: {{brace-watchdog.test: '1'}}\n")
    text = ('version: "2.4"\nservices:\n  backend:\n' + service.format(image=image) +
            f"    command: ['httpd', '-f', '-p', '127.0.0.1:{port}', '-h', '/www']\n"
            f"    volumes: ['{tmp_path / 'www'}:/www:ro']\n"
            "  scheduler:\n" + service.format(image=image) +
            "    command: ['sh', '-c', 'trap \"exit 0\" TERM; while true; do sleep 1; done']\n")
    compose_file = tmp_path / "docker-compose.prod.yml"
    compose_file.write_text(text)
    project = f"bwdd{os.getpid()}"
    up = subprocess.run(["docker-compose", "-f", str(compose_file), "-p", project, "up", "-d"],
                        capture_output=True, text=True, timeout=180, check=False,
                        env={**os.environ, "DOCKER_HOST": engine.host})
    assert up.returncode == 0, up.stderr
    wait_for_port(port, timeout=30)
    return compose_file, project, port


def _config(engine: SecondEngine, compose_file: Path, project: str, port: int
            ) -> dict[str, Any]:
    return {
        "health": {"url": f"http://127.0.0.1:{port}/api/health", "timeout_seconds": 2},
        "rollback": {"compose_command": ["docker-compose"], "compose_file": str(compose_file),
                     "project": project},
        "network_rollback": {"docker_daemon_json": str(engine.daemon_json),
                             "docker_restart_command": engine.restart,
                             "docker_host": engine.host, "engine_wait_seconds": 60,
                             "verify_services": ["backend", "scheduler"],
                             "verify_attempts": 40, "verify_wait_seconds": 0.5},
    }


async def test_docker_daemon_rollback_restarts_a_real_dockerd(
        tmp_path: Path, engine: SecondEngine, busybox_image: str,
        docker_client: docker.DockerClient) -> None:
    main_pid = Path("/var/run/docker.pid").read_text() if Path("/var/run/docker.pid").exists() \
        else ""
    compose_file, project, port = _compose(engine, tmp_path, busybox_image)
    # someone edits daemon.json and restarts docker: the engine does not come back
    engine.daemon_json.write_text(BROKEN_TEXT)
    broken = subprocess.run(engine.restart, capture_output=True, text=True, timeout=120,
                            check=False)
    assert broken.returncode != 0, broken
    assert not engine.answers()
    async with control_server(tmp_path, _config(engine, compose_file, project, port)) as env:
        run = await ctl("--socket", str(env.socket), "--json", "rollback", "docker-daemon",
                        "--yes")
        assert run.code == 0, run
        outcome = run.json()
        assert outcome["engine"] == "up" and outcome["services"] == "running"
        assert outcome["health"] == "ok"
        for stage in ("keeping_current", "restoring", "restarting", "waiting_engine",
                      "verifying"):
            assert f"] {stage}:" in run.err
        assert json.loads(engine.daemon_json.read_text()) == GOOD
        assert Path(outcome["kept_as"]).read_text() == BROKEN_TEXT
        assert engine.answers()
        assert env.hub.store.actions(kind="docker_daemon_rollback")[0].status == "succeeded"
    # the main engine was never touched
    assert docker_client.ping()
    if main_pid:
        assert Path("/var/run/docker.pid").read_text() == main_pid


async def test_invalid_backup_json_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "daemon.json").write_text("{}")
    (folder / "daemon.json.bak").write_text("{not json")
    raw = {"network_rollback": {"docker_daemon_json": str(folder / "daemon.json")}}
    async with control_server(tmp_path, raw) as env:
        run = await ctl("--socket", str(env.socket), "rollback", "docker-daemon", "--yes")
        assert run.code == 1 and "is not valid JSON" in run.err, run
        (folder / "daemon.json.bak").write_text("[1, 2]")
        run = await ctl("--socket", str(env.socket), "rollback", "docker-daemon", "--yes")
        assert run.code == 1 and "must hold a JSON object" in run.err, run
        assert (folder / "daemon.json").read_text() == "{}"
