"""The metrics exporter over real loopback sockets (IPv4 and IPv6): it serves the registry, its
thread sleeps while nobody scrapes (no 0.5 s polling), and stop() ends it and frees the port.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from prometheus_client import CollectorRegistry

from brace_watchdog.metrics import Metrics, start_metrics_server
from tests.support.net import free_port

IDLE_SECONDS = 2.0  # serve_forever would have polled 4 times in here


def _switches(thread: threading.Thread) -> int:
    with open(f"/proc/self/task/{thread.native_id}/status", encoding="ascii") as status:
        return sum(int(line.split()[1]) for line in status
                   if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_serves_sleeps_while_idle_and_stops(host: str) -> None:
    if host == "::1" and not _ipv6_loopback():
        pytest.fail("no IPv6 loopback on this machine")  # every CI machine here has ::1
    metrics = Metrics(CollectorRegistry(), process=False)
    metrics.backup_fresh.set(1)
    port = free_port()
    others = set(threading.enumerate())
    server = start_metrics_server(metrics, host, port)
    (thread,) = set(threading.enumerate()) - others
    url = f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"
    try:
        assert "brace_backup_fresh 1.0" in httpx.get(url, timeout=10).text
        before = _switches(thread)
        time.sleep(IDLE_SECONDS)
        assert _switches(thread) == before
        metrics.backup_fresh.set(0)
        assert "brace_backup_fresh 0.0" in httpx.get(url, timeout=10).text
    finally:
        server.stop()
    assert not thread.is_alive()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the scrapes' TIME_WAIT
        again.bind((host, port))  # the listening socket is closed
        again.listen()
