"""Generate the brace-watchdog Grafana dashboard (``brace-watchdog.json`` next to this file).

Run ``python etc/grafana/generate.py`` after editing the panels below; the committed JSON must
equal what this script prints (``tests/unit/test_dashboard.py`` checks that, and that every
metric named in a query exists in ``brace_watchdog.metrics.Metrics``).

The dashboard is importable as is: the Prometheus datasource is the variable
``${DS_PROMETHEUS}`` (asked for on import through ``__inputs``, selectable afterwards), and
``$job`` / ``$instance`` pick the daemon. Panels that count events which may never have happened
yet (rollbacks, escalations, errors) end in ``or on() vector(0)`` so they show 0, not "No data".
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["OUTPUT", "build_dashboard", "main", "render"]

OUTPUT = Path(__file__).with_name("brace-watchdog.json")
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
SEL = 'job=~"$job", instance=~"$instance"'
RATE = "$__rate_interval"


def zero(expr: str) -> str:
    """Show 0 instead of "No data" for a labelled series that has not been created yet."""
    return f"({expr}) or on() vector(0)"


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str  # "timeseries" or "stat"
    targets: tuple[Target, ...]
    width: int
    height: int = 7
    unit: str = "short"
    description: str = ""
    mappings: tuple[tuple[str, str, str], ...] = ()  # (value, text, colour)
    thresholds: tuple[tuple[float | None, str], ...] = ((None, "green"),)
    options: dict[str, Any] = field(default_factory=dict)  # merged into the panel's options


def t(expr: str, legend: str = "") -> Target:
    return Target(expr, legend)


UP_MAP = (("0", "DOWN", "red"), ("1", "up", "green"))
FLAG_MAP = (("0", "no", "green"), ("1", "YES", "red"))
RED_AT_1 = ((None, "green"), (1.0, "red"))
QUANTILE = ("histogram_quantile({q}, sum by (target, le) (rate("
            "brace_health_probe_duration_seconds_bucket{{" + SEL + "}}[" + RATE + "])))")

ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    ("Stack health", (
        Panel("Health up", "stat", (t(f"brace_health_up{{{SEL}}}", "{{target}}"),), 6,
              mappings=UP_MAP, description="1 when the last probe of the target was ok."),
        Panel("Probe latency (p50 / p95 / p99)", "timeseries", (
            t(QUANTILE.format(q=0.5), "{{target}} p50"),
            t(QUANTILE.format(q=0.95), "{{target}} p95"),
            t(QUANTILE.format(q=0.99), "{{target}} p99")), 9, unit="s"),
        Panel("Probe results", "timeseries", (
            t(f"sum by (target, result) (rate(brace_health_probes_total{{{SEL}}}[{RATE}]))",
              "{{target}} {{result}}"),), 9, unit="reqps",
              description="Probes per second by classified result: ok, http_4xx, http_5xx, "
                          "timeout, connection_error."),
        Panel("Last HTTP status", "timeseries", (
            t(f"brace_health_status_code{{{SEL}}}", "{{target}}"),), 12,
              description="0 when the probe got no HTTP answer."),
        Panel("Firing alerts (Alertmanager)", "timeseries", (
            t(zero(f"sum by (alertname, severity) (brace_alerts_firing{{{SEL}}})"),
              "{{alertname}} {{severity}}"),), 12,
              description="Active, unsilenced alerts matching [alerts] matchers."),
    )),
    ("Backups and restore tests", (
        Panel("Newest backup age vs threshold", "timeseries", (
            t(f"brace_backup_newest_age_seconds{{{SEL}}}", "newest backup age"),
            t(f"brace_backup_max_age_seconds{{{SEL}}}", "max age ([backups] max_age_hours)")),
              12, unit="s", description="Age is +Inf when there is no valid backup."),
        Panel("Backup fresh", "stat", (t(f"brace_backup_fresh{{{SEL}}}"),), 4,
              mappings=(("0", "STALE", "red"), ("1", "fresh", "green"))),
        Panel("Backup files", "stat", (
            t(f"brace_backup_files{{{SEL}}}", "{{validity}}"),), 4),
        Panel("Newest backup size", "stat", (
            t(f"brace_backup_newest_size_bytes{{{SEL}}}"),), 4, unit="bytes"),
        Panel("Last restore test", "stat", (
            t(f"brace_restore_test_success{{{SEL}}}", "passed"),
            t(f"brace_restore_test_running{{{SEL}}}", "running"),
            t(f"brace_restore_test_rto_exceeded{{{SEL}}}", "slower than RTO")), 8,
              mappings=(("0", "no", "red"), ("1", "yes", "green")),
              description="passed reads 0 also before the first test; see the time panel."),
        Panel("Since last restore test", "stat", (
            t(f"time() - brace_restore_test_last_run_timestamp_seconds{{{SEL}}}", "run"),
            t(f"time() - brace_restore_test_last_success_timestamp_seconds{{{SEL}}}",
              "pass")), 8, unit="s",
              description="Timestamps are 0 before the first (passing) test, so this reads "
                          "decades until then."),
        Panel("Restore tests by result", "timeseries", (
            t(zero(f"sum by (result) (brace_restore_test_runs_total{{{SEL}}})"),
              "{{result}}"),), 8, description="Tests run since the daemon started (a step up "
                                              "is a test; the history is in the event log)."),
        Panel("Restore test duration", "timeseries", (
            t(f"brace_restore_test_duration_seconds{{{SEL}}}", "total"),
            t(zero(f"brace_restore_test_stage_duration_seconds{{{SEL}}}"), "{{stage}}")), 12,
              unit="s"),
        Panel("Restored tables", "timeseries", (
            t(f"brace_restore_test_restored_tables{{{SEL}}}", "tables"),), 12),
    )),
    ("Rollbacks and automation", (
        Panel("Automation frozen", "stat", (t(f"brace_automation_frozen{{{SEL}}}"),), 4,
              mappings=FLAG_MAP, thresholds=RED_AT_1),
        Panel("Escalation pending", "stat", (t(f"brace_escalation_pending{{{SEL}}}"),), 4,
              mappings=FLAG_MAP, thresholds=RED_AT_1),
        Panel("Dry run", "stat", (t(f"brace_watchdog_dry_run{{{SEL}}}"),), 4,
              mappings=(("0", "off", "green"), ("1", "ON", "orange"))),
        Panel("Rollbacks by outcome", "stat", (
            t(zero(f"sum by (result) (brace_rollbacks_total{{{SEL}}})"), "{{result}}"),), 6,
              description="Since the daemon started: succeeded, failed, interrupted, dry_run."),
        Panel("Last rollback: time to action / recovery", "stat", (
            t(f"brace_rollback_time_to_action_seconds{{{SEL}}}", "to action"),
            t(f"brace_rollback_time_to_recovery_seconds{{{SEL}}}", "to recovery")), 6,
              unit="s", description="From the first failing sample."),
        Panel("Rollbacks and deploys over time", "timeseries", (
            t(zero(f"sum by (result) (increase(brace_rollbacks_total{{{SEL}}}[{RATE}]))"),
              "rollback {{result}}"),
            t(zero(f"sum by (change) (increase(brace_deploys_total{{{SEL}}}[{RATE}]))"),
              "deploy ({{change}})")), 12),
        Panel("Escalations and gated actions", "timeseries", (
            t(zero(f"sum by (reason) (increase(brace_escalations_total{{{SEL}}}[{RATE}]))"),
              "escalation {{reason}}"),
            t(zero("sum by (action, result) (increase("
                   f"brace_gated_actions_total{{{SEL}}}[{RATE}]))"),
              "{{action}} {{result}}")), 12),
    )),
    ("The daemon itself", (
        Panel("Watchdog healthy", "stat", (t(f"brace_watchdog_watchdog_healthy{{{SEL}}}"),), 4,
              mappings=(("0", "STALLED", "red"), ("1", "healthy", "green")),
              description="0: a component missed its deadline; systemd pings stop."),
        Panel("Version", "stat", (t(f"brace_watchdog_info{{{SEL}}}", "{{version}}"),), 4,
              options={"textMode": "name"}),
        Panel("Component up", "timeseries", (
            t(f"brace_watchdog_component_up{{{SEL}}}", "{{component}}"),), 8),
        Panel("Component errors", "timeseries", (
            t(zero("sum by (component) (increase("
                   f"brace_watchdog_component_errors_total{{{SEL}}}[{RATE}]))"),
              "{{component}}"),), 8),
        Panel("Event loop lag", "timeseries", (
            t(f"brace_watchdog_event_loop_lag_seconds{{{SEL}}}", "lag"),), 8, unit="s"),
        Panel("Resident memory", "timeseries", (
            t(f"process_resident_memory_bytes{{{SEL}}}", "RSS"),), 8, unit="bytes"),
        Panel("CPU", "timeseries", (
            t(f"rate(process_cpu_seconds_total{{{SEL}}}[{RATE}])", "cpu"),), 8,
              unit="percentunit"),
        Panel("Component cycle duration", "timeseries", (
            t(f"brace_watchdog_component_cycle_duration_seconds{{{SEL}}}", "{{component}}"),),
              12, unit="s"),
        Panel("Events written by kind", "timeseries", (
            t(f"sum by (kind) (increase(brace_watchdog_events_total{{{SEL}}}[{RATE}]))",
              "{{kind}}"),), 12),
    )),
)


def _field_config(panel: Panel) -> dict[str, Any]:
    steps = [{"color": colour, "value": value} for value, colour in panel.thresholds]
    mappings = [{"type": "value", "options": {value: {"text": text, "color": colour}}}
                for value, text, colour in panel.mappings]
    return {"defaults": {"unit": panel.unit, "mappings": mappings,
                         "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": []}


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    targets = [{"datasource": DATASOURCE, "expr": target.expr, "legendFormat": target.legend,
                "refId": chr(ord("A") + number)} for number, target in enumerate(panel.targets)]
    body: dict[str, Any] = {
        "id": panel_id, "type": panel.kind, "title": panel.title,
        "description": panel.description, "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": _field_config(panel), "targets": targets,
    }
    if panel.kind == "stat":
        body["options"] = {"colorMode": "background", "graphMode": "none", "textMode": "auto",
                           "reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                             "values": False}, **panel.options}
    else:
        body["options"] = {"legend": {"displayMode": "list", "placement": "bottom"},
                           "tooltip": {"mode": "multi"}, **panel.options}
    return body


def _layout() -> list[dict[str, Any]]:
    """Rows of panels, left to right, wrapping at Grafana's 24 columns."""
    panels: list[dict[str, Any]] = []
    y, panel_id = 0, 1
    for title, row in ROWS:
        panels.append({"id": panel_id, "type": "row", "title": title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        panel_id, y, x, line_height = panel_id + 1, y + 1, 0, 0
        for panel in row:
            if x + panel.width > 24:
                x, y, line_height = 0, y + line_height, 0
            panels.append(_panel_json(panel, panel_id, x, y))
            panel_id, x, line_height = panel_id + 1, x + panel.width, max(line_height,
                                                                          panel.height)
        y += line_height
    return panels


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE,
            "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
            "refresh": 2, "includeAll": True, "multi": True, "allValue": ".+",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1, "hide": 0, "options": [], "regex": ""}


def build_dashboard() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (schemaVersion 38, Grafana 9/10)."""
    datasource_var = {"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                      "query": "prometheus", "current": {}, "hide": 0, "options": [],
                      "refresh": 1, "regex": ""}
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                      "pluginId": "prometheus", "pluginName": "Prometheus",
                      "description": "The Prometheus that scrapes brace-watchdog"}],
        "__requires": [{"type": "grafana", "id": "grafana", "name": "Grafana",
                        "version": "9.0.0"},
                       {"type": "datasource", "id": "prometheus", "name": "Prometheus",
                        "version": "1.0.0"}],
        "uid": "brace-watchdog", "title": "brace-watchdog",
        "description": "The brace stack as brace-watchdog sees it, and the daemon itself.",
        "tags": ["brace", "brace-watchdog"], "timezone": "utc", "editable": True,
        "schemaVersion": 38, "version": 1, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"}, "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            datasource_var,
            _variable("job", "Job", "label_values(brace_watchdog_info, job)"),
            _variable("instance", "Instance",
                      'label_values(brace_watchdog_info{job=~"$job"}, instance)'),
        ]},
        "panels": _layout(),
    }


def render() -> str:
    return json.dumps(build_dashboard(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    """Write the JSON (default) or, with ``--check``, exit 1 when the committed file differs."""
    text = render()
    if "--check" in argv:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        return 0 if current == text else 1
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
