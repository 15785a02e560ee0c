"""A small typed reader over a TOML table that collects every problem with its key path.

``config.py`` describes *what* the configuration is; this module owns *how* raw TOML values
are checked: each accessor returns a typed value (or the default) and records an error such
as ``health.interval_seconds: must be > 0`` instead of raising, so a config with five
mistakes is reported once with all five.

An option is declared once, as a dataclass field: its type, its default and, through
:func:`option`, its limits (``above``, ``minimum``, ``maximum``, ``non_empty``) or a custom
``read`` function. :func:`read_section` reads every field of a section from its table by the
field's type (``bool``, ``int``, ``float``, ``str``, a ``Literal`` of strings, ``tuple[str,
...]``, ``Path``, ``Path | None``), so a default is never written twice and cannot drift.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

__all__ = ["CustomRead", "Problems", "ReadContext", "TableReader", "option", "parse_listen_address",
           "read_section", "resolve_path"]

T = TypeVar("T")
N = TypeVar("N", int, float)
_MISSING: Any = object()


class Problems:
    """An ordered list of ``path: message`` strings shared by every reader of one load."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}")


class TableReader:
    """Reads keys of one TOML table; unknown keys are reported by :meth:`finish`."""

    def __init__(self, table: Any, path: str, problems: Problems) -> None:
        self.path = path
        self.problems = problems
        self._seen: set[str] = set()
        if table is None:
            table = {}
        if not isinstance(table, dict):
            problems.add(path, f"must be a table, not {_type_name(table)}")
            table = {}
        self._table: dict[str, Any] = table

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> None:
        self.problems.add(self.key_path(key), message)

    def raw(self, key: str) -> Any:
        self._seen.add(key)
        return self._table.get(key, _MISSING)

    def has(self, key: str) -> bool:
        return key in self._table

    def table(self, key: str) -> TableReader:
        value = self.raw(key) if self.has(key) else {}
        return TableReader(value, self.key_path(key), self.problems)

    def tables(self, key: str) -> list[TableReader]:
        """An array of tables (``[[x]]``) as readers, one per element."""
        value = self.raw(key)
        if value is _MISSING:
            return []
        if not isinstance(value, list):
            self.error(key, f"must be an array of tables, not {_type_name(value)}")
            return []
        return [TableReader(v, f"{self.key_path(key)}[{i}]", self.problems)
                for i, v in enumerate(value)]

    def string(self, key: str, default: str, *, choices: Iterable[str] | None = None) -> str:
        value = self.raw(key)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            self.error(key, f"must be a string, not {_type_name(value)}")
            return default
        if choices is not None:
            allowed = list(choices)
            if value not in allowed:
                self.error(key, f"must be one of {', '.join(map(repr, allowed))}, not {value!r}")
                return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self.error(key, f"must be true or false, not {_type_name(value)}")
            return default
        return value

    def integer(self, key: str, default: int, *, minimum: int | None = None,
                maximum: int | None = None) -> int:
        value = self.raw(key)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, f"must be an integer, not {_type_name(value)}")
            return default
        return self._bounded(key, value, default, minimum, maximum)

    def number(self, key: str, default: float, *, above: float | None = None,
               minimum: float | None = None, maximum: float | None = None) -> float:
        """A float; ``above`` is an exclusive lower bound (``must be > 0``)."""
        value = self.raw(key)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(key, f"must be a number, not {_type_name(value)}")
            return default
        number = float(value)
        if not math.isfinite(number):
            self.error(key, f"must be a finite number, not {value}")
            return default
        if above is not None and not number > above:
            self.error(key, f"must be > {_fmt(above)}")
            return default
        return self._bounded(key, number, default, minimum, maximum)

    def strings(self, key: str, default: list[str], *, non_empty: bool = False) -> tuple[str, ...]:
        value = self.raw(key)
        if value is _MISSING:
            return tuple(default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(key, "must be a list of strings")
            return tuple(default)
        if non_empty and not value:
            self.error(key, "must not be empty")
            return tuple(default)
        return tuple(value)

    def finish(self) -> None:
        """Report keys that no accessor asked for: unknown keys are errors, not typos to ignore."""
        for key in sorted(set(self._table) - self._seen):
            self.error(key, "unknown key")

    def _bounded(self, key: str, value: N, default: N, minimum: float | None,
                 maximum: float | None) -> N:
        if minimum is not None and value < minimum:
            self.error(key, f"must be >= {_fmt(minimum)}")
            return default
        if maximum is not None and value > maximum:
            self.error(key, f"must be <= {_fmt(maximum)}")
            return default
        return value


@dataclass(frozen=True)
class ReadContext:
    """What a custom reader may need beyond its table: the config file's folder and the env."""

    base: Path
    env: Mapping[str, str]
    values: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The section's fields read so far (a custom reader may derive its default from one)."""


CustomRead = Callable[[TableReader, str, Any, ReadContext], Any]


def option(default: Any, *, above: float | None = None, minimum: float | None = None,
           maximum: float | None = None, non_empty: bool = False,
           read: CustomRead | None = None) -> Any:
    """A config field: its default and how it is checked (see the module docstring)."""
    metadata = {"above": above, "minimum": minimum, "maximum": maximum,
                "non_empty": non_empty, "read": read}
    if isinstance(default, list | dict | set):
        raise TypeError("config defaults are immutable: use a tuple")
    return dataclasses.field(default=default, metadata=metadata)


def read_section(cls: type[T], reader: TableReader, context: ReadContext,
                 **given: Any) -> T:
    """Read every field of dataclass ``cls`` from ``reader`` (except those ``given``), report
    unknown keys, and build it."""
    hints = typing.get_type_hints(cls)
    values = dict(given)
    context = dataclasses.replace(context, values=values)
    for item in dataclasses.fields(cls):  # type: ignore[arg-type]
        if item.name not in values:
            values[item.name] = _read_field(reader, item, hints[item.name], context)
    reader.finish()
    return cls(**values)


_BY_TYPE: dict[Any, Callable[[TableReader, str, Any, Mapping[str, Any]], Any]] = {
    bool: lambda r, key, default, _: r.boolean(key, default),
    int: lambda r, key, default, m: r.integer(key, default, minimum=m.get("minimum"),
                                              maximum=m.get("maximum")),
    float: lambda r, key, default, m: r.number(key, default, above=m.get("above"),
                                               minimum=m.get("minimum"), maximum=m.get("maximum")),
    str: lambda r, key, default, _: r.string(key, default),
    tuple[str, ...]: lambda r, key, default, m: r.strings(key, list(default),
                                                          non_empty=bool(m.get("non_empty"))),
}


def _read_field(reader: TableReader, item: dataclasses.Field[Any], kind: Any,
                context: ReadContext) -> Any:
    meta, name = item.metadata, item.name
    default: Any = item.default
    custom: CustomRead | None = meta.get("read")
    if custom is not None:
        return custom(reader, name, default, context)
    if kind in _BY_TYPE:
        return _BY_TYPE[kind](reader, name, default, meta)
    if get_origin(kind) is Literal:
        return reader.string(name, default, choices=get_args(kind))
    if kind is Path:
        return _path(reader, name, default, context.base)
    if kind == Path | None:
        text = reader.string(name, "")
        return resolve_path(text, context.base) if text else None
    raise TypeError(f"{reader.key_path(name)}: no reader for {kind!r}; give option(read=...)")


def _path(reader: TableReader, key: str, default: Path, base: Path) -> Path:
    text = reader.string(key, str(default))
    if not text:
        reader.error(key, "must not be empty")
        text = str(default)
    return resolve_path(text, base)


def resolve_path(text: str, base: Path) -> Path:
    """``text`` as a path; a relative one resolves against ``base`` (the config's folder)."""
    candidate = Path(text)
    return candidate if candidate.is_absolute() else Path(os.path.normpath(base / candidate))


def parse_listen_address(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); raises ValueError with the reason."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"must be host:port, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port must be a number, not {port_text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1..65535, not {port}")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"host must be an IP address or localhost, not {host!r}") from None
    return host, port


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _type_name(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)
