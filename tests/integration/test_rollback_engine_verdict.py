"""A rollback step the live docker engine refuses is a verdict at once, not an outage.

The shared engine answers a retag of an image it does not have with 404: the step must fail
with the engine's reason (``ActionError`` at ``retag``), never be retried until the deadline and
reported as "the docker engine stayed unavailable" (``OutageError``). Nothing is created.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from brace_watchdog.actions.rollback_steps import EngineRetry, RollbackPlan, RollbackSteps
from brace_watchdog.adapters.compose import ComposeCLI, UpPlan
from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.errors import ActionError, OutageError
from brace_watchdog.releases import Release

pytestmark = pytest.mark.docker

MISSING = "sha256:" + "0" * 64


async def test_a_retag_the_live_engine_refuses_fails_with_its_reason() -> None:
    project = f"brace-test-verdict-{uuid.uuid4().hex[:10]}"
    ref = f"brace-test/{project}:good"
    plan = RollbackPlan(mode="retag", target=Release(project, "", (), ()), current=None,
                        retags=((ref, MISSING),), config_changed=False, use_snapshot=False,
                        up=UpPlan(files=(), project=project, services=(), cwd="/"), argv=())
    journal: list[tuple[str, dict[str, Any]]] = []
    adapter = DockerAdapter()
    # the old code retried the refusal for the whole deadline, then called it an outage
    steps = RollbackSteps(adapter, ComposeCLI(["docker-compose"], timeout=60),
                          lambda step, data: journal.append((step, data)),
                          retry=EngineRetry(20.0, wait=1.0))
    try:
        with pytest.raises(ActionError) as caught:
            await steps.run(plan)
    finally:
        adapter.close()
    assert not isinstance(caught.value, OutageError), caught.value
    assert caught.value.stage == "retag"
    assert "No such image" in caught.value.message
    assert journal == []
