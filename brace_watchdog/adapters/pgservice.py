"""Connection details for PostgreSQL client tools without a secret in argv or the environment.

``/proc/<pid>/cmdline`` is readable by every local user, so a DSN (which may carry a password)
must never be an argument. :func:`pg_service` writes the DSN's parameters (and ``[database]
password``) to a libpq *service file* — mode 0600, in a private 0700 folder — and yields the two
variables that select it (``PGSERVICEFILE``, ``PGSERVICE``); the folder is removed afterwards.
A client tool run with that environment and no connection arguments connects as the DSN says.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict

from brace_watchdog.errors import ConfigError

__all__ = ["SERVICE", "dsn_secrets", "pg_service", "service_file_text"]

SERVICE = "brace_watchdog"


def dsn_secrets(dsn: str, password: str = "") -> list[str]:
    """Every string to mask in output: the DSN, the password given apart, and the password
    inside the DSN (which an error may quote alone)."""
    try:
        inner = str(conninfo_to_dict(dsn).get("password") or "") if dsn else ""
    except ProgrammingError:
        inner = ""
    return [text for text in (dsn, password, inner) if text]


def service_file_text(dsn: str, password: str = "") -> str:
    """The service file's content for ``dsn`` (a URI or ``key=value`` string)."""
    try:
        params = conninfo_to_dict(dsn)
    except ProgrammingError as exc:
        raise ConfigError([f"database.dsn: not a valid libpq connection string ({exc})"]
                          ) from None
    if password:
        params["password"] = password
    lines = [f"[{SERVICE}]"]
    for key, value in params.items():
        text = str(value)
        if "\n" in text or "\r" in text:
            raise ConfigError([f"database.dsn: parameter {key} contains a line break"])
        lines.append(f"{key}={text}")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def pg_service(dsn: str, password: str = "", *, parent: Path | None = None
               ) -> Iterator[dict[str, str]]:
    """Environment variables that connect libpq tools as ``dsn`` says (see module docstring)."""
    folder = Path(tempfile.mkdtemp(prefix="brace-pgservice-", dir=parent))
    try:
        path = folder / "pg_service.conf"
        with path.open("x", encoding="utf-8") as out:
            path.chmod(0o600)
            out.write(service_file_text(dsn, password))
        yield {"PGSERVICEFILE": str(path), "PGSERVICE": SERVICE}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
