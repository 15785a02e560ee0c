"""Under CI=true a skipped test is a failure, whatever skipped it; locally it stays a skip.

The rule lives in one place (``tests/support/skips.py``, loaded by ``tests/conftest.py``); these
tests run pytest inside pytest with that plugin and read the outcomes, and check that no test
skips around it with a bare ``pytest.skip``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import skips

SKIPPING = '''
import pytest
from tests.support.skips import skip_missing

@pytest.fixture
def engine():
    skip_missing("no engine here")

def test_fixture_skips(engine):
    pass

def test_call_skips():
    skip_missing("no tool here")

@pytest.mark.skipif(True, reason="marker says so")
def test_marker_skips():
    pass

@pytest.mark.xfail(reason="known bug", strict=True)
def test_expected_failure():
    assert False

def test_passes():
    pass
'''

MODULE_LEVEL = '''
import pytest
pytest.importorskip("no_such_module_anywhere")

def test_never_collected():
    pass
'''

TESTS = Path(__file__).resolve().parents[1]


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
         ci: str | None) -> pytest.RunResult:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.makepyfile(test_skipping=SKIPPING, test_module_level=MODULE_LEVEL)
    return pytester.runpytest("-rA", "-p", "no:asyncio", "--continue-on-collection-errors",
                              plugins=[skips])


def test_every_kind_of_skip_fails_under_ci(pytester: pytest.Pytester,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(pytester, monkeypatch, "true")
    # a skip in a fixture or marker fails at setup (an error), in the test body at call
    result.assert_outcomes(passed=1, failed=1, errors=3, xfailed=1)
    for reason in ("no engine here", "no tool here", "marker says so",
                   "could not import 'no_such_module_anywhere'"):
        result.stdout.fnmatch_lines([f"*CI=true: a skipped test is a failure*{reason}*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_skips_stay_skips_outside_ci(pytester: pytest.Pytester,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(pytester, monkeypatch, None)
    result.assert_outcomes(passed=1, skipped=4, xfailed=1)
    result.stdout.fnmatch_lines(["*missing: no engine here*", "*missing: no tool here*"])
    assert result.ret == pytest.ExitCode.OK


def test_no_test_skips_around_the_rule() -> None:
    """Skips go through ``skip_missing`` so each one names what is missing."""
    bare = re.compile(r"\bpytest\.skip\(")
    offenders = [f"{path.relative_to(TESTS)}:{number}"
                 for path in sorted(TESTS.rglob("*.py")) if path.name != "skips.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if bare.search(line) and path != Path(__file__).resolve()]
    assert offenders == []
