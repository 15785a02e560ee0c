"""A real ``prometheus-alertmanager`` on loopback for tests: start, post alerts, silence, stop."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from tests.support.net import free_port
from tests.support.procs import terminate
from tests.support.skips import skip_missing

__all__ = ["Alertmanager", "start_alertmanager"]

ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
CONFIG = 'route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n'


def _iso(delta: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Alertmanager:
    url: str
    proc: subprocess.Popen[bytes]

    def post(self, *, ends_in: timedelta = timedelta(hours=1), **labels: str) -> None:
        alert = {"labels": labels, "annotations": {}, "startsAt": _iso(-timedelta(minutes=1)),
                 "endsAt": _iso(ends_in)}
        httpx.post(f"{self.url}/api/v2/alerts", json=[alert], timeout=5).raise_for_status()

    def silence(self, alertname: str) -> None:
        body = {"matchers": [{"name": "alertname", "value": alertname, "isRegex": False,
                              "isEqual": True}],
                "startsAt": _iso(), "endsAt": _iso(timedelta(hours=1)),
                "createdBy": "brace-watchdog tests", "comment": "test silence"}
        httpx.post(f"{self.url}/api/v2/silences", json=body, timeout=5).raise_for_status()

    def stop(self) -> None:
        terminate(self.proc)


def start_alertmanager(tmp_path: Path, port: int | None = None) -> Alertmanager:
    """A real Alertmanager on loopback (``port`` or a free one), ready to answer."""
    if not Path(ALERTMANAGER).exists():
        skip_missing(f"{ALERTMANAGER} not installed (Debian package prometheus-alertmanager)")
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "alertmanager.yml"
    config.write_text(CONFIG, encoding="utf-8")
    port = port or free_port()
    with (tmp_path / "alertmanager.log").open("wb") as log_file:
        proc = subprocess.Popen(
            [ALERTMANAGER, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
             "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=log_file)
    am = Alertmanager(url=f"http://127.0.0.1:{port}", proc=proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if httpx.get(f"{am.url}/-/ready", timeout=1).status_code == 200:
                return am
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    am.stop()
    log = (tmp_path / "alertmanager.log").read_text(errors="replace")
    raise RuntimeError(f"alertmanager did not become ready on port {port}:\n{log}")


