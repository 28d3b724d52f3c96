"""Search under every weighting (issue 24): the weightings, and a grid replayed under each."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from kvopt.engines.transformers.candidate import Candidate, transformers_space
from kvopt.metrics import METRICS
from kvopt_bench.replay import ReplayTable, replay_config
from kvopt_bench.weightings import (
    Weighting,
    evaluate_grid,
    random_weightings,
    shipped_weightings,
    targets,
    with_recorded,
    with_weights,
)

REPO = Path(__file__).resolve().parent.parent
BASE = Candidate("dynamic", "sdpa", "float32", 1)
TTFT_FIRST = Weighting("ttft-first", {"ttft_ms": 0.8, "decode_tok_s": 0.1, "peak_mem_mb": 0.1}, "test")
DECODE_FIRST = Weighting("decode-first", {"ttft_ms": 0.1, "decode_tok_s": 0.8, "peak_mem_mb": 0.1}, "test")


def truth(c: Candidate) -> tuple[float, float, float]:
    """A made-up machine where the weights decide: batch buys throughput with TTFT and memory,
    a static cache cuts TTFT and costs memory, eager decodes a little faster."""
    static = c.cache_implementation == "static"
    eager = c.attn_implementation == "eager"
    ttft = 10.0 * c.batch_size**0.5 * (0.8 if static else 1.0) * (1.1 if eager else 1.0)
    tput = 100.0 * c.batch_size**0.9 * (1.05 if eager else 1.0) * (0.97 if static else 1.0)
    mem = 100.0 + 30.0 * c.batch_size * (1.2 if static else 1.0)
    return ttft, tput, mem


def synthetic_grid() -> dict:
    """A 16-candidate grid in record_grid.py's format, five recorded repetitions per candidate."""
    space = transformers_space(
        cache_implementation=["dynamic", "static"],
        attn_implementation=["sdpa", "eager"],
        dtype=["float32"],
        batch_size=[1, 2, 4, 8],
        static_compile=[False],
        baseline=BASE,
    )
    rows = []
    for c in space.candidates():
        ttft, tput, mem = truth(c)
        wobble = [1.0 + 0.01 * k for k in (-2, -1, 0, 1, 2)]
        rows.append(
            {
                "candidate": c.label,
                "params": c.params(),
                "settings": c.as_dict(),
                "baseline": c == BASE,
                "status": "ok",
                "reason": None,
                "ttft_ms": [ttft * w for w in wobble],
                "decode_tok_s": [tput / w for w in wobble],
                "peak_mem_mb": mem,
                "noisy": False,
                "first_call_s": 0.01,
                "warmup_s": 0.01,
                "timed_runs_s": 0.05,
            }
        )
    return {
        "engine": "transformers",
        "model": "tiny-gpt2",
        "profile": "ci-micro",
        "overrides": ["storage=memory"],
        "workload": {"prompt_tokens": 32, "new_tokens": 8, "shared_prefix_tokens": 0, "note": None},
        "profile_config": {"weights": {"ttft_ms": 0.4, "decode_tok_s": 0.4, "peak_mem_mb": 0.2}},
        "space": {
            "knobs": {k.name: list(k.values) for k in space.knobs},
            "baseline_params": BASE.params(),
            "prefix_share": 0.0,
            "dropped": {},
            "size": space.size,
        },
        "rows": rows,
    }


def test_the_shipped_weightings_come_from_the_profiles_and_the_random_ones_from_a_seed() -> None:
    shipped = {w.name: w for w in shipped_weightings(REPO / "conf")}
    # chat-agent and ci-micro weigh alike: one weighting, both names.
    assert "chat-agent=ci-micro" in shipped and {"rag", "longform"} <= set(shipped)
    assert shipped["rag"].weights == {"ttft_ms": 0.35, "decode_tok_s": 0.35, "peak_mem_mb": 0.30}
    drawn = random_weightings(8, seed=0)
    assert drawn == random_weightings(8, seed=0) and drawn != random_weightings(8, seed=1)
    assert len({tuple(w.weights.values()) for w in drawn}) == 8
    for w in [*shipped.values(), *drawn]:
        assert set(w.weights) == set(METRICS) and min(w.weights.values()) >= 0
        assert sum(w.weights.values()) == pytest.approx(1.0, abs=1e-9)
        # A replay's config takes them as a profile's weights (the config checks they sum to 1).
    grid = synthetic_grid()
    assert replay_config(with_weights(grid, drawn[0].weights), "profile").profile.weights == drawn[0].weights
    # The grid's own weights go first, merged with an equal shipped one.
    ours = with_recorded(grid, [TTFT_FIRST, Weighting("same", dict(grid["profile_config"]["weights"]), "test")])
    assert [w.name for w in ours] == ["recorded=same", "ttft-first"]


def test_a_grid_replayed_under_two_weightings_reports_median_and_worst_per_sampler() -> None:
    grid = synthetic_grid()
    tables = {w.name: ReplayTable(with_weights(grid, w.weights)) for w in (TTFT_FIRST, DECODE_FIRST)}
    assert tables["ttft-first"].best_key != tables["decode-first"].best_key  # the weighting moves the best
    report = evaluate_grid(grid, [TTFT_FIRST, DECODE_FIRST], seeds=2, log=lambda line: None)
    size = report["space_size"]
    assert size == 16 and report["seeds"] == 2
    per = report["weightings"]
    assert per["ttft-first"]["best"] != per["decode-first"]["best"]
    for name in ("ttft-first", "decode-first"):
        for sampler in ("profile", "random", "grid"):
            entry = per[name]["samplers"][sampler]
            assert entry["seeds"] == 2
            within = entry["measurements_to_best_within_2pct"]["median"]
            assert within is not None and 1 <= within <= size
        stop = per[name]["convergence_stop"]
        assert stop["runs"] == 2 and 0 <= stop["early"] <= stop["fired"] <= 2
    # Random sampling ignores the weights: one study per seed, the same hypervolume under both.
    assert (
        per["ttft-first"]["samplers"]["random"]["measurements_to_95"]
        == per["decode-first"]["samplers"]["random"]["measurements_to_95"]
    )
    summary = report["summary"]
    for sampler in ("profile", "random", "grid"):
        for figure in ("measurements_to_best_within_2pct", "measurements_to_95"):
            f = summary[sampler][figure]
            medians = [per[w]["samplers"][sampler][figure]["median"] for w in per]
            assert f["worst"] == max(medians) and f["worst_weighting"] in per
            assert f["median_over_weightings"] == pytest.approx(sum(medians) / 2)  # two weightings
    stops = summary["convergence_stop"]
    assert stops["runs"] == 4 and stops["early_share"] == stops["early"] / 4
    checks = targets(summary, per, size)
    assert {"worst_within_2pct_at_most_15pct", "hv95_within_30pct_every_weighting"} <= set(checks)
    assert math.isfinite(checks["hv95_worst_share"])
