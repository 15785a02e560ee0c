"""Exhaustive tests of the pure health policy: probe classification and the sustained window."""

from __future__ import annotations

import itertools

import pytest

from brace_watchdog.config import RollbackConfig
from brace_watchdog.monitors.policy import assess_window, classify_status, is_failing, is_healthy
from brace_watchdog.observations import PROBE_RESULTS, ProbeSample


@pytest.mark.parametrize(
    ("status", "ok", "expected"),
    [
        (200, ("2xx", "3xx"), "ok"),
        (204, ("2xx",), "ok"),
        (301, ("2xx", "3xx"), "ok"),
        (301, ("2xx",), "http_4xx"),
        (302, ("2xx", "302"), "ok"),
        (404, ("2xx",), "http_4xx"),
        (429, ("2xx",), "http_4xx"),
        (500, ("2xx",), "http_5xx"),
        (503, ("2xx", "3xx"), "http_5xx"),
        (599, ("2xx",), "http_5xx"),
        (503, ("503",), "ok"),
        (101, ("2xx",), "http_4xx"),
    ],
)
def test_classify_status(status: int, ok: tuple[str, ...], expected: str) -> None:
    assert classify_status(status, ok) == expected


def samples(results: str, *, start: float = 0.0, step: float = 1.0, target: str = "backend"
            ) -> list[ProbeSample]:
    """'ooxx' → ok, ok, 5xx, 5xx at start, start+step, ..."""
    kinds = {"o": "ok", "x": "http_5xx", "t": "timeout", "c": "connection_error", "4": "http_4xx"}
    return [ProbeSample(ts=start + i * step, target=target, result=kinds[ch])  # type: ignore[arg-type]
            for i, ch in enumerate(results)]


def assess(s: list[ProbeSample], now: float, **overrides: object):  # type: ignore[no-untyped-def]
    params: dict[str, object] = {"window_seconds": 10.0, "min_samples": 4, "error_ratio": 0.5,
                                 "failure_results": ("http_5xx",)}
    params.update(overrides)
    return assess_window(s, now=now, **params)  # type: ignore[arg-type]


def test_all_failing_is_sustained() -> None:
    verdict = assess(samples("xxxxx"), now=4)
    assert verdict.sustained
    assert (verdict.total, verdict.failing, verdict.first_failure_ts) == (5, 5, 0.0)
    assert "5/5 failing" in verdict.reason


def test_too_few_samples_is_not_sustained() -> None:
    verdict = assess(samples("xxx"), now=2)
    assert not verdict.sustained
    assert "only 3 samples" in verdict.reason


def test_ratio_below_threshold_is_not_sustained() -> None:
    verdict = assess(samples("oxoooox"), now=6)
    assert not verdict.sustained
    assert "below" in verdict.reason


def test_exact_threshold_counts_as_sustained() -> None:
    assert assess(samples("oxox"), now=3).sustained


def test_recovering_window_is_not_sustained() -> None:
    verdict = assess(samples("xxxxo"), now=4)
    assert not verdict.sustained
    assert "recovering" in verdict.reason


def test_samples_outside_window_are_ignored() -> None:
    old_failures = samples("xxxxxx", start=0)
    fresh_ok = samples("oooo", start=20)
    verdict = assess(old_failures + fresh_ok, now=23)
    assert verdict.total == 4
    assert verdict.failing == 0


def test_future_samples_are_ignored() -> None:
    verdict = assess(samples("xxxxxx"), now=2)
    assert verdict.total == 3


def test_ignore_before_drops_deploy_grace_samples() -> None:
    s = samples("xxxxxxxx")
    verdict = assess(s, now=7, ignore_before=5)
    assert verdict.total == 3
    assert not verdict.sustained


def test_ignore_before_older_than_window_changes_nothing() -> None:
    s = samples("xxxxxxxx")
    assert assess(s, now=7, ignore_before=-100).total == 8


def test_failure_results_are_configurable() -> None:
    timeouts = samples("tttt")
    assert not assess(timeouts, now=3).sustained
    assert assess(timeouts, now=3, failure_results=("http_5xx", "timeout")).sustained


def test_default_failure_results_are_what_a_bad_deploy_looks_like() -> None:
    """A hanging release (timeouts) and a crash-looping one (refused) trigger like a 5xx."""
    default = RollbackConfig().failure_results
    for pattern in ("tttttt", "cccccc", "xtcxtc"):
        verdict = assess(samples(pattern), now=5, failure_results=default)
        assert verdict.sustained, pattern
    assert not assess(samples("444444"), now=5, failure_results=default).sustained


@pytest.mark.parametrize("newest", ["t", "c", "x", "4"])
def test_only_an_ok_newest_sample_reads_as_recovering(newest: str) -> None:
    """A newest timeout is no recovery, even where timeouts do not count as failures."""
    verdict = assess(samples("xxxx" + newest), now=4, failure_results=("http_5xx",))
    assert verdict.sustained
    assert "recovering" not in verdict.reason


def test_newest_ok_is_recovering_whatever_counts() -> None:
    verdict = assess(samples("ttttto"), now=5, failure_results=("timeout",))
    assert not verdict.sustained and "newest probe is ok: recovering" in verdict.reason


def test_the_one_rule_healthy_failing_or_neither() -> None:
    kinds = {"ok": (True, False), "http_5xx": (False, True), "timeout": (False, True),
             "connection_error": (False, True), "http_4xx": (False, False),
             "container_down": (False, True), "container_unhealthy": (False, True),
             "container_starting": (False, False)}
    default = RollbackConfig().failure_results
    for result, (healthy, failing) in kinds.items():
        sample = ProbeSample(ts=0, target="backend", result=result)  # type: ignore[arg-type]
        assert (is_healthy(sample), is_failing(sample, default)) == (healthy, failing), result


def test_every_mixed_five_sample_pattern_matches_the_definition() -> None:
    """Brute force over every result kind: sustained = enough samples, a failing share of at
    least the ratio, and a newest sample that is not ok."""
    for failure_results in (("http_5xx",), RollbackConfig().failure_results):
        for pattern in itertools.product("oxtc4", repeat=5):
            verdict = assess(samples("".join(pattern)), now=4, min_samples=4, error_ratio=0.4,
                             failure_results=failure_results)
            failing = sum(1 for s in samples("".join(pattern)) if s.result in failure_results)
            expected = failing / 5 >= 0.4 and pattern[-1] != "o"
            assert verdict.sustained is expected, (pattern, failure_results)


def test_flapping_below_threshold_never_sustained() -> None:
    flapping = samples("ox" * 10)
    for now in range(20):
        verdict = assess(flapping, now=now, error_ratio=0.6)
        assert not verdict.sustained


def test_merged_targets_use_the_newest_sample() -> None:
    backend = samples("xxxx", start=0.0, target="backend")
    frontend = samples("oooo", start=0.5, target="frontend")
    merged = sorted(backend + frontend, key=lambda s: s.ts)
    verdict = assess(merged, now=4, error_ratio=0.5)
    assert verdict.total == 8
    assert not verdict.sustained  # newest (frontend) is ok


def test_empty_window() -> None:
    verdict = assess([], now=100)
    assert (verdict.sustained, verdict.total, verdict.ratio, verdict.first_failure_ts) == (
        False, 0, 0.0, None)


def test_evidence_is_json_friendly() -> None:
    evidence = assess(samples("xxxx"), now=3).evidence()
    assert evidence["sustained"] is True
    assert evidence["samples"][0] == [0.0, "backend", "http_5xx", 0]


@pytest.mark.parametrize("pattern", list(itertools.product("ox", repeat=6)))
def test_every_six_sample_pattern_matches_the_definition(pattern: tuple[str, ...]) -> None:
    """Brute force: the verdict equals the plain-English rule for every 6-sample window."""
    s = samples("".join(pattern))
    verdict = assess(s, now=5, min_samples=4, error_ratio=0.5)
    failing = pattern.count("x")
    expected = failing / 6 >= 0.5 and pattern[-1] == "x"
    assert verdict.sustained is expected


def test_probe_result_names_are_the_documented_ones() -> None:
    assert PROBE_RESULTS == ("ok", "http_4xx", "http_5xx", "timeout", "connection_error")
