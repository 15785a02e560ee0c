"""Unit tests for dump header parsing (synthetic headers byte by byte) and dump-name resolution."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from brace_watchdog.dumps import (
    InvalidDumpError,
    newest_dump,
    parse_dump_header,
    read_dump_header,
    resolve_dump,
)
from brace_watchdog.errors import RefusedError


def _int(value: int, size: int = 4) -> bytes:
    return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(size, "little")


def _str(text: str | None, size: int = 4) -> bytes:
    if text is None:
        return _int(-1, size)
    raw = text.encode()
    return _int(len(raw), size) + raw


def header(*, version: tuple[int, int, int] = (1, 16, 0), int_size: int = 4, fmt: int = 1,
           server: str | None = "17.2", dumper: str = "17.2", db: str = "brace") -> bytes:
    data = b"PGDMP" + bytes([*version, int_size, 8, fmt])
    data += bytes([3]) if version >= (1, 15, 0) else _int(-1, int_size)
    tm = (6, 52, 4, 3, 1, 126, 0)  # 2026-02-03 04:52:06
    data += b"".join(_int(v, int_size) for v in tm)
    return data + _str(db, int_size) + _str(server, int_size) + _str(dumper, int_size)


def test_pg17_header() -> None:
    h = parse_dump_header(header() + b"TOC...")
    assert h.archive_version == (1, 16, 0)
    assert (h.format, h.compression, h.dbname) == ("custom", "zstd", "brace")
    assert (h.server_version, h.server_major, h.dump_major, h.required_major) == ("17.2", 17, 17,
                                                                                  17)
    assert h.created == time.mktime((2026, 2, 3, 4, 52, 6, 0, 0, 0))


def test_pg15_header_with_int_compression_and_8_byte_ints() -> None:
    h = parse_dump_header(header(version=(1, 14, 0), int_size=8, server="15.18 (Debian)",
                                 dumper="17.0"))
    assert (h.int_size, h.compression) == (8, "gzip")
    assert (h.server_major, h.dump_major, h.required_major) == (15, 17, 17)


def test_null_server_version_and_old_style_major() -> None:
    assert parse_dump_header(header(server=None)).server_version == ""
    assert parse_dump_header(header(server="9.6.24", dumper="9.6.24")).server_major == 9


@pytest.mark.parametrize("cut", [1, 3, 6, 9, 12, 20, 40, 60, 70])
def test_every_truncation_is_reported(cut: int) -> None:
    with pytest.raises(InvalidDumpError, match="truncated") as info:
        parse_dump_header(header()[:cut])
    assert info.value.stage == "checking"


@pytest.mark.parametrize(("data", "message"), [
    (b"", "is empty"),
    (b"--\n-- PostgreSQL database dump\n", "does not start with PGDMP"),
    (b"PK\x03\x04zipfile", "does not start with PGDMP"),
    (header(version=(1, 10, 0)), "older than PostgreSQL 11"),
    (b"PGDMP" + bytes([1, 16, 0, 0, 8, 1]), "implausible integer size"),
])
def test_not_a_dump(data: bytes, message: str) -> None:
    with pytest.raises(InvalidDumpError, match=message):
        parse_dump_header(data, "x.dump")


def test_implausible_string_length() -> None:
    data = header()
    start = data.index(b"brace") - 5
    with pytest.raises(InvalidDumpError, match="implausible database name length"):
        parse_dump_header(data[:start] + _int(10**6) + b"brace")


def test_other_formats_are_named() -> None:
    assert parse_dump_header(header(fmt=3)).format == "tar"
    assert parse_dump_header(header(fmt=42)).format == "unknown (42)"


def test_read_dump_header_from_file(tmp_path: Path) -> None:
    path = tmp_path / "brace_20260203_045206.dump"
    path.write_bytes(header() + os.urandom(64))
    assert read_dump_header(path).server_major == 17
    with pytest.raises(InvalidDumpError, match="cannot read"):
        read_dump_header(tmp_path / "missing.dump")


@pytest.fixture
def backups(tmp_path: Path) -> Path:
    folder = tmp_path / "backups"
    folder.mkdir()
    (folder / "brace_20260203_045206.dump").write_bytes(header())
    (folder / "sub").mkdir()
    (folder / "sub" / "brace_tg_20260203045206.dump").write_bytes(header())
    (tmp_path / "outside.dump").write_bytes(header())
    return folder


def test_resolve_plain_relative_and_absolute_names(backups: Path) -> None:
    inside = backups / "brace_20260203_045206.dump"
    assert resolve_dump(backups, "brace_20260203_045206.dump") == inside.resolve()
    assert resolve_dump(backups, str(inside)) == inside.resolve()
    assert resolve_dump(backups, "sub/brace_tg_20260203045206.dump").name.startswith("brace_tg")


def test_resolve_follows_symlinks_that_stay_inside(backups: Path) -> None:
    (backups / "latest.dump").symlink_to(backups / "brace_20260203_045206.dump")
    assert resolve_dump(backups, "latest.dump").name == "brace_20260203_045206.dump"


@pytest.mark.parametrize(("name", "message"), [
    ("", "no dump name"),
    ("   ", "no dump name"),
    ("brace\x00.dump", "NUL byte"),
    ("../outside.dump", "contains '..'"),
    ("sub/../../outside.dump", "contains '..'"),
    ("/etc/passwd", "outside the backups folder"),
    ("escape.dump", "outside the backups folder"),
    ("missing.dump", "no dump named"),
    ("sub", "not a regular file"),
    ("$(rm -rf ~); `x` | y.dump", "no dump named"),
])
def test_resolve_refuses(backups: Path, name: str, message: str) -> None:
    (backups / "escape.dump").symlink_to(backups.parent / "outside.dump")
    with pytest.raises(RefusedError, match=message) as info:
        resolve_dump(backups, name)
    assert info.value.stage == "checking"


def test_resolve_refuses_absolute_path_outside(backups: Path) -> None:
    with pytest.raises(RefusedError, match="outside the backups folder"):
        resolve_dump(backups, str(backups.parent / "outside.dump"))
    with pytest.raises(RefusedError, match="outside the backups folder"):
        resolve_dump(backups, str(backups))


def test_newest_dump_skips_non_dumps(backups: Path) -> None:
    older = backups / "brace_20260101_000000.dump"
    older.write_bytes(header())
    newest = backups / "brace_20260301_000000.dump"
    newest.write_text("not a dump")
    os.utime(older, (1, 2_000_000_000))
    assert newest_dump(backups, ("brace_*.dump",)) == older.resolve()
    with pytest.raises(RefusedError, match="no readable"):
        newest_dump(backups, ("nothing_*.dump",))
