"""Confirmation: interleaved finalists, paired gains with a CI, and following confirmed numbers."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from conftest import profile_config, transformers_engine
from kvopt.config import validate
from kvopt.confirm import confirmed_gains, decide, decision_is_clear, separation
from kvopt.engines.transformers.workload import Workload
from kvopt.paths import conf_dir
from kvopt.runner import tune
from kvopt.select import Result


def test_paired_gains_have_a_confidence_interval():
    base = {"ttft_ms": [10.0, 11, 10, 12, 10, 11], "decode_tok_s": [100.0, 90, 100, 95, 100, 98]}
    cand = {"ttft_ms": [5.0, 5.5, 5, 6, 5, 5.5], "decode_tok_s": [200.0, 180, 200, 190, 200, 196]}
    gains = confirmed_gains(cand, base, memory_ratio=0.5)
    assert gains["ttft_ms"].pct == pytest.approx(50.0)
    assert gains["decode_tok_s"].pct == pytest.approx(100.0)
    assert gains["ttft_ms"].low <= 50.0 <= gains["ttft_ms"].high
    assert gains["ttft_ms"].coverage == pytest.approx(0.96875)
    assert gains["peak_mem_mb"].pct == pytest.approx(50.0)
    assert gains["peak_mem_mb"].coverage is None  # memory is measured exactly, not sampled


def _result(number: int, ttft_ms: float, tok_s: float, batch: int = 1, baseline: bool = False) -> Result:
    values = {"ttft_ms": ttft_ms, "decode_tok_s": tok_s, "peak_mem_mb": 100.0}
    return Result(number, {"batch_size": batch}, f"c{number}", values, is_baseline=baseline)


def _scores(**per_finalist: list[float]) -> dict[int, list[float]]:
    """Per-round paired scores by trial number (``f1=[...]``); the baseline, #0, scores 0 every round."""
    scores = {int(k[1:]): v for k, v in per_finalist.items()}
    rounds = len(next(iter(scores.values())))
    return {0: [0.0] * rounds, **scores}


BASE = Result(0, {"cache_implementation": "dynamic", "batch_size": 1}, "base", {}, is_baseline=True)
ONE = Result(1, {"cache_implementation": "dynamic", "batch_size": 2}, "one", {})
TWO = Result(2, {"cache_implementation": "static", "batch_size": 2}, "two", {})
PROFILE = profile_config("ci-micro")


def test_separation_tells_better_worse_equivalent_and_unclear():
    assert separation([0.10, 0.12, 0.11, 0.13, 0.10], 0.02) == "better"
    assert separation([-0.10, -0.12, -0.11, -0.13, -0.10], 0.02) == "worse"
    # Inside the margin is a tie even where it also excludes zero.
    assert separation([0.004, 0.006, 0.005, 0.007, 0.005], 0.02) == "equivalent"
    assert separation([-0.05, 0.06, 0.01, -0.02, 0.03], 0.02) == "unclear"


def test_the_rounds_stop_when_the_decision_is_clear():
    clear = _scores(f1=[0.20, 0.22, 0.21, 0.19, 0.20], f2=[0.001, -0.002, 0.0, 0.003, -0.001])
    assert decision_is_clear(clear, 0, 0.02)  # #1 beats the baseline and #2; #2 ties the baseline
    # #2 overlaps the leader: not clear yet.
    close = _scores(f1=[0.20, 0.22, 0.21, 0.19, 0.20], f2=[0.25, 0.15, 0.23, 0.17, 0.2])
    assert not decision_is_clear(close, 0, 0.02)
    # ... unless the margin calls them a tie.
    assert decision_is_clear(close, 0, 0.1)


def test_no_decision_from_fewer_than_five_rounds():
    scores = _scores(f1=[0.5, 0.6, 0.55, 0.52])  # a large gain, four rounds
    decision = decide([ONE, BASE], scores, BASE, PROFILE, 0.02, 4)
    assert decision.chosen is BASE and not decision.confirmed
    assert "not confirmed: within the budget the rounds (4 of the 5" in decision.notes[-1]
    assert "#1 one" in decision.notes[-1]
    five = _scores(f1=[0.5, 0.6, 0.55, 0.52, 0.58])
    decision = decide([ONE, BASE], five, BASE, PROFILE, 0.02, 5)
    assert decision.chosen is ONE and decision.confirmed


def test_a_tie_inside_the_margin_goes_to_the_fewest_changes():
    # #2 (static, two changes) leads by less than the margin: #1 (one change) is kept.
    scores = _scores(f1=[0.20, 0.21, 0.20, 0.22, 0.21], f2=[0.21, 0.215, 0.21, 0.225, 0.215])
    decision = decide([TWO, ONE, BASE], scores, BASE, PROFILE, 0.02, 5)
    assert decision.chosen is ONE and decision.confirmed and [r.number for r in decision.tie_set] == [2, 1]
    # A gain inside the margin of the baseline is a tie with it: the baseline is kept.
    small = _scores(f1=[0.004, 0.006, 0.005, 0.007, 0.005])
    decision = decide([ONE, BASE], small, BASE, PROFILE, 0.02, 5)
    assert decision.chosen is BASE and decision.confirmed


def test_finalists_the_rounds_cannot_separate_from_the_baseline_are_not_confirmed():
    scores = _scores(f1=[0.05, -0.04, 0.06, -0.03, 0.07])
    decision = decide([ONE, BASE], scores, BASE, PROFILE, 0.02, 5)
    assert decision.chosen is BASE and not decision.confirmed
    assert "could not separate #1 one from the baseline" in " ".join(decision.notes)


@pytest.mark.slow
def test_a_study_ends_with_a_confirmed_recommendation(tmp_path):
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3", job_name="kvopt"):
        cfg = validate(
            compose(
                config_name="config",
                overrides=[
                    "model=tiny-llama",
                    "profile=ci-micro",
                    "study.n_trials=4",
                    "confirm.top_k=2",
                    "confirm.rounds=6",
                    "confirm.equivalence=0",
                    "measure.adaptive=false",
                    # A finalist besides the baseline on every machine: memory alone counts, and
                    # bfloat16 holds half of float32's bytes however fast either runs here.
                    "profile.weights.ttft_ms=0",
                    "profile.weights.decode_tok_s=0",
                    "profile.weights.peak_mem_mb=1",
                    "quality.allow_unverified=true",  # random weights: bfloat16 is timed only so
                    "search_space.dtype=[float32,bfloat16]",
                    "search_space.cache_implementation=[dynamic,static]",
                    "search_space.attn_implementation=[sdpa]",
                    "search_space.batch_size=[1]",  # 4 candidates, 4 trials: each one measured
                    f"scale.lock_dir={tmp_path}",
                    f"storage.url=sqlite:///{tmp_path / 'kvopt.db'}",
                ],
            )
        )
    result = tune(cfg, output_dir=tmp_path / "out")
    confirmation = result.confirmation
    # At least 5 rounds, at most confirm.rounds; it stops at 5 when the decision is clear.
    assert confirmation is not None and 5 <= confirmation.rounds <= 6
    if confirmation.rounds == 5:  # stopped before the cap: only a clear decision does that
        assert confirmation.stopped_because.startswith("the decision is clear and its gains are known")
    assert any(r.is_baseline for r in confirmation.finalists)
    for samples in confirmation.samples.values():
        assert len(samples["ttft_ms"]) == confirmation.rounds
    rec = result.recommendation
    assert rec.confirmed_rounds == (confirmation.rounds if confirmation.confirmed else 0)
    assert rec.result.number == confirmation.recommended.number
    for metric in ("ttft_ms", "decode_tok_s"):
        ci = confirmation.gains[confirmation.finalists[0].number][metric]
        assert ci.low <= ci.pct <= ci.high
        assert ci.coverage >= 0.93  # 5 rounds: [min, max] at 93.75%
    import json

    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert payload["confirmation"]["rounds"] == confirmation.rounds
    assert payload["confirmation"]["confirmed"] == confirmation.confirmed
    assert payload["confirmation"]["tie_set"] == confirmation.tie_set


def _tiny_two_candidate_study(tmp_path, *extra: str):
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3", job_name="kvopt"):
        return validate(
            compose(
                config_name="config",
                overrides=[
                    "model=tiny-gpt2",
                    "profile=ci-micro",
                    "study.n_trials=3",
                    "search_space.cache_implementation=[dynamic]",
                    "search_space.attn_implementation=[sdpa]",
                    "search_space.dtype=[float32]",
                    "search_space.batch_size=[1,4]",
                    "confirm.rounds=5",
                    f"storage.url=sqlite:///{tmp_path / 'kvopt.db'}",
                    *extra,
                ],
            )
        )


@pytest.mark.slow
def test_a_rerun_with_nothing_left_to_measure_only_adds_rounds(tmp_path):
    first = tune(_tiny_two_candidate_study(tmp_path))
    assert first.confirmation is not None and len(first.results) == 2
    before = first.confirmation.rounds
    second = tune(_tiny_two_candidate_study(tmp_path))
    assert second.stopped_because == "nothing left to measure"
    assert len(second.results) == 2  # no trial was added
    confirmation = second.confirmation
    assert confirmation is not None and confirmation.rounds > before
    assert any(n.startswith(f"continues the {before} rounds") for n in confirmation.notes)
    # The stored rounds are kept in front of the new ones, paired as they were.
    for number, samples in first.confirmation.samples.items():
        assert confirmation.samples[number]["ttft_ms"][:before] == samples["ttft_ms"]


@pytest.mark.slow
def test_the_budget_bounds_the_whole_command_and_says_how_it_was_spent(tmp_path, capsys):
    import time

    from rich.console import Console

    cfg = _tiny_two_candidate_study(tmp_path, "study.budget=40s", "confirm.rounds=20", "study.n_trials=10")
    started = time.monotonic()
    result = tune(cfg, console=Console(width=200))
    wall = time.monotonic() - started
    assert wall <= 40 * 1.1
    out = capsys.readouterr().out
    assert "budget        40 s for search and confirmation: trials until 22 s" in out
    assert "of study.budget 40 s" in out and result.wall_s is not None


def test_peak_memory_on_another_shape_is_derived_only_where_the_memory_model_proved_itself():
    from conftest import model_config
    from kvopt.confirm import derived_peak_mb
    from kvopt.engines.transformers.candidate import Candidate
    from kvopt.engines.transformers.predict import predict_memory

    model = model_config("tiny-gpt2")
    trial, other = Workload(64, 40), Workload(40, 64)
    dynamic = Candidate("dynamic", "sdpa", "float32", 2)

    def measured(error_pct: float, candidate: Candidate = dynamic) -> Result:
        return Result(
            1,
            candidate.params(),
            candidate.label,
            {"peak_mem_mb": 10.0},
            user_attrs={"predicted_mem_error_pct": error_pct},
        )

    ratio = predict_memory(model, dynamic, other).total_bytes / predict_memory(model, dynamic, trial).total_bytes
    assert derived_peak_mb(measured(1.5), dynamic, transformers_engine(model), trial, other) == pytest.approx(
        10.0 * ratio
    )
    assert derived_peak_mb(measured(-1.5), dynamic, transformers_engine(model), trial, other) == pytest.approx(
        10.0 * ratio
    )
    # Beyond the error the model showed on the trial's shape, it is measured instead.
    assert derived_peak_mb(measured(2.5), dynamic, transformers_engine(model), trial, other) is None
    assert (
        derived_peak_mb(Result(1, {}, "x", {"peak_mem_mb": 10.0}), dynamic, transformers_engine(model), trial, other)
        is None
    )
    paged = Candidate("paged", "sdpa", "float32", 2)
    assert derived_peak_mb(measured(0.1, paged), paged, transformers_engine(model), trial, other) is None


def test_beyond_the_tolerance_the_full_length_figure_counts():
    from kvopt.confirm import FULL_LENGTH_TOLERANCE, full_length_scale

    assert FULL_LENGTH_TOLERANCE == 0.10
    assert full_length_scale([(105.0, 100.0)]) == 1.0  # +5%: the window stands for the call
    assert full_length_scale([(91.0, 100.0)]) == 1.0
    # One check beyond the tolerance is measured again; only two on the same side count.
    assert full_length_scale([(120.0, 100.0)]) == 1.0
    assert full_length_scale([(120.0, 100.0), (104.0, 100.0)]) == 1.0
    assert full_length_scale([(120.0, 100.0), (80.0, 100.0)]) == 1.0
    assert full_length_scale([(120.0, 100.0), (124.0, 100.0)]) == pytest.approx(200.0 / 244.0)
    assert full_length_scale([(50.0, 100.0), (60.0, 100.0)]) == pytest.approx(200.0 / 110.0)


def test_rounds_go_on_after_a_clear_decision_until_the_gains_are_known():
    from kvopt.confirm import GAIN_PRECISION_PP, gains_precise

    base = {"ttft_ms": [100.0] * 5, "decode_tok_s": [10.0] * 5}
    tight = {"ttft_ms": [80.0, 81, 79, 80, 80.5], "decode_tok_s": [12.0, 12.1, 11.9, 12.0, 12.05]}
    wide = {"ttft_ms": [60.0, 81, 95, 80, 70], "decode_tok_s": [12.0, 12.1, 11.9, 12.0, 12.05]}
    assert GAIN_PRECISION_PP == 5.0
    assert gains_precise(tight, base) and not gains_precise(wide, base)


def test_where_the_full_length_figure_counts_every_finalist_on_that_shape_is_put_on_its_scale():
    from kvopt.confirm import shape_scales

    checks = {
        (0, 0): [(116.0, 100.0), (117.0, 100.0)],  # the baseline at shape 0: +16% twice -> whole calls count
        (2, 0): [(103.0, 100.0)],  # another finalist at shape 0: within the tolerance, scaled all the same
        (0, 1): [(104.0, 100.0)],  # shape 1: nothing counts, nothing scaled
        (2, 1): [(95.0, 100.0)],
    }
    scales = shape_scales(checks)
    assert scales == pytest.approx({(0, 0): 200.0 / 233.0, (2, 0): 100.0 / 103.0})
