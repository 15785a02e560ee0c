"""The config snapshot of a release: every file its compose stack reads, kept byte for byte.

* :func:`referenced_files` (pure) lists the files a compose config references: every ``-f`` file,
  the project's ``.env`` and every service's ``env_file:`` target (a relative one resolved against
  the first compose file's folder, as compose does).
* :func:`scan_env_files` (pure) finds the ``env_file:`` targets in a compose file's text, for
  compose 1.29 (below).
* :class:`ConfigSnapshot` holds their contents (``None``: the file did not exist) and serialises to
  the state store's ``config_files`` blob (:func:`~brace_watchdog.state.files_blob`), the one
  record of a release's config.
* :func:`read_files` reads them from disk (:func:`snapshot_files`: a release's, each file read
  once); :func:`write_back` restores them, each atomically
  (:func:`~brace_watchdog.files.install_bytes`: temporary file in the same
  folder, then a rename that replaces a symlink instead of following it; mode and owner kept).

Under compose v2+ the ``env_file:`` targets come from ``compose config --no-env-resolution
--format json`` (:meth:`~brace_watchdog.adapters.compose.ComposeCLI.config_json`): compose's own
reading of every file, merges and extension fields included. Debian's ``docker-compose`` 1.29 has
no such output — its ``config`` merges each env file into ``environment:`` and drops the path,
and ``config --hash`` only says *that* a service changed — and we carry no YAML parser. The
alternatives were worse: borrowing a v2+ plugin (not installed beside 1.29 as a rule, and its
reading of a 1.29 file is not 1.29's) or importing 1.29's Python package (its interpreter and
internals, not ours). So under 1.29 :func:`scan_env_files` reads the compose files themselves,
minimally, and refuses what it cannot read with certainty: it accepts ``env_file:`` as a plain
block-mapping key whose value is one scalar, a one-line flow sequence ``[a, "b"]`` or a block
sequence of ``- item`` lines, each a plain or simply quoted path without interpolation. Any
other use of ``env_file`` as a key (a quoted or flow-mapping key, an alias, a tag, ``${VAR}`` in
the path, an escape, a multi-line flow sequence) is *unclear*: the scan reports it with its line,
the release tracker records a ``release.config_unclear`` warning naming it, and the snapshot
keeps every target it did read. Text inside block scalars (``command: |``) is skipped. A target
of a service that is not deployed is kept too: an extra file in the copy is harmless; a missed
one is not.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brace_watchdog.files import install_bytes
from brace_watchdog.state import ConfigFiles, files_blob, files_from_blob

__all__ = ["ConfigSnapshot", "EnvFileScan", "read_compose_files", "read_files",
           "referenced_files", "scan_env_files", "snapshot_files", "write_back"]


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
                     project_dir: str, *, env_files: Iterable[str] = ()) -> tuple[str, ...]:
    """Absolute paths of the ``-f`` files, ``<project_dir>/.env`` and every ``env_file:``
    target of ``config`` (a compose config as a dict; None when it could not be read) and of
    ``env_files`` (targets :func:`scan_env_files` found), in that order, without duplicates."""
    base = Path(compose_files[0]).parent if compose_files else Path(project_dir)
    files = [str(Path(f)) for f in compose_files]
    files.append(str(Path(project_dir) / ".env"))
    services = (config or {}).get("services")
    targets = [path for service in (services.values() if isinstance(services, dict) else ())
               for path in _env_file_paths(service)]
    files += [os.path.normpath(base / path) for path in [*targets, *env_files]]
    return tuple(dict.fromkeys(files))


@dataclass(frozen=True)
class EnvFileScan:
    """What :func:`scan_env_files` read: the targets, and each mention it could not read
    (``"<name>:<line>: <why>"``)."""

    paths: tuple[str, ...] = ()
    unclear: tuple[str, ...] = ()


_KEY = re.compile(r"^(?P<indent> *)env_file *:(?: +(?P<value>.*))?$")
_BLOCK_SCALAR = re.compile(r"^ *(?:- +)?(?:[^#'\"]*: +)?[|>][-+0-9]* *(?:#.*)?$")
_ITEM = re.compile(r"^(?P<indent> *)- +(?P<value>.*)$")
# env_file used as a key anywhere on a line (a path like /srv/env_files/x is no mention)
_MENTION = re.compile(r"""(?:^|[\s{,\[?'"])['"]?env_file['"]? *:""")
_PLAIN_START = set("&*!|>%@`{[]}'\",#?:-")


def _scalar(text: str) -> str:
    """One path scalar (plain, '…' or "…" without escapes, comment allowed after it);
    ValueError saying why it is unclear."""
    text = text.strip()
    quote = text[:1]
    if quote in ("'", '"'):
        end = text.find(quote, 1)
        value, rest = text[1:end], text[end + 1:].strip()
        if end < 0 or (rest and not rest.startswith("#")) or (quote == '"' and "\\" in value):
            raise ValueError("a quoted path with escapes or text after it")
    else:
        value = re.split(r" +#", text, maxsplit=1)[0].strip()
        if not value or value[0] in _PLAIN_START or ": " in value or value.endswith(":"):
            raise ValueError("not a plain path (alias, tag, mapping or empty)")
    if "$" in value:
        raise ValueError("the path uses interpolation")
    if not value:
        raise ValueError("an empty path")
    return value


def _flow_items(text: str) -> list[str]:
    value = text.split(" #", 1)[0].strip() if "]" in text else text
    if not value.endswith("]") or "[" in value[1:] or "{" in value:
        raise ValueError("a flow sequence that is not one line of paths")
    return [_scalar(item) for item in value[1:-1].split(",") if item.strip()]


class _Scanner:
    """The line-by-line state of :func:`scan_env_files`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.paths: list[str] = []
        self.unclear: list[str] = []
        self.block_indent: int | None = None  # inside a block scalar deeper than this
        self.sequence: tuple[int, int] | None = None  # (indent, line) of a bare `env_file:`
        self.items = 0  # the items read for it

    def note(self, number: int, why: str) -> None:
        self.unclear.append(f"{self.name}:{number}: {why}")

    def line(self, number: int, line: str) -> None:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if self.block_indent is not None:
            if not stripped or indent > self.block_indent:
                return
            self.block_indent = None
        if not stripped or stripped.startswith("#"):
            return
        if self.sequence is not None:
            item = _ITEM.match(line)
            if item is not None and indent >= self.sequence[0]:
                self._add(number, lambda: [_scalar(item["value"])])
                self.items += 1
                return
            self.end_sequence()
        if _MENTION.search(line):
            self._key(number, line)
        elif _BLOCK_SCALAR.match(line):
            self.block_indent = indent

    def _add(self, number: int, read: Callable[[], list[str]]) -> None:
        try:
            self.paths += read()
        except ValueError as exc:
            self.note(number, str(exc))

    def _key(self, number: int, line: str) -> None:
        key = _KEY.match(line)
        if key is None:
            self.note(number, "env_file is not a plain key of a block mapping")
            return
        value = (key["value"] or "").strip()
        if not value or value.startswith("#"):
            self.sequence, self.items = (len(key["indent"]), number), 0
        elif value.startswith("["):
            self._add(number, lambda: _flow_items(value))
        else:
            self._add(number, lambda: [_scalar(value)])

    def end_sequence(self) -> None:
        if self.sequence is not None and not self.items:
            self.note(self.sequence[1], "env_file: without a value or - items")
        self.sequence = None


def scan_env_files(text: str, name: str = "compose file") -> EnvFileScan:
    """The ``env_file:`` targets written in one compose file (for compose 1.29, which cannot
    list them); every mention it cannot read with certainty is reported, never guessed."""
    scanner = _Scanner(name)
    for number, line in enumerate(text.splitlines(), 1):
        scanner.line(number, line.rstrip("\r"))
    scanner.end_sequence()
    return EnvFileScan(tuple(dict.fromkeys(scanner.paths)), tuple(scanner.unclear))


@dataclass(frozen=True)
class ConfigSnapshot:
    """Path → content (None: absent when the snapshot was taken) of every config file."""

    files: ConfigFiles

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(path for path, _ in self.files)

    def content(self, path: str) -> bytes | None:
        """The kept content of ``path`` (None: absent, or not part of the snapshot)."""
        return dict(self.files).get(path)

    def to_blob(self) -> bytes:
        return files_blob(self.files)

    @classmethod
    def from_blob(cls, blob: bytes | None) -> ConfigSnapshot | None:
        return cls(files_from_blob(blob)) if blob else None


def read_files(paths: Iterable[str], known: ConfigSnapshot | None = None) -> ConfigSnapshot:
    """The current contents of ``paths``; a path ``known`` holds is taken from it, not read
    again (blocking: run it in a worker thread)."""
    kept = dict(known.files) if known is not None else {}
    return ConfigSnapshot(tuple(
        (path, kept[path] if path in kept else
         Path(path).read_bytes() if Path(path).is_file() else None) for path in paths))


def read_compose_files(compose_files: Sequence[str], project_dir: str) -> ConfigSnapshot:
    """A release's ``-f`` files and ``.env``, the first part of its snapshot (blocking)."""
    return read_files(referenced_files(None, compose_files, project_dir))


def snapshot_files(read: ConfigSnapshot, config: dict[str, Any] | None,
                   compose_files: Sequence[str], project_dir: str, *,
                   scan: bool) -> tuple[ConfigSnapshot, EnvFileScan]:
    """The whole snapshot: ``read`` (:func:`read_compose_files`) and every ``env_file:`` target,
    from ``config`` (``compose config``) or, with ``scan`` (compose 1.29), from the kept text of
    the compose files; only the targets are read from disk (blocking)."""
    scanned = _scan_kept(read, compose_files) if scan else EnvFileScan()
    paths = referenced_files(config, compose_files, project_dir, env_files=scanned.paths)
    return read_files(paths, known=read), scanned


def _scan_kept(read: ConfigSnapshot, compose_files: Sequence[str]) -> EnvFileScan:
    """:func:`scan_env_files` over every compose file's kept text, merged."""
    paths: list[str] = []
    unclear: list[str] = []
    for name in compose_files:
        data = read.content(str(Path(name)))
        if data is None:
            unclear.append(f"{name}: cannot read: it is gone")
            continue
        scan = scan_env_files(data.decode(errors="replace"), name)
        paths += scan.paths
        unclear += scan.unclear
    return EnvFileScan(tuple(paths), tuple(unclear))


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
