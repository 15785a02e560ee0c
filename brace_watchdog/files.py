"""Files root reads, copies and creates where others may write: bound by content, never followed.

A gated action is approved for a file's *content*, not its name: :func:`identify` hashes a file
opened with ``O_NOFOLLOW`` (:class:`FileIdentity`: sha256, size, inode); :func:`copy_verified`
copies it into a private folder and refuses (:class:`ContentChangedError`) when what it read is
not what was approved, so the copy is exactly the approved bytes. Files created in shared folders
use ``O_CREAT | O_EXCL | O_NOFOLLOW`` (:func:`create_exclusive`) and are published under their
final name with ``link()``, which never replaces or follows what is already there
(:func:`publish`). A file rewritten in place is replaced atomically (:func:`install_bytes`:
``mkstemp`` in the same folder, mode and owner kept, ``os.replace`` — a symlink there is
replaced, not followed). Private folders are ``mkdtemp`` folders (mode 0700) under a root-owned
parent.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from brace_watchdog.errors import RefusedError

__all__ = ["ContentChangedError", "FileIdentity", "copy_verified", "create_exclusive",
           "identify", "identify_bytes", "install_bytes", "private_dir", "publish", "read_nofollow"]

CHUNK = 1024 * 1024
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class FileIdentity:
    """What an approval binds: the content's sha256, its size, and the inode it was read from."""

    sha256: str
    size: int
    inode: int = 0

    def short(self) -> str:
        return f"sha256 {self.sha256[:16]}…, {self.size} bytes"


class ContentChangedError(RefusedError):
    """The file is not the one that was planned/approved (stage ``checking``)."""

    def __init__(self, path: Path, expected: FileIdentity, found: str) -> None:
        super().__init__("checking", f"{path} changed after the plan was made (approved "
                         f"{expected.short()}; {found}); nothing was changed: plan again and "
                         "review the new plan")


def identify_bytes(data: bytes) -> FileIdentity:
    return FileIdentity(hashlib.sha256(data).hexdigest(), len(data))


@contextlib.contextmanager
def _open_regular(path: Path) -> Iterator[tuple[BinaryIO, os.stat_result]]:
    """``path`` opened read-only without following a symlink; RefusedError unless regular."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        raise RefusedError("checking", f"{path} does not exist") from None
    except OSError as exc:
        raise RefusedError("checking", f"cannot open {path} ({exc.strerror}); a symlink is "
                           "never followed here") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise RefusedError("checking", f"{path} is not a regular file")
    with os.fdopen(fd, "rb") as stream:
        yield stream, info


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK):
        yield chunk


def identify(path: Path) -> FileIdentity:
    """Hash ``path`` (opened with O_NOFOLLOW, regular files only)."""
    digest = hashlib.sha256()
    with _open_regular(path) as (stream, info):
        size = 0
        for chunk in _chunks(stream):
            digest.update(chunk)
            size += len(chunk)
    return FileIdentity(digest.hexdigest(), size, info.st_ino)


def read_nofollow(path: Path) -> bytes:
    """The content of ``path`` (opened with O_NOFOLLOW, regular files only)."""
    with _open_regular(path) as (stream, _):
        return stream.read()


def create_exclusive(path: Path, mode: int = 0o600) -> BinaryIO:
    """A new file at ``path`` opened for writing; fails if anything (a symlink too) is there."""
    return os.fdopen(os.open(path, _CREATE_FLAGS, mode), "wb")


def private_dir(parent: Path, prefix: str) -> Path:
    """A fresh folder (mode 0700) under ``parent``, created if needed with mode 0700."""
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def copy_verified(path: Path, folder: Path, expected: FileIdentity) -> Path:
    """Copy ``path`` into ``folder`` (private) and return the copy, whose content is exactly
    ``expected``; ContentChangedError (and no copy) when the source is not that content."""
    dest = folder / path.name
    digest = hashlib.sha256()
    with _open_regular(path) as (stream, info), create_exclusive(dest) as out:
        if (info.st_size, info.st_ino) != (expected.size, expected.inode):
            dest.unlink()
            raise ContentChangedError(path, expected, f"now {info.st_size} bytes, inode "
                                      f"{info.st_ino} instead of {expected.inode}")
        for chunk in _chunks(stream):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != expected.sha256:
        dest.unlink()
        raise ContentChangedError(path, expected, f"now sha256 {digest.hexdigest()[:16]}…")
    return dest


def publish(source: Path, dest: Path, mode: int = 0o640) -> None:
    """Copy ``source`` to ``dest`` in a shared folder: written under a random hidden name
    created with O_EXCL|O_NOFOLLOW, fsynced, then linked to ``dest`` (FileExistsError when
    ``dest`` exists — nothing is replaced or followed)."""
    partial = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.partial")
    try:
        with source.open("rb") as stream, create_exclusive(partial, mode) as out:
            for chunk in _chunks(stream):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.link(partial, dest, follow_symlinks=False)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def install_bytes(data: bytes, path: Path, *, like: Path | None = None) -> None:
    """Replace ``path`` atomically with ``data`` (a symlink at ``path`` is replaced, not
    followed), keeping ``path``'s mode and owner (or ``like``'s when ``path`` does not exist;
    ``mkstemp``'s 0600 and the daemon's user when neither does)."""
    source = path if path.exists() else like
    info = source.stat() if source is not None else None
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if info is not None:
            os.chmod(temp, info.st_mode & 0o7777)
            os.chown(temp, info.st_uid, info.st_gid)
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)
