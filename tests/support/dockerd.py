"""A private docker engine for tests that must stop one: its own data/exec roots, pidfile, unix
socket and containerd namespaces, no bridge and no iptables. Never the shared engine."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.skips import skip_missing

__all__ = ["PrivateDockerd"]


class PrivateDockerd:
    """``start()``/``stop()`` as often as a test needs; ``close()`` stops it and removes it."""

    def __init__(self) -> None:
        if shutil.which("dockerd") is None or os.geteuid() != 0:
            skip_missing("dockerd and root, to run a private docker engine")
        self.root = Path(tempfile.mkdtemp(prefix="bwd-engine-"))  # short: a unix socket path
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        tag = f"brace-faults-{os.getpid()}"
        log = (self.root / "dockerd.log").open("ab")
        self.proc = subprocess.Popen(
            ["dockerd", f"--data-root={self.root / 'data'}", f"--exec-root={self.root / 'exec'}",
             f"--pidfile={self.root / 'dockerd.pid'}", f"-H={self.host}", "--bridge=none",
             "--iptables=false", "--ip-masq=false", f"--containerd-namespace={tag}",
             f"--containerd-plugins-namespace={tag}-plugins"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while not self._answers():
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, f"private dockerd not up\n{self.log()}"
            time.sleep(0.2)

    def _answers(self) -> bool:
        """``GET /_ping`` over the socket (the SDK's client leaks its socket when refused)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(5)
            try:
                conn.connect(str(self.socket))
                conn.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return conn.recv(4096).startswith(b"HTTP/1.0 200")
            except OSError:
                return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        self.proc = None

    def log(self) -> str:
        return (self.root / "dockerd.log").read_text(errors="replace")

    def close(self) -> None:
        self.stop()
        subprocess.run(["umount", "-R", str(self.root / "exec")], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)
