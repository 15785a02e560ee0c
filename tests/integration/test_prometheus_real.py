"""Proof against a real Prometheus: the real ``prometheus`` server on loopback scrapes a real
``brace-watchdog run`` process (health target: a real HTTP server; backups: a real ``pg_dump
-Fc`` file) with ``etc/prometheus/brace-watchdog.rules.yml`` loaded. Then every Grafana panel
query is valid PromQL that returns data, every alert rule evaluates with health "ok", and an
alert really goes pending when the health target starts answering 500.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon
from tests.support.net import free_port
from tests.support.pg import PgCluster, make_brace_dump
from tests.support.procs import terminate
from tests.support.skips import skip_missing
from tests.support.webserver import SwitchableServer, switchable_server

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "etc" / "prometheus" / "brace-watchdog.rules.yml"
DASHBOARD = ROOT / "etc" / "grafana" / "brace-watchdog.json"
# What Grafana would put in for its variables when the dashboard shows every daemon.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s",
                     "$job": ".+", "$instance": ".+"}


class Prometheus:
    """A real ``prometheus`` process on 127.0.0.1 scraping the daemon every second."""

    def __init__(self, binary: str, workdir: Path, target_port: int) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML: no YAML library needed
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "brace-watchdog", "static_configs": [
                {"targets": [f"127.0.0.1:{target_port}"]}]}],
        }), encoding="utf-8")
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400/422 carry PromQL errors in the body
            body = json.loads(exc.read())
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def ready(self) -> bool:
        """``/-/ready`` answers 200 once the TSDB is open (503 while it starts)."""
        url = f"http://127.0.0.1:{self.port}/-/ready"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return bool(response.status == 200)
        except OSError:  # URLError/HTTPError: not listening or not ready yet
            assert self.proc.poll() is None, "prometheus exited; see prometheus.log"
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] in (
            "vector", "matrix") else [{"value": data["result"]}]
        return result

    def close(self) -> None:
        terminate(self.proc, timeout=15)
        self.log.close()


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).exists():
        skip_missing("prometheus is not installed (apt-get install prometheus)")
    return binary


@pytest.fixture
def server() -> Iterator[SwitchableServer]:
    with switchable_server() as web:
        yield web


@pytest.fixture
def daemon(tmp_path: Path, pg_cluster: PgCluster, server: SwitchableServer,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    """``brace-watchdog run`` with a fresh real dump in its backups folder."""
    monkeypatch.setenv("BRACE_WATCHDOG__BACKUPS__SETTLE_SECONDS", "0")
    monkeypatch.setenv("BRACE_WATCHDOG__BACKUPS__INTERVAL_SECONDS", "1")
    name = datetime.now(UTC).strftime("brace_%Y%m%d_%H%M%S.dump")
    dump = make_brace_dump(pg_cluster, tmp_path / "dumps" / name, rows=10)
    process = Daemon(tmp_path, server)
    try:
        dump.path.rename(tmp_path / "backups" / name)
        process.wait_for("READY=1")
        yield process
    finally:
        process.close()


@pytest.fixture
def prometheus(tmp_path: Path, daemon: Daemon, prometheus_binary: str) -> Iterator[Prometheus]:
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    prom = Prometheus(prometheus_binary, workdir, daemon.metrics_port)
    try:
        wait_until(prom.ready, "prometheus /-/ready", timeout=60)
        yield prom
    finally:
        prom.close()


def scraped_enough(prom: Prometheus) -> bool:
    """A few scrapes of a daemon that has probed and found the backup (rates need two)."""
    scrapes = prom.query('count_over_time(up{job="brace-watchdog"}[1m])')
    fresh = prom.query('brace_backup_fresh{job="brace-watchdog"} == 1')
    return bool(scrapes) and float(scrapes[0]["value"][1]) >= 4 and bool(fresh)


def rules_evaluated(prom: Prometheus) -> bool:
    rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    return bool(rules) and all(r["lastEvaluation"] > "2000" for r in rules)


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
                expr = expr.replace(variable, GRAFANA_VARIABLES[variable])
            assert "$" not in expr, f"unsubstituted variable in {expr}"
            found.append((panel["title"], expr))
    return found


def test_every_panel_query_and_alert_works_against_real_prometheus(
        prometheus: Prometheus, daemon: Daemon, server: SwitchableServer) -> None:
    wait_until(lambda: scraped_enough(prometheus), "a few scrapes of the daemon")
    target = prometheus.api("targets")["activeTargets"][0]
    assert target["health"] == "up", target

    queries = dashboard_queries()
    assert len(queries) >= 30
    empty = [(title, expr) for title, expr in queries if not prometheus.query(expr)]
    assert not empty, f"panel queries without data: {empty}"

    wait_until(lambda: rules_evaluated(prometheus), "every rule evaluated once")
    rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
    assert len(rules) == len(re.findall(r"^\s*- alert:", RULES.read_text(), re.M))
    for rule in rules:
        assert rule["type"] == "alerting"
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        prometheus.query(rule["query"])  # evaluates without error (status success)
        assert rule["annotations"]["runbook_url"].startswith("docs/alerts.md#")
    states = {r["name"]: r["state"] for r in rules}
    # A healthy daemon with a fresh backup: none of these may be pending or firing.
    for quiet in ("BraceWatchdogDown", "BraceWatchdogNotScraped", "BraceWatchdogStalled",
                  "BraceHealthFailing", "BraceBackupStale", "BraceAutomationFrozen",
                  "BraceEscalationPending", "BraceRestoreTestFailing"):
        assert states[quiet] == "inactive", (quiet, states)

    server.mode = "500"
    wait_until(lambda: alert_state(prometheus, "BraceHealthFailing") == "pending",
               "BraceHealthFailing to go pending after the target answers 500", timeout=30)


def alert_state(prom: Prometheus, name: str) -> str:
    for group in prom.api("rules")["groups"]:
        for rule in group["rules"]:
            if rule["name"] == name:
                return str(rule["state"])
    raise AssertionError(f"no rule {name}")
