"""The shipped systemd unit passes ``systemd-analyze verify`` and keeps its contract (notify +
watchdog, reload by HUP, state/runtime dirs, hardening, no secrets on the command line), and
``make install`` puts it where PREFIX/DESTDIR say."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from brace_watchdog.config import MAX_CONTROL_CLIENTS
from tests.support.skips import skip_missing

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "brace-watchdog.service"
MAKEFILE = UNIT.parents[1] / "Makefile"


def _verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run systemd-analyze verify on a copy whose ExecStart=/ExecReload= point at a binary that
    exists here (the real one is only there after `make install`)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        skip_missing("systemd-analyze is not installed (Debian package: systemd)")
    true = shutil.which("true")
    lines = [line.replace("/usr/local/bin/brace-watchdog", str(true), 1)
             if line.startswith(("ExecStart=", "ExecReload=")) else line
             for line in unit_text.splitlines()]
    copy = tmp_path / UNIT.name
    copy.write_text("\n".join(lines) + "\n")
    return subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True,
                          text=True, timeout=60, check=False)


def _service_section() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = _verify(UNIT.read_text(), tmp_path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("Type=notify", "Type=notify\nWatchdogSec=soon")
    result = _verify(broken, tmp_path)
    assert "Failed to parse sec value" in result.stderr  # so a clean run above means something


@pytest.mark.parametrize(("key", "expected"), [
    ("Type", "notify"),
    ("NotifyAccess", "main"),
    ("WatchdogSec", "30"),
    ("Restart", "on-failure"),
    ("RuntimeDirectory", "brace-watchdog"),
    ("StateDirectory", "brace-watchdog"),
    ("ProtectSystem", "strict"),
    ("NoNewPrivileges", "yes"),
    ("PrivateTmp", "yes"),
    ("EnvironmentFile", "-/etc/brace-watchdog/env"),
    ("ConfigurationDirectoryMode", "0750"),
])
def test_unit_keeps_its_contract(key: str, expected: str) -> None:
    assert _service_section()[key] == [expected]


def test_descriptor_limit_leaves_room_above_the_connection_cap() -> None:
    """LimitNOFILE= is set, and the most control connections [control] max_clients may allow
    still leave the daemon ~1,000 descriptors of its own (state DB, sockets, children's pipes)."""
    (limit,) = _service_section()["LimitNOFILE"]
    assert int(limit) >= MAX_CONTROL_CLIENTS + 1024


def test_reload_checks_the_file_before_signalling() -> None:
    assert _service_section()["ExecReload"] == [
        "/usr/local/bin/brace-watchdog check-config --config "
        "/etc/brace-watchdog/brace-watchdog.toml",
        "/bin/kill -HUP $MAINPID"]


def test_execstart_matches_make_install_and_has_no_secrets() -> None:
    (exec_start,) = _service_section()["ExecStart"]
    assert exec_start == ("/usr/local/bin/brace-watchdog run "
                          "--config /etc/brace-watchdog/brace-watchdog.toml")
    assert "PREFIX      ?= /usr/local" in MAKEFILE.read_text()  # what `make install` links
    assert "password" not in exec_start.lower()


def test_unit_orders_after_docker() -> None:
    text = UNIT.read_text()
    assert "After=network-online.target docker.service" in text
    assert "WantedBy=multi-user.target" in text



@pytest.mark.parametrize(("prefix", "unit_dir"), [("/usr/local", "/etc/systemd/system"),
                                                  ("/usr", "/usr/lib/systemd/system")])
def test_make_install_honours_prefix_and_destdir(prefix: str, unit_dir: str,
                                                  tmp_path: Path) -> None:
    make = shutil.which("make")
    if make is None:
        skip_missing("make is not installed")
    plan = subprocess.run([make, "-n", "-C", str(MAKEFILE.parent), "install",
                           f"DESTDIR={tmp_path}", f"PREFIX={prefix}"],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    assert f"venv --clear {tmp_path}{prefix}/lib/brace-watchdog" in plan
    assert f"> {tmp_path}{unit_dir}/brace-watchdog.service" in plan
    assert f"s|/usr/local/|{prefix}/|g" in plan
    assert f"[ -e {tmp_path}/etc/brace-watchdog/brace-watchdog.toml ] ||" in plan
    # the mode systemd expects of ConfigurationDirectory= (else it warns at every start)
    (mode,) = _service_section()["ConfigurationDirectoryMode"]
    assert f"install -d -m {mode} {tmp_path}/etc/brace-watchdog" in plan
