"""A TCP endpoint the test can break: a loopback proxy in front of a real HTTP backend.

The daemon probes :meth:`FaultProxy.url` instead of the backend. In mode ``"pass"`` every byte
goes through to the backend. In ``"reset"`` each connection is aborted with a TCP RST (``SO_LINGER``
0, then close: the peer sees ``ECONNRESET``, not the clean FIN of a server that closes); in
``"garbage"`` each request is answered with bytes that are no HTTP at all; in ``"hang"`` requests
are read and never answered. A switch reaches the
open connections too, so a keep-alive client meets the new mode on its next request.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

__all__ = ["GARBAGE", "FaultProxy", "Mode", "fault_proxy"]

Mode = Literal["pass", "reset", "garbage", "hang"]
GARBAGE = b"\x00\xff\xfe SSH-2.0-not-http \x07\r\n\r\n"
CHUNK = 64 * 1024


def _reset(conn: socket.socket) -> None:
    """Close ``conn`` with an RST instead of a FIN."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()



class FaultProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.mode: Mode = "pass"
        self.generation = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}{path}"

    def switch(self, mode: Mode) -> None:
        """Answer every later request in ``mode``: open connections are reset into ``"reset"``,
        turn to garbage (a request under way included) into ``"garbage"``, stop answering into
        ``"hang"``, and are closed cleanly into ``"pass"``."""
        self.mode = mode
        self.generation += 1

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        self._listener.close()
        self.switch("pass")
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        mode, generation = self.mode, self.generation
        upstream = None
        if mode == "pass":
            try:
                upstream = socket.create_connection(self.upstream, 10)
            except OSError:
                mode = "reset"
        pipe = _Pipe(conn, upstream, GARBAGE if mode == "garbage" else None)
        # one thread polls both sides, so a switch() is acted on here (a close from another
        # thread would not wake a blocked recv, and would send no RST)
        while mode != "reset" and pipe.forward():
            if self.generation != generation:
                mode, generation = self.mode, self.generation
                if mode in ("garbage", "hang"):
                    pipe.stop_forwarding(GARBAGE if mode == "garbage" else None)
                elif mode == "pass":
                    break  # a new connection reaches the backend
        pipe.end(reset=mode == "reset")


class _Pipe:
    """A client connection and the backend's (None: each request gets ``answer``, or nothing)."""

    def __init__(self, conn: socket.socket, upstream: socket.socket | None,
                 answer: bytes | None) -> None:
        self.conn = conn
        self.upstream = upstream
        self.answer = answer
        self.waiting = False  # the client sent a request that was not answered yet

    def forward(self) -> bool:
        """Move what is ready within 0.1 s; False once a side is done."""
        sides = [self.conn, *([self.upstream] if self.upstream else [])]
        ready, _, _ = select.select(sides, [], [], 0.1)
        try:
            for side in ready:
                data = side.recv(CHUNK)
                if not data:
                    return False
                if self.upstream is None:
                    if self.answer is not None:
                        self.conn.sendall(self.answer)
                elif side is self.conn:
                    self.waiting = True
                    self.upstream.sendall(data)
                else:
                    self.waiting = False
                    self.conn.sendall(data)
        except OSError:
            return False
        return True

    def stop_forwarding(self, answer: bytes | None) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        self.answer = answer
        if self.waiting and answer is not None:
            with contextlib.suppress(OSError):
                self.conn.sendall(answer)

    def end(self, *, reset: bool) -> None:
        if self.upstream is not None:
            self.upstream.close()
        if reset:
            _reset(self.conn)
        else:
            self.conn.close()


@contextmanager
def fault_proxy(upstream: tuple[str, int]) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()
