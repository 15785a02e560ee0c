"""Which files a compose config references, and how the snapshot of them is kept and restored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from brace_watchdog.actions.config_snapshot import (
    ConfigSnapshot,
    read_files,
    referenced_files,
    write_back,
)

FILES = ("/srv/app/docker-compose.yml", "/srv/app/override.yml")


def services(**entries: Any) -> dict[str, Any]:
    return {"services": {name: {"image": "x", "env_file": value} if value is not None
                         else {"image": "x"} for name, value in entries.items()}}


def test_every_compose_file_then_env_then_env_files_in_order() -> None:
    config = services(backend=["/srv/app/conf/backend.env", {"path": "/etc/shared.env"}],
                      worker="conf/worker.env", frontend=None)
    assert referenced_files(config, FILES, "/srv/app") == (
        *FILES, "/srv/app/.env", "/srv/app/conf/backend.env", "/etc/shared.env",
        "/srv/app/conf/worker.env")


@pytest.mark.parametrize(("entry", "expected"), [
    ("a.env", "/srv/app/a.env"),                    # relative to the first file's folder
    ("./conf/../b.env", "/srv/app/b.env"),
    ("../common/c.env", "/srv/common/c.env"),
    ([{"path": "d.env", "required": False}], "/srv/app/d.env"),
    (["/abs/e.env"], "/abs/e.env"),
])
def test_env_file_forms_and_relative_paths(entry: Any, expected: str) -> None:
    assert referenced_files(services(backend=entry), FILES, "/srv/app")[-1] == expected


def test_shared_and_repeated_files_are_listed_once() -> None:
    config = services(backend=".env", worker=["/srv/app/.env", "x.env"], other="x.env")
    assert referenced_files(config, FILES[:1], "/srv/app") == (
        FILES[0], "/srv/app/.env", "/srv/app/x.env")


@pytest.mark.parametrize("config", [None, {}, {"services": None}, {"services": []},
                                    services(backend=""), services(backend=[3, {"no": 1}]),
                                    {"services": {"backend": "not a mapping"}}])
def test_no_or_malformed_config_keeps_the_compose_files_and_env(config: Any) -> None:
    assert referenced_files(config, FILES, "/srv/other") == (*FILES, "/srv/other/.env")


def test_blob_round_trip_keeps_absent_files() -> None:
    snap = ConfigSnapshot((("/a", b"\x00bytes\n"), ("/b", None), ("/c", b"")))
    assert ConfigSnapshot.from_blob(snap.to_blob()) == snap
    assert ConfigSnapshot.from_blob(None) is None and ConfigSnapshot.from_blob(b"") is None


def test_write_back_replaces_symlinks_keeps_modes_and_skips_absent(tmp_path: Path) -> None:
    kept, linked, absent = tmp_path / "kept.env", tmp_path / "linked.env", tmp_path / "gone"
    kept.write_text("A=1\n")
    kept.chmod(0o640)
    outside = tmp_path / "outside"
    outside.write_text("untouched\n")
    linked.write_text("B=good\n")
    snap = read_files([str(kept), str(linked), str(absent)])
    kept.write_text("A=bad\n")
    linked.unlink()
    linked.symlink_to(outside)
    assert write_back(snap) == [str(kept), str(linked)]
    assert kept.read_text() == "A=1\n" and kept.stat().st_mode & 0o777 == 0o640
    assert not linked.is_symlink() and linked.read_text() == "B=good\n"
    assert outside.read_text() == "untouched\n" and not absent.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.env", "linked.env", "outside"]
    assert read_files(snap.paths) == snap
