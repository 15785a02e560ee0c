"""The Grafana dashboard (``etc/grafana/``): the committed JSON is what ``generate.py`` makes,
it is importable (datasource variable, unique ids, a sane grid) and every query names only
metrics that ``brace_watchdog.metrics.Metrics`` really exports.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from brace_watchdog.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "etc" / "grafana" / "brace-watchdog.json"
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum",
                                                             "_created"),
            "info": ("_info",), "gauge": ("",), "summary": ("_count", "_sum", "_created")}
METRIC_NAME = re.compile(r"\b((?:brace|process)_[a-zA-Z0-9_]+)\b")


def exported_names() -> dict[str, str]:
    """Every sample name a fresh ``Metrics()`` can export -> its family name."""
    names: dict[str, str] = {}
    for family in Metrics(CollectorRegistry()).registry.collect():
        for suffix in SUFFIXES.get(family.type, ("",)):
            names[family.name + suffix] = family.name
    return names


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_generate",
                                                  ROOT / "etc" / "grafana" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel["targets"]]


def test_committed_json_is_what_the_generator_makes() -> None:
    assert DASHBOARD.read_text(encoding="utf-8") == load_generator().render(), (
        "run: .venv/bin/python etc/grafana/generate.py")


def test_datasource_is_a_variable_asked_for_on_import(dashboard: dict[str, Any]) -> None:
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
    assert "DS_PROMETHEUS" not in json.dumps(dashboard).replace("${DS_PROMETHEUS}", "").replace(
        '"DS_PROMETHEUS"', "")


def test_every_query_names_only_real_metrics_and_selects_the_daemon(
        dashboard: dict[str, Any]) -> None:
    known = exported_names()
    for expr in expressions(dashboard):
        names = METRIC_NAME.findall(expr)
        assert names, expr
        for name in names:
            assert name in known, f"{name} is not exported by Metrics(): {expr}"
        selectors = re.findall(r"\b(?:brace|process)_[a-zA-Z0-9_]+(\{[^}]*\})?", expr)
        assert all('instance=~"$instance"' in s and 'job=~"$job"' in s for s in selectors), expr


def test_the_issue_s_panels_are_all_there(dashboard: dict[str, Any]) -> None:
    used = {exported_names()[n] for e in expressions(dashboard) for n in METRIC_NAME.findall(e)}
    wanted = {
        "brace_health_up", "brace_health_probe_duration_seconds", "brace_health_probes",
        "brace_backup_newest_age_seconds", "brace_backup_max_age_seconds",
        "brace_restore_test_success", "brace_restore_test_duration_seconds",
        "brace_restore_test_runs", "brace_rollbacks", "brace_automation_frozen",
        "brace_escalation_pending", "brace_alerts_firing", "brace_watchdog_component_errors",
        "brace_watchdog_component_up", "brace_watchdog_event_loop_lag_seconds",
        "process_resident_memory_bytes", "brace_watchdog_watchdog_healthy",
    }
    assert wanted <= used, sorted(wanted - used)
    assert 'histogram_quantile(0.99' in " ".join(expressions(dashboard))


def test_ids_are_unique_and_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area


def test_targets_have_distinct_ref_ids(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_zero_fallback_wraps_the_whole_expression() -> None:
    assert load_generator().zero("sum(x)") == "(sum(x)) or on() vector(0)"
