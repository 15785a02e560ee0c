"""Typed, validated configuration: one pipeline from TOML to frozen objects.

``load_config(path)`` reads the TOML file, applies environment overrides
(``BRACE_WATCHDOG__SECTION__KEY=value``, value parsed as a TOML value when it parses, else a
string), resolves secrets (``BRACE_WATCHDOG_DB_PASSWORD`` / ``$CREDENTIALS_DIRECTORY/db_password``,
``BRACE_WATCHDOG_WEBHOOK_URL`` / ``$CREDENTIALS_DIRECTORY/webhook_url``) and validates every
section at once. Any problem raises :class:`~brace_watchdog.errors.ConfigError` listing them all;
the daemon never runs on a guess. ``brace-watchdog check-config`` runs exactly this pipeline.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from brace_watchdog.configreader import Problems, TableReader, parse_listen_address
from brace_watchdog.errors import ConfigError
from brace_watchdog.observations import PROBE_RESULTS

__all__ = [
    "AlertsConfig",
    "BackupsConfig",
    "Config",
    "ControlConfig",
    "DaemonConfig",
    "DatabaseConfig",
    "DbRollbackConfig",
    "HealthConfig",
    "MetricsConfig",
    "NetworkRollbackConfig",
    "NotifyConfig",
    "RestoreTestConfig",
    "RollbackConfig",
    "Secret",
    "load_config",
    "parse_config",
]

ENV_PREFIX = "BRACE_WATCHDOG__"
DEFAULT_FAILURE_RESULTS: tuple[str, ...] = ("http_5xx", "timeout", "connection_error")
"""What a bad deploy looks like from outside: it answers 5xx, hangs, or refuses/resets."""
# Control connections allowed at most; systemd/brace-watchdog.service sets LimitNOFILE= well above.
MAX_CONTROL_CLIENTS = 1024


class Secret:
    """A string that never shows itself in ``repr``/``str`` (logs, metrics, tracebacks)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class DaemonConfig:
    state_path: Path = Path("var/state.db")
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    dry_run: bool = False
    shutdown_timeout_seconds: float = 10.0


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = "127.0.0.1:9477"
    host: str = "127.0.0.1"
    port: int = 9477


@dataclass(frozen=True)
class HealthConfig:
    url: str = "http://127.0.0.1:8000/api/health"
    frontend_url: str = ""
    interval_seconds: float = 10.0
    timeout_seconds: float = 5.0
    ok_statuses: tuple[str, ...] = ("2xx", "3xx")
    window_size: int = 360

    def is_ok_status(self, status: int) -> bool:
        return any(_status_matches(pattern, status) for pattern in self.ok_statuses)


@dataclass(frozen=True)
class BackupsConfig:
    directory: Path = Path("backups")
    patterns: tuple[str, ...] = ("brace_*.dump",)
    max_age_hours: float = 26.0
    interval_seconds: float = 60.0
    settle_seconds: float = 60.0


@dataclass(frozen=True)
class AlertsConfig:
    alertmanager_url: str = ""
    matchers: tuple[str, ...] = ()
    interval_seconds: float = 30.0
    timeout_seconds: float = 5.0


@dataclass(frozen=True)
class DatabaseConfig:
    dsn: Secret = field(default_factory=lambda: Secret(""))
    password: Secret = field(default_factory=lambda: Secret(""))
    service: str = "db"
    interval_seconds: float = 15.0
    timeout_seconds: float = 5.0

    @property
    def enabled(self) -> bool:
        return bool(self.dsn)


@dataclass(frozen=True)
class ControlConfig:
    socket: Path = Path("var/control.sock")
    group: str = ""
    readers: tuple[str, ...] = ()
    operators: tuple[str, ...] = ()
    token_ttl_seconds: float = 300.0
    two_person_rule: bool = False
    idle_timeout_seconds: float = 60.0
    request_timeout_seconds: float = 10.0
    max_clients: int = 64
    max_clients_per_uid: int = 8


@dataclass(frozen=True)
class RestoreTestConfig:
    enabled: bool = True
    backend: Literal["docker", "local"] = "docker"
    image: str = "postgres:17-alpine"
    network: Literal["bridge", "host"] = "bridge"
    interval_hours: float = 24.0
    timeout_seconds: float = 3600.0
    jobs: int = 1
    roles: tuple[str, ...] = ("brace_user",)
    verify_queries: tuple[str, ...] = ()
    rto_seconds: float = 0.0
    freshness_query: str = ""
    max_data_lag_hours: float = 24.0
    local_user: str = "postgres"
    local_bin_dir: str = ""
    throwaway_settings: bool = True


@dataclass(frozen=True)
class RollbackConfig:
    enabled: bool = False
    mode: Literal["retag", "release_dir"] = "retag"
    compose_command: tuple[str, ...] = ("docker", "compose")
    compose_file: Path = Path("infra/docker-compose.prod.yml")
    project: str = "brace"
    services: tuple[str, ...] = ("backend", "frontend", "admin-bot", "scheduler")
    stable_after_seconds: float = 600.0
    deploy_grace_seconds: float = 60.0
    window_seconds: float = 120.0
    min_samples: int = 6
    error_ratio: float = 0.5
    failure_results: tuple[str, ...] = DEFAULT_FAILURE_RESULTS
    trigger_alerts: tuple[str, ...] = ()
    cooldown_seconds: float = 1800.0
    max_per_day: int = 2
    verify_successes: int = 3
    verify_timeout_seconds: float = 120.0
    on_schema_change: Literal["escalate", "app_only"] = "escalate"
    interval_seconds: float = 5.0
    compose_timeout_seconds: float = 300.0


@dataclass(frozen=True)
class DbRollbackConfig:
    """Full DB rollback (gated). Empty compose settings inherit from ``[rollback]``."""

    target: Literal["container", "local"] = "container"
    container: str = ""
    database: str = "brace"
    user: str = "postgres"
    bin_dir: str = ""
    writers: tuple[str, ...] = ("backend", "admin-bot", "scheduler")
    compose_command: tuple[str, ...] = ()
    compose_file: Path | None = None
    project: str = ""
    smoke_command: tuple[str, ...] = ()
    smoke_timeout_seconds: float = 900.0
    require_passing_restore_test: bool = True
    restore_timeout_seconds: float = 3600.0
    step_timeout_seconds: float = 300.0
    health_attempts: int = 30
    health_wait_seconds: float = 2.0
    prove_safety_dump: Literal["list", "restore"] = "list"


@dataclass(frozen=True)
class NetworkRollbackConfig:
    """pg_hba.conf and docker daemon.json rollbacks (gated)."""

    pg_hba_path: Path = Path("/var/lib/postgresql/data/pg_hba.conf")
    pg_hba_backup_path: Path = Path("/var/lib/postgresql/data/pg_hba.conf.bak")
    pg_hba_in_container: bool = False
    reload_command: tuple[str, ...] = ()
    command_timeout_seconds: float = 120.0
    verify_attempts: int = 15
    verify_wait_seconds: float = 1.0
    docker_daemon_json: Path = Path("/etc/docker/daemon.json")
    docker_daemon_json_backup: Path = Path("/etc/docker/daemon.json.bak")
    docker_restart_command: tuple[str, ...] = ("systemctl", "restart", "docker")
    docker_host: str = ""
    engine_wait_seconds: float = 60.0
    verify_services: tuple[str, ...] | None = None


@dataclass(frozen=True)
class NotifyConfig:
    webhook_urls: tuple[Secret, ...] = ()
    timeout_seconds: float = 5.0
    retries: int = 3
    log_lines: int = 50


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    backups: BackupsConfig = field(default_factory=BackupsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    restore_test: RestoreTestConfig = field(default_factory=RestoreTestConfig)
    rollback: RollbackConfig = field(default_factory=RollbackConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    db_rollback: DbRollbackConfig = field(default_factory=DbRollbackConfig)
    network_rollback: NetworkRollbackConfig = field(default_factory=NetworkRollbackConfig)
    source: Path | None = None


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> Config:
    """Read, override, resolve secrets and validate; raise ConfigError listing every problem."""
    path = Path(path)
    env = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"file not found: {path}"], str(path)) from None
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror}"], str(path)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(path)) from None
    return parse_config(raw, env, base_dir=path.parent.resolve(), source=path)


def parse_config(raw: dict[str, Any], environ: Mapping[str, str] | None = None, *,
                 base_dir: Path | None = None, source: Path | None = None) -> Config:
    """Validate a parsed TOML document.

    Relative paths resolve against ``base_dir`` (the config file's folder).
    """
    env = {} if environ is None else environ
    problems = Problems()
    _apply_env_overrides(raw, env, problems)
    root = TableReader(raw, "", problems)
    base = base_dir or Path.cwd()
    config = Config(
        daemon=_daemon(root.table("daemon"), base),
        metrics=_metrics(root.table("metrics")),
        health=_health(root.table("health")),
        backups=_backups(root.table("backups"), base),
        alerts=_alerts(root.table("alerts")),
        database=_database(root.table("database"), env),
        control=_control(root.table("control"), base),
        restore_test=_restore_test(root.table("restore_test")),
        rollback=_rollback(root.table("rollback"), base),
        notify=_notify(root.table("notify"), env),
        db_rollback=_db_rollback(root.table("db_rollback"), base),
        network_rollback=_network_rollback(root.table("network_rollback"), base),
        source=source,
    )
    root.finish()
    if problems.items:
        raise ConfigError(problems.items, str(source) if source else "")
    return config


def _apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str], problems: Problems) -> None:
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        if len(parts) != 2 or not all(parts):
            problems.add(name, "environment override must be BRACE_WATCHDOG__SECTION__KEY")
            continue
        section = raw.setdefault(parts[0], {})
        if isinstance(section, dict):
            section[parts[1]] = _parse_env_value(text)


def _parse_env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _read_secret(env: Mapping[str, str], env_name: str, credential: str) -> str:
    if env.get(env_name):
        return env[env_name]
    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory:
        candidate = Path(directory) / credential
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8").strip()
    return ""


def _path(reader: TableReader, key: str, default: str, base: Path) -> Path:
    text = reader.string(key, default)
    if not text:
        reader.error(key, "must not be empty")
        text = default
    candidate = Path(text)
    return candidate if candidate.is_absolute() else Path(os.path.normpath(base / candidate))


def _url(reader: TableReader, key: str, default: str, *, optional: bool) -> str:
    value = reader.string(key, default)
    if not value and optional:
        return ""
    if not _is_http_url(value):
        reader.error(key, f"must be an http(s) URL with a host, not {value!r}")
        return default
    return value


def _is_http_url(value: str) -> bool:
    """http(s) with a host and a valid port; urlsplit raises on e.g. ``http://[::1``."""
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError for ports out of range / not numeric
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _interval(reader: TableReader, key: str, default: float) -> float:
    return reader.number(key, default, above=0)


def _daemon(r: TableReader, base: Path) -> DaemonConfig:
    level = r.string("log_level", "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        r.error("log_level", f"must be one of DEBUG, INFO, WARNING, ERROR, not {level!r}")
        level = "INFO"
    cfg = DaemonConfig(
        state_path=_path(r, "state_path", "var/state.db", base),
        log_format=r.string("log_format", "text", choices=("text", "json")),  # type: ignore[arg-type]
        log_level=level,
        dry_run=r.boolean("dry_run", False),
        shutdown_timeout_seconds=r.number("shutdown_timeout_seconds", 10.0, above=0, maximum=60),
    )
    r.finish()
    return cfg


def _metrics(r: TableReader) -> MetricsConfig:
    listen = r.string("listen", "127.0.0.1:9477")
    try:
        host, port = parse_listen_address(listen)
    except ValueError as exc:
        r.error("listen", str(exc))
        listen, host, port = "127.0.0.1:9477", "127.0.0.1", 9477
    r.finish()
    return MetricsConfig(listen=listen, host=host, port=port)


def _status_matches(pattern: str, status: int) -> bool:
    if pattern.endswith("xx"):
        return str(status)[0] == pattern[0]
    return pattern == str(status)


def _ok_statuses(r: TableReader) -> tuple[str, ...]:
    value = r.raw("ok_statuses")
    if value is None or not r.has("ok_statuses"):
        return ("2xx", "3xx")
    patterns: list[str] = []
    items = value if isinstance(value, list) else [value]
    for item in items:
        text = str(item) if isinstance(item, int) and not isinstance(item, bool) else item
        if not isinstance(text, str) or not _valid_status_pattern(text):
            r.error("ok_statuses",
                    f"entries must be status codes (200) or classes ('2xx'), not {item!r}")
            return ("2xx", "3xx")
        patterns.append(text)
    if not patterns:
        r.error("ok_statuses", "must not be empty")
        return ("2xx", "3xx")
    return tuple(patterns)


def _valid_status_pattern(text: str) -> bool:
    if len(text) == 3 and text[0] in "12345" and text[1:] == "xx":
        return True
    return text.isdigit() and 100 <= int(text) <= 599


def _health(r: TableReader) -> HealthConfig:
    interval = _interval(r, "interval_seconds", 10.0)
    timeout = r.number("timeout_seconds", 5.0, above=0)
    cfg = HealthConfig(
        url=_url(r, "url", "http://127.0.0.1:8000/api/health", optional=False),
        frontend_url=_url(r, "frontend_url", "", optional=True),
        interval_seconds=interval,
        timeout_seconds=timeout,
        ok_statuses=_ok_statuses(r),
        window_size=r.integer("window_size", 360, minimum=10, maximum=100_000),
    )
    r.finish()
    return cfg


def _backups(r: TableReader, base: Path) -> BackupsConfig:
    cfg = BackupsConfig(
        directory=_path(r, "directory", "backups", base),
        patterns=r.strings("patterns", ["brace_*.dump"], non_empty=True),
        max_age_hours=r.number("max_age_hours", 26.0, above=0),
        interval_seconds=_interval(r, "interval_seconds", 60.0),
        settle_seconds=r.number("settle_seconds", 60.0, minimum=0),
    )
    r.finish()
    return cfg


def _alerts(r: TableReader) -> AlertsConfig:
    matchers = r.strings("matchers", [])
    for matcher in matchers:
        if not any(op in matcher for op in ("=", "!=", "=~", "!~")):
            r.error("matchers", f"{matcher!r} is not a matcher like 'severity=\"critical\"'")
    cfg = AlertsConfig(
        alertmanager_url=_url(r, "alertmanager_url", "", optional=True),
        matchers=matchers,
        interval_seconds=_interval(r, "interval_seconds", 30.0),
        timeout_seconds=r.number("timeout_seconds", 5.0, above=0),
    )
    r.finish()
    return cfg


def _database(r: TableReader, env: Mapping[str, str]) -> DatabaseConfig:
    dsn = r.string("dsn", "")
    if not dsn:
        dsn = _read_secret(env, "BRACE_WATCHDOG_DB_DSN", "db_dsn")
    password = _read_secret(env, "BRACE_WATCHDOG_DB_PASSWORD", "db_password")
    if r.has("password"):
        r.raw("password")
        r.error("password", "must not be written in the config file: set "
                "BRACE_WATCHDOG_DB_PASSWORD "
                "or the systemd credential db_password")
    cfg = DatabaseConfig(
        dsn=Secret(dsn),
        password=Secret(password),
        service=r.string("service", "db"),
        interval_seconds=_interval(r, "interval_seconds", 15.0),
        timeout_seconds=r.number("timeout_seconds", 5.0, above=0),
    )
    r.finish()
    return cfg


def _control(r: TableReader, base: Path) -> ControlConfig:
    cfg = ControlConfig(
        socket=_path(r, "socket", "var/control.sock", base),
        group=r.string("group", ""),
        readers=r.strings("readers", []),
        operators=r.strings("operators", []),
        token_ttl_seconds=r.number("token_ttl_seconds", 300.0, above=0),
        two_person_rule=r.boolean("two_person_rule", False),
        idle_timeout_seconds=r.number("idle_timeout_seconds", 60.0, above=0),
        request_timeout_seconds=r.number("request_timeout_seconds", 10.0, above=0),
        max_clients=r.integer("max_clients", 64, minimum=1, maximum=MAX_CONTROL_CLIENTS),
        max_clients_per_uid=r.integer("max_clients_per_uid", 8, minimum=1,
                                      maximum=MAX_CONTROL_CLIENTS),
    )
    r.finish()
    return cfg


def _restore_test(r: TableReader) -> RestoreTestConfig:
    cfg = RestoreTestConfig(
        enabled=r.boolean("enabled", True),
        backend=r.string("backend", "docker", choices=("docker", "local")),  # type: ignore[arg-type]
        image=r.string("image", "postgres:17-alpine"),
        network=r.string("network", "bridge", choices=("bridge", "host")),  # type: ignore[arg-type]
        interval_hours=r.number("interval_hours", 24.0, above=0),
        timeout_seconds=r.number("timeout_seconds", 3600.0, above=0),
        jobs=r.integer("jobs", 1, minimum=1, maximum=64),
        roles=r.strings("roles", ["brace_user"]),
        verify_queries=r.strings("verify_queries", []),
        rto_seconds=r.number("rto_seconds", 0.0, minimum=0),
        freshness_query=r.string("freshness_query", ""),
        max_data_lag_hours=r.number("max_data_lag_hours", 24.0, above=0),
        local_user=r.string("local_user", "postgres"),
        local_bin_dir=r.string("local_bin_dir", ""),
        throwaway_settings=r.boolean("throwaway_settings", True),
    )
    r.finish()
    return cfg


def _rollback(r: TableReader, base: Path) -> RollbackConfig:
    cfg = RollbackConfig(
        enabled=r.boolean("enabled", False),
        mode=r.string("mode", "retag", choices=("retag", "release_dir")),  # type: ignore[arg-type]
        compose_command=r.strings("compose_command", ["docker", "compose"], non_empty=True),
        compose_file=_path(r, "compose_file", "infra/docker-compose.prod.yml", base),
        project=r.string("project", "brace"),
        services=r.strings("services", ["backend", "frontend", "admin-bot", "scheduler"],
                           non_empty=True),
        stable_after_seconds=r.number("stable_after_seconds", 600.0, minimum=0),
        deploy_grace_seconds=r.number("deploy_grace_seconds", 60.0, minimum=0),
        window_seconds=r.number("window_seconds", 120.0, above=0),
        min_samples=r.integer("min_samples", 6, minimum=1),
        error_ratio=r.number("error_ratio", 0.5, above=0, maximum=1),
        failure_results=_failure_results(r),
        trigger_alerts=r.strings("trigger_alerts", []),
        cooldown_seconds=r.number("cooldown_seconds", 1800.0, minimum=0),
        max_per_day=r.integer("max_per_day", 2, minimum=0),
        verify_successes=r.integer("verify_successes", 3, minimum=1),
        verify_timeout_seconds=r.number("verify_timeout_seconds", 120.0, above=0),
        on_schema_change=r.string("on_schema_change", "escalate",  # type: ignore[arg-type]
                                  choices=("escalate", "app_only")),
        interval_seconds=_interval(r, "interval_seconds", 5.0),
        compose_timeout_seconds=r.number("compose_timeout_seconds", 300.0, above=0),
    )
    r.finish()
    return cfg




def _failure_results(r: TableReader) -> tuple[str, ...]:
    results = r.strings("failure_results", list(DEFAULT_FAILURE_RESULTS), non_empty=True)
    unknown = [x for x in results if x not in PROBE_RESULTS or x == "ok"]
    if unknown:
        r.error("failure_results",
                f"unknown probe results {unknown}; use {list(PROBE_RESULTS[1:])}")
        return DEFAULT_FAILURE_RESULTS
    return results


def _notify(r: TableReader, env: Mapping[str, str]) -> NotifyConfig:
    urls = list(r.strings("webhook_urls", []))
    extra = _read_secret(env, "BRACE_WATCHDOG_WEBHOOK_URL", "webhook_url")
    if extra:
        urls.append(extra)
    for url in urls:
        if not _is_http_url(url):
            r.error("webhook_urls", "entries must be http(s) URLs (value hidden: it is a secret)")
    cfg = NotifyConfig(
        webhook_urls=tuple(Secret(u) for u in urls),
        timeout_seconds=r.number("timeout_seconds", 5.0, above=0),
        retries=r.integer("retries", 3, minimum=0, maximum=10),
        log_lines=r.integer("log_lines", 50, minimum=0, maximum=1000),
    )
    r.finish()
    return cfg


def _optional_path(reader: TableReader, key: str, base: Path) -> Path | None:
    text = reader.string(key, "")
    if not text:
        return None
    candidate = Path(text)
    return candidate if candidate.is_absolute() else Path(os.path.normpath(base / candidate))


def _db_rollback(r: TableReader, base: Path) -> DbRollbackConfig:
    cfg = DbRollbackConfig(
        target=r.string("target", "container", choices=("container", "local")),  # type: ignore[arg-type]
        container=r.string("container", ""),
        database=r.string("database", "brace"),
        user=r.string("user", "postgres"),
        bin_dir=r.string("bin_dir", ""),
        writers=r.strings("writers", ["backend", "admin-bot", "scheduler"]),
        compose_command=r.strings("compose_command", []),
        compose_file=_optional_path(r, "compose_file", base),
        project=r.string("project", ""),
        smoke_command=r.strings("smoke_command", []),
        smoke_timeout_seconds=r.number("smoke_timeout_seconds", 900.0, above=0),
        require_passing_restore_test=r.boolean("require_passing_restore_test", True),
        restore_timeout_seconds=r.number("restore_timeout_seconds", 3600.0, above=0),
        step_timeout_seconds=r.number("step_timeout_seconds", 300.0, above=0),
        health_attempts=r.integer("health_attempts", 30, minimum=1, maximum=10_000),
        health_wait_seconds=r.number("health_wait_seconds", 2.0, minimum=0),
        prove_safety_dump=r.string("prove_safety_dump", "list",  # type: ignore[arg-type]
                                   choices=("list", "restore")),
    )
    r.finish()
    return cfg


def _network_rollback(r: TableReader, base: Path) -> NetworkRollbackConfig:
    pg_hba = _path(r, "pg_hba_path", "/var/lib/postgresql/data/pg_hba.conf", base)
    daemon_json = _path(r, "docker_daemon_json", "/etc/docker/daemon.json", base)
    services = r.strings("verify_services", []) if r.has("verify_services") else None
    cfg = NetworkRollbackConfig(
        pg_hba_path=pg_hba,
        pg_hba_backup_path=(_optional_path(r, "pg_hba_backup_path", base)
                            or pg_hba.with_name(pg_hba.name + ".bak")),
        pg_hba_in_container=r.boolean("pg_hba_in_container", False),
        reload_command=r.strings("reload_command", []),
        command_timeout_seconds=r.number("command_timeout_seconds", 120.0, above=0),
        verify_attempts=r.integer("verify_attempts", 15, minimum=1, maximum=10_000),
        verify_wait_seconds=r.number("verify_wait_seconds", 1.0, minimum=0),
        docker_daemon_json=daemon_json,
        docker_daemon_json_backup=(_optional_path(r, "docker_daemon_json_backup", base)
                                   or daemon_json.with_name(daemon_json.name + ".bak")),
        docker_restart_command=r.strings("docker_restart_command",
                                         ["systemctl", "restart", "docker"], non_empty=True),
        docker_host=r.string("docker_host", ""),
        engine_wait_seconds=r.number("engine_wait_seconds", 60.0, above=0),
        verify_services=services,
    )
    r.finish()
    return cfg
