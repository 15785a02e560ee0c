"""The daemon as a real process: READY over NOTIFY_SOCKET, metrics that pass promtool,
SIGHUP with a valid and an invalid config, SIGTERM with STOPPING=1 and a clean exit within 10 s.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import BIN, Daemon, write_config
from tests.support.skips import skip_missing
from tests.support.webserver import switchable_server


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
        skip_missing("promtool is not installed (apt-get install prometheus)")
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


def test_a_hanging_backend_warns_once_not_every_cycle(tmp_path: Path) -> None:
    """Each probe of a hanging backend takes the whole 1 s timeout against a 0.2 s interval:
    the overruns are counted, and the log warns once for the episode, not once a cycle."""
    with switchable_server() as server:
        server.mode = "hang"
        daemon = Daemon(tmp_path, server)
        try:
            daemon.wait_for("READY=1")
            while (daemon.sample('brace_health_probes_total{result="timeout",'
                                 'target="backend"}') or 0) < 4:
                time.sleep(0.2)
            overruns = daemon.sample('brace_watchdog_component_overruns_total{'
                                     'component="health"}')
            assert overruns is not None and overruns >= 3
            assert daemon.output().count("health: cycle overran") == 1
        finally:
            daemon.close()
