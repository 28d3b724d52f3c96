"""The quality guard: exact-by-construction rules, bounds, fidelity on a real trained model, the study.

The model is tests/data/tiny-shakespeare (scripts/make_tiny_model.py): a two-layer GPT-2
trained on the text kvopt ships, saved with its tokenizer, loaded as a user's folder is.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from rich.console import Console
from transformers import AutoModelForCausalLM, DynamicCache

import kvopt
from conftest import REPO, model_config, transformers_engine
from kvopt.attrs import FIDELITY_ATTR, QUALITY_ATTR, Failure
from kvopt.config import QualityConfig
from kvopt.engines.transformers.candidate import Candidate, transformers_space
from kvopt.engines.transformers.fidelity import TransformersFidelityMeter as FidelityMeter
from kvopt.engines.transformers.fidelity import fidelity_prompts
from kvopt.engines.transformers.loading import ModelLoader
from kvopt.engines.transformers.source import resolve_model
from kvopt.errors import ConfigError
from kvopt.measure.fidelity import Reference, compare
from kvopt.quality import CHECKED, EXACT, LOSSY, QUALITY, UNVERIFIED, Fidelity, excess, plan_quality, violations
from kvopt.sampler import read_study

TRAINED = REPO / "tests" / "data" / "tiny-shakespeare"
BASE = Candidate("dynamic", "sdpa", "float32", 1)
FP8 = Candidate("quantized", "sdpa", "float32", 1, quantized_backend="fp8")


def _trained_model():
    data = model_config("tiny-gpt2")
    return type(data)(**{**data.__dict__, "hub_id": str(TRAINED), "weights": "pretrained"})


@pytest.fixture(scope="module")
def meter() -> FidelityMeter:
    model_cfg = _trained_model()
    source = resolve_model(model_cfg)  # the folder's own config.json and weights
    loader = ModelLoader(source.model, source.weights, torch.device("cpu"), 0)
    return FidelityMeter(loader, BASE, QualityConfig(new_tokens=16), prompt_tokens=32, new_tokens=16)


def test_exact_lossy_and_checked_candidates_are_told_apart():
    cfg = QualityConfig()
    static_eager = Candidate("static", "eager", "float32", 4)
    assert plan_quality(static_eager, BASE, "pretrained", cfg).kind == EXACT
    assert not plan_quality(static_eager, BASE, "pretrained", cfg).measure
    assert plan_quality(FP8, BASE, "pretrained", cfg).kind == LOSSY
    assert plan_quality(Candidate("dynamic", "sdpa", "bfloat16", 1), BASE, "pretrained", cfg).measure
    compiled = Candidate("static", "sdpa", "float32", 1, compile=True)
    assert plan_quality(compiled, BASE, "pretrained", cfg).kind == CHECKED
    # An upcast is a different numeric path, not a lossy one.
    assert (
        plan_quality(
            Candidate("dynamic", "sdpa", "float32", 1), Candidate("dynamic", "sdpa", "bfloat16", 1), "pretrained", cfg
        ).kind
        == CHECKED
    )


def test_random_weights_block_lossy_candidates_unless_allowed():
    blocked = plan_quality(FP8, BASE, "random", QualityConfig())
    assert blocked.kind == UNVERIFIED and not blocked.measure
    assert blocked.blocked is not None and blocked.blocked.startswith("quality not measured: random weights")
    assert "quality.allow_unverified=true" in blocked.blocked
    allowed = plan_quality(FP8, BASE, "random", QualityConfig(allow_unverified=True))
    assert allowed.blocked is None and not allowed.measure and "allow_unverified" in allowed.note
    # Not lossy by design: unverified, but never blocked.
    compiled = Candidate("static", "sdpa", "float32", 1, compile=True)
    assert plan_quality(compiled, BASE, "random", QualityConfig()).blocked is None


def test_bounds_give_reasons_and_a_constraint_value():
    close = Fidelity(1.0, None, None, None, mean_kl=0.001, p99_kl=0.01, prompts=4, prompt_tokens=32, new_tokens=8)
    far = Fidelity(0.25, 3, True, False, mean_kl=0.05, p99_kl=0.3, prompts=4, prompt_tokens=32, new_tokens=8)
    cfg = QualityConfig()
    assert violations(close, cfg) == [] and excess(close, cfg) <= 0
    assert violations(far, cfg) == [
        "mean KL 0.05 > quality.max_mean_kl 0.01",
        "token agreement 0.250 < quality.min_token_agreement 0.5",
    ]
    assert excess(far, cfg) == pytest.approx(4.0)  # five times the KL bound
    assert violations(far, QualityConfig(max_mean_kl=None, min_token_agreement=None)) == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["quality.max_mean_kl=-1"], "quality.max_mean_kl: got -1; allowed: null (no bound) or a number >= 0"),
        (["quality.min_token_agreement=2"], "quality.min_token_agreement: got 2; allowed: null (no bound)"),
        (["quality.allow_unverified=maybe"], "quality.allow_unverified: got 'maybe'; allowed: true or false"),
        (["quality.prompts=/no/such.txt"], "quality.prompts: got '/no/such.txt'; allowed: null"),
        (["+profile.quality.max_kl=1"], "profile.quality: got {'max_kl': 1}; allowed: a mapping of max_mean_kl"),
    ],
)
def test_bad_quality_settings_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as err:
        kvopt.compose_config(["model=tiny-gpt2", *overrides])
    assert len(err.value.problems) == 1 and err.value.problems[0].startswith(message), err.value.problems


def test_a_profile_sets_its_own_bounds():
    cfg = kvopt.compose_config(
        ["model=tiny-gpt2", "quality.max_mean_kl=0.02", "+profile.quality.min_token_agreement=1"]
    )
    assert (cfg.quality.max_mean_kl, cfg.quality.min_token_agreement) == (0.02, 1.0)


def test_prompts_are_real_text_windows_of_the_profile_length():
    prompts = fidelity_prompts(_trained_model(), QualityConfig(n_prompts=3), 24, local_only=True)
    assert prompts.shape == (3, 24) and len({tuple(p.tolist()) for p in prompts}) == 3


def test_the_same_settings_agree_exactly_and_fp8_has_a_measured_kl(meter: FidelityMeter):
    same = meter.measure(BASE)
    assert same.token_agreement == 1.0 and same.first_divergence is None and same.mean_kl == pytest.approx(0, abs=1e-9)
    fp8 = meter.measure(FP8)
    assert 0 < fp8.mean_kl < QualityConfig().max_mean_kl and fp8.p99_kl >= fp8.mean_kl
    assert fp8.prompts == 4 and (fp8.prompt_tokens, fp8.new_tokens) == (32, 16) and fp8.seconds > 0


class _ZeroHalfTheKeys(DynamicCache):
    """A deliberately broken cache (test only): the cached keys of half the heads read back as zeros."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        keys = keys.clone()
        keys[:, : keys.shape[1] // 2] = 0
        return keys, values


@torch.inference_mode()
def _run_with_cache(model, prompts: torch.Tensor, new_tokens: int, force: torch.Tensor | None) -> Reference:
    from kvopt.engines.transformers.fidelity import _ForceTokens  # the same forcing the meter uses

    processors = [_ForceTokens(force, prompts.shape[1])] if force is not None else []
    out = model.generate(
        input_ids=prompts,
        attention_mask=torch.ones_like(prompts),
        cache=_ZeroHalfTheKeys(config=model.config),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
        logits_processor=processors,
        output_logits=True,
        return_dict_in_generate=True,
    )
    return Reference(out.sequences[:, prompts.shape[1] :], torch.stack([s.float() for s in out.logits], dim=1))


def test_a_degraded_cache_is_over_the_default_bounds(meter: FidelityMeter):
    reference = meter.reference()
    model = AutoModelForCausalLM.from_pretrained(TRAINED, dtype=torch.float32, attn_implementation="sdpa")
    prompts = meter.prompts()
    free = _run_with_cache(model, prompts, meter.new_tokens, None)
    forced = _run_with_cache(model, prompts, meter.new_tokens, reference.tokens)
    broken = compare(reference, free, forced)
    reasons = violations(broken, QualityConfig())
    # On this small model greedy tokens may still agree: the KL sees the damage.
    assert broken.mean_kl > 10 * QualityConfig().max_mean_kl, broken
    assert reasons and reasons[0].startswith("mean KL"), broken


def _study(tmp_path: Path, console: Console, *extra: str):
    """A grid study on the trained model: dynamic and fp8 caches, float32 and bfloat16, batch 1."""
    return kvopt.tune(
        [
            "model=tiny-gpt2",
            f"model.hub_id={TRAINED}",
            "model.weights=pretrained",
            "profile=ci-micro",
            "sampler=grid",
            "search_space.cache_implementation=[dynamic,quantized]",
            "search_space.attn_implementation=[sdpa]",
            "search_space.dtype=[float32,bfloat16]",
            "search_space.batch_size=[1]",
            "search_space.quantized.backends=[fp8]",
            "measure.adaptive=false",
            "confirm.rounds=0",
            "pruning.dominated=false",
            f"storage.url=sqlite:///{tmp_path / 's.db'}",
            f"scale.lock_dir={tmp_path}",
            *extra,
        ],
        output_dir=tmp_path / "out",
        console=console,
    )


def test_a_study_times_what_is_within_the_bound_and_rejects_the_rest(tmp_path: Path, meter: FidelityMeter):
    # The study's workload is ci-micro's (32 + 8 tokens): measure the same outside it first, and
    # put the bound between fp8's KL and bfloat16's, so one lossy setting passes and one does not.
    study_meter = FidelityMeter(meter.loader, BASE, QualityConfig(), prompt_tokens=32, new_tokens=8)
    fp8, bf16 = study_meter.measure(FP8), study_meter.measure(Candidate("dynamic", "sdpa", "bfloat16", 1))
    assert 0 < fp8.mean_kl < bf16.mean_kl, (fp8, bf16)
    bound = (fp8.mean_kl * bf16.mean_kl) ** 0.5
    console = Console(record=True, width=200)
    result = _study(tmp_path, console, f"+profile.quality.max_mean_kl={bound}", "study.n_trials=6")
    out = console.export_text()
    study = optuna.load_study(study_name=result.study_name, storage=f"sqlite:///{tmp_path / 's.db'}")

    rejected = [t for t in study.trials if t.user_attrs.get("failure") == Failure.QUALITY]
    assert sorted(t.user_attrs["candidate"] for t in rejected) == [
        "dynamic/sdpa/bfloat16/b1",
        "quantized-fp8/sdpa/bfloat16/b1",
    ], out
    for t in rejected:
        assert t.state == optuna.trial.TrialState.PRUNED and t.constraints[QUALITY] > 0
        assert t.user_attrs["reason"].startswith("over the quality bounds: mean KL")
        assert FIDELITY_ATTR in t.user_attrs and "ttft_ms_stats" not in t.user_attrs  # never timed
        assert f"#{t.number} {t.user_attrs['candidate']}: pruned: over the quality bounds" in out
    assert {r.label for r in result.results} == {"dynamic/sdpa/float32/b1", "quantized-fp8/sdpa/float32/b1"}
    space = transformers_space(["dynamic", "quantized"], ["sdpa"], ["float32", "bfloat16"], [1], baseline=BASE)
    assert len(read_study(study, space).cannot_run) == 2  # kvopt's sampler never proposes them again
    # Nor the same outputs at another batch size (Candidate.fidelity_params): never measured, still out.
    wider = transformers_space(["dynamic", "quantized"], ["sdpa"], ["float32", "bfloat16"], [1, 4], baseline=BASE)
    assert len(read_study(study, wider).cannot_run) == 4

    # Within the bound: timed, with its fidelity (the same as measured outside) beside its speed.
    timed = next(r for r in result.results if r.label == FP8.label)
    assert Fidelity.from_dict(timed.user_attrs[FIDELITY_ATTR]).mean_kl == pytest.approx(fp8.mean_kl)
    assert timed.user_attrs["setup_s"] >= timed.user_attrs[FIDELITY_ATTR]["seconds"] > 0
    assert timed.user_attrs["constraints"][QUALITY] <= 0
    assert f"{FP8.label}: ttft" in out and "quality: agree 1.00, KL" in out
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    stored = next(t for t in payload["trials"] if t["number"] == timed.number)
    assert stored["user_attrs"][FIDELITY_ATTR] == timed.user_attrs[FIDELITY_ATTR]
    assert result.recommendation is not None
    settings = yaml.safe_load((tmp_path / "out" / "recommended.yaml").read_text())
    assert settings["recommended"]["quality"]["kind"] in (EXACT, LOSSY)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "over the quality bounds: mean KL" in report


def test_random_weights_say_so_and_lossy_needs_allow_unverified(tmp_path: Path):
    args = [
        "model=tiny-gpt2",
        "profile=ci-micro",
        "sampler=grid",
        "search_space.cache_implementation=[dynamic,quantized]",
        "search_space.attn_implementation=[sdpa]",
        "search_space.dtype=[float32]",
        "search_space.batch_size=[1]",
        "search_space.quantized.backends=[fp8]",
        "measure.adaptive=false",
        "confirm.rounds=0",
        f"scale.lock_dir={tmp_path}",
    ]
    console = Console(record=True, width=200)
    blocked = kvopt.tune([*args, f"storage.url=sqlite:///{tmp_path / 'a.db'}"], console=console)
    assert [r.label for r in blocked.results] == ["dynamic/sdpa/float32/b1"]
    # Dropped before the study, with the guard's reason: no trial is spent on it.
    assert (
        "dropped       cache_implementation=quantized: quality not measured: random weights (quantized KV cache (fp8))"
        in console.export_text()
    )
    assert [o.candidate.label for o in blocked.outcomes] == ["dynamic/sdpa/float32/b1"]
    allowed = kvopt.tune(
        [*args, f"storage.url=sqlite:///{tmp_path / 'b.db'}", "quality.allow_unverified=true"],
        output_dir=tmp_path / "out",
        console=Console(record=True, width=200),
    )
    fp8 = next(r for r in allowed.results if r.label.startswith("quantized"))
    assert fp8.user_attrs[QUALITY_ATTR]["kind"] == UNVERIFIED and FIDELITY_ATTR not in fp8.user_attrs
    report = (tmp_path / "out" / "report.md").read_text()
    assert "quality: not measured: random weights" in report


@pytest.mark.slow
def test_an_isolated_trial_measures_fidelity_in_its_own_process(meter: FidelityMeter):
    from kvopt.isolation import FidelityJob, run_fidelity_isolated

    job = FidelityJob(
        transformers_engine(meter.loader.model_cfg, meter.loader.source.kind), FP8, BASE, QualityConfig(), 32, 16, 0
    )
    isolated = run_fidelity_isolated(job, timeout_s=300)
    # Another process may pick other kernels and thread counts (reduction order): measured
    # 2026-12, fp8's mean KL moved up to 1.0% between ATen's AVX-512, AVX2 and plain kernels
    # (0.55% child vs parent on AMD EPYC), not at all between 1 and 2 threads. 5% covers that;
    # the baseline against itself (0) or bfloat16 (~9x) stay far outside it (docs/quality.md).
    assert isolated.mean_kl == pytest.approx(meter.measure(FP8).mean_kl, rel=0.05)
