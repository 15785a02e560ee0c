"""The daemon as a real subprocess for tests: a temp config, a NOTIFY_SOCKET it talks to, scrapes.

``Daemon(tmp_path, server)`` writes a config whose health target is ``server`` (a
:class:`~tests.support.webserver.SwitchableServer`), starts ``brace-watchdog run`` with
``NOTIFY_SOCKET`` pointing at a datagram socket the test reads, and kills it on ``close()``.
With ``user=``, the daemon runs as that user (``setpriv``; the test runs as root): its folder
must then be that user's.
"""

from __future__ import annotations

import os
import pwd
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from brace_watchdog.config import load_config
from tests.support.net import free_port
from tests.support.stack import kill_daemon
from tests.support.webserver import SwitchableServer

__all__ = ["BIN", "Daemon", "write_config"]

BIN = Path(sys.executable).with_name("brace-watchdog")


def write_config(path: Path, *, health_url: str, metrics_port: int, interval: float = 0.2,
                 extra: str = "", state_path: str = "state.db") -> None:
    path.write_text(f"""
[daemon]
state_path = "{state_path}"
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
    def __init__(self, tmp_path: Path, server: SwitchableServer | None = None, *,
                 state_path: str = "state.db", extra: str = "", config: Path | None = None,
                 env: Mapping[str, str] | None = None, user: str | None = None) -> None:
        """Either the small health-only config against ``server`` (plus ``extra`` TOML), or
        ``config`` as given; ``env`` overrides either (``BRACE_WATCHDOG__SECTION__KEY``)."""
        self.dir = tmp_path
        self.user = user
        self.env = dict(env or {})
        if config is None:
            assert server is not None
            (tmp_path / "backups").mkdir(exist_ok=True)
            config = tmp_path / "brace-watchdog.toml"
            self.health_url = server.url()
            write_config(config, health_url=self.health_url, metrics_port=free_port(),
                         state_path=state_path, extra=extra)
        self.config = config
        loaded = load_config(config, environ=self.env)
        self.metrics_port = loaded.metrics.port
        self.state_path = loaded.daemon.state_path
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(tmp_path / "notify.sock"))
        if user is not None:
            os.chmod(tmp_path / "notify.sock", 0o666)  # the daemon's user sends to it
        self.notify.settimeout(0.2)
        self.messages: list[str] = []
        self.log = (tmp_path / "daemon.log").open("w")
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.env, "NOTIFY_SOCKET": str(self.dir / "notify.sock"),
               "WATCHDOG_USEC": "1000000"}
        as_user: list[str] = []
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            as_user = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                       "--clear-groups"]
        return subprocess.Popen([*as_user, str(BIN), "run", "--config", str(self.config)],
                                env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def restart(self, env: Mapping[str, str] | None = None) -> None:
        """SIGKILL the daemon (if it runs) and start it again on the same config and state
        (with ``env`` in place of the overrides it was given, if set)."""
        if env is not None:
            self.env = dict(env)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.messages.clear()
        self.proc = self._start()

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

    def drain(self, seconds: float) -> list[str]:
        """Every notify message that arrives within ``seconds``; the daemon must stay up."""
        deadline = time.monotonic() + seconds
        got, self.messages = self.messages, []
        while time.monotonic() < deadline:
            try:
                got.append(self.notify.recv(4096).decode())
            except TimeoutError:
                assert self.proc.poll() is None, self.output()
        return got

    def total(self, prefix: str) -> float:
        """Sum of every sample whose line starts with ``prefix`` (e.g. a name and some labels)."""
        return sum(float(line.rsplit(" ", 1)[1]) for line in self.scrape().splitlines()
                   if line.startswith(prefix))

    def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def sample(self, name: str) -> float | None:
        for line in self.scrape().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def restore_stage(self) -> str | None:
        """The stage the daemon's restore test is in (``brace_restore_test_stage``); None while
        none runs or the exporter does not answer yet."""
        try:
            text = self.scrape()
        except OSError:
            return None
        found = re.search(r'^brace_restore_test_stage\{stage="(\w+)"\} 1\.0$', text, re.M)
        return found.group(1) if found else None

    def wait_restore_stage(self, stage: str, timeout: float = 180) -> None:
        """Until a restore test is in ``stage``; the daemon must stay up (notify messages that
        arrive meanwhile are dropped, as by :meth:`drain`)."""
        deadline = time.monotonic() + timeout
        while self.restore_stage() != stage:
            assert time.monotonic() < deadline, f"no {stage} within {timeout}s\n{self.output()}"
            self.drain(0.02)

    def output(self) -> str:
        self.log.flush()
        return (self.dir / "daemon.log").read_text()

    def close(self) -> None:
        """SIGKILL the daemon and the commands it started (as systemd's cgroup kill would: a
        compose run left behind would recreate containers after the test removed them)."""
        kill_daemon(self.proc)
        self.notify.close()
        self.log.close()
