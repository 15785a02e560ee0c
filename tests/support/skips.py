"""The skipping rule, in one place: a skipped test is a failure under CI=true.

``tests/conftest.py`` loads this module as a pytest plugin. Its two hooks turn every skip — from
``skip_missing`` in a fixture or test, a ``skipif`` marker, ``importorskip`` or a module-level
skip — into a failure when ``CI`` is set, so a CI run never passes by skipping what it should
have run. Locally a missing dependency still skips with its reason. Tests call ``skip_missing``
(never ``pytest.skip`` directly) so every skip names what is missing.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import NoReturn

import pytest

__all__ = ["skip_missing", "under_ci"]

_REFUSAL = "CI=true: a skipped test is a failure"


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_missing(reason: str) -> NoReturn:
    """Skip because a dependency is missing (``reason`` says which and how to install it)."""
    pytest.skip(f"missing: {reason}")


def _skip_reason(longrepr: object) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, object, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if under_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"{_REFUSAL} ({_skip_reason(report.longrepr)})"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, object, None]:
    outcome = yield
    report: pytest.CollectReport = outcome.get_result()  # type: ignore[attr-defined]
    if under_ci() and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"{_REFUSAL} ({_skip_reason(report.longrepr)})"
