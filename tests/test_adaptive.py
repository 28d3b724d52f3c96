"""Adaptive repetitions: the stop rule on fake clocks, and the median's confidence interval."""

from __future__ import annotations

import itertools
import random

import pytest

from kvopt.measure.adaptive import StopRule, median_ci, repeat_until_precise


class FakeClock:
    """Advances by a fixed step per measurement, so time caps are deterministic."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += self.step


def _source(clock: FakeClock, values):
    stream = iter(values)

    def run_once():
        clock.tick()
        ttft = next(stream)
        return {"ttft_ms": ttft, "decode_tok_s": 1000.0 / ttft}

    return run_once


def test_low_noise_stops_early_as_precise():
    clock = FakeClock(step=0.1)
    rng = random.Random(0)
    values = (100.0 * (1 + rng.uniform(-0.01, 0.01)) for _ in itertools.count())
    result = repeat_until_precise(_source(clock, values), StopRule(), clock=clock)
    assert result.stopped_because == "precise"
    assert not result.noisy
    assert result.n == 6  # the fewest samples with a 95% interval


def test_high_noise_hits_the_repetition_cap_and_is_flagged():
    clock = FakeClock(step=0.1)
    rng = random.Random(0)
    values = (100.0 * rng.lognormvariate(0.0, 0.5) for _ in itertools.count())
    rule = StopRule(max_repetitions=12, max_seconds=1e9)
    result = repeat_until_precise(_source(clock, values), rule, clock=clock)
    assert result.stopped_because == "max_repetitions (12)"
    assert result.noisy
    assert result.n == 12


def test_slow_runs_hit_the_time_cap():
    clock = FakeClock(step=10.0)
    values = itertools.cycle([100.0, 300.0])
    rule = StopRule(max_repetitions=100, max_seconds=35.0)
    result = repeat_until_precise(_source(clock, values), rule, clock=clock)
    assert result.stopped_because == "max_seconds (35 s)"
    assert result.noisy
    assert result.n == 4


def test_precision_needs_every_metric():
    clock = FakeClock(step=0.1)
    steady = itertools.repeat(50.0)
    jumpy = itertools.cycle([1.0, 10.0])

    def run_once():
        clock.tick()
        return {"ttft_ms": next(steady), "decode_tok_s": next(jumpy)}

    result = repeat_until_precise(run_once, StopRule(max_repetitions=10, max_seconds=1e9), clock=clock)
    assert result.noisy and result.n == 10


@pytest.mark.parametrize(
    "n,low_rank,high_rank,coverage",
    [(6, 1, 6, 0.96875), (10, 2, 9, 0.97852), (20, 6, 15, 0.95861)],
)
def test_median_ci_uses_the_binomial_order_statistics(n, low_rank, high_rank, coverage):
    values = [float(v) for v in range(1, n + 1)]
    random.Random(1).shuffle(values)
    ci = median_ci(values)
    assert (ci.low, ci.high) == (low_rank, high_rank)
    assert ci.coverage == pytest.approx(coverage, abs=1e-5)
    assert ci.median == (n + 1) / 2


def test_median_ci_of_few_values_states_its_real_coverage():
    ci = median_ci([3.0, 1.0, 2.0])
    assert (ci.low, ci.high) == (1.0, 3.0)
    assert ci.coverage == pytest.approx(0.75)
    assert not StopRule(min_repetitions=1).precise([1.0, 1.0, 1.0])  # 75% < 95%
