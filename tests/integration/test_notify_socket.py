"""The notify sender against a real unix datagram socket bound like systemd's NOTIFY_SOCKET.

Every message arrives as UTF-8 (a ``STATUS=`` line truncated with "…" or naming a non-latin-1
path used to be dropped silently, and with it the ``READY=1`` that ends a reload: systemd then
kept the unit in ``reloading``); a lifecycle message refused by a full queue arrives once the
queue drains.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from brace_watchdog.systemd import SystemdNotify


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield sock, path
    sock.close()


def received(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(65536).decode("utf-8"))
        except BlockingIOError:
            return messages


def test_long_and_non_latin1_status_lines_arrive_as_utf8(
        listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notify = SystemdNotify({"NOTIFY_SOCKET": path}, pid=7)
    notify.reloading()
    notify.ready("health: ok " + "x" * 300)
    notify.status("backups: /srv/brace/sauvegardes/été → ok")
    notify.close()
    reloading, ready, status = received(sock)
    assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert ready.startswith("READY=1\nSTATUS=health: ok xxx") and ready.endswith("…\nMAINPID=7")
    assert status == "STATUS=backups: /srv/brace/sauvegardes/été → ok"


def test_a_refused_ready_arrives_after_the_queue_drains(
        listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notify = SystemdNotify({"NOTIFY_SOCKET": path}, pid=7)
    for _ in range(10_000):  # fill the receiver's queue (net.unix.max_dgram_qlen)
        sender = notify._sender
        assert sender is not None
        try:
            sender.notify("WATCHDOG=1")
        except BlockingIOError:
            break
    else:
        pytest.fail("the datagram queue never filled")
    notify.reloading()
    notify.ready("ok")
    assert "READY=1\nSTATUS=ok\nMAINPID=7" not in received(sock)  # drained: nothing got through
    notify.watchdog()
    notify.close()
    assert received(sock) == ["READY=1\nSTATUS=ok\nMAINPID=7", "WATCHDOG=1"]


def test_children_do_not_inherit_the_notify_socket(listener: tuple[socket.socket, str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    notify = SystemdNotify()
    child = subprocess.run(["env"], capture_output=True, text=True, check=True).stdout
    notify.ready("ok")
    notify.close()
    assert notify.watchdog_interval == 15.0
    assert "NOTIFY_SOCKET" not in child and "WATCHDOG_USEC" not in child
    assert received(sock) == [f"READY=1\nSTATUS=ok\nMAINPID={os.getpid()}"]
