"""Loopback networking for tests: free ports, waiting for a listener, the non-loopback guard."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from brace_watchdog.adapters.postgres import free_port

__all__ = ["NetworkGuard", "NonLoopbackConnectError", "free_port", "is_loopback",
           "wait_for_port"]

T = TypeVar("T")



def wait_for_port(port: int, host: str = "127.0.0.1", *, timeout: float = 30.0) -> None:
    """Block until something accepts TCP connections on ``host:port``; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.1)


class NonLoopbackConnectError(RuntimeError):
    """A test tried to reach an address outside loopback (tests talk only to 127.0.0.1/::1).

    Deliberately not an OSError, so code under test that handles connection errors cannot
    swallow it as "the server was down".
    """


def is_loopback(address: Any) -> bool:
    """True for AF_INET/AF_INET6 socket addresses on loopback ('localhost' included)."""
    host = address[0] if isinstance(address, tuple) and address else address
    if not isinstance(host, str):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@dataclass
class NetworkGuard:
    """Wraps ``socket.socket.connect``/``connect_ex``: AF_UNIX and loopback pass, the rest raise.

    Every blocked attempt is also recorded in ``blocked``; the autouse fixture fails the test
    at teardown if any remain, even when the code under test caught the exception.
    """

    blocked: list[tuple[int, Any]] = field(default_factory=list)

    def check(self, sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address):
            self.blocked.append((sock.family, address))
            raise NonLoopbackConnectError(
                f"test tried to connect to {address!r}: only loopback is allowed in tests")

    def wrap(self, original: Callable[..., T]) -> Callable[..., T]:
        guard = self

        def guarded(sock: socket.socket, address: Any, /) -> T:
            guard.check(sock, address)
            return original(sock, address)

        guarded.__wrapped__ = original  # type: ignore[attr-defined]
        return guarded
