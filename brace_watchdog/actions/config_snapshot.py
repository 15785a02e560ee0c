"""The config snapshot of a release: every file its compose stack reads, kept byte for byte.

* :func:`referenced_files` (pure) lists the files a compose config references: every ``-f`` file,
  the project's ``.env`` and every service's ``env_file:`` target (a relative one resolved against
  the first compose file's folder, as compose does).
* :class:`ConfigSnapshot` holds their contents (``None``: the file did not exist) and serialises to
  the state store's ``config_files`` blob.
* :func:`read_files` reads them from disk; :func:`write_back` restores them, each atomically
  (:func:`~brace_watchdog.files.install_bytes`: temporary file in the same
  folder, then a rename that replaces a symlink instead of following it; mode and owner kept).

The ``env_file:`` targets come from ``compose config --no-env-resolution --format json``
(:meth:`~brace_watchdog.adapters.compose.ComposeCLI.config_json`): compose 1.29 has no such
output, so under it the snapshot holds the ``-f`` files and ``.env`` only.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brace_watchdog.files import install_bytes

__all__ = ["ConfigSnapshot", "read_files", "referenced_files", "write_back"]


def _env_file_paths(service: Any) -> list[str]:
    """A service's ``env_file:`` entries: a string, a list of strings or of ``{path: …}``."""
    if not isinstance(service, dict):
        return []
    value = service.get("env_file")
    entries = value if isinstance(value, list) else [value]
    paths = []
    for entry in entries:
        path = entry.get("path") if isinstance(entry, dict) else entry
        if isinstance(path, str) and path:
            paths.append(path)
    return paths


def referenced_files(config: dict[str, Any] | None, compose_files: Sequence[str],
                     project_dir: str) -> tuple[str, ...]:
    """Absolute paths of the ``-f`` files, ``<project_dir>/.env`` and every ``env_file:``
    target of ``config`` (a compose config as a dict; None when it could not be read), in that
    order, without duplicates."""
    base = Path(compose_files[0]).parent if compose_files else Path(project_dir)
    files = [str(Path(f)) for f in compose_files]
    files.append(str(Path(project_dir) / ".env"))
    services = (config or {}).get("services")
    for service in (services.values() if isinstance(services, dict) else ()):
        files += [os.path.normpath(base / path) for path in _env_file_paths(service)]
    return tuple(dict.fromkeys(files))


@dataclass(frozen=True)
class ConfigSnapshot:
    """Path → content (None: absent when the snapshot was taken) of every config file."""

    files: tuple[tuple[str, bytes | None], ...]

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(path for path, _ in self.files)

    def to_blob(self) -> bytes:
        return json.dumps([[path, None if data is None else base64.b64encode(data).decode()]
                           for path, data in self.files]).encode()

    @classmethod
    def from_blob(cls, blob: bytes | None) -> ConfigSnapshot | None:
        if not blob:
            return None
        return cls(tuple((str(path), None if data is None else base64.b64decode(data))
                         for path, data in json.loads(blob)))


def read_files(paths: Iterable[str]) -> ConfigSnapshot:
    """The current contents of ``paths`` (blocking: run it in a worker thread)."""
    return ConfigSnapshot(tuple((path, Path(path).read_bytes() if Path(path).is_file() else None)
                                for path in paths))


def write_back(snapshot: ConfigSnapshot) -> list[str]:
    """Write every kept file back to its path, atomically; return the paths written (a file
    absent at the snapshot is left alone). Blocking: run it in a worker thread."""
    written = []
    for path, data in snapshot.files:
        if data is None:
            continue
        install_bytes(data, Path(path))
        written.append(path)
    return written
