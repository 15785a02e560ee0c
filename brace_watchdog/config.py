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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_type_hints
from urllib.parse import urlsplit

from brace_watchdog.configreader import (
    CustomRead,
    Problems,
    ReadContext,
    TableReader,
    option,
    parse_listen_address,
    read_section,
    resolve_path,
)
from brace_watchdog.errors import ConfigError
from brace_watchdog.leadership import settle_seconds, split_brain_problem
from brace_watchdog.observations import SAMPLE_RESULTS

__all__ = [
    "AlertsConfig",
    "BackupsConfig",
    "Config",
    "ControlConfig",
    "DaemonConfig",
    "DatabaseConfig",
    "DbRollbackConfig",
    "HealthConfig",
    "LeadershipConfig",
    "MetricsConfig",
    "NetworkRollbackConfig",
    "NotifyConfig",
    "RestoreTestConfig",
    "RollbackConfig",
    "Secret",
    "load_config",
    "parse_config",
    "rollback_window_problem",
]

ENV_PREFIX = "BRACE_WATCHDOG__"
DEFAULT_FAILURE_RESULTS: tuple[str, ...] = ("http_5xx", "timeout", "connection_error",
                                            "container_down", "container_unhealthy")
"""What a bad deploy looks like: it answers 5xx, hangs, refuses/resets connections, or one of
its services crash-loops, exits or turns unhealthy."""
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


def _log_level(r: TableReader, key: str, default: str, _: ReadContext) -> str:
    level = r.string(key, default).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        r.error(key, f"must be one of DEBUG, INFO, WARNING, ERROR, not {level!r}")
        return default
    return level


def _listen(r: TableReader, key: str, default: str, _: ReadContext) -> str:
    listen = r.string(key, default)
    try:
        parse_listen_address(listen)
    except ValueError as exc:
        r.error(key, str(exc))
        return default
    return listen


def _http_url(*, optional: bool) -> CustomRead:
    def read(r: TableReader, key: str, default: str, _: ReadContext) -> str:
        value = r.string(key, default)
        if not value and optional:
            return ""
        if not _is_http_url(value):
            r.error(key, f"must be an http(s) URL with a host, not {value!r}")
            return default
        return value
    return read


def _ok_statuses(r: TableReader, key: str, default: tuple[str, ...],
                 _: ReadContext) -> tuple[str, ...]:
    value = r.raw(key)
    if value is None or not r.has(key):
        return default
    patterns: list[str] = []
    for item in value if isinstance(value, list) else [value]:
        text = str(item) if isinstance(item, int) and not isinstance(item, bool) else item
        if not isinstance(text, str) or not _valid_status_pattern(text):
            r.error(key, f"entries must be status codes (200) or classes ('2xx'), not {item!r}")
            return default
        patterns.append(text)
    if not patterns:
        r.error(key, "must not be empty")
        return default
    return tuple(patterns)


def _valid_status_pattern(text: str) -> bool:
    if len(text) == 3 and text[0] in "12345" and text[1:] == "xx":
        return True
    return text.isdigit() and 100 <= int(text) <= 599


def _matchers(r: TableReader, key: str, default: tuple[str, ...],
              _: ReadContext) -> tuple[str, ...]:
    matchers = r.strings(key, list(default))
    for matcher in matchers:
        if not any(op in matcher for op in ("=", "!=", "=~", "!~")):
            r.error(key, f"{matcher!r} is not a matcher like 'severity=\"critical\"'")
    return matchers


def _dsn(r: TableReader, key: str, default: Secret, context: ReadContext) -> Secret:
    dsn = r.string(key, default.reveal())
    return Secret(dsn or _read_secret(context.env, "BRACE_WATCHDOG_DB_DSN", "db_dsn"))


def _db_password(r: TableReader, key: str, default: Secret, context: ReadContext) -> Secret:
    if r.has(key):
        r.raw(key)
        r.error(key, "must not be written in the config file: set BRACE_WATCHDOG_DB_PASSWORD "
                     "or the systemd credential db_password")
    return Secret(_read_secret(context.env, "BRACE_WATCHDOG_DB_PASSWORD", "db_password")
                  or default.reveal())


def _failure_results(r: TableReader, key: str, default: tuple[str, ...],
                     _: ReadContext) -> tuple[str, ...]:
    results = r.strings(key, list(default), non_empty=True)
    unknown = [x for x in results if x not in SAMPLE_RESULTS or x == "ok"]
    if unknown:
        r.error(key, f"unknown probe results {unknown}; use {list(SAMPLE_RESULTS[1:])}")
        return default
    return results


def _backup_of(original: str) -> CustomRead:
    """A ``.bak`` path option whose default is ``<original>.bak`` beside the original file."""
    def read(r: TableReader, key: str, default: Path, context: ReadContext) -> Path:
        text = r.string(key, "")
        if text:
            return resolve_path(text, context.base)
        path: Path = context.values[original]
        return path.with_name(path.name + ".bak")
    return read


def _optional_strings(r: TableReader, key: str, default: tuple[str, ...] | None,
                      _: ReadContext) -> tuple[str, ...] | None:
    return r.strings(key, []) if r.has(key) else default


def _webhook_urls(r: TableReader, key: str, default: tuple[Secret, ...],
                  context: ReadContext) -> tuple[Secret, ...]:
    urls = list(r.strings(key, [url.reveal() for url in default]))
    extra = _read_secret(context.env, "BRACE_WATCHDOG_WEBHOOK_URL", "webhook_url")
    if extra:
        urls.append(extra)
    for url in urls:
        if not _is_http_url(url):
            r.error(key, "entries must be http(s) URLs (value hidden: it is a secret)")
    return tuple(Secret(url) for url in urls)


@dataclass(frozen=True)
class DaemonConfig:
    state_path: Path = Path("var/state.db")
    log_format: Literal["text", "json"] = "text"
    log_level: str = option("INFO", read=_log_level)
    dry_run: bool = False
    shutdown_timeout_seconds: float = option(10.0, above=0, maximum=60)


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = option("127.0.0.1:9477", read=_listen)

    @property
    def host(self) -> str:
        return parse_listen_address(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen_address(self.listen)[1]


@dataclass(frozen=True)
class HealthConfig:
    url: str = option("http://127.0.0.1:8000/api/health", read=_http_url(optional=False))
    frontend_url: str = option("", read=_http_url(optional=True))
    interval_seconds: float = option(10.0, above=0)
    timeout_seconds: float = option(5.0, above=0)
    ok_statuses: tuple[str, ...] = option(("2xx", "3xx"), read=_ok_statuses)
    window_size: int = option(360, minimum=10, maximum=100_000)

    def targets(self) -> tuple[tuple[str, str], ...]:
        """The probe targets: ``backend`` (``url``), and ``frontend`` when it has a URL."""
        backend = (("backend", self.url),)
        return (*backend, ("frontend", self.frontend_url)) if self.frontend_url else backend


@dataclass(frozen=True)
class BackupsConfig:
    directory: Path = Path("backups")
    patterns: tuple[str, ...] = option(("brace_*.dump",), non_empty=True)
    max_age_hours: float = option(26.0, above=0)
    interval_seconds: float = option(60.0, above=0)
    settle_seconds: float = option(60.0, minimum=0)


@dataclass(frozen=True)
class AlertsConfig:
    alertmanager_url: str = option("", read=_http_url(optional=True))
    matchers: tuple[str, ...] = option((), read=_matchers)
    interval_seconds: float = option(30.0, above=0)
    timeout_seconds: float = option(5.0, above=0)


@dataclass(frozen=True)
class DatabaseConfig:
    dsn: Secret = option(Secret(""), read=_dsn)
    password: Secret = option(Secret(""), read=_db_password)
    service: str = "db"
    interval_seconds: float = option(15.0, above=0)
    timeout_seconds: float = option(5.0, above=0)

    @property
    def enabled(self) -> bool:
        return bool(self.dsn)


@dataclass(frozen=True)
class ControlConfig:
    socket: Path = Path("var/control.sock")
    group: str = ""
    readers: tuple[str, ...] = ()
    operators: tuple[str, ...] = ()
    token_ttl_seconds: float = option(300.0, above=0)
    two_person_rule: bool = False
    idle_timeout_seconds: float = option(60.0, above=0)
    request_timeout_seconds: float = option(10.0, above=0)
    max_clients: int = option(64, minimum=1, maximum=MAX_CONTROL_CLIENTS)
    max_clients_per_uid: int = option(8, minimum=1, maximum=MAX_CONTROL_CLIENTS)


@dataclass(frozen=True)
class RestoreTestConfig:
    enabled: bool = True
    backend: Literal["docker", "local"] = "docker"
    image: str = "postgres:17-alpine"
    network: Literal["bridge", "host"] = "bridge"
    interval_hours: float = option(24.0, above=0)
    timeout_seconds: float = option(3600.0, above=0)
    jobs: int = option(1, minimum=1, maximum=64)
    roles: tuple[str, ...] = ("brace_user",)
    verify_queries: tuple[str, ...] = ()
    rto_seconds: float = option(0.0, minimum=0)
    freshness_query: str = ""
    max_data_lag_hours: float = option(24.0, above=0)
    local_user: str = "postgres"
    local_bin_dir: str = ""
    throwaway_settings: bool = True
    tmpfs_mb: int = option(0, minimum=0)


@dataclass(frozen=True)
class RollbackConfig:
    enabled: bool = False
    driver: Literal["compose", "swarm"] = "compose"
    mode: Literal["retag", "release_dir"] = "retag"
    compose_command: tuple[str, ...] = option(("docker", "compose"), non_empty=True)
    compose_file: Path = Path("infra/docker-compose.prod.yml")
    project: str = "brace"
    services: tuple[str, ...] = option(("backend", "frontend", "admin-bot", "scheduler"),
                                       non_empty=True)
    stable_after_seconds: float = option(600.0, minimum=0)
    deploy_grace_seconds: float = option(60.0, minimum=0)
    max_deploy_age_seconds: float = option(3600.0, above=0)
    window_seconds: float = option(120.0, above=0)
    min_samples: int = option(6, minimum=1)
    error_ratio: float = option(0.5, above=0, maximum=1)
    failure_results: tuple[str, ...] = option(DEFAULT_FAILURE_RESULTS, read=_failure_results)
    trigger_alerts: tuple[str, ...] = ()
    cooldown_seconds: float = option(1800.0, minimum=0)
    max_per_day: int = option(2, minimum=0)
    verify_successes: int = option(3, minimum=1)
    verify_timeout_seconds: float = option(120.0, above=0)
    on_schema_change: Literal["escalate", "app_only"] = "escalate"
    interval_seconds: float = option(5.0, above=0)
    compose_timeout_seconds: float = option(300.0, above=0)
    engine_retry_seconds: float = option(60.0, minimum=0)
    node_docker_host: str = ""


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
    smoke_timeout_seconds: float = option(900.0, above=0)
    require_passing_restore_test: bool = True
    restore_timeout_seconds: float = option(3600.0, above=0)
    step_timeout_seconds: float = option(300.0, above=0)
    health_attempts: int = option(30, minimum=1, maximum=10_000)
    health_wait_seconds: float = option(2.0, minimum=0)
    prove_safety_dump: Literal["list", "restore"] = "list"


@dataclass(frozen=True)
class NetworkRollbackConfig:
    """pg_hba.conf and docker daemon.json rollbacks (gated)."""

    pg_hba_path: Path = Path("/var/lib/postgresql/data/pg_hba.conf")
    pg_hba_backup_path: Path = option(Path("/var/lib/postgresql/data/pg_hba.conf.bak"),
                                      read=_backup_of("pg_hba_path"))
    pg_hba_in_container: bool = False
    reload_command: tuple[str, ...] = ()
    command_timeout_seconds: float = option(120.0, above=0)
    verify_attempts: int = option(15, minimum=1, maximum=10_000)
    verify_wait_seconds: float = option(1.0, minimum=0)
    docker_daemon_json: Path = Path("/etc/docker/daemon.json")
    docker_daemon_json_backup: Path = option(Path("/etc/docker/daemon.json.bak"),
                                             read=_backup_of("docker_daemon_json"))
    docker_restart_command: tuple[str, ...] = option(("systemctl", "restart", "docker"),
                                                     non_empty=True)
    docker_host: str = ""
    engine_wait_seconds: float = option(60.0, above=0)
    verify_services: tuple[str, ...] | None = option(None, read=_optional_strings)

LEADERSHIP_LOCK_KEY = 0x62726163_65776467  # "bracewdg"


def _instance_name(r: TableReader, key: str, default: str, _: ReadContext) -> str:
    name = r.string(key, default)
    if len(name) > 30 or any(c in name for c in ":/ "):
        r.error(key, "must be at most 30 characters without ':', '/' or spaces")
        return default
    return name


def _lease(r: TableReader, key: str, default: float, context: ReadContext) -> float:
    lease = r.number(key, default, above=0)
    shortest = (2 * context.values["check_interval_seconds"]
                + context.values["check_timeout_seconds"])
    if lease < shortest:
        r.error(key, f"must be at least 2 x check_interval_seconds + check_timeout_seconds "
                f"({shortest:g}), not {lease:g}: a live leader must confirm the lock at least "
                "twice per lease")
    return lease


@dataclass(frozen=True)
class LeadershipConfig:
    """Several instances, one acting: a PostgreSQL session advisory lock (needs ``[database]``)."""

    enabled: bool = False
    lock_key: int = option(LEADERSHIP_LOCK_KEY, minimum=-(2**63), maximum=2**63 - 1)
    name: str = option("", read=_instance_name)
    check_interval_seconds: float = option(2.0, above=0)
    check_timeout_seconds: float = option(1.0, above=0)
    lease_seconds: float = option(10.0, read=_lease)

    @property
    def settle_seconds(self) -> float:
        """How long a new leader waits before acting: the old one's check interval + timeout."""
        return settle_seconds(self.check_interval_seconds, self.check_timeout_seconds)


@dataclass(frozen=True)
class NotifyConfig:
    webhook_urls: tuple[Secret, ...] = option((), read=_webhook_urls)
    timeout_seconds: float = option(5.0, above=0)
    retries: int = option(3, minimum=0, maximum=10)
    log_lines: int = option(50, minimum=0, maximum=1000)


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
    leadership: LeadershipConfig = field(default_factory=LeadershipConfig)
    source: Path | None = None


_SECTIONS: dict[str, type] = {name: kind for name, kind in get_type_hints(Config).items()
                              if name != "source"}


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
    context = ReadContext(base=base_dir or Path.cwd(), env=env)
    sections: dict[str, Any] = {
        item.name: read_section(_SECTIONS[item.name], root.table(item.name), context)
        for item in fields(Config) if item.name in _SECTIONS}
    config = Config(**sections, source=source)
    root.finish()
    window_problem = rollback_window_problem(config.health, config.rollback)
    if window_problem:
        problems.add("rollback.window_seconds", window_problem)
    lead = config.leadership
    split_brain = split_brain_problem(lead.check_interval_seconds, lead.check_timeout_seconds,
                                      lead.lease_seconds)
    if split_brain:
        problems.add("leadership.lease_seconds", split_brain)
    if problems.items:
        raise ConfigError(problems.items, str(source) if source else "")
    return config


def rollback_window_problem(health: HealthConfig, rollback: RollbackConfig) -> str | None:
    """Why an enabled rollback could never see a hang as sustained, or None when it can.

    A hanging backend yields one sample per probe: one per ``health.timeout_seconds`` (each
    probe waits that long), or per ``health.interval_seconds`` when that is longer. The window
    must hold ``min_samples`` of them, else a hang never reaches ``min_samples`` and never
    triggers a rollback.
    """
    if not rollback.enabled:
        return None
    name, spacing = max(("health.timeout_seconds", health.timeout_seconds),
                        ("health.interval_seconds", health.interval_seconds),
                        key=lambda option: option[1])
    needed = rollback.min_samples * spacing
    if needed <= rollback.window_seconds:
        return None
    return (f"{rollback.window_seconds:g} s cannot hold rollback.min_samples "
            f"({rollback.min_samples}) samples of a hanging backend, probed once per {name} "
            f"({spacing:g} s): {rollback.min_samples} x {spacing:g} = {needed:g} s, so a hang "
            f"would never trigger a rollback; raise window_seconds to at least {needed:g} or "
            f"lower min_samples or {name}")


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


def _is_http_url(value: str) -> bool:
    """http(s) with a host and a valid port; urlsplit raises on e.g. ``http://[::1``."""
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError for ports out of range / not numeric
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
