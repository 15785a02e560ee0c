"""The supervisor speaks systemd's notify protocol to a real NOTIFY_SOCKET datagram socket.

READY=1 only after every component started, STATUS= kept current, WATCHDOG=1 at
WATCHDOG_USEC/2 while components make progress, pings withheld when one hangs, STOPPING=1.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from brace_watchdog.component import Component
from brace_watchdog.config import parse_config
from brace_watchdog.daemon import Supervisor
from brace_watchdog.metrics import Metrics
from brace_watchdog.state import StoreHealth
from brace_watchdog.systemd import SystemdNotify
from tests.support.faults import hold_write_lock
from tests.support.net import free_port


class NotifyListener:
    """Binds a unix datagram socket like systemd does; a thread collects (time, message) pairs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closing.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._closing.set()
        self._thread.join()
        self.sock.close()

    def drain(self) -> list[tuple[float, str]]:
        time.sleep(0.05)
        return list(self.messages)

    def times_of(self, prefix: str) -> list[float]:
        return [t for t, m in self.drain() if m.startswith(prefix)]


class Ticker(Component):
    name = "ticker"

    def __init__(self) -> None:
        self.started = False
        self.cycles = 0

    def interval(self) -> float:
        return 0.05

    async def start(self) -> None:
        await asyncio.sleep(0.2)
        self.started = True

    async def cycle(self) -> str:
        self.cycles += 1
        return f"{self.cycles} ticks"


class Hanger(Component):
    """Cycles normally until ``hang`` is set, then never returns from a cycle."""

    name = "hanger"

    def __init__(self) -> None:
        self.hang = asyncio.Event()

    def interval(self) -> float:
        return 0.05

    def progress_deadline(self) -> float:
        return 0.5

    async def cycle(self) -> str:
        if self.hang.is_set():
            await asyncio.Event().wait()
        return "fine"


class Failing(Component):
    name = "failing"

    def interval(self) -> float:
        return 0.05

    async def cycle(self) -> str:
        raise RuntimeError("boom")


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    notify_listener = NotifyListener(tmp_path / "notify.sock")
    yield notify_listener
    notify_listener.close()


def supervisor(tmp_path: Path, components: list[Component], listener: NotifyListener,
               watchdog_usec: int = 200_000) -> tuple[Supervisor, Metrics]:
    config = parse_config({"daemon": {"state_path": str(tmp_path / "state.db")},
                           "metrics": {"listen": f"127.0.0.1:{free_port()}"}})
    notify = SystemdNotify({"NOTIFY_SOCKET": str(listener.path),
                            "WATCHDOG_USEC": str(watchdog_usec)})
    metrics = Metrics(CollectorRegistry(), process=False)
    sup = Supervisor(config, factory=lambda hub: list(components), notify=notify, metrics=metrics)
    return sup, metrics


async def test_ready_watchdog_status_and_stopping(tmp_path: Path, listener: NotifyListener) -> None:
    ticker = Ticker()
    sup, metrics = supervisor(tmp_path, [ticker, Failing()], listener, watchdog_usec=1_000_000)
    run = asyncio.create_task(sup.run())
    await asyncio.sleep(2.7)
    messages = [m for _, m in listener.drain()]
    assert messages[0].startswith("READY=1")
    assert ticker.started  # READY came after start() finished
    assert any(m.startswith("STATUS=") and "ticks" in m for m in messages)
    pings = listener.times_of("WATCHDOG=1")
    # Every 0.5 s (WATCHDOG_USEC/2): at least 3 in 2.5 s, never spamming, and no gap reaching
    # the 1 s after which systemd would kill the daemon (load delays a ping, never by that much).
    assert 3 <= len(pings) <= 7, pings
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) < 1.0, gaps
    assert metrics.registry.get_sample_value(
        "brace_watchdog_component_errors_total", {"component": "failing"}) >= 5  # type: ignore[operator]
    sup.request_stop()
    assert await asyncio.wait_for(run, 10) == 0
    assert listener.drain()[-1][1].startswith("STOPPING=1")


async def test_hung_component_stops_the_pings(tmp_path: Path, listener: NotifyListener) -> None:
    hanger = Hanger()
    sup, metrics = supervisor(tmp_path, [Ticker(), hanger], listener)
    run = asyncio.create_task(sup.run())
    await asyncio.sleep(0.8)
    assert listener.times_of("WATCHDOG=1")
    hanger.hang.set()
    await asyncio.sleep(1.5)  # well past the 0.5 s deadline
    hung_at = time.monotonic()
    await asyncio.sleep(1.0)
    assert [t for t in listener.times_of("WATCHDOG=1") if t > hung_at] == []
    assert metrics.registry.get_sample_value("brace_watchdog_watchdog_healthy") == 0
    sup.request_stop()
    started = time.monotonic()
    assert await asyncio.wait_for(run, 10) == 0
    assert time.monotonic() - started < 10


async def test_unusable_state_file_is_a_clear_fatal_error(tmp_path: Path,
                                                          listener: NotifyListener) -> None:
    bad = tmp_path / "state.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    sup, _ = supervisor(tmp_path, [Ticker()], listener)
    assert await asyncio.wait_for(sup.run(), 10) == 1
    assert not any(m.startswith("READY=1") for _, m in listener.drain())


async def test_state_flush_sleeps_until_a_write_fails(tmp_path: Path,
                                                      listener: NotifyListener) -> None:
    """The flush task wakes for a failed write, flushes until the store is writable, and is
    otherwise idle (no wakeup per second: the footprint benchmark counts every one)."""
    sup, metrics = supervisor(tmp_path, [Ticker()], listener)
    run = asyncio.create_task(sup.run())
    await asyncio.sleep(0.5)
    hub = sup.hub
    assert hub is not None
    flushes: list[float] = []
    flush = hub.flush_store

    def counted() -> StoreHealth:  # counts the task's wakeups; the real flush runs
        flushes.append(time.monotonic())
        return flush()

    hub.flush_store = counted  # type: ignore[method-assign]
    await asyncio.sleep(2.5)  # the old task flushed every second, 2 times at least in here
    assert flushes == []
    with hold_write_lock(tmp_path / "state.db"):
        assert hub.record("test.queued", "test", "written while locked") == 0
        await asyncio.sleep(2.5)
        assert flushes and metrics.registry.get_sample_value(
            "brace_watchdog_state_pending_writes") == 1.0
    for _ in range(100):
        if metrics.registry.get_sample_value("brace_watchdog_state_store_up") == 1.0:
            break
        await asyncio.sleep(0.1)
    assert metrics.registry.get_sample_value("brace_watchdog_state_pending_writes") == 0.0
    assert [e.message for e in hub.store.events(kinds=("test.queued",))] == [
        "written while locked"]
    recovered = len(flushes)
    await asyncio.sleep(2.5)
    assert len(flushes) == recovered
    sup.request_stop()
    assert await asyncio.wait_for(run, 10) == 0


class Woken(Component):
    """Cycles once an hour on its schedule, and once more each time ``news`` is set."""

    name = "woken"

    def __init__(self) -> None:
        self.news = asyncio.Event()
        self.cycles = 0
        self.cycled = asyncio.Event()

    def interval(self) -> float:
        return 3600.0

    async def cycle(self) -> str:
        self.cycles += 1
        self.cycled.set()
        return f"{self.cycles} cycles"

    async def pause(self, seconds: float) -> bool:
        wait = asyncio.ensure_future(self.news.wait())
        done, _ = await asyncio.wait({wait}, timeout=seconds)
        wait.cancel()
        self.news.clear()
        return bool(done)


async def test_a_woken_component_cycles_between_its_scheduled_cycles(
        tmp_path: Path, listener: NotifyListener) -> None:
    woken = Woken()
    sup, _ = supervisor(tmp_path, [woken], listener, watchdog_usec=0)
    run = asyncio.create_task(sup.run())
    for expected in (1, 2, 3):  # the scheduled first cycle, then one per piece of news
        await asyncio.wait_for(woken.cycled.wait(), 10)
        woken.cycled.clear()
        assert woken.cycles == expected
        woken.news.set()
    sup.request_stop()
    assert await asyncio.wait_for(run, 10) == 0
