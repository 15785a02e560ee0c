"""The alert rules pass the real ``promtool``: ``check rules`` and the unit tests in
``etc/prometheus/tests/`` (every alert firing AND not firing), and each alert's runbook link
lands on a heading of ``docs/alerts.md``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.skips import skip_missing

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "etc" / "prometheus" / "brace-watchdog.rules.yml"
RULE_TESTS = sorted((ROOT / "etc" / "prometheus" / "tests").glob("*.yml"))
ALERTS_DOC = ROOT / "docs" / "alerts.md"


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert:\s*(\w+)\s*$", RULES.read_text(encoding="utf-8"), re.M)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, - for space."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        skip_missing("promtool is not installed (apt-get install prometheus)")
    return path


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          cwd=ROOT)


def test_promtool_check_rules(promtool: str) -> None:
    result = run([promtool, "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    assert RULE_TESTS, "no promtool unit tests in etc/prometheus/tests/"
    result = run([promtool, "test", "rules", *map(str, RULE_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


def test_promtool_notices_a_broken_expectation(promtool: str, tmp_path: Path) -> None:
    """The unit tests really compare: a flipped expectation must fail."""
    text = RULE_TESTS[0].read_text(encoding="utf-8").replace(
        "../brace-watchdog.rules.yml", str(RULES))
    broken = text.replace("exp_labels: {severity: critical, job: brace-watchdog, "
                          'instance: "wd:9477"}', 'exp_labels: {severity: warning, '
                          'job: brace-watchdog, instance: "wd:9477"}', 1)
    assert broken != text
    (tmp_path / "broken.yml").write_text(broken, encoding="utf-8")
    result = run([promtool, "test", "rules", str(tmp_path / "broken.yml")])
    assert result.returncode != 0


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    tests = "\n".join(p.read_text(encoding="utf-8") for p in RULE_TESTS)
    cases = re.findall(r"alertname:\s*(\w+)\s*\n\s*exp_alerts:(.*)", tests)
    names = alert_names()
    assert len(names) >= 10
    for name in names:
        kinds = {"quiet" if rest.strip() == "[]" else "firing" for alert, rest in cases
                 if alert == name}
        assert kinds == {"quiet", "firing"}, f"{name}: tested {sorted(kinds) or 'never'}"


def test_every_alert_has_summary_description_and_a_runbook_anchor_in_the_docs() -> None:
    rules = RULES.read_text(encoding="utf-8")
    headings = re.findall(r"^#{2,3}\s+(.+)$", ALERTS_DOC.read_text(encoding="utf-8"), re.M)
    anchors = {github_anchor(h) for h in headings}
    blocks = re.split(r"^\s*- alert:", rules, flags=re.M)[1:]
    assert len(blocks) == len(alert_names())
    for block in blocks:
        name = block.split()[0]
        assert "summary:" in block and "description:" in block, name
        url = re.search(r"runbook_url:\s*(\S+)", block)
        assert url is not None, f"{name} has no runbook_url"
        path, _, anchor = url.group(1).partition("#")
        assert path == "docs/alerts.md", url.group(1)
        assert anchor == name.lower(), f"{name}: anchor {anchor!r}"
        assert anchor in anchors, f"docs/alerts.md has no heading for #{anchor}"
