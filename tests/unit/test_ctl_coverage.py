"""Every ``brace-watchdogctl`` command is driven against a real daemon process by some e2e test:
the commands come from ctl's parser, the coverage from the e2e tests' ``daemon_ctl`` marks."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import tests.e2e
from tests.support.ctl_coverage import MARKER, command_of, ctl_commands


def _declared() -> dict[str, list[str]]:
    """command -> the e2e tests that declare they drive it against a real daemon."""
    found: dict[str, list[str]] = {}
    for info in pkgutil.iter_modules(tests.e2e.__path__):
        module = importlib.import_module(f"tests.e2e.{info.name}")
        for name, test in vars(module).items():
            marks = getattr(test, "pytestmark", []) if name.startswith("test_") else []
            for mark in marks:
                for command in mark.args if mark.name == MARKER else ():
                    found.setdefault(command, []).append(f"{info.name}.{name}")
    return found


def test_every_ctl_command_has_a_daemon_process_test() -> None:
    declared = _declared()
    missing = [c for c in ctl_commands() if c not in declared]
    assert not missing, (f"no e2e test drives {missing} against a real daemon: add one, marked "
                         f"@pytest.mark.{MARKER}(...)")
    unknown = sorted(set(declared) - set(ctl_commands()))
    assert not unknown, f"{MARKER} names commands ctl does not have: {unknown}"


def test_the_commands_come_from_the_parser() -> None:
    commands = ctl_commands()
    for expected in ("status", "approve", "inspect", "releases", "releases clear-failed",
                     "rollback app", "rollback db", "rollback pg-hba", "rollback docker-daemon"):
        assert expected in commands
    assert "rollback" not in commands  # it always names a variant


@pytest.mark.parametrize(("argv", "command"), [
    (["--socket", "/s", "status"], "status"),
    (["--socket", "/s", "--json", "releases"], "releases"),
    (["releases", "clear-failed", "abcd"], "releases clear-failed"),
    (["rollback", "pg-hba", "--yes"], "rollback pg-hba"),
    (["approve", "--yes"], "approve"),
    (["rollback", "everything"], None),
    ([], None),
])
def test_command_of_an_argv(argv: list[str], command: str | None) -> None:
    assert command_of(argv) == command
