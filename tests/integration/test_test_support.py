"""The shared test support works: images honour the official postgres contract, clusters and
dumps are real, busybox httpd serves files and CGI, and the network guard blocks non-loopback."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import docker
import httpx
import psycopg
import pytest

from tests.support.images import container_labels, run_postgres, start_web
from tests.support.net import NetworkGuard, NonLoopbackConnectError, free_port
from tests.support.pg import PgCluster, make_brace_dump
from tests.support.timeouts import TestTimeout, time_limit

pytestmark = [pytest.mark.postgres]


def test_network_guard_blocks_non_loopback(network_guard: NetworkGuard) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, \
            pytest.raises(NonLoopbackConnectError, match=r"10\.0\.0\.1"):
        sock.connect(("10.0.0.1", 80))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, \
            pytest.raises(NonLoopbackConnectError):
        sock.connect_ex(("10.0.0.1", 5432))
    assert [address for _, address in network_guard.blocked] == [("10.0.0.1", 80),
                                                                  ("10.0.0.1", 5432)]
    network_guard.blocked.clear()  # expected here; anywhere else the fixture fails the test


def test_network_guard_lets_loopback_through() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0  # refused, not blocked


def test_pg_cluster_serves_password_auth_over_loopback(pg_cluster: PgCluster) -> None:
    with psycopg.connect(pg_cluster.dsn()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_cluster.dsn(password="wrong")).close()


def test_pg_hba_rewrite_and_reload_reject(pg_cluster: PgCluster) -> None:
    pg_cluster.write_hba(["host all all 127.0.0.1/32 reject"])
    pg_cluster.reload()
    with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf rejects"):
        psycopg.connect(pg_cluster.dsn()).close()


def test_make_brace_dump_writes_custom_format(pg_cluster: PgCluster, tmp_path: Path) -> None:
    dump = make_brace_dump(pg_cluster, tmp_path / "brace_20260203_045206.dump", rows=25,
                           revision="rev42")
    assert dump.path.read_bytes()[:5] == b"PGDMP"
    assert pg_cluster.psql("select version_num from alembic_version", db=dump.dbname) == "rev42"
    assert pg_cluster.psql("select count(*) from orders", db=dump.dbname) == "25"
    assert pg_cluster.psql("select tableowner from pg_tables where tablename = 'users'",
                           db=dump.dbname) == "brace_user"


@pytest.mark.docker
@pytest.mark.parametrize("image", ["postgres_image", "newer_postgres_image"])
def test_postgres_image_honours_official_contract(docker_client: docker.DockerClient,
                                                  image: str,
                                                  request: pytest.FixtureRequest) -> None:
    """Both images: Debian's 15 and the wheel's newer major (its tree moved to /opt)."""
    pg = run_postgres(docker_client, password="s3cret-pw", image=request.getfixturevalue(image))
    try:
        with psycopg.connect(pg.dsn()) as conn:
            assert conn.execute("show port").fetchone() == (str(pg.port),)
            major = conn.info.server_version // 10000
        assert major == (15 if image == "postgres_image" else
                         request.getfixturevalue("newer_pg").major)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(pg.dsn().replace("s3cret-pw", "nope")).close()
        for tool in ("pg_restore", "psql", "pg_dump", "pg_isready"):
            code, output = pg.exec(tool, "--version")
            assert (code, output.split()[-1].split(".")[0]) == (0, str(major)), output
    finally:
        pg.stop()


@pytest.mark.docker
def test_postgres_image_refuses_to_start_without_password(docker_client: docker.DockerClient,
                                                          postgres_image: str) -> None:
    with pytest.raises(docker.errors.ContainerError, match="POSTGRES_PASSWORD") as caught:
        docker_client.containers.run(postgres_image, remove=True, network_mode="host",
                                     labels=container_labels(),
                                     environment={"PGPORT": str(free_port())})
    assert caught.value.exit_status == 1


@pytest.mark.docker
def test_busybox_web_serves_files_and_cgi_500(docker_client: docker.DockerClient,
                                             busybox_image: str, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("hello\n")
    cgi = tmp_path / "cgi-bin"
    cgi.mkdir()
    script = cgi / "fail"
    script.write_text("#!/bin/sh\nprintf 'Status: 500 Internal Server Error\\r\\n"
                      "Content-Type: text/plain\\r\\n\\r\\nboom\\n'\n")
    script.chmod(0o755)
    web = start_web(docker_client, tmp_path, image=busybox_image)
    try:
        assert httpx.get(web.url("/index.html")).text == "hello\n"
        failing = httpx.get(web.url("/cgi-bin/fail"))
        assert (failing.status_code, failing.text) == (500, "boom\n")
    finally:
        web.stop()


def test_time_limit_fails_a_hung_test() -> None:
    started = time.monotonic()
    with pytest.raises(TestTimeout, match=r"exceeded 0\.2s"), time_limit(0.2, "hung"):
        time.sleep(30)
    assert time.monotonic() - started < 5


def test_time_limit_interrupts_a_blocked_event_loop() -> None:
    # The exception leaves through the loop's select(), so an async test fails as a whole.
    with pytest.raises(TestTimeout), time_limit(0.2, "hung loop"):
        asyncio.run(asyncio.sleep(30))
