"""Webhook notifier against a real HTTP receiver on loopback: delivery, retries, never blocking."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from brace_watchdog.config import NotifyConfig, Secret
from brace_watchdog.metrics import Metrics
from brace_watchdog.notify import WebhookNotifier, build_notifier
from brace_watchdog.runtime import NullNotifier
from tests.support.net import free_port
from tests.support.webhooks import Receiver, webhook_receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as state:
        yield state


def cfg(urls: list[Secret], retries: int) -> NotifyConfig:
    return NotifyConfig(webhook_urls=tuple(urls), retries=retries, timeout_seconds=5.0)


def metrics() -> Metrics:
    return Metrics(CollectorRegistry(), process=False)


def sample(m: Metrics, result: str) -> float:
    return m.registry.get_sample_value("brace_watchdog_notifications_total",
                                       {"result": result}) or 0.0


async def test_delivers_json_with_event_and_payload(receiver: Receiver) -> None:
    m = metrics()
    notifier = WebhookNotifier(cfg([receiver.url()], 0), m)
    await notifier.send("rollback.succeeded", {"evidence": {"samples": (1, 2)}, "raw": b"x"})
    await notifier.drain(5)
    await notifier.close()
    assert receiver.bodies[0]["event"] == "rollback.succeeded"
    assert receiver.bodies[0]["evidence"] == {"samples": [1, 2]}
    assert receiver.bodies[0]["raw"] == "x"
    assert sample(m, "sent") == 1


async def test_retries_then_succeeds(receiver: Receiver) -> None:
    receiver.fail_first = 2
    m = metrics()
    notifier = WebhookNotifier(cfg([receiver.url()], 2), m, wait_seconds=0.01)
    await notifier.send("escalation", {"reason": "x"})
    await notifier.drain(5)
    await notifier.close()
    assert receiver.attempts == 3 and len(receiver.bodies) == 1
    assert sample(m, "sent") == 1 and sample(m, "failed") == 0


async def test_gives_up_after_retries_and_hides_the_url(receiver: Receiver,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    receiver.fail_first = 100
    m = metrics()
    notifier = WebhookNotifier(cfg([receiver.url()], 1), m, wait_seconds=0.01)
    await notifier.send("escalation", {})
    await notifier.drain(5)
    await notifier.close()
    assert receiver.attempts == 2 and sample(m, "failed") == 1
    assert "s3cret" not in caplog.text and "127.0.0.1" in caplog.text


async def test_unreachable_webhook_counts_as_failed() -> None:
    m = metrics()
    dead = Secret(f"http://127.0.0.1:{free_port()}/hook")
    notifier = WebhookNotifier(cfg([dead], 1), m, wait_seconds=0.01)
    await notifier.send("escalation", {})
    await notifier.drain(5)
    await notifier.close()
    assert sample(m, "failed") == 1


async def test_send_never_waits_for_a_slow_webhook(receiver: Receiver) -> None:
    receiver.gate.clear()  # the receiver holds every request until released
    config = NotifyConfig(webhook_urls=(receiver.url(), receiver.url()), timeout_seconds=60.0)
    notifier = WebhookNotifier(config, metrics())
    # A send that waited for delivery would hang here until the gate opens (never, in time).
    await asyncio.wait_for(notifier.send("rollback.started", {}), 30)
    assert receiver.bodies == []
    receiver.gate.set()
    await notifier.drain(30)
    await notifier.close()
    assert len(receiver.bodies) == 2


def test_build_notifier_without_urls_is_null() -> None:
    assert isinstance(build_notifier(NotifyConfig(), metrics()), NullNotifier)
    assert isinstance(build_notifier(NotifyConfig(webhook_urls=(Secret("http://127.0.0.1:1/"),)),
                                     metrics()), WebhookNotifier)
