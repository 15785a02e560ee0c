"""The benchmark suite runner: ``python -m bench [--quick] [--only NAME ...] [--render]``
(``make bench``).

Runs every benchmark as its own subprocess, one after another (never in parallel: they measure
CPU and latency), collects each one's JSON from ``bench/results/`` and writes
``bench/RESULTS.md``: each figure with its side-by-side baseline, the ratio, the target and
pass/fail, plus the machine facts (CPU, cores, memory, kernel, Python, PostgreSQL, docker,
prometheus-blackbox-exporter) and the date. A benchmark that crashes or writes no fresh JSON
is reported as such (its old figures are never passed off as new); with ``--only``, the
benchmarks not run are shown from their last results, marked with their date.
Exit status: 0 when every benchmark run produced results (targets missed are results, shown
in RESULTS.md), 1 when one crashed. ``restore`` runs bench_restore.py's local trio with its
own defaults; ``restore_docker`` its docker trio (``--docker-image brace-test/postgres:15``,
built by the docker tests; reported as not measured when absent).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, ROOT, describe_target, figure, machine_facts

RESULTS_MD = ROOT / "bench" / "RESULTS.md"
Adapter = Callable[[dict[str, Any]], list[dict[str, Any]]]


def native(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Benchmarks written with bench.common already store their figures."""
    return list(data["figures"])


def _restore_figures(data: dict[str, Any], *, docker: bool) -> list[dict[str, Any]]:
    """bench_restore.py: brace-watchdog's restore test vs the runbook's manual restore."""
    medians, ratios = data["median_seconds"], data["ratios"]
    items = []
    for key, rel in ratios.items():
        if key.startswith("docker_") != docker:
            continue
        variant = ("docker_" if docker else "brace_") + (
            "same" if key.endswith("same_settings") else "fast")
        baseline = "docker_manual" if docker else "manual"
        items.append(figure(
            f"restore_{key}", value=medians[variant], baseline_value=medians[baseline],
            unit="s", baseline=f"runbook manual restore ({baseline})",
            target=1.05 if key.endswith("same_settings") else 0.8, ratio_value=rel,
            note=f"ratio = median of {data['rounds']} per-round ratios; dump "
                 f"{data['dump_bytes'] / 1e6:.0f} MB"))
    return items


def restore_figures(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The local-backend trio of bench_restore.py."""
    return _restore_figures(data, docker=False)


def restore_docker_figures(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The docker-backend trio of bench_restore.py (``--docker-image``)."""
    return _restore_figures(data, docker=True)


def rollback_figures(data: dict[str, Any]) -> list[dict[str, Any]]:
    """bench_rollback.py: first failing probe to verified rollback vs the policy's floor, per
    bad-release scenario (5xx, hang, crash)."""
    policy = data["policy"]
    return [figure(f"rollback_recovery_{name}", value=result["median_recovery_seconds"],
                   baseline_value=result["median_floor_seconds"], unit="s",
                   baseline="floor (grace + (min_samples-1) probes + compose recreate)",
                   target=data["target_ratio"], ratio_value=result["median_ratio"],
                   note=f"median of {len(result['rounds'])} rounds, {data['compose']}; grace "
                        f"{policy['grace']} s, min_samples {policy['min_samples']}, probes every "
                        f"{policy['interval']} s, timeout {policy['timeout']} s")
            for name, result in data["scenarios"].items()]


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: str
    full_args: tuple[str, ...]
    quick_args: tuple[str, ...]
    adapter: Adapter
    timeout: float

    @property
    def result_path(self) -> Path:
        return RESULTS_DIR / f"{self.name}.json"


QUICK_RESTORE_DUMP = str(Path(tempfile.gettempdir()) / "brace-bench-restore-quick"
                         / "brace_20260203_045206.dump")
QUICK_RESTORE = ("--rows", "100000", "--rounds", "1", "--dump", QUICK_RESTORE_DUMP)
DOCKER_RESTORE = ("--docker-image", "brace-test/postgres:15",
                  "--results", str(RESULTS_DIR / "restore_docker.json"))
BENCHMARKS = (
    Benchmark("backup_scan", "bench.bench_backup_scan", (), ("--quick",), native, 900),
    Benchmark("startup", "bench.bench_startup", (), ("--quick",), native, 600),
    Benchmark("scrape", "bench.bench_scrape", (), ("--quick",), native, 1200),
    Benchmark("footprint", "bench.bench_footprint", (), ("--quick",), native, 1500),
    Benchmark("restore", "bench.bench_restore", (), QUICK_RESTORE, restore_figures, 2400),
    Benchmark("restore_docker", "bench.bench_restore", ("--rounds", "3", *DOCKER_RESTORE),
              (*QUICK_RESTORE, *DOCKER_RESTORE), restore_docker_figures, 2400),
    Benchmark("rollback", "bench.bench_rollback", ("--rounds", "3"), ("--rounds", "1"),
              rollback_figures, 1200),
    Benchmark("failover", "bench.bench_failover", (), ("--quick",), native, 900),
    Benchmark("swarm_rollback", "bench.bench_swarm_rollback", (), ("--quick",), native, 1200),
)


@dataclass
class Outcome:
    benchmark: Benchmark
    ran: bool
    exit_code: int | None
    seconds: float
    figures: list[dict[str, Any]]
    measured_at: str
    problem: str = ""


def run_one(bench: Benchmark, quick: bool) -> Outcome:
    argv = [sys.executable, "-m", bench.module, *(bench.quick_args if quick else bench.full_args)]
    print(f"\n== {bench.name}: {' '.join(argv[1:])}", flush=True)
    started, wall = time.time(), time.monotonic()
    try:
        code: int | None = subprocess.run(argv, cwd=ROOT, timeout=bench.timeout,
                                          check=False).returncode
    except subprocess.TimeoutExpired:
        code = None
    seconds = time.monotonic() - wall
    path = bench.result_path
    if not path.exists() or path.stat().st_mtime < started:
        problem = ("timed out" if code is None else f"exit {code}") + ", no fresh results"
        return Outcome(bench, True, code, seconds, [], "", problem)
    return _collect(bench, True, code, seconds)


def _collect(bench: Benchmark, ran: bool, code: int | None, seconds: float) -> Outcome:
    try:
        data = json.loads(bench.result_path.read_text(encoding="utf-8"))
        items = bench.adapter(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Outcome(bench, ran, code, seconds, [], "", f"unreadable results: {exc}")
    stamp = str(data.get("measured_at") or data.get("at") or "")
    problem = "" if items else "the results hold no figures (for restore_docker: is the image " \
                               "brace-test/postgres:15 built? the docker tests build it)"
    return Outcome(bench, ran, code, seconds, items, stamp, problem)


def previous(bench: Benchmark) -> Outcome:
    if not bench.result_path.exists():
        return Outcome(bench, False, None, 0.0, [], "", "not run, no earlier results")
    return _collect(bench, False, None, 0.0)


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    text = f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return f"{text} {unit}".strip()


def render(outcomes: list[Outcome], facts: dict[str, str], *, quick: bool, command: str,
           started: str, total_seconds: float) -> str:
    lines = ["# brace-watchdog benchmark results", "",
             f"Generated by `{command}` on {started} ({'quick' if quick else 'full'} run, "
             f"{total_seconds / 60:.1f} min). Every figure is measured side by side with its "
             "baseline in the same run; the ratio is value ÷ baseline (lower is better).", "",
             "## Results", "",
             "| Benchmark | Figure | Value | Baseline | Baseline value | Ratio | Target | Result |",
             "|---|---|---|---|---|---|---|---|"]
    for outcome in outcomes:
        if not outcome.figures:
            lines.append(f"| {outcome.benchmark.name} | — | — | — | — | — | — | "
                         f"**NOT MEASURED** ({outcome.problem}) |")
        for item in outcome.figures:
            verdict = "pass" if item["passed"] else "**FAIL**"
            if item["target"] is None:
                verdict = "info"
            value = _number(item["value"], item["unit"])
            base = _number(item["baseline_value"], item["unit"])
            rel = "n/a" if item["ratio"] is None else f"{_number(item['ratio'])}x"
            lines.append(f"| {outcome.benchmark.name} | {item['name']} | {value} | "
                         f"{item['baseline']} | {base} | {rel} | {describe_target(item)} | "
                         f"{verdict} |")
    lines += ["", "## Notes per figure", ""]
    for outcome in outcomes:
        when = outcome.measured_at or "n/a"
        origin = (f"this run, {outcome.seconds:.0f} s, exit {outcome.exit_code}" if outcome.ran
                  else "an earlier run, not re-run now")
        lines.append(f"- **{outcome.benchmark.name}** ({origin}; measured {when}): "
                     f"{_first_doc_line(outcome.benchmark.module)}")
        lines += [f"  - {item['name']}: {item['note']}" for item in outcome.figures if item["note"]]
    lines += ["", "## Machine", "", "| Fact | Value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in facts.items()]
    lines.append("")
    return "\n".join(lines)


def _first_doc_line(module: str) -> str:
    path = ROOT / (module.replace(".", "/") + ".py")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return ""
    start = text.find('"""')
    return text[start + 3:].splitlines()[0].strip() if start >= 0 else ""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0]
                                     if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short runs of every benchmark")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        choices=[b.name for b in BENCHMARKS], help="run only NAME (repeatable)")
    parser.add_argument("--render", action="store_true",
                        help="run nothing: rewrite RESULTS.md from the results on disk")
    args = parser.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    wall = time.monotonic()
    facts = machine_facts()
    outcomes = [run_one(b, args.quick)
                if not args.render and (not args.only or b.name in args.only) else previous(b)
                for b in BENCHMARKS]
    command = "python -m bench" + (" --quick" if args.quick else "") + (
        " --render" if args.render else "") + "".join(
        f" --only {name}" for name in args.only)
    RESULTS_MD.write_text(render(outcomes, facts, quick=args.quick, command=command,
                                 started=started, total_seconds=time.monotonic() - wall),
                          encoding="utf-8")
    crashed = [o.benchmark.name for o in outcomes if o.ran and "no fresh results" in o.problem]
    failed = [f"{o.benchmark.name}/{i['name']}" for o in outcomes for i in o.figures
              if not i["passed"]]
    print(f"\nwrote {RESULTS_MD.relative_to(ROOT)}; targets missed: {', '.join(failed) or 'none'}"
          f"; crashed: {', '.join(crashed) or 'none'}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
