"""A real single-node Docker Swarm on a PRIVATE dockerd the test starts (the shared engine is never
put in swarm mode): own data-root, exec-root, pidfile and unix socket, no bridge, no iptables;
``swarm init --advertise-addr 127.0.0.1`` on a free loopback port; images copied in from the
shared engine (``save``/``load``). :func:`swarm_worker` joins a second private dockerd as a worker
node (a node whose containers the manager cannot see). On exit: ``swarm leave --force``, each
dockerd stopped, its mounts and folder removed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from docker.types import EndpointSpec, ServiceMode

from brace_watchdog.swarm_release import spec_hash
from tests.integration.control_helpers import short_dir
from tests.support.net import free_port
from tests.support.skips import skip_missing

__all__ = ["CRASH_TAG", "STACK", "PrivateSwarm", "converged_on", "create_replicated_service",
           "create_web_service", "health_status", "private_swarm", "slot_args", "swarm_cli",
           "swarm_worker", "swarm_worker_node"]

STACK = "brace"
CRASH_TAG = "brace-test/busybox:crash"


@dataclass
class PrivateSwarm:
    folder: Path
    client: docker.DockerClient

    @property
    def host(self) -> str:
        return f"unix://{self.folder / 'd.sock'}"


def health_status(port: int, path: str = "/api/health") -> str:
    """What a GET of ``path`` on a loopback port answers: the HTTP status, or the error's
    name (``ConnectionRefusedError``, ``TimeoutError``...)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return str(r.status)
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except OSError as exc:
        return type(exc).__name__


def swarm_cli(engine: PrivateSwarm, *argv: str,
              cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The docker CLI against the private Swarm (never the shared engine); fails on an error."""
    done = subprocess.run(["docker", *argv], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**os.environ, "DOCKER_HOST": engine.host}, check=False)
    assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done


def _www(root: Path) -> Path:
    www = root / "www"
    (www / "api").mkdir(parents=True)
    (www / "api" / "health").write_text("ok\n")
    return www


def create_web_service(engine: PrivateSwarm, root: Path, image_ref: str, name: str, *,
                       stack: str = STACK, pin: bool = True,
                       **extra: object) -> tuple[str, int, str]:
    """A ``stack`` service serving ``/api/health`` (200) on a loopback port (host network),
    pinned to the image ID of ``image_ref`` (``pin``; else its spec names ``image_ref`` as it
    is, as a stack deployed without a registry does); (service id, port, image id)."""
    www = _www(root)
    port = free_port()
    image = engine.client.images.get(image_ref).id
    service = engine.client.services.create(
        image if pin else image_ref, args=["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/www"],
        name=f"{stack}_{name}", labels={"com.docker.stack.namespace": stack},
        networks=["host"], mounts=[f"{www}:/www:ro"], endpoint_spec=EndpointSpec(),
        stop_grace_period=1_000_000_000, **extra)
    return str(service.id), port, str(image)


def slot_args(docroot: str = "/www") -> list[str]:
    """busybox httpd serving ``docroot`` on the port of its task's slot (``PORT_<slot>``)."""
    return ["sh", "-c", f'eval "exec httpd -f -p 127.0.0.1:\\$PORT_$SLOT -h {docroot}"']


def create_replicated_service(engine: PrivateSwarm, root: Path, image_ref: str, name: str,
                              replicas: int, **extra: object) -> tuple[str, list[int], str]:
    """:func:`create_web_service` with ``replicas`` tasks on the one node, each serving on the
    port of its slot (host network: one port per replica; Swarm fills ``{{.Task.Slot}}``);
    (service id, the slots' ports, image id)."""
    www = _www(root)
    ports = [free_port() for _ in range(replicas)]
    image = engine.client.images.get(image_ref).id
    service = engine.client.services.create(
        image, args=slot_args(), name=f"{STACK}_{name}",
        env=["SLOT={{.Task.Slot}}", *(f"PORT_{slot}={port}"
                                      for slot, port in enumerate(ports, 1))],
        labels={"com.docker.stack.namespace": STACK}, networks=["host"],
        mounts=[f"{www}:/www:ro"], endpoint_spec=EndpointSpec(),
        mode=ServiceMode("replicated", replicas=replicas),
        stop_grace_period=1_000_000_000, **extra)
    return str(service.id), ports, str(image)


def converged_on(client: docker.DockerClient, service_id: str, image_id: str) -> bool:
    """No running task of the service (any desired state: one told to stop runs on until it
    has) runs another image or spec than ``image_id`` with the service's current container
    spec, and as many as its replicas that Swarm means to keep run those — read from the
    manager's task API, independently of the driver under test."""
    api: Any = client.api
    spec = api.inspect_service(service_id)["Spec"]
    want = spec_hash(spec["TaskTemplate"]["ContainerSpec"])
    replicas = (spec["Mode"].get("Replicated") or {}).get("Replicas")
    running = [t for t in api.tasks(filters={"service": service_id})
               if t["Status"]["State"] == "running"]
    kept = sum(t["DesiredState"] in ("running", "ready") for t in running)
    return (bool(kept) and all(t["Spec"]["ContainerSpec"]["Image"] == image_id
                               and spec_hash(t["Spec"]["ContainerSpec"]) == want
                               for t in running)
            and replicas in (None, kept))


def _wait_engine(host: str, log: Path, timeout: float = 60) -> docker.DockerClient:
    deadline = time.monotonic() + timeout
    while True:
        if Path(host.removeprefix("unix://")).exists():
            client = docker.DockerClient(base_url=host, timeout=120, version="1.41")
            try:
                client.ping()
                return client
            except (docker.errors.DockerException, OSError):
                client.close()
        if time.monotonic() > deadline:
            raise AssertionError(log.read_text()[-3000:])
        time.sleep(0.2)


def _unmount_below(folder: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(f"{folder}/")), reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@contextmanager
def _private_dockerd(shared: docker.DockerClient,
                     images: list[str]) -> Iterator[tuple[Path, docker.DockerClient]]:
    """A private dockerd (own folder and socket) with ``images`` loaded from the shared engine;
    stopped, its mounts and folder removed on exit."""
    if not shutil.which("dockerd"):
        skip_missing("dockerd is not installed (Debian package docker.io)")
    folder = short_dir()
    argv = ["dockerd", "--data-root", str(folder / "data"), "--exec-root", str(folder / "x"),
            "--pidfile", str(folder / "d.pid"), "-H", f"unix://{folder / 'd.sock'}",
            "--bridge=none", "--iptables=false", "--ip-masq=false"]
    log = folder / "dockerd.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    client: docker.DockerClient | None = None
    try:
        client = _wait_engine(f"unix://{folder / 'd.sock'}", log)
        for image in images:
            client.images.load(b"".join(shared.images.get(image).save(named=True)))
        yield folder, client
    finally:
        if client is not None:
            with suppress(docker.errors.DockerException):
                client.swarm.leave(force=True)
            client.close()
        with suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        _unmount_below(folder)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def private_swarm(shared: docker.DockerClient, images: list[str]) -> Iterator[PrivateSwarm]:
    with _private_dockerd(shared, images) as (folder, client):
        client.swarm.init(advertise_addr="127.0.0.1",
                          listen_addr=f"127.0.0.1:{free_port()}")
        try:
            yield PrivateSwarm(folder, client)
        finally:
            with suppress(docker.errors.DockerException):
                for service in client.services.list():
                    service.remove()


@contextmanager
def swarm_worker(engine: PrivateSwarm, shared: docker.DockerClient,
                 images: list[str]) -> Iterator[docker.DockerClient]:
    """A second private dockerd joined to ``engine``'s swarm as a worker (loopback addresses):
    a node whose containers the manager's engine cannot see. It leaves on exit."""
    with swarm_worker_node(engine, shared, images) as node:
        yield node.client


@contextmanager
def swarm_worker_node(engine: PrivateSwarm, shared: docker.DockerClient,
                      images: list[str]) -> Iterator[PrivateSwarm]:
    """:func:`swarm_worker` with its folder, so a daemon can be pointed at its socket."""
    with _private_dockerd(shared, images) as (folder, client):
        manager = engine.client.info()["Swarm"]["RemoteManagers"][0]["Addr"]
        port = free_port()
        client.swarm.join(remote_addrs=[manager],
                          join_token=engine.client.swarm.attrs["JoinTokens"]["Worker"],
                          listen_addr=f"127.0.0.1:{port}", advertise_addr=f"127.0.0.1:{port}")
        try:
            yield PrivateSwarm(folder, client)
        finally:
            node = str(client.info()["Swarm"]["NodeID"])
            with suppress(docker.errors.DockerException):
                client.swarm.leave(force=True)
                engine.client.api.remove_node(node, force=True)
