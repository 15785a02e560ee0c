"""File safety on a real filesystem: O_NOFOLLOW reads, verified private copies, O_EXCL
creation and link-publishing that never follows or replaces what someone planted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from brace_watchdog.errors import RefusedError
from brace_watchdog.files import (
    ContentChangedError,
    copy_verified,
    create_exclusive,
    identify,
    private_dir,
    publish,
    read_nofollow,
)


def test_identify_never_follows_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"abc")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    found = identify(tmp_path / "real")
    assert (found.size, found.inode) == (3, (tmp_path / "real").stat().st_ino)
    for reader in (identify, read_nofollow):
        with pytest.raises(RefusedError, match="symlink is never followed"):
            reader(tmp_path / "link")
    with pytest.raises(RefusedError, match="not a regular file"):
        identify(tmp_path)
    with pytest.raises(RefusedError, match="does not exist"):
        identify(tmp_path / "gone")


def test_copy_verified_copies_exactly_the_approved_content(tmp_path: Path) -> None:
    source = tmp_path / "d.dump"
    source.write_bytes(b"PGDMP" * 1000)
    approved = identify(source)
    folder = private_dir(tmp_path / "work", "t-")
    assert folder.stat().st_mode & 0o777 == 0o700
    copy = copy_verified(source, folder, approved)
    assert copy.read_bytes() == source.read_bytes() and copy.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("change", ["same size", "other size", "replaced"])
def test_copy_verified_refuses_any_change_and_leaves_no_copy(tmp_path: Path,
                                                             change: str) -> None:
    source = tmp_path / "d.dump"
    source.write_bytes(b"A" * 100)
    approved = identify(source)
    if change == "same size":
        source.write_bytes(b"B" * 100)
    elif change == "other size":
        source.write_bytes(b"A" * 101)
    else:
        (tmp_path / "new").write_bytes(b"A" * 100)
        os.replace(tmp_path / "new", source)
    folder = private_dir(tmp_path / "work", "t-")
    with pytest.raises(ContentChangedError, match="changed after the plan was made"):
        copy_verified(source, folder, approved)
    assert not list(folder.iterdir())


def test_exclusive_creation_and_publishing_never_touch_a_planted_file(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "planted").symlink_to(victim)
    with pytest.raises(FileExistsError):
        create_exclusive(tmp_path / "planted")
    source = tmp_path / "src"
    source.write_bytes(b"safety dump")
    with pytest.raises(FileExistsError):
        publish(source, tmp_path / "planted")
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["planted", "src", "victim"]
    publish(source, tmp_path / "published", mode=0o640)
    assert (tmp_path / "published").read_bytes() == b"safety dump"
    assert (tmp_path / "published").stat().st_mode & 0o777 == 0o640
    assert not list(tmp_path.glob(".*partial"))
