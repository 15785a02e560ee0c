"""A real HTTP server on loopback whose answer a test switches: 200, 500, hang, or close.

Runs Python's ``ThreadingHTTPServer`` in a background thread, keep-alive enabled (HTTP/1.1), so
probes reuse connections exactly as they would against the real backend.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["SwitchableServer", "switchable_server"]


class SwitchableServer:
    """``mode`` is one of ``"200"``, ``"500"``, ``"404"``, ``"hang"``, ``"close"``."""

    def __init__(self, httpd: ThreadingHTTPServer) -> None:
        self._httpd = httpd
        self.mode = "200"
        self.hang_seconds = 30.0
        self.requests = 0
        self.connections = 0
        self._release = threading.Event()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, path: str = "/api/health") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def release_hung(self) -> None:
        self._release.set()


def _handler(server: SwitchableServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            server.connections += 1
            super().setup()

        def do_GET(self) -> None:
            server.requests += 1
            mode = server.mode
            if mode == "hang":
                server._release.wait(server.hang_seconds)
                return
            if mode == "close":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            body = b'{"status":"ok"}' if mode == "200" else b'{"status":"error"}'
            self.send_response(int(mode))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            del format, args

    return Handler


@contextmanager
def switchable_server() -> Iterator[SwitchableServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    httpd.daemon_threads = True
    server = SwitchableServer(httpd)
    httpd.RequestHandlerClass = _handler(server)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release_hung()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
        time.sleep(0)
