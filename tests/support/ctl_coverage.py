"""Which ``brace-watchdogctl`` commands the end-to-end tests drive against a real daemon process.

:func:`ctl_commands` derives every command from ctl's own argparse parser: each subcommand, and
one entry per choice of a positional that picks a variant (``rollback app``, ``releases
clear-failed``; a bare ``releases`` too, as its variant is optional). :func:`command_of` names
the command an argv runs.

An e2e test that drives the real daemon (``brace-watchdog run``) through its socket declares the
commands it runs with ``@pytest.mark.daemon_ctl("approve", ...)``. The e2e conftest fails such a
test when it did not run each declared command through
:func:`~tests.integration.control_helpers.ctl` (which records every argv in :data:`CTL_RUNS`),
and ``tests/unit/test_ctl_coverage.py`` fails when a command is declared by no e2e test — so a
new command cannot ship without one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Sequence

from brace_watchdog.ctl import build_parser

__all__ = ["CTL_RUNS", "MARKER", "command_of", "ctl_commands"]

MARKER = "daemon_ctl"
# Every argv ``ctl()`` ran in this test process, in order.
CTL_RUNS: list[tuple[str, ...]] = []


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("brace-watchdogctl has no subcommands")


def _variants(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The positionals of a subcommand that pick a variant (they have choices)."""
    return [a for a in parser._actions if not a.option_strings and a.choices]


def ctl_commands() -> list[str]:
    """Every command and variant ``brace-watchdogctl`` accepts, from its parser."""
    names: list[str] = []
    for name, sub in _subcommands(build_parser()).items():
        variants = _variants(sub)
        if all(a.nargs == "?" for a in variants):
            names.append(name)
        names += [f"{name} {choice}" for a in variants for choice in a.choices or ()]
    return names


def command_of(argv: Sequence[str]) -> str | None:
    """The command of :func:`ctl_commands` that ``argv`` runs (None for a usage error)."""
    parser = build_parser()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            ns = parser.parse_args(list(argv))
    except SystemExit:
        return None
    picked = [str(getattr(ns, a.dest)) for a in _variants(_subcommands(parser)[ns.command])
              if getattr(ns, a.dest) is not None]
    return " ".join([ns.command, *picked])
