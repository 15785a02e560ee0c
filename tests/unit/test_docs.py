"""The operator's guide cannot drift from the code: every metric a fresh ``Metrics()`` registry
exports is in ``docs/metrics.md`` with its type and labels, every config section and key of
``brace_watchdog.config`` is in ``docs/configuration.md``, and relative links between the docs
resolve.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from brace_watchdog.config import Config
from brace_watchdog.ctl import build_parser
from brace_watchdog.metrics import Metrics

DOCS = Path(__file__).resolve().parents[2] / "docs"
EXPORTED_SUFFIX = {"counter": "_total", "info": "_info"}
# Dataclass fields that are not TOML keys: derived from `listen`, or a secret refused in the file.
NOT_KEYS = {("metrics", "host"), ("metrics", "port"), ("database", "password")}


def metric_rows() -> dict[str, list[str]]:
    """Exported metric name -> the cells of its row in docs/metrics.md."""
    rows: dict[str, list[str]] = {}
    for line in (DOCS / "metrics.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 4:
            rows[cells[0].strip("`")] = cells
    return rows


def registry_metrics() -> list[MetricWrapperBase]:
    metrics = Metrics(CollectorRegistry())
    return [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]


def test_every_registry_metric_is_documented_with_type_and_labels() -> None:
    rows = metric_rows()
    wrappers = registry_metrics()
    assert len(wrappers) >= 50
    for metric in wrappers:
        name = metric._name + EXPORTED_SUFFIX.get(metric._type, "")
        assert name in rows, f"{name} is missing from docs/metrics.md"
        _, kind, labels, meaning = rows[name]
        assert kind == metric._type, f"{name}: documented as {kind}, is {metric._type}"
        documented = set(re.findall(r"`([a-z_]+)`", labels))
        assert set(metric._labelnames) <= documented, f"{name}: labels vs {labels!r}"
        if metric._type == "info":  # an info metric's labels are its values
            assert documented, f"{name}: document the info labels"
        assert meaning, name


def test_every_collected_family_is_documented() -> None:
    """Includes the process/platform collectors' metrics."""
    rows = metric_rows()
    for family in Metrics(CollectorRegistry()).registry.collect():
        name = family.name + EXPORTED_SUFFIX.get(family.type, "")
        assert name in rows, f"{name} is missing from docs/metrics.md"


def config_sections() -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    for section in dataclasses.fields(Config):
        if section.name == "source":
            continue
        default = section.default_factory()  # type: ignore[misc]
        sections[section.name] = [f.name for f in dataclasses.fields(default)
                                  if (section.name, f.name) not in NOT_KEYS]
    return sections


def test_every_config_section_and_key_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    parts = dict(re.findall(r"^## \[(\w+)\]\n(.*?)(?=^## |\Z)", text, re.M | re.S))
    sections = config_sections()
    assert set(parts) == set(sections)
    for section, keys in sections.items():
        for key in keys:
            assert f"| `{key}` |" in parts[section], f"[{section}] {key} is not documented"


def test_documented_defaults_match_the_code() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    parts = dict(re.findall(r"^## \[(\w+)\]\n(.*?)(?=^## |\Z)", text, re.M | re.S))
    for section in dataclasses.fields(Config):
        if section.name == "source":
            continue
        for field in dataclasses.fields(section.default_factory()):  # type: ignore[misc]
            value = getattr(section.default_factory(), field.name)  # type: ignore[misc]
            if isinstance(value, bool | int | float) and (section.name, field.name) not in NOT_KEYS:
                shown = str(value).lower() if isinstance(value, bool) else repr(value)
                row = re.search(rf"\| `{field.name}` \| `([^`]*)`", parts[section.name])
                assert row is not None and row.group(1) == shown, (
                    f"[{section.name}] {field.name}: docs say {row and row.group(1)}, code {shown}")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, - for space."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    return {github_anchor(h) for h in re.findall(r"^#{1,6}\s+(.+)$", text, re.M)}


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_relative_links_and_anchors_resolve(page: str) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    for target, anchor in re.findall(r"\]\(([^)#:]*\.md)?(?:#([^)]*))?\)", text):
        path = DOCS / target if target else DOCS / page
        assert path.exists(), f"{page} links to missing {target}"
        if anchor:
            assert anchor in anchors(path), f"{page} links to missing {target}#{anchor}"


PLACEHOLDERS = {"NAME": "brace_20260203_045206.dump", "ID": "1", "N": "1", "H": "1",
                "KIND": "escalation", "TEXT": "x", "bwt_…": "bwt_x"}


def documented_ctl_commands() -> set[str]:
    """Every ``brace-watchdogctl ...`` invocation written in the docs, placeholders filled."""
    found: set[str] = set()
    for page in DOCS.glob("*.md"):
        text = page.read_text(encoding="utf-8")
        for raw in re.findall(r"brace-watchdogctl ((?:[-\w.\"/…\[\] ])+)", text):
            words = raw.split("#")[0].replace("[", " ").replace("]", " ").split()
            while words and words[-1] in ("when", "done", "then", "first"):  # prose after it
                words.pop()
            found.add(" ".join(PLACEHOLDERS.get(w, w) for w in words))
    return found


def test_every_documented_ctl_command_parses() -> None:
    commands = documented_ctl_commands()
    assert len(commands) >= 15
    parser = build_parser()
    for command in commands:
        try:
            parser.parse_args(shlex.split(command))
        except SystemExit:
            pytest.fail(f"the docs show `brace-watchdogctl {command}`, which does not parse")
