"""What the real compose CLIs (1.29 and v5) print when they cannot reach the docker engine, read
by :func:`~brace_watchdog.adapters.compose.lost_the_engine`: an engine whose socket is gone (a
cut :class:`~tests.support.docker_proxy.DockerProxy`) is an outage; an engine that answers and
refuses the request is not."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from brace_watchdog.adapters.compose import ComposeCLI, UpPlan, lost_the_engine
from brace_watchdog.errors import CommandError
from tests.support.docker_proxy import DockerProxy
from tests.support.stack import COMPOSE_VARIANTS, compose_or_skip

pytestmark = pytest.mark.docker

COMPOSES = pytest.mark.parametrize("command", list(COMPOSE_VARIANTS.values()),
                                   ids=list(COMPOSE_VARIANTS))


def project(tmp_path: Path, busybox_image: str, **service: str) -> UpPlan:
    """One service ``a`` running ``busybox_image`` (plus ``service`` keys), its own project."""
    extra = "".join(f"    {key}: {value}\n" for key, value in service.items())
    (tmp_path / "compose.yml").write_text(
        f"services:\n  a:\n    image: {busybox_image}\n    command: sleep 600\n{extra}")
    return UpPlan(files=(str(tmp_path / "compose.yml"),), project=f"lost{uuid.uuid4().hex[:12]}",
                  services=("a",), cwd=str(tmp_path))


async def failed_up(command: tuple[str, ...], proxy: DockerProxy, plan: UpPlan) -> str:
    """The output of the rollback's ``up`` through ``proxy``, which must fail."""
    compose_or_skip(command)
    cli = ComposeCLI(("env", f"DOCKER_HOST={proxy.url}", *command), timeout=120)
    try:
        with pytest.raises(CommandError) as failed:
            await cli.up(plan)
    finally:
        subprocess.run([*command, "-f", plan.files[0], "-p", plan.project, "down", "-t", "0"],
                       capture_output=True, timeout=120, check=False)
    return failed.value.output


@COMPOSES
async def test_compose_without_an_engine_says_it_lost_it(
        command: tuple[str, ...], docker_proxy: DockerProxy, tmp_path: Path,
        busybox_image: str) -> None:
    await docker_proxy.cut()
    output = await failed_up(command, docker_proxy, project(tmp_path, busybox_image))
    assert lost_the_engine(output), output


@COMPOSES
async def test_compose_refused_by_an_engine_that_answers_did_not_lose_it(
        command: tuple[str, ...], docker_proxy: DockerProxy, tmp_path: Path,
        busybox_image: str) -> None:
    output = await failed_up(command, docker_proxy, project(tmp_path, busybox_image, cpus="999"))
    assert "cpu" in output.lower(), output  # the engine's own refusal
    assert not lost_the_engine(output), output
