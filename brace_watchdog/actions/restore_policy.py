"""Pure decisions of the restore test: no I/O, plain values in, plain values out.

What counts as a pg_restore error, which tables a dump's table of contents promises, what a
verification query must return, whether restored data is fresh enough, whether a test is due,
and whether a server can take a dump.

Verification-query semantics (``[restore_test] verify_queries``): each query must run without
error and return at least one row whose first column is truthy. Truthy means anything except
an empty value (NULL), ``f``/``false``, ``0`` (any zero number), ``no`` and ``off``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "FALSY_VALUES",
    "TocTable",
    "alembic_problem",
    "freshness_problem",
    "is_due",
    "missing_from_toc",
    "pg_restore_errors",
    "quote_ident",
    "row_count_sql",
    "rto_exceeded",
    "table_problems",
    "toc_tables",
    "truthy",
    "verify_problem",
    "version_problem",
]

FALSY_VALUES = frozenset({"", "f", "false", "no", "off", "null"})
_TOC_LINE = re.compile(r"^\d+;\s+\d+\s+\d+\s+(?P<rest>.*)$")
_ZERO = re.compile(r"^[-+]?0*(\.0*)?$")


@dataclass(frozen=True, order=True)
class TocTable:
    schema: str
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


def pg_restore_errors(stderr: str) -> list[str]:
    """Every ``pg_restore: error:`` line (with its ``Command was:`` context), in order.

    pg_restore keeps going after errors and exits 1 with "errors ignored on restore: N"; a
    non-empty result here is a failed restore whatever the exit code says.
    """
    errors: list[str] = []
    for line in stderr.splitlines():
        stripped = line.strip()
        if stripped.startswith("pg_restore: error:"):
            errors.append(stripped)
        elif errors and stripped.startswith("Command was:"):
            errors[-1] = f"{errors[-1]} ({stripped[:300]})"
        elif "errors ignored on restore" in stripped and not errors:
            errors.append(stripped)
    return errors


def toc_tables(toc: str) -> set[TocTable]:
    """Tables (``TABLE`` entries, not ``TABLE DATA``) listed by ``pg_restore -l``."""
    tables: set[TocTable] = set()
    for line in toc.splitlines():
        match = _TOC_LINE.match(line.strip())
        if not match:
            continue
        parts = match.group("rest").split()
        if len(parts) >= 3 and parts[0] == "TABLE" and parts[1] != "DATA":
            tables.add(TocTable(parts[1], parts[2]))
    return tables


def table_problems(expected: set[TocTable], restored: set[TocTable]) -> list[str]:
    """Tables the dump promises that the restored database lacks."""
    missing = sorted(expected - restored)
    if not missing:
        return []
    return [f"{len(missing)} table(s) of the dump's table of contents missing after restore: "
            f"{_listing(missing)}"]


def _listing(tables: list[TocTable]) -> str:
    shown = ", ".join(str(t) for t in tables[:20])
    return shown + (f" and {len(tables) - 20} more" if len(tables) > 20 else "")


def truthy(value: str) -> bool:
    text = value.strip().lower()
    return text not in FALSY_VALUES and not _ZERO.match(text)


def verify_problem(query: str, rows: list[list[str]]) -> str | None:
    """None when ``rows`` satisfies the verification semantics (see module docstring)."""
    if not rows:
        return f"verification query returned no rows: {query}"
    if not any(row and truthy(row[0]) for row in rows):
        return f"verification query returned only false/empty/zero values ({rows[0][0]!r}): {query}"
    return None


def alembic_problem(count_rows: list[list[str]]) -> str | None:
    """None when ``select count(*) from alembic_version`` answered exactly 1."""
    value = count_rows[0][0] if count_rows and count_rows[0] else ""
    if value == "1":
        return None
    if value == "0":
        return "alembic_version is empty: the dump holds no Alembic revision"
    return f"alembic_version holds {value or 'no'} rows, expected exactly 1"


def freshness_problem(newest_epoch: float | None, dump_epoch: float | None,
                      max_lag_hours: float) -> str | None:
    """None when the newest restored row is within ``max_lag_hours`` of the dump time."""
    if newest_epoch is None:
        return "freshness query returned no timestamp (empty tables or NULL)"
    if dump_epoch is None:
        return "dump has no creation time to compare the newest data with"
    lag_hours = (dump_epoch - newest_epoch) / 3600.0
    if lag_hours > max_lag_hours:
        return (f"newest data is {lag_hours:.1f} h older than the dump (limit "
                f"{max_lag_hours:g} h): the backup holds stale data")
    return None


_SERVER_SETTING = {"docker": ("image", "an image of"),
                   "local": ("local_bin_dir", "the bin folder of")}


def version_problem(server_major: int, required_major: int, *, backend: str,
                    server_version: str = "", dumped_by: str = "") -> str | None:
    """None when a throwaway server of ``server_major`` can restore a dump that needs
    ``required_major``; else which versions clash and which setting of ``backend`` to change."""
    if server_major >= required_major:
        return None
    key, what = _SERVER_SETTING.get(backend, _SERVER_SETTING["docker"])
    origin = f" ({dumped_by})" if dumped_by else ""
    return (f"the dump needs PostgreSQL {required_major} or newer{origin} but the {backend} "
            f"restore-test server runs PostgreSQL {server_version or server_major}; set "
            f"[restore_test] {key} to {what} PostgreSQL {required_major} or newer")


def row_count_sql(tables: list[TocTable]) -> str:
    """One statement answering ``(schema.table, exact row count)`` for each table."""
    return "\nunion all ".join(
        f"select {_literal(str(table))}, count(*) from "
        f"{quote_ident(table.schema)}.{quote_ident(table.name)}" for table in tables)


def _literal(text: str) -> str:
    if "\x00" in text:
        raise ValueError("literal contains a NUL byte")
    return "'" + text.replace("'", "''") + "'"


def is_due(last_run: float | None, now: float, interval_hours: float) -> bool:
    """A test is due when none ran yet or the last one finished ``interval_hours`` ago."""
    return last_run is None or now - last_run >= interval_hours * 3600.0


def rto_exceeded(restore_seconds: float, rto_seconds: float) -> bool:
    """A restore slower than the recovery-time objective (0 = no objective)."""
    return rto_seconds > 0 and restore_seconds > rto_seconds


def quote_ident(name: str) -> str:
    """Quote an SQL identifier (role names from config) the way PostgreSQL does."""
    if "\x00" in name:
        raise ValueError("identifier contains a NUL byte")
    return '"' + name.replace('"', '""') + '"'


def missing_from_toc(live: set[TocTable], listed: set[TocTable]) -> str | None:
    """Why a dump does not cover the live database: tables it has that the TOC lacks."""
    missing = sorted(live - listed)
    if not missing:
        return None
    return (f"{len(missing)} live table(s) missing from its table of contents "
            f"(pg_restore --list): {_listing(missing)}")
