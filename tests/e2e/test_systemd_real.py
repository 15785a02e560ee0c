"""The shipped unit under a real systemd 252 (Debian 12), hardening included.

One booted container (``tests/support/systemd_box.py``) is shared by the checks, which run in
file order: ``make install`` from a copy of the project, the unit as installed (unchanged; the
``LoadCredential=`` drop-in is the one docs/install.md tells operators to add), a real
PostgreSQL (a container of the host's engine, password auth), a real compose stack and the
host's docker engine through its socket. Each action the unit allows must really work inside
its sandbox: a directive that blocks one is a bug in the unit or in the docs.

The stack, the backups folder and the dumps live under ``/srv/brace/systemd-test-*`` (the unit's
``ReadWritePaths=-/srv/brace``), mounted at the same path in the container, because the daemon
asks the host's engine to bind-mount the paths it sees.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from tests.support.images import PgContainer, run_postgres
from tests.support.net import free_port
from tests.support.stack import COMPOSE_V2, Stack, compose_or_skip, ensure_web_images, new_stack
from tests.support.systemd_box import (
    SystemdBox,
    boot,
    ensure_systemd_image,
    project_copy,
    wheelhouse,
)

pytestmark = [pytest.mark.docker, pytest.mark.postgres, pytest.mark.slow]

UNIT = "brace-watchdog"
CONFIG = "/etc/brace-watchdog/brace-watchdog.toml"
CREDENTIAL = "/etc/brace-watchdog/credentials/db_password"
DROP_IN = "/etc/systemd/system/brace-watchdog.service.d/credentials.conf"
SOCKET = "/run/brace-watchdog/control.sock"
WATCHDOG_SEC = 30  # the unit's WatchdogSec=
SCHEMA = """
create role brace_user login;
create role brace_watchdog login password '{password}';
create database brace owner brace_user;
\\connect brace
set role brace_user;
create table alembic_version (version_num varchar(32) primary key);
insert into alembic_version values ('abc123');
create table users (id serial primary key, email text not null);
insert into users (email) select 'user' || i || '@example.invalid' from generate_series(1, 50) i;
reset role;
grant select on all tables in schema public to brace_watchdog;
"""


@pytest.fixture(scope="module")
def shared() -> Iterator[Path]:
    parent = Path("/srv/brace")
    root = parent / f"systemd-test-{secrets.token_hex(6)}"
    (root / "backups").mkdir(parents=True)
    for folder in (parent, root, root / "backups"):
        folder.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)
    if parent.exists() and not any(parent.iterdir()):
        parent.rmdir()


@pytest.fixture(scope="module")
def database(docker_client: docker.DockerClient, postgres_image: str,
             shared: Path) -> Iterator[tuple[PgContainer, str, str]]:
    """The "production" database, its monitor's password, and a dump of it in backups/."""
    password = secrets.token_hex(12)
    pg = run_postgres(docker_client, image=postgres_image, password=secrets.token_hex(12))
    try:
        code, out = _psql_script(pg, SCHEMA.format(password=password))
        assert code == 0, out
        name = f"brace_{datetime.now(UTC):%Y%m%d_%H%M%S}.dump"
        code, dump = pg.container.exec_run(["pg_dump", "-Fc", "-U", "postgres", "-d", "brace"],
                                           user="postgres", demux=True)
        assert code == 0 and dump[0], dump[1]
        (shared / "backups" / name).write_bytes(dump[0])
        (shared / "backups" / name).chmod(0o644)
        yield pg, password, name
    finally:
        pg.stop()


def _psql_script(pg: PgContainer, script: str) -> tuple[int, str]:
    """Run a multi-statement psql script (``\\connect`` included) in the container."""
    return pg.exec("sh", "-c", f"psql -v ON_ERROR_STOP=1 -q -U postgres -d postgres <<'SQL'\n"
                               f"{script}\nSQL\n")


@pytest.fixture(scope="module")
def stack(docker_client: docker.DockerClient, busybox_image: str,
          shared: Path) -> Iterator[Stack]:
    compose_or_skip(COMPOSE_V2)  # the production example's compose_command
    built = new_stack(docker_client, shared / "stack",
                      ensure_web_images(docker_client, busybox_image), COMPOSE_V2)
    try:
        built.deploy("v1")
        yield built
    finally:
        built.destroy()


def daemon_config(stack: Stack, database: tuple[PgContainer, str, str], shared: Path,
                  metrics_port: int, *, backend: str = "local") -> str:
    pg, _, _ = database
    return f"""
[daemon]
state_path = "/var/lib/brace-watchdog/state.db"
log_level = "INFO"

[metrics]
listen = "127.0.0.1:{metrics_port}"

[health]
url = "{stack.backend_url}"
frontend_url = "{stack.frontend_url}"
interval_seconds = 1.0
timeout_seconds = 2.0

[backups]
directory = "{shared / 'backups'}"
settle_seconds = 0.0

[database]
dsn = "postgresql://brace_watchdog@127.0.0.1:{pg.port}/brace?connect_timeout=5"
interval_seconds = 1.0

[control]
socket = "{SOCKET}"
group = "brace-ops"
two_person_rule = false

[restore_test]
enabled = true
backend = "{backend}"
image = "brace-test/postgres:15"
network = "host"
interval_hours = 1000.0
timeout_seconds = 300.0
roles = ["brace_user", "brace_watchdog"]  # every role the dump grants to
verify_queries = ["select count(*) from alembic_version"]
local_user = "postgres"
local_bin_dir = "/usr/lib/postgresql/15/bin"

[rollback]
enabled = true
compose_command = {json.dumps(list(stack.compose_command))}
compose_file = "{stack.compose_file}"
project = "{stack.project}"
services = ["backend", "frontend"]
stable_after_seconds = 2.0
deploy_grace_seconds = 0.5
window_seconds = 6.0
min_samples = 3
error_ratio = 0.5
cooldown_seconds = 600.0
verify_successes = 3
verify_timeout_seconds = 30.0
interval_seconds = 1.0

[db_rollback]
target = "container"
container = "{pg.container.name}"
database = "brace"
user = "postgres"
writers = ["backend"]
smoke_command = ["/bin/true"]
require_passing_restore_test = true
health_attempts = 30
health_wait_seconds = 1.0
"""


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def box(docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory,
        shared: Path, stack: Stack, database: tuple[PgContainer, str, str],
        metrics_port: int) -> Iterator[SystemdBox]:
    """systemd booted, brace-watchdog installed by `make install` and started."""
    image = ensure_systemd_image(docker_client, build=False)
    src = project_copy(tmp_path_factory.mktemp("src"))
    booted = boot(image, src=src, wheels=wheelhouse(), shared=[shared])
    try:
        booted.run("make", "install", workdir="/src", timeout=600,
                   env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheels"})
        booted.run("groupadd", "--system", "brace-ops")
        booted.write(CONFIG, daemon_config(stack, database, shared, metrics_port), "0640")
        booted.run("install", "-d", "-m", "0700", str(Path(CREDENTIAL).parent))
        booted.write(CREDENTIAL, database[1], "0600")
        booted.run("install", "-d", "-m", "0755", str(Path(DROP_IN).parent))
        booted.write(DROP_IN, f"[Service]\nLoadCredential=db_password:{CREDENTIAL}\n")
        booted.run("systemctl", "daemon-reload")
        started = booted.run("systemctl", "start", UNIT, check=False, timeout=120)
        assert started.returncode == 0, started.stderr + booted.journal(UNIT)
        yield booted
    finally:
        booted.remove()


def ctl(box: SystemdBox, *args: str, timeout: float = 300.0) -> Any:
    """``brace-watchdogctl --json ARGS`` in the box as root; its JSON answer."""
    result = box.run("brace-watchdogctl", "--socket", SOCKET, "--json", *args, check=False,
                     timeout=timeout)
    assert result.returncode == 0, f"ctl {args}: {result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


def events(box: SystemdBox, kind: str) -> list[dict[str, Any]]:
    data = ctl(box, "events", "--kind", kind)
    return list(data["events"] if isinstance(data, dict) else data)


def metric(port: int, name: str, **labels: str) -> float:
    """One sample from the daemon's exporter, scraped from the host (host networking)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == (f"{name}{{{wanted}}}" if wanted else name):
            return float(value)
    return 0.0


def unit_state(box: SystemdBox) -> dict[str, str]:
    return box.show(UNIT, "ActiveState", "SubState", "StatusText", "MainPID", "NRestarts")


def test_start_is_ready_with_status_and_no_mode_warning(box: SystemdBox,
                                                        metrics_port: int) -> None:
    state = unit_state(box)  # `systemctl start` of a Type=notify unit returned: READY=1 came
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
    assert box.show(UNIT, "Type", "NotifyAccess", "WatchdogUSec") == {
        "Type": "notify", "NotifyAccess": "main", "WatchdogUSec": f"{WATCHDOG_SEC}s"}
    box.wait("STATUS= with the components' summary", lambda: "backups: newest brace_" in
             unit_state(box)["StatusText"], timeout=60, explain=lambda: unit_state(box))
    journal = box.journal(UNIT)
    assert "mode is different" not in journal  # ConfigurationDirectoryMode= matches
    assert "reception only permitted for main PID" not in journal  # children stay silent
    assert box.run("stat", "-c", "%a", "/etc/brace-watchdog").stdout.strip() == "750"
    components = ctl(box, "status")["components"]
    assert {"health", "backups", "database", "restore_test", "rollback", "control"} <= set(
        components), components
    assert metric(metrics_port, "brace_watchdog_watchdog_healthy") == 1.0


def test_db_password_comes_from_load_credential(box: SystemdBox, metrics_port: int) -> None:
    assert box.run("test", "-e", "/etc/brace-watchdog/env", check=False).returncode == 1
    assert f"LoadCredential=db_password:{CREDENTIAL}" in box.run("systemctl", "cat", UNIT).stdout
    box.wait("the database monitor to log in with the credential's password",
             lambda: metric(metrics_port, "brace_database_up") == 1.0, timeout=60,
             explain=lambda: box.journal(UNIT)[-2000:])


def reload(box: SystemdBox, port: int, config: str, *, result: str = "success",
           argv: tuple[str, ...] = ("systemctl", "reload", UNIT)) -> None:
    """Write ``config``, run ``argv``, wait until the daemon counted the reload's ``result``
    and the unit is back in ``running`` (it is ``reloading`` between RELOADING=1 and READY=1;
    a lost READY=1 kept it there for good)."""
    before = metric(port, "brace_watchdog_config_reloads_total", result=result)
    box.write(CONFIG, config, "0640")
    box.run(*argv, timeout=60)
    box.wait(f"a reload counted as {result}", lambda: metric(
        port, "brace_watchdog_config_reloads_total", result=result) == before + 1, timeout=30,
        explain=lambda: box.journal(UNIT)[-2000:])
    box.wait("the unit to leave 'reloading'", lambda: unit_state(box)["SubState"] == "running",
             timeout=30, explain=lambda: unit_state(box))


def test_reload_with_a_valid_then_an_invalid_config(box: SystemdBox, metrics_port: int) -> None:
    pid = unit_state(box)["MainPID"]
    original = box.run("cat", CONFIG).stdout
    reload(box, metrics_port, original.replace('log_level = "INFO"', 'log_level = "DEBUG"'))
    invalid = original + "\n[nonsense]\nkey = 1\n"
    box.write(CONFIG, invalid, "0640")
    refused = box.run("systemctl", "reload", UNIT, check=False, timeout=60)
    assert refused.returncode != 0  # ExecReload's check-config failed: no SIGHUP at all
    assert "nonsense: unknown key" in box.journal(UNIT)  # check-config said why
    assert metric(metrics_port, "brace_watchdog_config_reloads_total", result="failure") == 0
    # a bare SIGHUP with the same file: the daemon itself refuses it and keeps running
    reload(box, metrics_port, invalid, result="failure",
           argv=("systemctl", "kill", "--kill-who=main", "--signal=HUP", UNIT))
    assert "reload refused" in box.journal(UNIT)
    state = unit_state(box)
    assert (state["MainPID"], state["ActiveState"]) == (pid, "active")  # old config running
    reload(box, metrics_port, original)


def test_restore_test_passes_on_both_backends(box: SystemdBox, metrics_port: int,
                                              stack: Stack, shared: Path,
                                              database: tuple[PgContainer, str, str]) -> None:
    dump = database[2]
    local = ctl(box, "restore-test", "--dump", dump)
    assert local["result"]["passed"] is True, local
    reload(box, metrics_port, daemon_config(stack, database, shared, metrics_port,
                                            backend="docker"))
    in_docker = ctl(box, "restore-test", "--dump", dump)
    assert in_docker["result"]["passed"] is True, in_docker


def test_app_rollback_under_the_sandbox(box: SystemdBox, stack: Stack) -> None:
    box.wait("v1 to be known good", lambda: bool(events(box, "release.known_good")),
             timeout=60)
    stack.deploy("v2")
    box.wait("the automatic rollback to succeed",
             lambda: bool(events(box, "rollback.succeeded"))
             or bool(events(box, "rollback.failed")), timeout=120, interval=1.0)
    assert events(box, "rollback.failed") == []
    assert stack.running_images()["backend"] == stack.images["v1"]
    assert httpx.get(stack.backend_url, timeout=5).status_code == 200


def test_gated_db_rollback_writes_its_safety_dump(box: SystemdBox, shared: Path,
                                                  database: tuple[PgContainer, str, str]) -> None:
    pg, _, dump = database
    code, out = _psql_script(pg, "\\connect brace\ninsert into users (email) "
                                 "values ('after-the-dump@example.invalid');")
    assert code == 0, out
    result = box.run("brace-watchdogctl", "--socket", SOCKET, "rollback", "db", "--dump", dump,
                     "--yes", check=False, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (safety,) = (shared / "backups").glob("brace_safety_*.dump")
    assert safety.read_bytes()[:5] == b"PGDMP"
    code, out = pg.exec("psql", "-tA", "-U", "postgres", "-d", "brace", "-c",
                        "select count(*) from users where email like 'after-the-dump%'")
    assert (code, out.strip()) == (0, "0")  # the database is back at the dump


def test_hung_daemon_is_killed_by_the_watchdog_and_restarted(box: SystemdBox) -> None:
    before = unit_state(box)
    box.run("kill", "-STOP", before["MainPID"])
    box.wait("systemd to restart the stopped daemon",
             lambda: unit_state(box)["MainPID"] not in ("0", before["MainPID"])
             and unit_state(box)["ActiveState"] == "active",
             timeout=WATCHDOG_SEC + 90, interval=1.0)
    after = unit_state(box)
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    assert "Watchdog timeout" in box.journal(UNIT)


def test_the_sandbox_denied_nothing(box: SystemdBox) -> None:
    """After every action above: no write or access the unit's sandbox refused."""
    journal = box.journal(UNIT)
    denied = [line for line in journal.splitlines()
              if any(word in line.lower() for word in (
                  "read-only file system", "permission denied", "operation not permitted"))
              # runuser's PAM session (local restore test) copies PID 1's open-files limit and
              # may not raise the service's without CAP_SYS_RESOURCE: logged, not fatal
              and not line.startswith("pam_limits(runuser:session): Could not set limit")]
    assert denied == [], "\n".join(denied)
