"""Unit tests for the benchmark suite's pure helpers (bench/common.py) and the runner's adapters."""

from __future__ import annotations

import pytest

from bench.__main__ import (
    BENCHMARKS,
    Outcome,
    render,
    restore_docker_figures,
    restore_figures,
    rollback_figures,
)
from bench.common import (
    figure,
    parse_metric,
    parse_proc_stat_cpu,
    parse_status_rss,
    percentile,
    ratio,
    schedule_deviations,
)

STAT = ("4242 (brace (watch) dog) S 1 4242 4242 0 -1 4194560 9000 0 12 0 "
        "250 75 3 4 20 0 5 0 100 56000000 13000 18446744073709551615")


def test_proc_stat_cpu_is_utime_plus_stime_even_with_parens_and_spaces_in_comm() -> None:
    assert parse_proc_stat_cpu(STAT, ticks_per_second=100) == pytest.approx(3.25)


def test_proc_stat_cpu_excludes_children_time() -> None:
    assert parse_proc_stat_cpu(STAT.replace(" 3 4 20", " 900 900 20"), 100) == pytest.approx(3.25)


def test_status_rss_and_hwm_in_bytes() -> None:
    text = "Name:\tpython\nVmHWM:\t   61440 kB\nVmRSS:\t   51200 kB\nThreads:\t4\n"
    assert parse_status_rss(text) == 51200 * 1024
    assert parse_status_rss(text, "VmHWM") == 61440 * 1024


@pytest.mark.parametrize("text", ["Name:\tx\n", "VmRSS:\t12 MB\n"])
def test_status_rss_missing_or_odd_unit_is_an_error(text: str) -> None:
    with pytest.raises(ValueError, match="VmRSS"):
        parse_status_rss(text)


@pytest.mark.parametrize(("q", "expected"), [(0, 1.0), (50, 2.5), (100, 4.0), (99, 3.97)])
def test_percentile_interpolates(q: float, expected: float) -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], q) == pytest.approx(expected)


def test_percentile_of_one_value_and_bad_input() -> None:
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_ratio_with_zero_baseline_is_none() -> None:
    assert ratio(3.0, 1.5) == 2.0
    assert ratio(3.0, 0.0) is None


def test_schedule_deviation_of_a_perfect_schedule_is_zero() -> None:
    stamps = [1000.0 + 0.5 * k for k in range(10)]
    assert schedule_deviations(stamps, 0.5) == pytest.approx([0.0] * 10)


def test_schedule_deviation_shows_one_late_probe_without_shifting_the_others() -> None:
    stamps = [100.0 + k for k in range(9)]
    stamps[4] += 0.2
    deviations = schedule_deviations(stamps, 1.0)
    assert deviations[4] == pytest.approx(0.2)
    assert [d for i, d in enumerate(deviations) if i != 4] == pytest.approx([0.0] * 8)


def test_schedule_deviation_uses_the_median_phase_and_tolerates_a_skipped_slot() -> None:
    stamps = [10.03, 11.03, 13.03, 14.03, 15.03]  # slot 2 missing, constant 30 ms offset
    assert schedule_deviations(stamps, 1.0) == pytest.approx([0.0] * 5)
    assert schedule_deviations([], 1.0) == []
    with pytest.raises(ValueError, match="interval"):
        schedule_deviations([1.0], 0)


def test_figure_target_on_ratio_and_on_value() -> None:
    cpu = figure("cpu", value=1.0, baseline_value=4.0, unit="ms", baseline="bb", target=0.5)
    assert cpu["ratio"] == 0.25 and cpu["passed"]
    rss = figure("rss", value=70.0, baseline_value=20.0, unit="MB", baseline="bb", target=60.0,
                 target_on="value")
    assert rss["ratio"] == 3.5 and not rss["passed"]


def test_figure_informational_explicit_ratio_and_bad_target_kind() -> None:
    info = figure("p50", value=5.0, baseline_value=0.0, unit="ms", baseline="idle", target=None,
                  target_on="value")
    assert info["passed"] and info["ratio"] is None
    explicit = figure("r", value=10.0, baseline_value=5.0, unit="s", baseline="m", target=1.05,
                      ratio_value=1.01)
    assert explicit["ratio"] == 1.01 and explicit["passed"]
    with pytest.raises(ValueError, match="target_on"):
        figure("x", value=1, baseline_value=1, unit="", baseline="", target=1, target_on="both")


def test_parse_metric_with_and_without_labels() -> None:
    text = ("# HELP brace_restore_test_running 1 while a restore test runs.\n"
            "brace_restore_test_running 1.0\n"
            'brace_health_up{target="backend"} 0.0\n')
    assert parse_metric(text, "brace_restore_test_running") == 1.0
    assert parse_metric(text, "brace_health_up", 'target="backend"') == 0.0
    assert parse_metric(text, "brace_health_up") is None


RESTORE = {"rounds": 3, "dump_bytes": 2e8,
           "median_seconds": {"manual": 10.0, "brace_same": 10.2, "brace_fast": 7.0,
                              "docker_manual": 11.0, "docker_same": 12.0, "docker_fast": 9.0},
           "ratios": {"same_settings": 1.02, "jobs2_throwaway": 0.7,
                      "docker_same_settings": 1.09, "docker_jobs2_throwaway": 0.82}}
ROLLBACK = {"target_ratio": 1.3, "compose": "compose-v5",
            "policy": {"grace": 1.0, "min_samples": 6, "interval": 0.25, "timeout": 1.0},
            "scenarios": {
                "5xx": {"median_recovery_seconds": 9.0, "median_floor_seconds": 8.8,
                        "median_ratio": 1.02, "rounds": [{}, {}, {}]},
                "hang": {"median_recovery_seconds": 14.0, "median_floor_seconds": 10.0,
                         "median_ratio": 1.4, "rounds": [{}]}}}


def test_restore_and_rollback_results_become_figures_with_their_own_ratios() -> None:
    restore = restore_figures(RESTORE)
    assert [(f["name"], f["ratio"], f["target"], f["passed"]) for f in restore] == [
        ("restore_same_settings", 1.02, 1.05, True), ("restore_jobs2_throwaway", 0.7, 0.8, True)]
    assert restore[1]["value"] == 7.0 and restore[1]["baseline_value"] == 10.0
    docker = restore_docker_figures(RESTORE)
    assert [(f["name"], f["baseline_value"], f["passed"]) for f in docker] == [
        ("restore_docker_same_settings", 11.0, False),
        ("restore_docker_jobs2_throwaway", 11.0, False)]
    assert restore_docker_figures({**RESTORE, "ratios": {"same_settings": 1.0}}) == []
    fivexx, hang = rollback_figures(ROLLBACK)
    assert fivexx["ratio"] == 1.02 and fivexx["passed"] and fivexx["target"] == 1.3
    assert (hang["name"], hang["ratio"], hang["passed"]) == ("rollback_recovery_hang", 1.4, False)


def test_render_lists_figures_failures_and_machine_facts() -> None:
    by_name = {b.name: b for b in BENCHMARKS}
    good = Outcome(by_name["rollback"], True, 0, 60.0, rollback_figures(ROLLBACK), "2026-01-01")
    crashed = Outcome(by_name["backup_scan"], True, 2, 1.0, [], "", "exit 2, no fresh results")
    text = render([crashed, good], {"cores": "2"}, quick=True, command="python -m bench",
                  started="now", total_seconds=61.0)
    assert "**NOT MEASURED** (exit 2, no fresh results)" in text
    assert "| rollback | rollback_recovery_5xx | 9 s |" in text
    assert "1.02x | ratio <= 1.3x | pass |" in text
    assert "| cores | 2 |" in text
