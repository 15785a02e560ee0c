"""The daemon as a real process: READY over NOTIFY_SOCKET, metrics that pass promtool,
SIGHUP with a valid and an invalid config, SIGTERM with STOPPING=1 and a clean exit within 10 s.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.skips import skip_or_fail
from tests.support.webserver import SwitchableServer, switchable_server

BIN = Path(sys.executable).with_name("brace-watchdog")


def write_config(path: Path, *, health_url: str, metrics_port: int, interval: float = 0.2,
                 extra: str = "") -> None:
    path.write_text(f"""
[daemon]
state_path = "state.db"
[metrics]
listen = "127.0.0.1:{metrics_port}"
[health]
url = "{health_url}"
interval_seconds = {interval}
timeout_seconds = 1
[backups]
directory = "backups"
[control]
socket = "control.sock"
[restore_test]
enabled = false
{extra}
""", encoding="utf-8")


class Daemon:
    def __init__(self, tmp_path: Path, server: SwitchableServer) -> None:
        self.dir = tmp_path
        (tmp_path / "backups").mkdir()
        self.config = tmp_path / "brace-watchdog.toml"
        self.metrics_port = free_port()
        self.health_url = server.url()
        write_config(self.config, health_url=self.health_url, metrics_port=self.metrics_port)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(tmp_path / "notify.sock"))
        self.notify.settimeout(0.2)
        self.messages: list[str] = []
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
               "WATCHDOG_USEC": "1000000"}
        self.log = (tmp_path / "daemon.log").open("w")
        self.proc = subprocess.Popen([str(BIN), "run", "--config", str(self.config)], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def wait_for(self, prefix: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages:
                if message.startswith(prefix):
                    self.messages.remove(message)
                    return message
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except TimeoutError:
                assert self.proc.poll() is None, self.output()
        raise AssertionError(f"no {prefix!r} within {timeout}s; got {self.messages}\n"
                             + self.output())

    def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def sample(self, name: str) -> float | None:
        for line in self.scrape().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def output(self) -> str:
        self.log.flush()
        return (self.dir / "daemon.log").read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()
        self.log.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with switchable_server() as server:
        proc = Daemon(tmp_path, server)
        try:
            yield proc
        finally:
            proc.close()


def test_ready_then_metrics_pass_promtool(daemon: Daemon) -> None:
    assert "READY=1" in daemon.wait_for("READY=1")
    daemon.wait_for("WATCHDOG=1")
    daemon.wait_for("STATUS=")
    time.sleep(0.5)
    scrape = daemon.scrape()
    for name in ("brace_health_up", "brace_backup_fresh", "brace_alertmanager_up",
                 "brace_watchdog_component_up", "brace_watchdog_info"):
        assert name in scrape
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("promtool is not installed (apt-get install prometheus)")
    check = subprocess.run([promtool, "check", "metrics"], input=scrape, text=True,
                           capture_output=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_sighup_reloads_valid_and_keeps_running_on_invalid(daemon: Daemon) -> None:
    daemon.wait_for("READY=1")
    write_config(daemon.config, health_url=daemon.health_url, metrics_port=daemon.metrics_port,
                 interval=0.3, extra="[daemon]\n")  # duplicate table: invalid TOML
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("RELOADING=1")
    daemon.wait_for("READY=1")
    assert daemon.sample('brace_watchdog_config_reloads_total{result="failure"}') == 1.0
    assert daemon.proc.poll() is None

    write_config(daemon.config, health_url=daemon.health_url, metrics_port=daemon.metrics_port,
                 interval=0.3, extra="[alerts]\ninterval_seconds = 5\n")
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("RELOADING=1")
    daemon.wait_for("READY=1")
    assert daemon.sample('brace_watchdog_config_reloads_total{result="success"}') == 1.0
    assert "reload refused, keeping the running config" in daemon.output()


def test_sigterm_stops_cleanly_within_ten_seconds(daemon: Daemon) -> None:
    daemon.wait_for("READY=1")
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.wait_for("STOPPING=1")
    assert daemon.proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 10
    assert not (daemon.dir / "control.sock").exists()


def test_invalid_config_refuses_to_start(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[health]\ninterval_seconds = 0\nbogus = 1\n[metrics]\nlisten = "nope"\n')
    result = subprocess.run([str(BIN), "run", "--config", str(config)], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 2
    for problem in ("health.interval_seconds: must be > 0", "health.bogus: unknown key",
                    "metrics.listen: must be host:port"):
        assert problem in result.stderr
    check = subprocess.run([str(BIN), "check-config", "--config", str(config)],
                           capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 2
    assert check.stderr == result.stderr
