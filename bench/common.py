"""Shared benchmark helpers: loopback target server, process sampling, figures and machine facts.

Owns:

* pure helpers (tested in ``tests/unit/test_bench_common.py``): :func:`parse_proc_stat_cpu`,
  :func:`parse_status_rss`, :func:`percentile`, :func:`ratio`, :func:`schedule_deviations`,
  :func:`figure`, :func:`parse_metric`;
* the loopback HTTP target (``python -m bench.common serve PORT_FILE LOG_FILE``): answers
  ``200 ok`` with HTTP/1.1 keep-alive and logs ``<unix time> <user-agent>`` per request, in its
  own process so its CPU is never counted against the process being measured;
* process sampling from ``/proc/PID/stat`` (utime+stime of every thread) and
  ``/proc/PID/status`` (VmRSS, VmHWM);
* starting the real daemon with a generated config, result JSON writing and machine facts.

Benchmarks talk to loopback only and stop by themselves (every loop is bounded).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
VENV_BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
BLACKBOX = Path("/usr/bin/prometheus-blackbox-exporter")
RESTORE_OFF = "[restore_test]\nenabled = false"


# -- pure helpers --------------------------------------------------------------------------------

def parse_proc_stat_cpu(text: str, ticks_per_second: int = CLK_TCK) -> float:
    """utime + stime in seconds from a ``/proc/PID/stat`` line (the comm field may hold spaces)."""
    fields = text[text.rindex(")") + 2:].split()
    # after the comm: state(0) ppid(1) ... utime is field 14 of the full line -> index 11 here
    return (int(fields[11]) + int(fields[12])) / ticks_per_second


def parse_status_rss(text: str, key: str = "VmRSS") -> int:
    """Bytes of ``key`` (VmRSS, VmHWM, ...) from ``/proc/PID/status``; ValueError when absent."""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == key:
            number, unit = value.split()
            if unit != "kB":
                raise ValueError(f"unexpected unit {unit!r} for {key}")
            return int(number) * 1024
    raise ValueError(f"{key} not in /proc status text")


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ratio(value: float, baseline: float) -> float | None:
    """``value / baseline``; None when the baseline is zero (no meaningful ratio)."""
    return None if baseline == 0 else value / baseline


def schedule_deviations(timestamps: Sequence[float], interval: float) -> list[float]:
    """How far each event lies from a fixed ``interval`` schedule (seconds, signed).

    Each timestamp gets the slot ``round((t - first) / interval)``; the schedule's phase is the
    median of ``t - slot * interval`` (robust against one late event shifting everything).
    """
    if interval <= 0:
        raise ValueError("interval must be > 0")
    if not timestamps:
        return []
    ordered = sorted(timestamps)
    first = ordered[0]
    slots = [round((t - first) / interval) for t in ordered]
    offsets = sorted(t - k * interval for t, k in zip(ordered, slots, strict=True))
    middle = len(offsets) // 2
    phase = offsets[middle] if len(offsets) % 2 else (offsets[middle - 1] + offsets[middle]) / 2
    return [t - k * interval - phase for t, k in zip(ordered, slots, strict=True)]


def figure(name: str, *, value: float, baseline_value: float, unit: str, baseline: str,
           target: float | None, target_on: str = "ratio", note: str = "",
           ratio_value: float | None = None) -> dict[str, Any]:
    """One reported figure: value vs its side-by-side baseline, and its target.

    ``target_on`` says what the target bounds (upper bound): ``"ratio"`` or ``"value"``;
    ``target=None`` marks an informational figure (always passes); ``ratio_value`` replaces
    ``value / baseline_value`` when the benchmark computes its ratio differently (e.g. the
    median of per-round ratios).
    """
    if target_on not in ("ratio", "value"):
        raise ValueError(f"target_on must be 'ratio' or 'value', not {target_on!r}")
    rel = ratio(value, baseline_value) if ratio_value is None else ratio_value
    checked = rel if target_on == "ratio" else value
    return {"name": name, "value": value, "unit": unit, "baseline": baseline,
            "baseline_value": baseline_value, "ratio": rel, "target": target,
            "target_on": target_on,
            "passed": target is None or (checked is not None and checked <= target),
            "note": note}


def parse_metric(text: str, name: str, labels: str = "") -> float | None:
    """The value of sample ``name{labels}`` in a Prometheus text exposition, None when absent."""
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):].split()[0])
    return None


# -- the loopback target server ------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out without a delayed-ACK stall
    log_file: Any = None

    def do_GET(self) -> None:
        if self.log_file is not None:
            self.log_file.write(f"{time.time():.6f} {self.headers.get('user-agent', '-')}\n")
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        return


def serve(port_file: Path, log_path: Path) -> None:
    """Run the target server until SIGTERM; write the bound port to ``port_file``."""
    with log_path.open("a", buffering=1, encoding="utf-8") as log_file:
        _Handler.log_file = log_file
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        httpd.daemon_threads = True
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(httpd.server_address[1]))
        tmp.rename(port_file)
        httpd.serve_forever(poll_interval=0.5)


@dataclass
class TargetServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def url(self, path: str = "/api/health") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def requests(self, user_agent: str = "", since: float = 0.0,
                 until: float = math.inf) -> list[float]:
        """Arrival times of logged requests whose user-agent starts with ``user_agent``."""
        times = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            stamp, _, agent = line.partition(" ")
            moment = float(stamp)
            if agent.startswith(user_agent) and since <= moment <= until:
                times.append(moment)
        return times


@contextmanager
def target_server(workdir: Path) -> Iterator[TargetServer]:
    """The loopback target in its own process; stopped on exit."""
    port_file, log_path = workdir / "target.port", workdir / "target.log"
    process = subprocess.Popen([sys.executable, "-m", "bench.common", "serve", str(port_file),
                                str(log_path)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the loopback target server did not start")
            time.sleep(0.05)
        yield TargetServer(process, int(port_file.read_text()), log_path)
    finally:
        stop_process(process)


# -- processes -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProcSample:
    at: float
    cpu_seconds: float
    rss_bytes: int
    hwm_bytes: int


def sample_process(pid: int) -> ProcSample:
    """CPU seconds (all threads, children not included) and memory of a running process."""
    stat_text = Path(f"/proc/{pid}/stat").read_text()
    status = Path(f"/proc/{pid}/status").read_text()
    return ProcSample(at=time.monotonic(), cpu_seconds=parse_proc_stat_cpu(stat_text),
                      rss_bytes=parse_status_rss(status), hwm_bytes=parse_status_rss(status,
                                                                                      "VmHWM"))


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, wait, then SIGKILL: never leaves the process behind."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def wait_http(url: str, timeout: float = 30.0,
              process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers (any status); RuntimeError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        with suppress(httpx.HTTPError):
            httpx.get(url, timeout=1.0)
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def daemon_config(workdir: Path, *, health_url: str, metrics_port: int, interval: float,
                  extra: str = "") -> Path:
    """A config for the real daemon with everything off that config allows; returns its path."""
    (workdir / "backups").mkdir(exist_ok=True)
    path = workdir / "brace-watchdog.toml"
    path.write_text(f"""
[daemon]
state_path = "state.db"
log_level = "WARNING"
[metrics]
listen = "127.0.0.1:{metrics_port}"
[health]
url = "{health_url}"
interval_seconds = {interval}
timeout_seconds = 5.0
[control]
socket = "control.sock"
[rollback]
enabled = false
{extra or RESTORE_OFF}
""", encoding="utf-8")
    return path


@contextmanager
def running_daemon(config: Path, metrics_port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``brace-watchdog run --config`` as a subprocess; SIGTERM on exit."""
    log = (config.parent / "daemon.log").open("ab")
    process = subprocess.Popen([str(VENV_BIN / "brace-watchdog"), "run", "--config", str(config)],
                               stdout=log, stderr=subprocess.STDOUT, cwd=config.parent)
    try:
        wait_http(f"http://127.0.0.1:{metrics_port}/metrics", process=process)
        yield process
    finally:
        stop_process(process)
        log.close()


# -- results -------------------------------------------------------------------------------------

def write_result(name: str, figures: list[dict[str, Any]], details: dict[str, Any],
                 *, quick: bool) -> Path:
    """Write ``bench/results/<name>.json``; returns the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({
        "benchmark": name, "quick": quick,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "figures": figures, "details": details}, indent=2) + "\n", encoding="utf-8")
    return path


def report(name: str, figures: list[dict[str, Any]], details: dict[str, Any], *,
           quick: bool) -> int:
    """Print ``figures``, write them with ``details`` to ``bench/results/<name>.json``; the
    benchmark's exit code: 0 when every figure met its target."""
    print_figures(figures)
    path = write_result(name, figures, details, quick=quick)
    print(f"results: {path}")
    return 0 if all(item["passed"] for item in figures) else 1


def print_figures(figures: list[dict[str, Any]]) -> None:
    for item in figures:
        rel = "n/a" if item["ratio"] is None else f"{item['ratio']:.3f}x"
        print(f"  {item['name']}: {item['value']:.6g} {item['unit']} vs {item['baseline']} "
              f"{item['baseline_value']:.6g} -> {rel} ({describe_target(item)}) "
              f"{_verdict(item)}", flush=True)


def _verdict(item: dict[str, Any]) -> str:
    if item["target"] is None:
        return "info"
    return "PASS" if item["passed"] else "FAIL"


def describe_target(item: dict[str, Any]) -> str:
    """``ratio <= 0.5x``, ``<= 60 MB`` or ``no target`` for a figure."""
    if item["target"] is None:
        return "no target"
    if item["target_on"] == "ratio":
        return f"ratio <= {item['target']:g}x"
    return f"<= {item['target']:g} {item['unit']}"


def _first_line(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        return "not installed"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _proc_field(path: str, key: str) -> str:
    with suppress(OSError):
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    return "unknown"


PG_BIN = Path(os.environ.get("BRACE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
"""Debian's PostgreSQL tools: not on PATH on a fresh machine, so every benchmark names them."""


def pg_tool(name: str) -> str:
    return str(PG_BIN / name)


def machine_facts() -> dict[str, str]:
    """CPU, cores, memory, kernel and the versions of the tools the benchmarks compare with."""
    pg_bin = PG_BIN
    return {
        "cpu": _proc_field("/proc/cpuinfo", "model name"),
        "cores": str(os.cpu_count()),
        "memory": _proc_field("/proc/meminfo", "MemTotal"),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgresql": _first_line([str(pg_bin / "postgres"), "--version"]),
        "docker": _first_line(["docker", "version", "--format",
                               "client {{.Client.Version}}, server {{.Server.Version}}"]),
        "docker-compose": _first_line(["docker-compose", "version", "--short"]),
        "prometheus-blackbox-exporter": _first_line([str(BLACKBOX), "--version"]),
    }


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        serve(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit("usage: python -m bench.common serve PORT_FILE LOG_FILE")
