"""A monitor's last-known state, kept as a state-store flag so transitions survive a restart.

The backups, alerts and database monitors record events only when something changes. Keeping
what they last saw in the state store (flag ``monitor.<name>``) means a restarted daemon neither
re-announces an outage it already reported nor misses a change that happened while it was down.
"""

from __future__ import annotations

from typing import Any

from brace_watchdog.state import StateStore

__all__ = ["MonitorMemory"]


class MonitorMemory:
    """A small dict persisted under ``monitor.<name>``; written only when it changes."""

    def __init__(self, store: StateStore, name: str) -> None:
        self._store = store
        self._flag = f"monitor.{name}"
        saved = store.flag(self._flag)
        self._values: dict[str, Any] = saved if isinstance(saved, dict) else {}

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def update(self, **values: Any) -> None:
        merged = {**self._values, **values}
        if merged != self._values:
            self._values = merged
            self._store.set_flag(self._flag, merged)
