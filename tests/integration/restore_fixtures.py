"""Fixture bodies and helpers shared by the local and docker restore-test integration tests.

A module-scoped source cluster (real PostgreSQL 15) and a brace-shaped ``pg_dump -Fc`` dump of it
(the newer major's dump is the session fixture ``newer_dump``); ``make_config`` builds a validated
config around a backups folder, ``make_hub`` a hub around a config; ``leftovers`` lists the
throwaway-cluster directories this test process still has.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from brace_watchdog.adapters.postgres import LOCAL_PREFIX, pid_alive
from brace_watchdog.config import Config, parse_config
from brace_watchdog.metrics import Metrics
from brace_watchdog.runtime import Hub
from brace_watchdog.state import StateStore
from tests.support.pg import PG_BIN, PgCluster, make_brace_dump, start_cluster
from tests.support.skips import skip_missing

__all__ = ["brace_dump", "leftovers", "make_config", "make_hub", "others_alive",
           "source_cluster"]

TMP = Path(tempfile.gettempdir())


def source_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    """Body of a module-scoped ``source`` fixture: a running PG15 cluster to dump from."""
    if not (PG_BIN / "initdb").exists():
        skip_missing(f"PostgreSQL binaries not found in {PG_BIN}")
    cluster = start_cluster(tmp_path_factory.mktemp("source"))
    yield cluster
    cluster.stop()


def brace_dump(source: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Body of a module-scoped ``good_dump`` fixture: 120 users/orders, revision abc123."""
    folder = tmp_path_factory.mktemp("backups")
    return make_brace_dump(source, folder / "brace_20260203_045206.dump", rows=120).path


def make_config(backups: Path, **restore: Any) -> Config:
    """A config whose local backend uses Debian's PostgreSQL 15 unless ``restore`` says else."""
    return parse_config({"backups": {"directory": str(backups)},
                         "daemon": {"state_path": str(backups / "state.db")},
                         "restore_test": {"backend": "local", "local_bin_dir": str(PG_BIN),
                                          **restore}})


def make_hub(config: Config) -> Hub:
    store = StateStore(":memory:").open()
    return Hub(config=config, store=store, metrics=Metrics(CollectorRegistry(), process=False))


def leftovers() -> list[Path]:
    return list(TMP.glob(f"{LOCAL_PREFIX}{os.getpid()}-*"))


def others_alive(pid: int) -> bool:
    """Orphan check that treats only this test process as dead (others' servers stay)."""
    return pid != os.getpid() and pid_alive(pid)
