"""Which containers a retag would affect, asked of a real docker engine.

``DockerAdapter.tag_users`` reads the reference each container was created with. The list API
shows it while the tag still names the container's image, and the image ID once the tag moved;
the adapter inspects only the latter. Every case is checked here: a container whose tag still
holds, one whose tag moved, one created after the move, and one of another tag.
"""

from __future__ import annotations

import uuid

import docker
import pytest

from brace_watchdog.adapters.docker import DockerAdapter
from tests.support.images import container_labels

pytestmark = pytest.mark.docker


async def test_tag_users_names_every_container_created_from_a_tag(
        docker_client: docker.DockerClient, busybox_image: str) -> None:
    repo = f"brace-test/tag-users-{uuid.uuid4().hex[:10]}"
    base = docker_client.images.get(busybox_image)
    for tag in ("a", "b"):
        base.tag(repo, tag)
    containers, images = [], []
    adapter = DockerAdapter()
    try:
        def create(ref: str, name: str) -> str:
            container = docker_client.containers.create(
                ref, ["true"], name=f"{repo.rsplit('/', 1)[1]}-{name}", labels=container_labels())
            containers.append(container)
            return str(container.name)

        moved, other = create(f"{repo}:a", "moved"), create(f"{repo}:b", "other")
        images.append(containers[0].commit(repository=repo, tag="a", changes=["LABEL moved=1"]))
        after = create(f"{repo}:a", "after")
        users = await adapter.tag_users([f"{repo}:a"])
        assert {u.name for u in users} == {moved, after}
        assert {u.image_ref for u in users} == {f"{repo}:a"}
        by_name = {u.name: u.image_id for u in users}
        assert by_name[moved] == base.id and by_name[after] == images[0].id
        assert {u.name for u in await adapter.tag_users([f"{repo}:b"])} == {other}
        assert await adapter.tag_users([]) == []
    finally:
        for container in containers:
            container.remove(force=True)
        for ref in (f"{repo}:a", f"{repo}:b"):
            docker_client.images.remove(ref)
        adapter.close()
