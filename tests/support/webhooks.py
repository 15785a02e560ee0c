"""A real webhook receiver on loopback for tests: records JSON POST bodies, can fail or hold."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from brace_watchdog.config import Secret

__all__ = ["Receiver", "webhook_receiver"]


class Receiver:
    """Records JSON POST bodies; answers 500 to the first ``fail_first`` requests; holds every
    request until ``gate`` is set."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail_first = 0
        self.gate = threading.Event()
        self.gate.set()
        self.port = 0

    def url(self) -> Secret:
        return Secret(f"http://127.0.0.1:{self.port}/hook?token=s3cret")


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    """A webhook endpoint on loopback recording what it receives, shut down afterwards."""
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            state.attempts += 1
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.gate.wait(60)
            if state.attempts <= state.fail_first:
                self.send_response(500)
            else:
                state.bodies.append(json.loads(body))
                self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            del format, args

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.port = int(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
