"""Pure decisions over observations: probe classification and "is this failure sustained?".

One rule reads every sample, for triggering (:func:`assess_window`), promotion to known-good
(:mod:`~brace_watchdog.actions.promotion_policy`) and rollback verification alike: a sample is
*healthy* only when its result is ``ok``; it is *failing* when its result is one of
``[rollback] failure_results``; anything else (by default a 4xx) is neither — it does not count
towards a rollback, and it is no evidence of health either.

No I/O and no clocks: callers pass ``now`` and the samples. Tested exhaustively in
``tests/unit/test_policy.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from brace_watchdog.observations import ProbeResult, ProbeSample

__all__ = ["WindowVerdict", "assess_window", "classify_status", "is_failing", "is_healthy"]


def classify_status(status: int, ok: Sequence[str]) -> ProbeResult:
    """Classify an HTTP status: ``ok`` when it matches an ok pattern ("2xx", "301").

    Otherwise 5xx is ``http_5xx``; every other non-ok answer (4xx, an unexpected 1xx/3xx) is
    ``http_4xx``: the server answered, but not as configured.
    """
    text = str(status)
    if any(p == text or (p.endswith("xx") and p[0] == text[0]) for p in ok):
        return "ok"
    return "http_5xx" if 500 <= status <= 599 else "http_4xx"


def is_healthy(sample: ProbeSample) -> bool:
    """Evidence of health: only an ``ok`` answer."""
    return sample.result == "ok"


def is_failing(sample: ProbeSample, failure_results: Iterable[str]) -> bool:
    """Evidence of a failure: a result named in ``failure_results``."""
    return sample.result in failure_results


@dataclass(frozen=True)
class WindowVerdict:
    """The answer to "is the failure sustained?" with the evidence that produced it."""

    sustained: bool
    total: int
    failing: int
    ratio: float
    first_failure_ts: float | None
    reason: str
    samples: tuple[ProbeSample, ...]

    def evidence(self) -> dict[str, object]:
        return {
            "sustained": self.sustained, "total": self.total, "failing": self.failing,
            "ratio": round(self.ratio, 3), "first_failure_ts": self.first_failure_ts,
            "reason": self.reason,
            "samples": [[round(s.ts, 3), s.target, s.result, s.status] for s in self.samples],
        }


def assess_window(samples: Iterable[ProbeSample], *, now: float, window_seconds: float,
                  min_samples: int, error_ratio: float, failure_results: Iterable[str],
                  ignore_before: float | None = None) -> WindowVerdict:
    """Decide whether failures are sustained over the last ``window_seconds``.

    Sustained means: at least ``min_samples`` samples in the window (after ``ignore_before``,
    e.g. a deploy's grace period), a failing share of at least ``error_ratio``, and the newest
    sample not healthy — a window whose newest answer is ``ok`` is recovering, not a reason to
    act; a newest timeout, refused connection or 5xx is no recovery, whichever of them count.
    """
    failing_kinds = frozenset(failure_results)
    start = now - window_seconds
    if ignore_before is not None:
        start = max(start, ignore_before)
    window = tuple(s for s in samples if start <= s.ts <= now)
    failing = [s for s in window if is_failing(s, failing_kinds)]
    total = len(window)
    ratio = len(failing) / total if total else 0.0
    first = min((s.ts for s in failing), default=None)

    def verdict(sustained: bool, reason: str) -> WindowVerdict:
        return WindowVerdict(sustained, total, len(failing), ratio, first, reason, window)

    if total < min_samples:
        return verdict(False, f"only {total} samples in the window, need {min_samples}")
    if ratio < error_ratio:
        return verdict(False, f"{len(failing)}/{total} failing ({ratio:.0%}) is below "
                              f"{error_ratio:.0%}")
    if is_healthy(window[-1]):
        return verdict(False, f"{len(failing)}/{total} failing but the newest probe is ok: "
                              "recovering")
    return verdict(True, f"{len(failing)}/{total} failing ({ratio:.0%}) over "
                         f"{window_seconds:.0f}s, newest {window[-1].result}")
