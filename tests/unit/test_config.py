"""Config validation: every error class, env overrides, secrets, and the shipped config files.

Pure tests: ``parse_config`` on dicts, ``load_config`` only on files under ``tmp_path``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest

from brace_watchdog.config import Config, Secret, load_config, parse_config
from brace_watchdog.configreader import (
    Problems,
    ReadContext,
    TableReader,
    option,
    parse_listen_address,
    read_section,
    resolve_path,
)
from brace_watchdog.errors import ConfigError
from brace_watchdog.monitors.policy import classify_status
from tests.support.check_config import check_config_refusal

REPO = Path(__file__).resolve().parents[2]


def problems_of(raw: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, environ)
    return caught.value.problems


def test_empty_document_gives_defaults() -> None:
    config = parse_config({}, base_dir=Path("/srv/x"))
    assert config.metrics.listen == "127.0.0.1:9477"
    assert config.health.interval_seconds == 10.0
    assert config.daemon.state_path == Path("/srv/x/var/state.db")
    assert not config.database.enabled


@pytest.mark.parametrize(("raw", "expected"), [
    ({"daemon": {"dry_run": "yes"}}, "daemon.dry_run: must be true or false, not a string"),
    ({"daemon": {"log_format": 1}}, "daemon.log_format: must be a string, not an integer"),
    ({"health": {"interval_seconds": "10"}},
     "health.interval_seconds: must be a number, not a string"),
    ({"health": {"interval_seconds": True}},
     "health.interval_seconds: must be a number, not a boolean"),
    ({"health": {"window_size": 10.5}}, "health.window_size: must be an integer, not a number"),
    ({"backups": {"patterns": "brace_*.dump"}}, "backups.patterns: must be a list of strings"),
    ({"backups": {"patterns": ["a", 1]}}, "backups.patterns: must be a list of strings"),
    ({"health": 5}, "health: must be a table, not an integer"),
    ({"health": [{"url": "x"}]}, "health: must be a table, not a list"),
])
def test_type_errors(raw: dict[str, Any], expected: str) -> None:
    assert problems_of(raw) == [expected]


@pytest.mark.parametrize(("raw", "expected"), [
    ({"health": {"interval_seconds": 0}}, "health.interval_seconds: must be > 0"),
    ({"health": {"interval_seconds": -1.5}}, "health.interval_seconds: must be > 0"),
    ({"health": {"timeout_seconds": 0.0}}, "health.timeout_seconds: must be > 0"),
    ({"health": {"window_size": 9}}, "health.window_size: must be >= 10"),
    ({"notify": {"retries": 11}}, "notify.retries: must be <= 10"),
    ({"daemon": {"shutdown_timeout_seconds": 61}},
     "daemon.shutdown_timeout_seconds: must be <= 60"),
    ({"backups": {"settle_seconds": -1}}, "backups.settle_seconds: must be >= 0"),
    ({"rollback": {"error_ratio": 1.5}}, "rollback.error_ratio: must be <= 1"),
    ({"restore_test": {"jobs": 0}}, "restore_test.jobs: must be >= 1"),
    ({"health": {"interval_seconds": float("inf")}},
     "health.interval_seconds: must be a finite number, not inf"),
    ({"health": {"interval_seconds": float("nan")}},
     "health.interval_seconds: must be a finite number, not nan"),
    ({"backups": {"patterns": []}}, "backups.patterns: must not be empty"),
    ({"daemon": {"state_path": ""}}, "daemon.state_path: must not be empty"),
])
def test_bounds(raw: dict[str, Any], expected: str) -> None:
    assert problems_of(raw) == [expected]


def test_bounds_accept_edges() -> None:
    config = parse_config({"health": {"interval_seconds": 0.001, "window_size": 10},
                           "rollback": {"error_ratio": 1, "max_per_day": 0}})
    assert (config.health.interval_seconds, config.health.window_size) == (0.001, 10)
    assert (config.rollback.error_ratio, config.rollback.max_per_day) == (1.0, 0)


@pytest.mark.parametrize(("raw", "expected"), [
    ({"daemon": {"log_format": "xml"}},
     "daemon.log_format: must be one of 'text', 'json', not 'xml'"),
    ({"daemon": {"log_level": "loud"}},
     "daemon.log_level: must be one of DEBUG, INFO, WARNING, ERROR, not 'LOUD'"),
    ({"restore_test": {"backend": "k8s"}},
     "restore_test.backend: must be one of 'docker', 'local', not 'k8s'"),
    ({"rollback": {"on_schema_change": "yolo"}},
     "rollback.on_schema_change: must be one of 'escalate', 'app_only', not 'yolo'"),
    ({"rollback": {"failure_results": ["ok"]}},
     "rollback.failure_results: unknown probe results ['ok']; "
     "use ['http_4xx', 'http_5xx', 'timeout', 'connection_error', 'container_down', "
     "'container_unhealthy', 'container_starting']"),
    ({"health": {"ok_statuses": ["2xx", "600"]}},
     "health.ok_statuses: entries must be status codes (200) or classes ('2xx'), not '600'"),
    ({"health": {"ok_statuses": []}}, "health.ok_statuses: must not be empty"),
    ({"alerts": {"matchers": ["severity critical"]}},
     "alerts.matchers: 'severity critical' is not a matcher like 'severity=\"critical\"'"),
])
def test_choices(raw: dict[str, Any], expected: str) -> None:
    assert problems_of(raw) == [expected]


def test_lower_case_log_level_and_numeric_ok_statuses_are_accepted() -> None:
    config = parse_config({"daemon": {"log_level": "debug"},
                           "health": {"ok_statuses": [200, "3xx"]}})
    assert config.daemon.log_level == "DEBUG"
    assert config.health.ok_statuses == ("200", "3xx")
    assert classify_status(200, config.health.ok_statuses) == "ok"
    assert classify_status(302, config.health.ok_statuses) == "ok"
    assert classify_status(204, config.health.ok_statuses) != "ok"


def test_unknown_keys_at_root_and_in_sections() -> None:
    assert problems_of({"healt": {}, "health": {"intervall_seconds": 5}, "zzz": 1}) == [
        "health.intervall_seconds: unknown key",
        "healt: unknown key",
        "zzz: unknown key",
    ]


@pytest.mark.parametrize(("listen", "message"), [
    ("nope", "must be host:port, not 'nope'"),
    (":9477", "must be host:port, not ':9477'"),
    ("127.0.0.1:99999", "port must be 1..65535, not 99999"),
    ("127.0.0.1:0", "port must be 1..65535, not 0"),
    ("127.0.0.1:http", "port must be a number, not 'http'"),
    ("example.com:80", "host must be an IP address or localhost, not 'example.com'"),
    ("[::1]:", "port must be a number, not ''"),
])
def test_bad_listen_addresses(listen: str, message: str) -> None:
    assert problems_of({"metrics": {"listen": listen}}) == [f"metrics.listen: {message}"]


@pytest.mark.parametrize(("listen", "host", "port"), [
    ("127.0.0.1:9477", "127.0.0.1", 9477),
    ("[::1]:9477", "::1", 9477),
    ("localhost:1", "localhost", 1),
    ("0.0.0.0:65535", "0.0.0.0", 65535),
])
def test_good_listen_addresses(listen: str, host: str, port: int) -> None:
    metrics = parse_config({"metrics": {"listen": listen}}).metrics
    assert (metrics.listen, metrics.host, metrics.port) == (listen, host, port)
    assert parse_listen_address(listen) == (host, port)


@pytest.mark.parametrize("url", [
    "ftp://127.0.0.1/x", "127.0.0.1:8000/api/health", "http://", "", "http://[::1",
    "http://127.0.0.1:99999/", "http://127.0.0.1:port/",
])
def test_bad_urls(url: str) -> None:
    assert problems_of({"health": {"url": url}}) == [
        f"health.url: must be an http(s) URL with a host, not {url!r}"]


def test_optional_urls_may_be_empty_and_accept_ipv6() -> None:
    config = parse_config({"alerts": {"alertmanager_url": ""},
                           "health": {"frontend_url": "http://[::1]:3000/"}})
    assert config.alerts.alertmanager_url == ""
    assert config.health.frontend_url == "http://[::1]:3000/"


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "w.toml"
    path.parent.mkdir()
    path.write_text('[daemon]\nstate_path = "../var/s.db"\n[backups]\ndirectory = "/abs/b"\n')
    config = load_config(path, environ={})
    assert config.daemon.state_path.resolve() == tmp_path / "var" / "s.db"
    assert config.backups.directory == Path("/abs/b")
    assert config.source == path


class TestEnvOverrides:
    def test_values_are_parsed_as_toml_or_taken_as_strings(self) -> None:
        config = parse_config({"health": {"interval_seconds": 10}}, {
            "BRACE_WATCHDOG__HEALTH__INTERVAL_SECONDS": "2.5",
            "BRACE_WATCHDOG__HEALTH__URL": "http://127.0.0.1:9/h",
            "BRACE_WATCHDOG__BACKUPS__PATTERNS": '["a_*.dump", "b_*.dump"]',
            "BRACE_WATCHDOG__DAEMON__DRY_RUN": "true",
            "UNRELATED": "x",
        })
        assert config.health.interval_seconds == 2.5
        assert config.health.url == "http://127.0.0.1:9/h"
        assert config.backups.patterns == ("a_*.dump", "b_*.dump")
        assert config.daemon.dry_run is True

    def test_override_errors_name_the_key(self) -> None:
        assert problems_of({}, {"BRACE_WATCHDOG__HEALTH__INTERVAL_SECONDS": "0",
                                "BRACE_WATCHDOG__HEALTH__NOPE": "1"}) == [
            "health.interval_seconds: must be > 0", "health.nope: unknown key"]

    @pytest.mark.parametrize("name", ["BRACE_WATCHDOG__HEALTH", "BRACE_WATCHDOG__A__B__C",
                                      "BRACE_WATCHDOG____URL"])
    def test_malformed_names_are_errors(self, name: str) -> None:
        assert problems_of({}, {name: "1"}) == [
            f"{name}: environment override must be BRACE_WATCHDOG__SECTION__KEY"]


class TestSecrets:
    def test_password_from_env_never_shows(self) -> None:
        config = parse_config({"database": {"dsn": "postgresql://w@127.0.0.1/brace"}},
                              {"BRACE_WATCHDOG_DB_PASSWORD": "hunter2-env"})
        assert config.database.password.reveal() == "hunter2-env"
        assert config.database.enabled
        for text in (repr(config), str(config), repr(config.database), str(config.database)):
            assert "hunter2-env" not in text
            assert "postgresql://w@" not in text  # the DSN is a secret too

    def test_credentials_directory(self, tmp_path: Path) -> None:
        (tmp_path / "db_password").write_text("cred-pass\n")
        (tmp_path / "webhook_url").write_text("https://hooks.example.invalid/T0K3N\n")
        (tmp_path / "db_dsn").write_text("postgresql://w@127.0.0.1/brace\n")
        config = parse_config({}, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
        assert config.database.password.reveal() == "cred-pass"
        assert config.database.dsn.reveal() == "postgresql://w@127.0.0.1/brace"
        assert [u.reveal() for u in config.notify.webhook_urls] == [
            "https://hooks.example.invalid/T0K3N"]
        assert "cred-pass" not in repr(config) and "T0K3N" not in repr(config)

    def test_env_wins_over_credentials(self, tmp_path: Path) -> None:
        (tmp_path / "db_password").write_text("from-file")
        config = parse_config({}, {"CREDENTIALS_DIRECTORY": str(tmp_path),
                                   "BRACE_WATCHDOG_DB_PASSWORD": "from-env"})
        assert config.database.password.reveal() == "from-env"

    def test_password_in_file_is_refused_without_echoing_it(self) -> None:
        with pytest.raises(ConfigError) as caught:
            parse_config({"database": {"password": "s3cr3t-in-file"}})
        assert caught.value.problems == [
            "database.password: must not be written in the config file: set "
            "BRACE_WATCHDOG_DB_PASSWORD or the systemd credential db_password"]
        assert "s3cr3t-in-file" not in str(caught.value)

    def test_bad_webhook_url_error_hides_the_value(self) -> None:
        problems = problems_of({}, {"BRACE_WATCHDOG_WEBHOOK_URL": "not-a-url-T0K3N"})
        assert problems == [
            "notify.webhook_urls: entries must be http(s) URLs (value hidden: it is a secret)"]
        assert "T0K3N" not in "".join(problems)

    def test_secret_value_semantics(self) -> None:
        assert repr(Secret("x")) == str(Secret("x")) == "Secret('***')"
        assert repr(Secret("")) == "Secret('')"
        assert bool(Secret("x")) and not bool(Secret(""))
        assert Secret("a") == Secret("a") and Secret("a") != Secret("b") and Secret("a") != "a"
        assert len({Secret("a"), Secret("a")}) == 1


def test_all_errors_are_reported_at_once() -> None:
    problems = problems_of({
        "daemon": {"log_format": "xml"},
        "metrics": {"listen": "nope"},
        "health": {"interval_seconds": 0, "url": "ftp://x"},
        "backups": {"unknown": 1},
        "extra": {},
    })
    assert problems == [
        "daemon.log_format: must be one of 'text', 'json', not 'xml'",
        "metrics.listen: must be host:port, not 'nope'",
        "health.url: must be an http(s) URL with a host, not 'ftp://x'",
        "health.interval_seconds: must be > 0",
        "backups.unknown: unknown key",
        "extra: unknown key",
    ]


class TestFiles:
    def test_invalid_toml(self, tmp_path: Path) -> None:
        path = tmp_path / "bad.toml"
        path.write_text("[health\nurl = 1\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path, environ={})
        assert caught.value.problems[0].startswith("not valid TOML: ")
        assert caught.value.source == str(path)
        assert str(path) in str(caught.value)

    def test_not_utf8(self, tmp_path: Path) -> None:
        path = tmp_path / "latin1.toml"
        path.write_bytes(b'[daemon]\nlog_level = "\xe9"\n')
        with pytest.raises(ConfigError, match="not valid TOML"):
            load_config(path, environ={})

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError) as caught:
            load_config(tmp_path / "absent.toml", environ={})
        assert caught.value.problems == [f"file not found: {tmp_path / 'absent.toml'}"]

    def test_unreadable_path(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="cannot read"):
            load_config(tmp_path, environ={})


@pytest.mark.parametrize("name", ["brace-watchdog.toml", "brace-watchdog.production.toml"])
def test_shipped_configs_are_valid(name: str) -> None:
    config = load_config(REPO / "etc" / name, environ={})
    assert isinstance(config, Config)
    assert config.metrics.listen == "127.0.0.1:9477"


def test_development_config_is_self_contained() -> None:
    config = load_config(REPO / "etc" / "brace-watchdog.toml", environ={})
    var = (REPO / "var").resolve()
    assert config.daemon.state_path.resolve() == var / "state.db"
    assert config.backups.directory.resolve() == var / "backups"
    assert config.control.socket.resolve() == var / "control.sock"
    assert not config.alerts.alertmanager_url and not config.database.enabled
    assert not config.restore_test.enabled and not config.rollback.enabled


FOUNDATION_SECTIONS = ("daemon", "metrics", "health", "backups", "alerts", "database", "control")
NOT_IN_FILES = {("database", "password")}  # refused in files; derived: metrics.host/port


def test_development_config_documents_every_foundation_key() -> None:
    text = (REPO / "etc" / "brace-watchdog.toml").read_text()
    document = tomllib.loads(text)
    defaults = Config()
    for section in FOUNDATION_SECTIONS:
        fields = set(vars(getattr(defaults, section))) - {"host", "port"}
        written = set(document[section])
        missing = {f for f in fields - written if (section, f) not in NOT_IN_FILES}
        assert not missing, f"[{section}] keys not documented in etc/brace-watchdog.toml"


def test_every_option_is_declared_once_absent_keys_give_the_dataclass_defaults() -> None:
    base = Path("/srv/brace")
    parsed, defaults = parse_config({}, base_dir=base), Config()
    for section in fields(Config):
        if section.name == "source":
            continue
        for item in fields(getattr(defaults, section.name)):
            got = getattr(getattr(parsed, section.name), item.name)
            want = getattr(getattr(defaults, section.name), item.name)
            if isinstance(want, Path):
                want = resolve_path(str(want), base)
            assert got == want, f"[{section.name}] {item.name}: read {got!r}, declared {want!r}"


def test_declaring_an_option_the_reader_cannot_read_fails_loudly() -> None:
    @dataclass(frozen=True)
    class Odd:
        ratio: complex = 1j

    with pytest.raises(TypeError, match=r"odd\.ratio: no reader for"):
        read_section(Odd, TableReader({}, "odd", Problems()), ReadContext(Path("/"), {}))
    with pytest.raises(TypeError, match="immutable"):
        option([1])


WINDOW_RULE = ("rollback.window_seconds: {window:g} s cannot hold rollback.min_samples ({n}) "
               "samples of a hanging backend, probed once per {name} ({spacing:g} s): {n} x "
               "{spacing:g} = {need:g} s, so a hang would never trigger a rollback; raise "
               "window_seconds to at least {need:g} or lower min_samples or {name}")


@pytest.mark.parametrize(("timeout", "interval", "n", "window", "refused_by"), [
    (30.0, 10.0, 6, 120.0, "health.timeout_seconds"),   # 180 s of hung probes > 120 s
    (5.0, 10.0, 6, 120.0, None),                        # the defaults: 60 s <= 120 s
    (20.0, 10.0, 6, 120.0, None),                       # exactly 120 s: accepted
    (20.5, 10.0, 6, 120.0, "health.timeout_seconds"),   # just over
    (2.0, 0.2, 5, 3.0, "health.timeout_seconds"),       # the old e2e default: 10 s > 3 s
    (1.0, 30.0, 6, 120.0, "health.interval_seconds"),   # probed too seldom for anything
    (5.0, 5.0, 24, 120.0, None),                        # a tie: 120 s
    (5.0, 5.0, 25, 120.0, "health.timeout_seconds"),    # a tie names the timeout
    (2.0, 0.25, 1, 2.0, None),                          # one sample needs one probe
])
def test_a_window_that_cannot_hold_min_samples_of_a_hang_is_refused(
        timeout: float, interval: float, n: int, window: float, refused_by: str | None) -> None:
    raw: dict[str, Any] = {
        "health": {"timeout_seconds": timeout, "interval_seconds": interval},
        "rollback": {"enabled": True, "min_samples": n, "window_seconds": window}}
    if refused_by is None:
        assert parse_config(raw).rollback.window_seconds == window
        return
    spacing = timeout if refused_by == "health.timeout_seconds" else interval
    assert problems_of(raw) == [WINDOW_RULE.format(window=window, n=n, name=refused_by,
                                                   spacing=spacing, need=n * spacing)]


def test_the_window_rule_applies_only_to_an_enabled_rollback() -> None:
    raw: dict[str, Any] = {"health": {"timeout_seconds": 30.0},
                           "rollback": {"min_samples": 6, "window_seconds": 120.0}}
    assert not parse_config(raw).rollback.enabled
    raw["rollback"]["enabled"] = True
    assert [p.split(":")[0] for p in problems_of(raw)] == ["rollback.window_seconds"]
    # an environment override is checked as the file is
    assert problems_of({"rollback": {"enabled": True}},
                       {"BRACE_WATCHDOG__HEALTH__TIMEOUT_SECONDS": "25"})[0].startswith(
        "rollback.window_seconds: 120 s cannot hold rollback.min_samples (6)")


def test_check_config_prints_the_window_rule(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    err = check_config_refusal(
        tmp_path, capsys, "[health]\ntimeout_seconds = 30.0\n[rollback]\nenabled = true\n"
        "window_seconds = 120.0\nmin_samples = 6\n")
    assert "rollback.window_seconds: 120 s cannot hold rollback.min_samples (6)" in err
    assert "health.timeout_seconds (30 s): 6 x 30 = 180 s" in err
