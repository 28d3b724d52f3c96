"""Confirmation: interleaved finalists, paired gains with a CI, and following confirmed numbers."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from kvopt.config import validate
from kvopt.confirm import confirmed_gains, round_seconds, within_budget
from kvopt.engine.workload import Workload
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


def test_a_finalists_round_is_estimated_from_its_trial_medians_on_every_shape():
    # 1 s to the first token at 768 prompt tokens, 20 tok/s at batch 2 (10 calls/s per row).
    r = _result(1, 1000.0, 20.0, batch=2)
    trial = Workload(768, 256)
    assert round_seconds(r, trial, [trial]) == pytest.approx(1.0 + 255 / 10)
    both = round_seconds(r, trial, [trial, Workload(512, 512)])
    assert both == pytest.approx(1.0 + 255 / 10 + 512 / 768 + 511 / 10)


def test_the_budget_keeps_the_recommendation_and_the_baseline_and_then_what_fits():
    rec, close, far, base = _result(3, 1, 1), _result(5, 1, 1), _result(7, 1, 1), _result(0, 1, 1, baseline=True)
    cost = {3: 10.0, 5: 4.0, 7: 2.0, 0: 10.0}
    kept, notes = within_budget([rec, close, far, base], lambda r: cost[r.number], per_round_s=25.0)
    # 3 and 0 always (20 s); 5 fits (24 s); 7 does not (26 s).
    assert [r.number for r in kept] == [3, 5, 0] and len(notes) == 1 and notes[0].startswith("#7 c7 not confirmed")
    # Nothing ranked below a finalist left out is added, even one that would fit (7 alone: 22 s).
    kept, notes = within_budget([rec, close, far, base], lambda r: cost[r.number], per_round_s=23.0)
    assert [r.number for r in kept] == [3, 0] and [n[:3] for n in notes] == ["#5 ", "#7 "]
    # The recommendation may be the baseline itself: it stays first.
    kept, _ = within_budget([base, close], lambda r: cost[r.number], per_round_s=100.0)
    assert [r.number for r in kept] == [0, 5]


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
                    "measure.adaptive=false",
                    "search_space.dtype=[float32]",
                    f"storage.url=sqlite:///{tmp_path / 'kvopt.db'}",
                ],
            )
        )
    result = tune(cfg, output_dir=tmp_path / "out")
    confirmation = result.confirmation
    assert confirmation is not None and confirmation.rounds == 6
    assert any(r.is_baseline for r in confirmation.finalists)
    for samples in confirmation.samples.values():
        assert len(samples["ttft_ms"]) == 6
    rec = result.recommendation
    assert rec.confirmed_rounds == 6
    assert rec.result.number == confirmation.recommended.number
    for metric in ("ttft_ms", "decode_tok_s"):
        ci = rec.gains_ci[metric]
        assert ci["ci_low"] <= ci["pct"] <= ci["ci_high"]
        assert ci["ci_coverage"] >= 0.95
    import json

    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert payload["confirmation"]["rounds"] == 6
    assert payload["recommendation"]["gains_ci"]["ttft_ms"]["ci_coverage"] >= 0.95
