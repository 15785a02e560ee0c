"""Start-up paths of the daemon as a process: what it cannot use is a clear error and exit code 1
(systemd's Restart=on-failure retries it), never a daemon running without part of itself."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from tests.support.daemon import BIN, write_config
from tests.support.net import free_port
from tests.support.webserver import switchable_server


def _run(tmp_path: Path, *, metrics_port: int,
         control_socket: str = "") -> subprocess.CompletedProcess[str]:
    (tmp_path / "backups").mkdir(exist_ok=True)
    config = tmp_path / "brace-watchdog.toml"
    env = dict(os.environ)
    if control_socket:
        env["BRACE_WATCHDOG__CONTROL__SOCKET"] = control_socket
    with switchable_server() as server:
        write_config(config, health_url=server.url(), metrics_port=metrics_port)
        return subprocess.run([str(BIN), "run", "--config", str(config)], capture_output=True,
                              text=True, timeout=60, check=False, env=env)


def test_metrics_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run(tmp_path, metrics_port=port)
    assert result.returncode == 1, result.stderr
    assert (f"cannot listen for metrics on 127.0.0.1:{port}: Address already in use; is another "
            "brace-watchdog running? change [metrics] listen") in result.stderr
    assert not (tmp_path / "control.sock").exists()


def test_control_socket_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("x")
    result = _run(tmp_path, metrics_port=free_port(),
                  control_socket=str(tmp_path / "not-a-folder" / "control.sock"))
    assert result.returncode == 1, result.stderr
    assert (f"cannot use control socket path {tmp_path}/not-a-folder/control.sock: Not a "
            "directory; fix [control] socket") in result.stderr


def test_control_socket_in_a_folder_it_cannot_create_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = _run(tmp_path, metrics_port=free_port(),
                  control_socket=str(tmp_path / "file" / "sub" / "control.sock"))
    assert result.returncode == 1, result.stderr
    assert f"{tmp_path}/file/sub" in result.stderr and "fix [control] socket" in result.stderr
