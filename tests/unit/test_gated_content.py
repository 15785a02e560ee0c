"""Pure pieces of content binding and secret handling: what a token binds for pg_hba/daemon.json
and checks at approval, the approved dump identity, the safety dump's table check, and the libpq
service file that keeps connection details out of argv."""

from __future__ import annotations

from pathlib import Path

import pytest

from brace_watchdog.actions.config_rollback import FilePair, check_binding
from brace_watchdog.actions.db_rollback import approved_identity
from brace_watchdog.actions.restore_policy import TocTable, missing_from_toc
from brace_watchdog.adapters.pgservice import dsn_secrets, service_file_text
from brace_watchdog.errors import ConfigError, RefusedError
from brace_watchdog.files import FileIdentity, identify_bytes

CUR, BAK = Path("/etc/pg_hba.conf"), Path("/etc/pg_hba.conf.bak")
PAIR = FilePair(b"host all all 0.0.0.0/0 reject\n", b"host all all 127.0.0.1/32 scram\n")


def test_binding_holds_both_hashes() -> None:
    assert PAIR.binding() == {"current_sha256": identify_bytes(PAIR.current).sha256,
                              "backup_sha256": identify_bytes(PAIR.backup).sha256}
    check_binding(PAIR, PAIR.binding(), current=CUR, backup=BAK)  # unchanged: no error


@pytest.mark.parametrize(("found", "named"), [
    (FilePair(PAIR.current + b"#\n", PAIR.backup), CUR),
    (FilePair(PAIR.current, PAIR.backup + b"#\n"), BAK),
    (FilePair(PAIR.current.replace(b"\n", b"\r\n"), PAIR.backup), CUR),
])
def test_any_byte_changed_is_refused_naming_the_file(found: FilePair, named: Path) -> None:
    with pytest.raises(RefusedError, match="changed after the plan was made") as refused:
        check_binding(found, PAIR.binding(), current=CUR, backup=BAK)
    assert str(named) in refused.value.message and "nothing was changed" in refused.value.message


@pytest.mark.parametrize("approved", [{}, {"current_sha256": "x"}, {"target": "pg_hba"},
                                      {"current_sha256": 1, "backup_sha256": 2}])
def test_a_token_without_content_binding_is_refused(approved: dict[str, object]) -> None:
    with pytest.raises(RefusedError, match="plan again"):
        check_binding(PAIR, approved, current=CUR, backup=BAK)


def test_the_diff_is_of_the_bound_bytes() -> None:
    assert "-host all all 0.0.0.0/0 reject" in PAIR.diff("cur", "bak")
    assert "+host all all 127.0.0.1/32 scram" in PAIR.diff("cur", "bak")


def test_approved_dump_identity() -> None:
    args = {"dump": "a.dump", "sha256": "ab" * 32, "size": 10, "inode": 7}
    assert approved_identity(args) == FileIdentity("ab" * 32, 10, 7)
    for missing in ("sha256", "size", "inode"):
        with pytest.raises(RefusedError, match="does not bind the dump's content"):
            approved_identity({k: v for k, v in args.items() if k != missing})
    with pytest.raises(RefusedError):
        approved_identity({**args, "size": "ten"})


def test_missing_from_toc() -> None:
    live = {TocTable("public", "users"), TocTable("public", "orders")}
    assert missing_from_toc(live, live | {TocTable("x", "extra")}) is None
    problem = missing_from_toc(live, {TocTable("public", "users")})
    assert problem is not None and "1 live table(s)" in problem and "public.orders" in problem
    many = {TocTable("s", f"t{i:02}") for i in range(25)}
    assert "and 5 more" in (missing_from_toc(many, set()) or "")


def test_service_file_carries_the_dsn_and_the_separate_password() -> None:
    text = service_file_text("postgresql://app:s3cret@db.example:6432/brace?sslmode=require",
                             "other")
    lines = text.splitlines()
    assert lines[0] == "[brace_watchdog]"
    assert {"host=db.example", "port=6432", "dbname=brace", "user=app", "sslmode=require",
            "password=other"} <= set(lines)
    assert "password=s3cret" not in lines
    assert "host=h" in service_file_text("host=h dbname=d").splitlines()


def test_service_file_refuses_what_it_cannot_hold() -> None:
    with pytest.raises(ConfigError, match=r"database\.dsn"):
        service_file_text("postgresql://[broken")
    with pytest.raises(ConfigError, match="line break"):
        service_file_text("host=h application_name='a\nb'")


def test_dsn_secrets_include_the_password_inside_the_dsn() -> None:
    dsn = "postgresql://app:s3cret@h/db"
    assert dsn_secrets(dsn) == [dsn, "s3cret"]
    assert dsn_secrets(dsn, "pw") == [dsn, "pw", "s3cret"]
    assert dsn_secrets("") == [] and dsn_secrets("host=h") == ["host=h"]
    assert dsn_secrets("postgresql://[broken", "pw") == ["postgresql://[broken", "pw"]
