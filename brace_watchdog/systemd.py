"""systemd's notify protocol (via ``sdnotify``) and the watchdog's ping cadence.

``READY=1`` once every component started, ``STATUS=`` a one-line summary (sent only when it
changes), ``WATCHDOG=1`` every ``WATCHDOG_USEC/2`` while the supervisor judges every component
healthy, ``RELOADING=1``/``READY=1`` around a SIGHUP reload and ``STOPPING=1`` on shutdown.
Without ``NOTIFY_SOCKET`` (running by hand) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import sdnotify

__all__ = ["SystemdNotify"]

STATUS_LIMIT = 200
log = logging.getLogger("brace_watchdog.systemd")


class _Sender(Protocol):
    def notify(self, state: str) -> Any: ...


class _AddressedNotifier(sdnotify.SystemdNotifier):  # type: ignore[misc]
    """sdnotify's sender, connected to an explicit address instead of re-reading the env."""

    def __init__(self, address: str) -> None:
        self.debug = False
        self.socket: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        target = "\0" + address[1:] if address.startswith("@") else address
        try:
            self.socket.connect(target)
            # A full receive queue must cost a dropped message, never a blocked event loop.
            self.socket.setblocking(False)
        except OSError as exc:
            log.warning("cannot reach NOTIFY_SOCKET %s: %s", address, exc.strerror)
            self.socket.close()
            self.socket = None


class SystemdNotify:
    """Speaks to systemd. Environment, pid and the sender factory are injectable for tests."""

    def __init__(self, environ: Mapping[str, str] | None = None, *, pid: int | None = None,
                 sender_factory: Callable[[str], _Sender] = _AddressedNotifier) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.enabled = bool(address)
        self._sender: _Sender | None = sender_factory(address) if self.enabled else None
        self._pid = os.getpid() if pid is None else pid
        self._watchdog_usec = self._parse_watchdog(env)
        self._last_status: str | None = None

    def _parse_watchdog(self, env: Mapping[str, str]) -> int | None:
        usec = env.get("WATCHDOG_USEC", "")
        owner = env.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0:
            return None
        if owner and owner.isdigit() and int(owner) != self._pid:
            return None
        return int(usec)

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when not asked."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 2 / 1_000_000

    def _send(self, state: str) -> None:
        if self._sender is not None:
            self._sender.notify(state)

    def ready(self, status: str) -> None:
        self._last_status = _clean(status)
        self._send(f"READY=1\nSTATUS={self._last_status}\nMAINPID={self._pid}")

    def status(self, status: str) -> None:
        line = _clean(status)
        if line != self._last_status:
            self._last_status = line
            self._send(f"STATUS={line}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def reloading(self) -> None:
        self._send("RELOADING=1")

    def stopping(self, status: str = "stopping") -> None:
        self._send(f"STOPPING=1\nSTATUS={_clean(status)}")

    def close(self) -> None:
        sock = getattr(self._sender, "socket", None)
        if sock is not None:
            sock.close()
        self._sender = None


def _clean(line: str) -> str:
    flat = " ".join(line.split())
    return flat if len(flat) <= STATUS_LIMIT else flat[: STATUS_LIMIT - 1] + "…"
