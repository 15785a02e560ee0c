"""pg_dump custom-format archives: header reading and strict dump-name resolution.

:func:`read_dump_header` parses the fixed header ``pg_dump -Fc`` writes (``WriteHead`` in
PostgreSQL's ``src/bin/pg_dump/pg_backup_archiver.c``)::

    "PGDMP"                      5 bytes of magic
    vmaj vmin vrev               archive version, a byte each (1.14 = PG 14/15, 1.16 = PG 17)
    intSize offSize format       one byte each (format 1 = custom)
    compression                  archive >= 1.15: one byte (algorithm); older: Int (gzip level)
    sec min hour mday mon year isdst   seven Ints: the dump's local creation time (struct tm)
    dbname remoteVersion pgdumpVersion three Strs

An ``Int`` is one sign byte followed by ``intSize`` little-endian bytes; a ``Str`` is an Int
length (-1 = NULL) followed by that many bytes.

:func:`resolve_dump` turns an operator-supplied dump name into a path that is guaranteed to be a
regular file inside the backups folder (no ``..``, no absolute path elsewhere, no symlink out, no
NUL byte); the DB rollback reuses it. Both raise errors whose message says what to do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from brace_watchdog.errors import ActionError, RefusedError

__all__ = [
    "DumpHeader",
    "InvalidDumpError",
    "newest_dump",
    "parse_dump_header",
    "read_dump_header",
    "resolve_dump",
]

MAGIC = b"PGDMP"
FORMAT_NAMES = {0: "unknown", 1: "custom", 2: "files", 3: "tar", 4: "null", 5: "directory"}
COMPRESSION_NAMES = {0: "none", 1: "gzip", 2: "lz4", 3: "zstd"}
MAX_HEADER_STRING = 4096
HEADER_READ_BYTES = 3 * MAX_HEADER_STRING + 256


class InvalidDumpError(ActionError):
    """The file is not a readable pg_dump custom-format archive (stage ``checking``)."""

    def __init__(self, message: str) -> None:
        super().__init__("checking", message)


@dataclass(frozen=True)
class DumpHeader:
    archive_version: tuple[int, int, int]
    int_size: int
    off_size: int
    format: str
    compression: str
    created: float | None
    """Unix time of creation, reading the header's local time as this machine's local time."""
    dbname: str
    server_version: str
    dump_version: str

    @property
    def server_major(self) -> int:
        """Major version of the server that was dumped (``17`` for ``"17.2"``, ``9`` for 9.6)."""
        return _major(self.server_version)

    @property
    def dump_major(self) -> int:
        """Major version of the ``pg_dump`` that wrote the archive."""
        return _major(self.dump_version)

    @property
    def required_major(self) -> int:
        """Oldest server major (with its own pg_restore) that can restore this archive."""
        return max(self.server_major, self.dump_major)


def _major(version: str) -> int:
    head = version.strip().split(".")[0]
    digits = "".join(ch for ch in head if ch.isdigit())
    return int(digits) if digits else 0


class _Reader:
    def __init__(self, data: bytes, name: str) -> None:
        self._data = data
        self._pos = 0
        self._name = name
        self.int_size = 4

    def bytes(self, count: int, what: str) -> bytes:
        chunk = self._data[self._pos:self._pos + count]
        if len(chunk) != count:
            raise InvalidDumpError(f"{self._name}: header truncated while reading {what}; "
                                   "the file is incomplete (still being written or cut off)")
        self._pos += count
        return chunk

    def byte(self, what: str) -> int:
        return self.bytes(1, what)[0]

    def int(self, what: str) -> int:
        sign = self.byte(what)
        value = int.from_bytes(self.bytes(self.int_size, what), "little")
        return -value if sign else value

    def str(self, what: str) -> str:
        length = self.int(what)
        if length < 0:
            return ""
        if length > MAX_HEADER_STRING:
            raise InvalidDumpError(f"{self._name}: implausible {what} length {length} in "
                                   "header; the file is corrupt")
        return self.bytes(length, what).decode("utf-8", errors="replace")


def read_dump_header(path: Path) -> DumpHeader:
    """Parse the custom-format header of ``path``; raise InvalidDumpError if it is not one."""
    try:
        with path.open("rb") as stream:
            data = stream.read(HEADER_READ_BYTES)
    except OSError as exc:
        raise InvalidDumpError(f"cannot read {path}: {exc.strerror}") from None
    return parse_dump_header(data, path.name)


def parse_dump_header(data: bytes, name: str = "dump") -> DumpHeader:
    """Parse a header from the first bytes of a dump (pure; see the module docstring)."""
    r = _Reader(data, name)
    if not data:
        raise InvalidDumpError(f"{name} is empty; the backup did not write anything")
    if MAGIC.startswith(data[:5]) and len(data) < len(MAGIC):
        r.bytes(len(MAGIC), "magic")  # raises: truncated
    if data[:5] != MAGIC:
        raise InvalidDumpError(f"{name} is not a pg_dump custom-format archive (it does not "
                               "start with PGDMP); make backups with pg_dump -Fc")
    r.bytes(len(MAGIC), "magic")
    version = (r.byte("version"), r.byte("version"), r.byte("version"))
    if version < (1, 12, 0):
        raise InvalidDumpError(f"{name}: archive version {_v(version)} is older than "
                               "PostgreSQL 11 and not supported")
    r.int_size = r.byte("intSize")
    if not 1 <= r.int_size <= 8:
        raise InvalidDumpError(f"{name}: implausible integer size {r.int_size} in header")
    off_size = r.byte("offSize")
    fmt = r.byte("format")
    if version >= (1, 15, 0):
        compression = COMPRESSION_NAMES.get(r.byte("compression"), "unknown")
    else:
        level = r.int("compression")
        compression = "none" if level == 0 else f"gzip level {level}" if level > 0 else "gzip"
    tm = [r.int("timestamp") for _ in range(7)]
    return DumpHeader(archive_version=version, int_size=r.int_size, off_size=off_size,
                      format=FORMAT_NAMES.get(fmt, f"unknown ({fmt})"), compression=compression,
                      created=_mktime(tm), dbname=r.str("database name"),
                      server_version=r.str("server version"),
                      dump_version=r.str("pg_dump version"))


def _v(version: tuple[int, int, int]) -> str:
    return ".".join(str(part) for part in version)


def _mktime(tm: list[int]) -> float | None:
    sec, minute, hour, mday, mon, year, isdst = tm
    try:
        return time.mktime((year + 1900, mon + 1, mday, hour, minute, sec, 0, 0, isdst))
    except (OverflowError, ValueError):
        return None


def resolve_dump(backups_dir: Path, name: str) -> Path:
    """Return the real path of dump ``name`` inside ``backups_dir``; RefusedError otherwise.

    ``name`` is a file name (or a path relative to the folder, or an absolute path that lies in
    it). Anything that would leave the folder — ``..``, another absolute path, a symlink
    pointing out — is refused, as are NUL bytes, empty names and non-regular files. Shell
    metacharacters are just characters: nothing here ever reaches a shell.
    """
    if not isinstance(name, str) or not name.strip():
        raise RefusedError("checking", "no dump name given")
    if "\x00" in name:
        raise RefusedError("checking", "dump name contains a NUL byte")
    candidate = Path(name)
    if ".." in candidate.parts:
        raise RefusedError("checking", f"dump name {name!r} contains '..'; give a file name "
                                       f"inside {backups_dir}")
    base = backups_dir.resolve()
    path = candidate if candidate.is_absolute() else base / candidate
    try:
        real = path.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise RefusedError("checking", f"no dump named {name!r} in {base}") from None
    except (OSError, RuntimeError) as exc:
        raise RefusedError("checking", f"cannot resolve dump {name!r}: {exc}") from None
    if not real.is_relative_to(base) or real == base:
        raise RefusedError("checking", f"dump {name!r} resolves to {real}, outside the backups "
                                       f"folder {base}; only dumps inside it may be used")
    if not real.is_file():
        raise RefusedError("checking", f"dump {name!r} is not a regular file")
    return real


def newest_dump(backups_dir: Path, patterns: tuple[str, ...] | list[str]) -> Path:
    """The most recently modified file matching ``patterns`` whose header reads as a dump.

    For the one-shot command, which runs without the backups monitor; the daemon uses the
    monitor's scan instead. RefusedError when the folder holds no readable dump.
    """
    candidates = {p for pattern in patterns for p in backups_dir.glob(pattern) if p.is_file()}
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            read_dump_header(path)
        except InvalidDumpError:
            continue
        return path.resolve()
    raise RefusedError("checking", f"no readable pg_dump -Fc dump matching {list(patterns)} in "
                                   f"{backups_dir}")
