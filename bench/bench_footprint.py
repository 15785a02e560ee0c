"""Benchmark: the daemon's memory and CPU per health probe vs prometheus-blackbox-exporter.

Side by side, for the same duration (default 600 s, ``--quick`` 60 s), against the same loopback
HTTP target (its own process, HTTP/1.1 keep-alive, 200):

* the real daemon (``brace-watchdog run``) probing at a 1 s health interval, with every optional
  component off that config allows (no database, alerts, restore tests or rollback; an empty
  backups folder) — the control server and the backups monitor still run;
* ``prometheus-blackbox-exporter`` with an ``http_2xx`` module, driven once per second through
  ``/probe?target=...&module=http_2xx`` by a loop in this process (the driver's CPU is not counted,
  only the exporter process's).

A probe-path breakdown follows (informational): in a fresh process, once per second for
``--breakdown-seconds``, alternating, one GET through an ``httpx.AsyncClient`` set up as the
health monitor sets it up vs the same request written and read on a kept-alive asyncio stream,
each timed with ``time.thread_time`` — the floor of the HTTP client alone, cold as in the daemon.

CPU per probe = (utime+stime delta of the process, all threads, from ``/proc/PID/stat``) ÷ probes
that reached the target in the measured window (counted from the target's request log by
user-agent); nothing is subtracted. RSS is ``VmRSS`` at the end. Targets: daemon RSS <= 60 MB,
CPU per probe <= 0.5x the exporter's. Writes ``bench/results/footprint.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h11
import httpx

from bench.common import (
    BLACKBOX,
    ProcSample,
    TargetServer,
    daemon_config,
    figure,
    report,
    running_daemon,
    sample_process,
    stop_process,
    target_server,
    wait_http,
)
from brace_watchdog.adapters.http_probe import KeepAliveProber
from brace_watchdog.adapters.postgres import free_port

MB = 1024 * 1024
BLACKBOX_MODULES = """modules:
  http_2xx:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      valid_status_codes: [200]
"""


@contextmanager
def running_blackbox(workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    config = workdir / "blackbox.yml"
    config.write_text(BLACKBOX_MODULES, encoding="utf-8")
    port = free_port()
    log = (workdir / "blackbox.log").open("ab")
    process = subprocess.Popen([str(BLACKBOX), f"--config.file={config}",
                                f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", process=process)
        yield process, port
    finally:
        stop_process(process)
        log.close()


def drive(exporter_port: int, target: str, *, seconds: float, interval: float,
          pids: tuple[int, int]) -> tuple[int, int, list[list[float]]]:
    """Probe through the exporter once per ``interval`` for ``seconds``; sample RSS every 10 s.

    Returns (probes answered with probe_success 1, probes sent, rss trace [t, daemon, exporter]).
    """
    url = f"http://127.0.0.1:{exporter_port}/probe"
    params = {"target": target, "module": "http_2xx"}
    ok = sent = 0
    trace: list[list[float]] = []
    started = time.monotonic()
    next_run, last_sample = started, -10.0
    with httpx.Client(timeout=10.0) as client:
        while (now := time.monotonic()) - started < seconds:
            sent += 1
            body = client.get(url, params=params).text
            ok += "probe_success 1" in body
            if now - last_sample >= 10:
                last_sample = now
                trace.append([round(now - started, 1)] + [
                    round(sample_process(pid).rss_bytes / MB, 2) for pid in pids])
            next_run += interval
            time.sleep(max(0.0, next_run - time.monotonic()))
    return ok, sent, trace


def measure(workdir: Path, server: TargetServer, *, seconds: float, warmup: float
            ) -> dict[str, Any]:
    metrics_port = free_port()
    config = daemon_config(workdir, health_url=server.url(), metrics_port=metrics_port,
                           interval=1.0)
    with running_daemon(config, metrics_port) as daemon, running_blackbox(workdir) as (bb, port):
        drive(port, server.url("/bb"), seconds=warmup, interval=1.0, pids=(daemon.pid, bb.pid))
        t0 = time.time()
        first = (sample_process(daemon.pid), sample_process(bb.pid))
        ok, sent, trace = drive(port, server.url("/bb"), seconds=seconds, interval=1.0,
                                pids=(daemon.pid, bb.pid))
        last = (sample_process(daemon.pid), sample_process(bb.pid))
        t1 = time.time()
    daemon_probes = len(server.requests("brace-watchdog", t0, t1))
    all_probes = len(server.requests("", t0, t1))
    return _summary(first, last, daemon_probes, all_probes - daemon_probes,
                    {"window_seconds": round(t1 - t0, 1), "exporter_probes_sent": sent,
                     "exporter_probes_successful": ok, "rss_trace_mb": trace})


def _summary(first: tuple[ProcSample, ProcSample], last: tuple[ProcSample, ProcSample],
             daemon_probes: int, exporter_probes: int, extra: dict[str, Any]) -> dict[str, Any]:
    cpu = [b.cpu_seconds - a.cpu_seconds for a, b in zip(first, last, strict=True)]
    return {"daemon_probes": daemon_probes, "exporter_probes": exporter_probes,
            "daemon_cpu_seconds": round(cpu[0], 3), "exporter_cpu_seconds": round(cpu[1], 3),
            "daemon_cpu_per_probe": cpu[0] / max(daemon_probes, 1),
            "exporter_cpu_per_probe": cpu[1] / max(exporter_probes, 1),
            "daemon_rss_mb": last[0].rss_bytes / MB, "exporter_rss_mb": last[1].rss_bytes / MB,
            "daemon_hwm_mb": last[0].hwm_bytes / MB, "exporter_hwm_mb": last[1].hwm_bytes / MB,
            **extra}


async def _probe_path(url: str, port: int, rounds: int) -> dict[str, float]:
    """Median thread CPU (ms) of one cold request: an httpx GET, the daemon's prober
    (``KeepAliveProber.get``), the same exchange parsed by h11 (the parser under httpx, tried for
    the prober and measured here as the reason it is not used) and a pre-built request on a raw
    keep-alive stream (no parsing)."""
    client = httpx.AsyncClient(timeout=httpx.Timeout(5.0), follow_redirects=False,
                               trust_env=False, headers={"user-agent": "bench-probe-path"},
                               limits=httpx.Limits(max_connections=4, max_keepalive_connections=4))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = (f"GET /api/health HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
           "user-agent: bench-probe-path\r\n\r\n").encode()
    prober = KeepAliveProber(url, timeout=5.0, user_agent="bench-probe-path")
    parsed = _H11Stream(*await asyncio.open_connection("127.0.0.1", port), f"127.0.0.1:{port}")
    await client.get(url)
    await prober.get()
    await parsed.get()
    cost: dict[str, list[float]] = {"httpx": [], "prober": [], "h11": [], "stream": []}
    for _ in range(rounds):
        await asyncio.sleep(0.5)
        started = time.thread_time()
        await client.get(url)
        cost["httpx"].append(time.thread_time() - started)
        await asyncio.sleep(0.5)
        started = time.thread_time()
        await prober.get()
        cost["prober"].append(time.thread_time() - started)
        await asyncio.sleep(0.5)
        started = time.thread_time()
        await parsed.get()
        cost["h11"].append(time.thread_time() - started)
        await asyncio.sleep(0.5)
        started = time.thread_time()
        writer.write(raw)
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        cost["stream"].append(time.thread_time() - started)
    writer.close()
    parsed.writer.close()
    prober.close()
    await client.aclose()
    return {name: statistics.median(values) * 1000 for name, values in cost.items()}


class _H11Stream:
    """One kept-alive stream whose GETs are framed and parsed by h11."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 host: str) -> None:
        self.reader, self.writer = reader, writer
        self.http = h11.Connection(h11.CLIENT)
        self.request = h11.Request(method="GET", target="/api/health", headers=[
            ("Host", host), ("User-Agent", "bench-probe-path")])

    async def get(self) -> int:
        self.writer.write(self.http.send(self.request) + self.http.send(h11.EndOfMessage()))
        await self.writer.drain()
        status = 0
        while not isinstance(event := self.http.next_event(), h11.EndOfMessage):
            if event is h11.NEED_DATA:
                self.http.receive_data(await self.reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
        self.http.start_next_cycle()
        return status


def probe_path(server: TargetServer, seconds: float) -> dict[str, float]:
    """Run :func:`_probe_path` in a fresh interpreter (its own caches, like the daemon)."""
    done = subprocess.run([sys.executable, "-m", "bench.bench_footprint", "--probe-path-child",
                           server.url(), str(server.port), str(max(5, int(seconds / 2)))],
                          capture_output=True, text=True, check=True, timeout=seconds + 60)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def figures(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        figure("cpu_per_probe", value=result["daemon_cpu_per_probe"] * 1000,
               baseline_value=result["exporter_cpu_per_probe"] * 1000, unit="ms CPU/probe",
               baseline="blackbox-exporter", target=0.5, target_on="ratio",
               note=f"{result['daemon_probes']} daemon / {result['exporter_probes']} exporter "
                    f"probes in {result['window_seconds']} s; utime+stime, nothing subtracted"),
        figure("rss_end", value=result["daemon_rss_mb"], baseline_value=result["exporter_rss_mb"],
               unit="MB", baseline="blackbox-exporter", target=60.0, target_on="value",
               note=f"VmRSS after {result['window_seconds']} s + warm-up; peak (VmHWM) "
                    f"{result['daemon_hwm_mb']:.1f} MB vs {result['exporter_hwm_mb']:.1f} MB"),
        figure("probe_path_httpx_get", value=result["path_httpx_ms"],
               baseline_value=result["path_stream_ms"], unit="ms CPU/request",
               baseline="raw asyncio stream request", target=None,
               note="informational: the HTTP client alone, cold (one request per second), "
                    "median; the exporter's whole probe costs "
                    f"{result['exporter_cpu_per_probe'] * 1000:.2f} ms"),
        figure("probe_path_prober", value=result["path_prober_ms"],
               baseline_value=result["path_stream_ms"], unit="ms CPU/request",
               baseline="raw asyncio stream request", target=None,
               note="informational: the daemon's keep-alive prober alone, cold, median"),
        figure("probe_path_h11", value=result["path_h11_ms"],
               baseline_value=result["path_stream_ms"], unit="ms CPU/request",
               baseline="raw asyncio stream request", target=None,
               note="informational: the same exchange parsed by h11, cold, median — why the "
                    "prober does not use it (it cost the footprint target: 0.85x)"),
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="60 s instead of 600 s")
    parser.add_argument("--seconds", type=float, default=None, help="measured window")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--breakdown-seconds", type=float, default=None)
    parser.add_argument("--probe-path-child", nargs=3, metavar=("URL", "PORT", "ROUNDS"),
                        help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)
    if args.probe_path_child:
        url, port, rounds = args.probe_path_child
        print(json.dumps(asyncio.run(_probe_path(url, int(port), int(rounds)))))
        return 0
    seconds = args.seconds or (60.0 if args.quick else 600.0)
    print(f"footprint: daemon vs blackbox-exporter, {seconds:.0f} s at 1 probe/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="brace-bench-footprint-") as tmp, \
            target_server(Path(tmp)) as server:
        result = measure(Path(tmp), server, seconds=seconds, warmup=args.warmup)
        path_ms = probe_path(server, args.breakdown_seconds or (30.0 if args.quick else 120.0))
    result |= {"path_httpx_ms": path_ms["httpx"], "path_prober_ms": path_ms["prober"],
               "path_h11_ms": path_ms["h11"], "path_stream_ms": path_ms["stream"]}
    result["rss_trace_mb"] = result["rss_trace_mb"][-6:]
    items = figures(result)
    return report("footprint", items, result, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
