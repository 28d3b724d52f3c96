"""Confirmation: interleaved finalists, paired gains with a CI, and following confirmed numbers."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from kvopt.config import validate
from kvopt.confirm import confirmed_gains
from kvopt.paths import conf_dir
from kvopt.runner import tune


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
