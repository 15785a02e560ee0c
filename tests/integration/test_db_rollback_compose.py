"""The DB rollback brings its writers back from the images they ran: never rebuilt, never pulled
(``--no-build`` always, ``--pull never`` where the real compose CLI has it)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from brace_watchdog.actions.db_rollback import DbRollback
from brace_watchdog.config import parse_config
from brace_watchdog.metrics import Metrics
from brace_watchdog.runtime import Hub
from brace_watchdog.state import StateStore
from tests.support.stack import COMPOSE_VARIANTS, compose_or_skip


@pytest.mark.parametrize("variant", sorted(COMPOSE_VARIANTS))
async def test_writers_come_back_without_build_or_pull(variant: str) -> None:
    command = COMPOSE_VARIANTS[variant]
    version = compose_or_skip(command)
    config = parse_config({"db_rollback": {"compose_command": list(command)}})
    hub = Hub(config=config, store=StateStore(":memory:").open(),
              metrics=Metrics(CollectorRegistry(), process=False))
    argv = (await DbRollback(hub).writers(detect=True)).restart_argv({})
    args = argv[argv.index("up"):]
    assert args[:3] == ["up", "-d", "--no-build"]
    pulls = ["--pull", "never"] if not version.startswith("1.") else []
    assert args[3:] == [*pulls, *config.db_rollback.writers], (version, args)
