"""Which files a compose config references, and how the snapshot of them is kept and restored."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from brace_watchdog.actions.config_snapshot import (
    ConfigSnapshot,
    EnvFileScan,
    read_compose_files,
    read_files,
    referenced_files,
    scan_env_files,
    snapshot_files,
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


COMPOSE_129 = """\
version: "2.4"
x-common: &common
  env_file: common.env            # an extension field: read too
services:
  backend:
    <<: *common
    image: app:1
    env_file: ["conf/backend.env", 'conf/b2.env', plain.env]
    command: |
      echo "env_file: not/a/key.env"
      cat env_file
    environment:
      A: "1"
  worker:
    env_file:
      - conf/worker.env   # a comment
      - "/abs/shared.env"
  bot:
    env_file:
    - same-indent.env
    entrypoint:
      - >
        env_file: folded.env
"""


def test_scan_reads_the_forms_compose_1_29_accepts() -> None:
    scan = scan_env_files(COMPOSE_129, "dc.yml")
    assert scan == EnvFileScan(("common.env", "conf/backend.env", "conf/b2.env", "plain.env",
                                "conf/worker.env", "/abs/shared.env", "same-indent.env"))


@pytest.mark.parametrize(("line", "why"), [
    ('    "env_file": a.env', "not a plain key"),
    ("    labels: {env_file: a.env}", "not a plain key"),
    ("    - env_file: a.env", "not a plain key"),
    ("\tenv_file: a.env", "not a plain key"),
    ("    env_file: *files", "not a plain path"),
    ("    env_file: &files a.env", "not a plain path"),
    ("    env_file: !!str a.env", "not a plain path"),
    ("    env_file: |", "not a plain path"),
    ("    env_file: {path: a.env}", "not a plain path"),
    ("    env_file: a.env:", "not a plain path"),
    ("    env_file: ${CONF}/a.env", "interpolation"),
    ("    env_file: $$HOME/a.env", "interpolation"),
    ('    env_file: "a\\tb.env"', "escapes"),
    ("    env_file: 'it''s.env'", "escapes"),
    ('    env_file: "a.env" trailing', "escapes"),
    ("    env_file: [a.env,", "flow sequence"),
    ("    env_file: [[a.env]]", "flow sequence"),
    ('    env_file: ["a,b.env"]', "escapes"),
    ("    env_file: ['']", "empty path"),
])
def test_scan_refuses_what_it_cannot_read_with_certainty(line: str, why: str) -> None:
    scan = scan_env_files(f"services:\n  backend:\n{line}\n    image: x\n", "dc.yml")
    assert scan.paths == ()
    assert len(scan.unclear) == 1 and scan.unclear[0].startswith("dc.yml:3: ")
    assert why in scan.unclear[0]


@pytest.mark.parametrize("text", [
    "services:\n  backend:\n    env_file:\n    image: x\n",
    "services:\n  backend:\n    env_file:   # nothing\n",
])
def test_scan_refuses_an_env_file_key_without_items(text: str) -> None:
    assert scan_env_files(text, "f").unclear == ("f:3: env_file: without a value or - items",)


def test_scan_ignores_env_file_where_it_is_no_key() -> None:
    text = ("services:\n  backend:\n    volumes:\n      - /srv/env_files/x:/x\n"
            "    labels:\n      my_env_file: a.env\n      note: see env_file docs\n")
    assert scan_env_files(text) == EnvFileScan()


def test_scan_keeps_what_it_read_beside_an_unclear_item() -> None:
    text = "services:\n  b:\n    env_file:\n      - ok.env\n      - ${X}.env\n      - two.env\n"
    scan = scan_env_files(text, "f")
    assert scan.paths == ("ok.env", "two.env")
    assert scan.unclear == ("f:5: the path uses interpolation",)


def test_scanned_targets_resolve_like_config_ones() -> None:
    assert referenced_files(None, FILES, "/srv/app", env_files=["a.env", "/abs/b.env"]) == (
        *FILES, "/srv/app/.env", "/srv/app/a.env", "/abs/b.env")


_OPENED: list[Counter[str]] = []  # the counters of the open opens_under() blocks


def _count_open(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _OPENED and isinstance(args[0], str):
        _OPENED[-1][args[0]] += 1


sys.addaudithook(_count_open)  # cannot be removed: it counts only inside opens_under()


@contextmanager
def opens_under(folder: Path) -> Iterator[Counter[str]]:
    """How often each file under ``folder`` is opened inside the block (the interpreter's
    ``open`` audit event: every Python-level open, ``Path.read_bytes`` included)."""
    counts: Counter[str] = Counter()
    _OPENED.append(counts)
    try:
        yield counts
    finally:
        _OPENED.remove(counts)
        for path in [p for p in counts if not p.startswith(f"{folder}/")]:
            del counts[path]


@pytest.mark.parametrize("compose_1_29", [True, False])
def test_a_release_snapshot_reads_each_file_once(tmp_path: Path, compose_1_29: bool) -> None:
    """Compose 1.29 scans the compose file's own text for env_file: keys; v2+ lists them in its
    config. Either way the compose file and .env are read once, and only the targets besides."""
    compose = tmp_path / "docker-compose.yml"
    compose.write_text("services:\n  backend:\n    image: x\n    env_file: app.env\n")
    (tmp_path / ".env").write_text("TAG=1\n")
    (tmp_path / "app.env").write_text("A=1\n")
    config = None if compose_1_29 else services(backend="app.env")
    with opens_under(tmp_path) as opened:
        read = read_compose_files([str(compose)], str(tmp_path))
        snapshot, scanned = snapshot_files(read, config, [str(compose)], str(tmp_path),
                                           scan=compose_1_29)
    assert scanned == EnvFileScan((("app.env",) if compose_1_29 else ()), ())
    assert snapshot.files == ((str(compose), compose.read_bytes()),
                              (str(tmp_path / ".env"), b"TAG=1\n"),
                              (str(tmp_path / "app.env"), b"A=1\n"))
    assert opened == {str(compose): 1, str(tmp_path / ".env"): 1, str(tmp_path / "app.env"): 1}


def test_a_compose_file_gone_before_its_scan_is_unclear(tmp_path: Path) -> None:
    gone = str(tmp_path / "gone.yml")
    read = read_compose_files([gone], str(tmp_path))
    snapshot, scanned = snapshot_files(read, None, [gone], str(tmp_path), scan=True)
    assert scanned.unclear == (f"{gone}: cannot read: it is gone",)
    assert snapshot.content(gone) is None and snapshot.paths == (gone, str(tmp_path / ".env"))
