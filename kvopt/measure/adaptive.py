"""Adaptive repetitions: measure until the median is known precisely enough, or a cap.

The confidence interval of a median is distribution-free: for n samples, the k-th
smallest and k-th largest values bracket the true median with probability
``1 − 2·P(Binomial(n, ½) < k)``. No normality is assumed (timings are skewed). A 95%
interval needs at least 6 samples; with fewer, the interval is [min, max] at the
coverage it really has, and the rule never calls that precise.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["StopRule", "MedianCI", "median_ci", "AdaptiveResult", "repeat_until_precise", "repeat_fixed"]


@dataclass(frozen=True)
class MedianCI:
    """A median with its distribution-free confidence interval (order statistics) and the interval's coverage."""

    median: float
    low: float
    high: float
    coverage: float  # the interval's true coverage probability

    @property
    def rel_half_width(self) -> float:
        """Half the interval's width relative to the median (0.05 = ±5%)."""
        return (self.high - self.low) / 2.0 / abs(self.median) if self.median else math.inf


def _binom_cdf_half(n: int, k: int) -> float:
    """P(Binomial(n, 1/2) <= k)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n


def median_ci(values: Sequence[float], confidence: float = 0.95) -> MedianCI:
    """Order-statistic confidence interval of the median (widest coverage if n is small)."""
    if not values:
        raise ValueError("median_ci of no values")
    ordered = sorted(values)
    n = len(ordered)
    alpha = 1.0 - confidence
    # The largest k (1-based rank) whose interval [x_k, x_{n-k+1}] still covers >= confidence.
    k = 1
    while k + 1 <= (n + 1) // 2 and 2.0 * _binom_cdf_half(n, k) <= alpha:
        k += 1
    coverage = 1.0 - 2.0 * _binom_cdf_half(n, k - 1)
    return MedianCI(
        median=statistics.median(ordered),
        low=ordered[k - 1],
        high=ordered[n - k],
        coverage=coverage,
    )


@dataclass(frozen=True)
class StopRule:
    """When to stop repeating: precise enough, or a cap on repetitions or seconds."""

    rel_precision: float = 0.05
    min_repetitions: int = 6
    max_repetitions: int = 30
    max_seconds: float = 60.0
    confidence: float = 0.95

    def precise(self, values: Sequence[float]) -> bool:
        """Whether ``values`` pin the median down to ``rel_precision`` at ``confidence``."""
        if len(values) < self.min_repetitions:
            return False
        ci = median_ci(values, self.confidence)
        return ci.coverage >= self.confidence and ci.rel_half_width <= self.rel_precision


@dataclass
class AdaptiveResult:
    """Repeated measurements of several metrics and why the repetitions stopped."""

    samples: dict[str, list[float]] = field(default_factory=dict)
    stopped_because: str = ""
    noisy: bool = False
    seconds: float = 0.0
    # Set when ``check`` ended the repetitions early (e.g. the candidate cannot win).
    pruned_reason: str | None = None

    @property
    def n(self) -> int:
        """Repetitions made (of the first metric; all have the same count)."""
        return len(next(iter(self.samples.values()), []))


Check = Callable[[dict[str, list[float]]], "str | None"]


def repeat_fixed(run_once: Callable[[], dict[str, float]], n: int, check: Check | None = None) -> AdaptiveResult:
    """Exactly ``n`` runs (unless ``check`` ends them early with a reason)."""
    result = AdaptiveResult(stopped_because=f"fixed ({n} runs)")
    for _ in range(n):
        for name, value in run_once().items():
            result.samples.setdefault(name, []).append(value)
        reason = check(result.samples) if check is not None else None
        if reason is not None:
            result.stopped_because = result.pruned_reason = reason
            break
    return result


def repeat_until_precise(
    run_once: Callable[[], dict[str, float]],
    rule: StopRule,
    *,
    clock: Callable[[], float] = time.monotonic,
    check: Check | None = None,
) -> AdaptiveResult:
    """Call ``run_once`` until every metric's median is precise under ``rule``, or a cap.

    ``run_once`` returns one value per metric. A result that hit a cap without the
    precision is flagged ``noisy``. ``clock`` is injectable so the rule can be tested.
    ``check``, called after every run, may end the repetitions early with a reason.
    """
    result = AdaptiveResult()
    start = clock()
    while True:
        for name, value in run_once().items():
            result.samples.setdefault(name, []).append(value)
        result.seconds = clock() - start
        reason = check(result.samples) if check is not None else None
        if reason is not None:
            result.stopped_because = result.pruned_reason = reason
            break
        if all(rule.precise(v) for v in result.samples.values()):
            result.stopped_because = "precise"
            break
        if result.n >= rule.max_repetitions:
            result.stopped_because = f"max_repetitions ({rule.max_repetitions})"
            result.noisy = True
            break
        if result.seconds >= rule.max_seconds and result.n >= 1:
            result.stopped_because = f"max_seconds ({rule.max_seconds:g} s)"
            result.noisy = True
            break
    return result
