"""Running ``brace-watchdog check-config`` on a config text, for the tests of its refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from brace_watchdog import cli


def check_config_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str) -> str:
    """Write ``toml`` as a config, run check-config on it, require its refusal (exit 2) and
    return what it printed on stderr."""
    path = tmp_path / "brace-watchdog.toml"
    path.write_text(toml, encoding="utf-8")
    assert cli.main(["check-config", "--config", str(path)]) == 2
    return capsys.readouterr().err
