"""A booted Debian 12 systemd (252) in a container, for running the shipped unit for real.

The image ``brace-test/systemd:bookworm`` is a ``debootstrap --variant=minbase`` root file system
(systemd, dbus, python3-venv, make, procps, PostgreSQL 15 for local restore tests,
docker-compose) from the Debian mirror this machine's apt uses, imported with ``docker import``.
It carries a label hashing its recipe and is built at most once per machine (a few minutes),
under a file lock so parallel test processes wait for one build. PostgreSQL's own cluster and
services are removed/masked: with host networking they would take the host's port 5432.

:func:`boot` runs it as systemd's containers need (``--cap-add SYS_ADMIN``, tmpfs ``/run``,
the cgroup tree, ``container=docker``; ``--privileged`` is refused on this machine) with host
networking only, the host's docker socket, CLI and CLI plugins (``docker compose``), the
project's files at ``/src`` and a host
wheelhouse at ``/wheels`` so ``make install`` needs no network. Each folder in ``shared`` is
mounted at the *same* path inside, because the daemon asks the host's engine to bind-mount
paths it sees (the dump of a docker restore test, a compose stack's volumes). "/" is made
shared, as systemd does on a host, for ``LoadCredential=``.

The first build takes minutes, longer than one test's time limit: ``.ci/run`` builds it before
the suite (``python -m tests.support.systemd_box``); a test finding it missing skips (fails under
``CI=true``) with that command.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker

from tests.support.images import TEST_LABEL, _build_lock
from tests.support.skips import skip_missing

__all__ = ["SYSTEMD_REPO", "SystemdBox", "boot", "ensure_systemd_image", "project_copy",
           "wheelhouse"]

RECIPE_VERSION = "1"  # bump when the recipe below changes in a way the hash cannot see
SYSTEMD_REPO = "brace-test/systemd"
SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "procps", "python3", "python3-venv", "make",
            "postgresql-15", "docker-compose")
HASH_LABEL = "brace-test.hash"
LOCK_PATH = Path(tempfile.gettempdir()) / "brace-test-systemd-image.lock"
ROOT = Path(__file__).resolve().parents[2]
CLI_PLUGIN_DIRS = (Path("/usr/local/lib/docker/cli-plugins"),
                   Path("/usr/libexec/docker/cli-plugins"))
# Run in the new root file system: no PostgreSQL cluster or service of its own, no getty.
_FINISH = """set -e
rm -rf /etc/postgresql/15/main /var/lib/postgresql/15/main
systemctl mask postgresql.service postgresql@.service getty@.service console-getty.service \
  systemd-logind.service >/dev/null 2>&1
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
"""


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses (deb822 ``URIs:`` or one-line ``deb``)."""
    files = [*sorted(sources.glob("sources.list.d/*.sources")), sources / "sources.list"]
    for path in files:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = line.split()
            if words[:1] == ["URIs:"]:
                uris = words[1:]
            elif words[:1] == ["deb"]:
                uris = [w for w in words[1:] if "://" in w][:1]  # after an optional [options]
            else:
                continue
            for uri in uris:
                if uri.rstrip("/").endswith("/debian") and uri.startswith("http"):
                    return uri.rstrip("/")
    return "http://deb.debian.org/debian"


def _recipe(mirror: str) -> str:
    return "\n".join([RECIPE_VERSION, SUITE, mirror, ",".join(PACKAGES), _FINISH])


def ensure_systemd_image(client: docker.DockerClient, *, build: bool = True) -> str:
    """The tag of the booting systemd image; built when missing or of an older recipe, or
    (``build=False``, in a test: the build outlasts a test's time limit) skipped, naming the
    command that builds it."""
    mirror = debian_mirror()
    fingerprint = hashlib.sha256(_recipe(mirror).encode()).hexdigest()
    tag = f"{SYSTEMD_REPO}:{SUITE}"
    with _build_lock(LOCK_PATH):
        try:
            if (client.images.get(tag).labels or {}).get(HASH_LABEL) == fingerprint:
                return tag
        except docker.errors.ImageNotFound:
            pass
        if not build:
            skip_missing(f"the {tag} image of this recipe (.ci/run builds it; by hand, a few "
                         "minutes: .venv/bin/python -m tests.support.systemd_box)")
        if shutil.which("debootstrap") is None:
            skip_missing("debootstrap (Debian package: debootstrap) to build the systemd image")
        _build(tag, mirror, fingerprint)
    return tag


def _build(tag: str, mirror: str, fingerprint: str) -> None:
    # /var/tmp: a disk (the root file system is ~700 MB), where /tmp may be a small tmpfs
    with tempfile.TemporaryDirectory(prefix="brace-test-systemd-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        try:
            _debootstrap_and_import(rootfs, tag, mirror, fingerprint)
        finally:
            _unmount_below(rootfs)  # an interrupted debootstrap leaves /proc mounted in it


def _unmount_below(root: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=60,
                       check=False)


def _debootstrap_and_import(rootfs: Path, tag: str, mirror: str, fingerprint: str) -> None:
    cache = Path("/var/tmp/brace-test-debootstrap-cache")  # .debs kept for a rebuild
    cache.mkdir(exist_ok=True)
    _run(["debootstrap", "--variant=minbase", f"--cache-dir={cache}",
          f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), mirror], timeout=1800)
    _run(["chroot", str(rootfs), "/bin/sh", "-c", _FINISH], timeout=300)
    tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
                           stdout=subprocess.PIPE)
    try:
        _run(["docker", "import", "-c", 'CMD ["/sbin/init"]', "-c", "ENV container=docker",
              "-c", f"LABEL {HASH_LABEL}={fingerprint} {TEST_LABEL}=1", "-", tag],
             timeout=600, stdin=tar.stdout)
    finally:
        if tar.stdout is not None:
            tar.stdout.close()
        if tar.wait(timeout=600) != 0:
            raise RuntimeError("tar of the systemd root file system failed")


def _run(argv: Sequence[str], *, timeout: float, stdin: object = None) -> str:
    result = subprocess.run(list(argv), stdin=stdin, capture_output=True, text=True,
                            timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}): "
                           f"{(result.stderr or result.stdout)[-3000:]}")
    return result.stdout


def wheelhouse(cache: Path = Path("/var/tmp")) -> Path:
    """Wheels of the project's dependencies and its build backend, built on the host (pip
    reaches the registry here) and kept per ``pyproject.toml`` content."""
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    target = cache / f"brace-test-wheelhouse-{digest}"
    with _build_lock(cache / "brace-test-wheelhouse.lock"):
        if not (target / ".complete").exists():
            shutil.rmtree(target, ignore_errors=True)
            project = tomllib.loads((ROOT / "pyproject.toml").read_text())
            # the dependencies and the build backend; the project itself is built by
            # `make install` from /src (building it here would write build/ into the worktree)
            _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(target),
                  *project["build-system"]["requires"], "wheel",
                  *project["project"]["dependencies"]], timeout=900)
            (target / ".complete").touch()
            for old in cache.glob("brace-test-wheelhouse-*"):
                if old != target:  # of an older pyproject.toml
                    shutil.rmtree(old, ignore_errors=True)
    return target


def project_copy(target: Path) -> Path:
    """The project's files as git sees them (tracked and new, not ignored) copied to
    ``target``: ``make install`` builds in its source folder, so the worktree stays clean."""
    listed = _run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                   "--exclude-standard"], timeout=60)
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@dataclass
class SystemdBox:
    """A running container whose PID 1 is systemd."""

    name: str

    def run(self, *argv: str, check: bool = True, timeout: float = 120.0,
            env: dict[str, str] | None = None, workdir: str | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """``docker exec`` argv in the box; raises with its output when ``check`` and it fails."""
        options = [f"--env={k}={v}" for k, v in (env or {}).items()]
        options += [f"--workdir={workdir}"] if workdir else []
        options += ["--interactive"] if stdin is not None else []
        result = subprocess.run(["docker", "exec", *options, self.name, *argv], input=stdin,
                                capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def sh(self, script: str, **kwargs: object) -> str:
        return self.run("sh", "-c", script, **kwargs).stdout  # type: ignore[arg-type]

    def write(self, path: str, text: str, mode: str = "0644") -> None:
        self.run("sh", "-c", f'umask 077 && cat > "$1" && chmod {mode} "$1"', "-", path,
                 stdin=text)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show`` properties of ``unit``."""
        out = self.run("systemctl", "show", unit, *[f"--property={p}" for p in props]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str, *, since: str = "") -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", "-u", unit,
                        *([f"--since={since}"] if since else [])).stdout

    def wait(self, what: str, predicate: Callable[[], object], *, timeout: float,
             interval: float = 0.5, explain: Callable[[], object] | None = None) -> None:
        """Poll ``predicate`` until true; on timeout fail naming ``what`` (and ``explain()``)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                detail = f": {explain()}" if explain is not None else ""
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
            time.sleep(interval)

    def remove(self) -> None:
        subprocess.run(["docker", "rm", "--force", "--volumes", self.name], capture_output=True,
                       timeout=120, check=False)


def boot(image: str, *, src: Path, wheels: Path, shared: Sequence[Path] = (),
         boot_timeout: float = 120.0) -> SystemdBox:
    """Start ``image`` with systemd as PID 1 and wait until the system is up."""
    docker_cli = shutil.which("docker")
    if docker_cli is None:
        skip_missing("the docker CLI (Debian package: docker.io)")
    box = SystemdBox(f"brace-test-systemd-{uuid.uuid4().hex[:12]}")
    plugins = [path for path in CLI_PLUGIN_DIRS if path.is_dir()]  # `docker compose` v2+
    mounts = ["--volume=/var/run/docker.sock:/var/run/docker.sock",
              f"--volume={Path(docker_cli).resolve()}:/usr/bin/docker:ro",
              *[f"--volume={path}:{path}:ro" for path in plugins],
              f"--volume={src}:/src", f"--volume={wheels}:/wheels:ro",
              *[f"--volume={path}:{path}" for path in shared]]
    _run(["docker", "run", "--detach", f"--name={box.name}", "--network=host",
          "--cap-add=SYS_ADMIN", "--tmpfs=/run", "--tmpfs=/run/lock",
          "--volume=/sys/fs/cgroup:/sys/fs/cgroup:rw", "--env=container=docker",
          f"--label={TEST_LABEL}=1", *mounts, image, "/sbin/init"], timeout=120)
    try:
        # Until systemd listens on its bus, systemctl fails at once ("Failed to connect").
        box.wait("systemd to finish booting", lambda: box.run(
            "systemctl", "is-system-running", check=False).stdout.strip() in (
            "running", "degraded"), timeout=boot_timeout)
        # systemd makes "/" shared at boot on a host but leaves propagation alone in a
        # container; without it the credentials it mounts for LoadCredential= never reach
        # the service (an empty $CREDENTIALS_DIRECTORY).
        box.run("mount", "--make-rshared", "/")
    except BaseException:
        box.remove()
        raise
    return box


if __name__ == "__main__":
    # `.ci/run` builds the image before the suite: the first build takes minutes, more than
    # one test's time limit.
    print(ensure_systemd_image(docker.from_env(timeout=600)))
