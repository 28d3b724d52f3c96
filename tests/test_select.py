"""Pareto front, gains and the recommendation on hand-made results."""

from __future__ import annotations

import math

import pytest

from conftest import profile_config
from kvopt.select import Result, gains_pct, pareto_front, profile_score, recommend, slo_violations


def _r(number, ttft, tput, mem, baseline=False):
    return Result(
        number=number,
        params={"n": number},
        label=f"c{number}",
        values={"ttft_ms": ttft, "decode_tok_s": tput, "peak_mem_mb": mem},
        is_baseline=baseline,
    )


BASE = _r(0, 100.0, 50.0, 500.0, baseline=True)
FAST = _r(1, 50.0, 50.0, 500.0)  # dominates the baseline
BIG = _r(2, 200.0, 400.0, 900.0)  # trades TTFT and memory for throughput
WORSE = _r(3, 120.0, 40.0, 600.0)  # dominated by the baseline


def test_front_keeps_only_non_dominated_results():
    front = pareto_front([BASE, FAST, BIG, WORSE])
    assert [r.number for r in front] == [1, 2]


def test_equal_results_do_not_dominate_each_other():
    twin = _r(9, 50.0, 50.0, 500.0)
    assert {r.number for r in pareto_front([FAST, twin])} == {1, 9}


def test_gains_are_positive_when_better():
    gains = gains_pct(FAST, BASE)
    assert gains["ttft_ms"] == pytest.approx(50.0)
    assert gains["decode_tok_s"] == pytest.approx(0.0)
    assert gains_pct(BIG, BASE)["decode_tok_s"] == pytest.approx(700.0)
    assert gains_pct(BIG, BASE)["peak_mem_mb"] == pytest.approx(-80.0)


def test_score_is_a_weighted_log_ratio_and_zero_for_the_baseline():
    weights = {"ttft_ms": 0.5, "decode_tok_s": 0.5, "peak_mem_mb": 0.0}
    assert profile_score(BASE, BASE.values, weights) == 0.0
    assert profile_score(FAST, BASE.values, weights) == pytest.approx(0.5 * math.log(2))


def test_recommendation_follows_the_profile_weights():
    latency = profile_config("ci-micro", weights={"ttft_ms": 1.0, "decode_tok_s": 0.0, "peak_mem_mb": 0.0})
    throughput = profile_config("ci-micro", weights={"ttft_ms": 0.0, "decode_tok_s": 1.0, "peak_mem_mb": 0.0})
    results = [BASE, FAST, BIG, WORSE]
    assert recommend(results, latency).result.number == 1
    assert recommend(results, throughput).result.number == 2


def test_recommendation_never_breaks_an_slo():
    profile = profile_config(
        "ci-micro",
        weights={"ttft_ms": 0.0, "decode_tok_s": 1.0, "peak_mem_mb": 0.0},
        slo={"max_ttft_ms": 150.0, "min_decode_tok_s": None, "max_mem_mb": None},
    )
    rec = recommend([BASE, FAST, BIG, WORSE], profile)
    assert rec.result.number == 1  # BIG has the throughput but breaks max_ttft_ms
    assert rec.meets_slo
    assert slo_violations(BIG.values, profile.slo) == ["TTFT 200.0 ms > 150 ms"]


def test_no_candidate_meeting_the_slos_is_said_plainly():
    profile = profile_config("ci-micro", slo={"max_ttft_ms": 1.0, "min_decode_tok_s": None, "max_mem_mb": None})
    rec = recommend([BASE, FAST, BIG], profile)
    assert not rec.meets_slo
    assert "no measured candidate meets" in rec.note


def test_without_a_baseline_there_are_no_gains():
    rec = recommend([FAST, BIG], profile_config("ci-micro"))
    assert rec.gains_pct is None
    assert "baseline was not measured" in rec.note
