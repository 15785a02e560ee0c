"""systemd's notify protocol (via ``sdnotify``) and the watchdog's ping cadence.

``READY=1`` once every component started, ``STATUS=`` a one-line summary (sent only when it
changes), ``WATCHDOG=1`` every ``WATCHDOG_USEC/2`` while the supervisor judges every component
healthy, ``RELOADING=1`` (with ``MONOTONIC_USEC=``) / ``READY=1`` around a SIGHUP reload and
``STOPPING=1`` on shutdown. Without ``NOTIFY_SOCKET`` (running by hand) every call is a no-op.
Read from the process environment, ``NOTIFY_SOCKET`` and ``WATCHDOG_*`` are removed from it, so
child processes (pg_ctl, docker, compose) cannot send messages in the daemon's name.

Messages are UTF-8 datagrams (sent by ``sdnotify``) on a non-blocking socket: a full queue costs a
message, never a blocked event loop. A lost lifecycle message
(``READY=1``/``RELOADING=1``/``STOPPING=1``) would leave systemd waiting — a unit stuck in
``reloading`` until its timeout, then again every timeout — so it is re-sent before the next
message until one arrives; failures are logged once per outage, not per message.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import sdnotify

__all__ = ["SystemdNotify"]

STATUS_LIMIT = 200
# Taken out of the process environment once read: a child that inherits NOTIFY_SOCKET (a local
# restore test's postgres is built with systemd support) would send READY=1/STOPPING=1 as ours.
_OWN_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
log = logging.getLogger("brace_watchdog.systemd")


class _Sender(Protocol):
    def notify(self, state: str) -> Any: ...


class _DatagramSender(sdnotify.SystemdNotifier):  # type: ignore[misc]
    """sdnotify's sender: one datagram per message to NOTIFY_SOCKET (a path, or ``@name``),
    connected to an explicit address instead of re-reading the environment.

    sdnotify encodes latin-1 and, unless ``debug``, swallows every error: a ``STATUS=`` with a
    character outside latin-1 (an "…") silently cost the whole message — once the ``READY=1``
    ending a reload, leaving the unit in ``reloading``. So it runs with ``debug`` (errors reach
    :meth:`SystemdNotify._deliver`) and is handed the UTF-8 bytes spelled as latin-1 text, which
    its encoder turns back into exactly those bytes.
    """

    def __init__(self, address: str) -> None:
        self.debug = True
        self.socket: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        target = "\0" + address[1:] if address.startswith("@") else address
        try:
            self.socket.connect(target)
            self.socket.setblocking(False)
        except OSError as exc:
            log.warning("cannot reach NOTIFY_SOCKET %s: %s", address, exc.strerror)
            self.socket.close()
            self.socket = None

    def notify(self, state: str) -> None:
        """Send ``state``; raises OSError when it cannot go (no socket, queue full)."""
        if self.socket is None:
            raise OSError("NOTIFY_SOCKET is not connected")
        super().notify(state.encode("utf-8", errors="replace").decode("latin-1"))


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class SystemdNotify:
    """Speaks to systemd. Environment, pid, clock and the sender factory are injectable."""

    def __init__(self, environ: Mapping[str, str] | None = None, *, pid: int | None = None,
                 sender_factory: Callable[[str], _Sender] = _DatagramSender,
                 monotonic_usec: Callable[[], int] = _monotonic_usec) -> None:
        env = dict(os.environ) if environ is None else environ
        if environ is None:  # sd_notify's unset_environment: our children must not speak for us
            for name in _OWN_VARIABLES:
                os.environ.pop(name, None)
        address = env.get("NOTIFY_SOCKET", "")
        self.enabled = bool(address)
        self._sender: _Sender | None = sender_factory(address) if self.enabled else None
        self._pid = os.getpid() if pid is None else pid
        self._monotonic_usec = monotonic_usec
        self._watchdog_usec = self._parse_watchdog(env)
        self._last_status: str | None = None
        self._pending: str | None = None  # an undelivered lifecycle message
        self._failing = False

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

    def _deliver(self, state: str) -> bool:
        assert self._sender is not None
        try:
            self._sender.notify(state)
        except OSError as exc:
            if not self._failing:
                log.warning("systemd notify message not sent (%s): %s; retrying with the next "
                            "one", state.partition("\n")[0], exc)
            self._failing = True
            return False
        if self._failing:
            log.info("systemd notify messages are delivered again")
        self._failing = False
        return True

    def _send(self, state: str, *, lifecycle: bool = False) -> None:
        if self._sender is None:
            return
        if lifecycle:
            self._pending = None  # a newer lifecycle message supersedes an undelivered one
        elif self._pending is not None and self._deliver(self._pending):
            self._pending = None
        if not self._deliver(state) and lifecycle:
            self._pending = state

    def ready(self, status: str) -> None:
        self._last_status = _clean(status)
        self._send(f"READY=1\nSTATUS={self._last_status}\nMAINPID={self._pid}", lifecycle=True)

    def status(self, status: str) -> None:
        line = _clean(status)
        if line != self._last_status:
            self._last_status = line
            self._send(f"STATUS={line}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def reloading(self) -> None:
        self._send(f"RELOADING=1\nMONOTONIC_USEC={self._monotonic_usec()}", lifecycle=True)

    def stopping(self, status: str = "stopping") -> None:
        self._send(f"STOPPING=1\nSTATUS={_clean(status)}", lifecycle=True)

    def close(self) -> None:
        sock = getattr(self._sender, "socket", None)
        if sock is not None:
            sock.close()
        self._sender = None


def _clean(line: str) -> str:
    flat = " ".join(line.split())
    return flat if len(flat) <= STATUS_LIMIT else flat[: STATUS_LIMIT - 1] + "…"
