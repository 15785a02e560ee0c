"""Failpoints: a test-only switch that SIGKILLs the daemon at a named point, so a kill test can
stop it deterministically right after a given journal entry (docs/faults.md).

``BRACE_WATCHDOG_FAILPOINTS`` (read once, on the first :func:`hit`) names the points,
comma-separated: ``journal:freezing,journal:restoring@2``. ``NAME`` fires at its first hit,
``NAME@N`` at its N-th. Unset or empty, :func:`hit` does nothing but one dict lookup. A bad value
is a :class:`~brace_watchdog.errors.ConfigError` when ``brace-watchdog`` starts (:func:`armed`).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
from collections import Counter

from brace_watchdog.errors import ConfigError

__all__ = ["ENV", "armed", "hit", "parse"]

ENV = "BRACE_WATCHDOG_FAILPOINTS"

log = logging.getLogger("brace_watchdog.failpoints")
_hits: Counter[str] = Counter()


def parse(value: str) -> dict[str, int]:
    """``{name: the hit that fires}`` from the variable's value; ConfigError on a bad ``@N``."""
    found: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, _, count = item.partition("@")
        if not name or (count and (not count.isdigit() or int(count) < 1)):
            raise ConfigError([f"{item!r}: expected NAME or NAME@N with N >= 1"], ENV)
        found[name] = int(count) if count else 1
    return found


@functools.cache
def armed() -> dict[str, int]:
    """The armed failpoints, read from the environment once."""
    return parse(os.environ.get(ENV, ""))


def hit(name: str) -> None:
    """Nothing, unless ``name`` is armed and this is its chosen hit: then log and SIGKILL."""
    chosen = armed().get(name)
    if chosen is None:
        return
    _hits[name] += 1
    if _hits[name] == chosen:
        log.critical("failpoint %s (hit %d): SIGKILL of pid %d (%s is set)", name, _hits[name],
                     os.getpid(), ENV)
        os.kill(os.getpid(), signal.SIGKILL)
