"""Shared-prefix reuse: the prefix cache filled once, copied per call, offered only where requests share one."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import model_config, profile_config, transformers_engine
from kvopt.config import SearchSpaceConfig, validate
from kvopt.engines.transformers.candidate import Candidate, space_from_config, transformers_space
from kvopt.engines.transformers.generation import timed_generate
from kvopt.engines.transformers.loading import ModelLoader, WeightsSource
from kvopt.engines.transformers.predict import predict_memory
from kvopt.engines.transformers.prefix import cache_argument, prefill_prefix, prepare_prefix
from kvopt.engines.transformers.workload import Workload, make_inputs
from kvopt.errors import ConfigError
from kvopt.paths import conf_dir
from kvopt.protocol import measure_candidate
from kvopt.quality import EXACT, classify
from kvopt.workload import make_mix

CPU = torch.device("cpu")
BASE = Candidate("dynamic", "sdpa", "float32", 1)
REUSE = Candidate("dynamic", "sdpa", "float32", 2, prefix_reuse=True)
SHAPE = Workload(24, 6, shared_prefix_tokens=16)
ENGINE = transformers_engine()


@pytest.fixture(scope="module")
def model():
    loader = ModelLoader(model_config("tiny-gpt2"), WeightsSource("random", "test"), CPU, 0)
    return loader.get("float32", "sdpa")[0].model


def test_generation_from_the_reused_prefix_equals_a_whole_prefill(model):
    inputs = make_inputs(SHAPE, 2, model.config.vocab_size, 0, CPU)
    ids = inputs["input_ids"]
    assert torch.equal(ids[0, :16], ids[1, :16]) and not torch.equal(ids[0, 16:], ids[1, 16:])
    one = make_inputs(SHAPE, 1, model.config.vocab_size, 0, CPU)["input_ids"]  # a row shares with itself
    assert torch.equal(one[0], ids[0])
    prefix = prefill_prefix(model, ids, 16, CPU)
    greedy = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.inference_mode():
        whole = model.generate(**inputs, **greedy)
        for _ in range(2):  # twice: the kept cache is copied, never changed by a call
            reused = model.generate(**inputs, **greedy, **{cache_argument(model): prefix.for_batch(2)})
            assert torch.equal(whole, reused)
    assert prefix.cache.get_seq_length() == 16 and prefix.nbytes > 0


def test_a_timed_call_starts_from_the_prefix_and_keeps_it(model):
    inputs = make_inputs(SHAPE, 2, model.config.vocab_size, 0, CPU)
    prefix = prepare_prefix(model, REUSE, SHAPE, inputs, CPU)
    assert prefix is not None and prepare_prefix(model, BASE, SHAPE, inputs, CPU) is None
    run = timed_generate(model, inputs, REUSE, 6, CPU, prefix=prefix)
    # The call's own cache holds the whole sequence; the kept prefix is untouched.
    assert run.new_tokens == 6 and run.cache.get_seq_length() == 24 + 6 - 1
    assert prefix.cache.get_seq_length() == 16
    with pytest.raises(ValueError, match="reuses the shared prefix"):
        timed_generate(model, inputs, REUSE, 6, CPU)
    with pytest.raises(ValueError, match="needs a prompt longer than it"):
        prefill_prefix(model, inputs["input_ids"], 24, CPU)


def test_a_measured_prefix_candidate_counts_the_kept_cache_and_records_the_prefill(model):
    loader = ModelLoader(model_config("tiny-gpt2"), WeightsSource("random", "test"), CPU, 0)
    loaded = loader.get("float32", "sdpa")[0]
    reuse = measure_candidate(ENGINE, loaded, REUSE, SHAPE, warmup=1, repetitions=2, seed=0)
    plain = measure_candidate(
        ENGINE, loaded, Candidate("dynamic", "sdpa", "float32", 2), SHAPE, warmup=1, repetitions=2, seed=0
    )
    attrs = reuse.to_attrs()
    assert attrs["prefix_tokens"] == 16 and attrs["prefix_cache_mb"] > 0 and attrs["prefix_prefill_s"] > 0
    assert "prefix_tokens" not in plain.to_attrs()
    assert reuse.memory.details["resident_bytes"] > plain.memory.details["resident_bytes"]


def test_the_space_offers_prefix_reuse_only_where_requests_share_a_prefix():
    cfg = SearchSpaceConfig(
        name="t",
        cache_implementation=("dynamic", "static"),
        attn_implementation=("sdpa",),
        dtype=("float32",),
        batch_size=(1, 2),
        prefix_reuse=(False, True),
    )
    without = space_from_config(cfg, BASE, {}, prefix_share=0.0)
    assert not without.offers("prefix_reuse", True) and "prefix_reuse" not in without.all_choices()
    assert "share no prefix" in without.dropped["prefix_reuse=True"]
    assert without.size == 4 and without.baseline.params() == BASE.params()  # as before the option existed

    space = space_from_config(cfg, BASE, {}, prefix_share=500 / 768)
    assert space.offers("prefix_reuse", True) and space.size == 6  # dynamic x {reuse, not} + static, x 2 batches
    assert space.baseline.prefix_reuse is False and space.baseline.params()["prefix_reuse"] is False
    labels = {c.label for c in space.candidates()}
    assert "dynamic+prefix/sdpa/float32/b2" in labels and "static/sdpa/float32/b1" in labels
    for c in space.candidates():
        assert Candidate.from_params(c.params()) == c
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(space.all_choices(), seed=0))
    seen = {space.suggest(study.ask()).label for _ in range(12)}
    assert "dynamic+prefix/sdpa/float32/b1" in seen
    assert (
        classify(
            Candidate("dynamic", "sdpa", "float32", 1, prefix_reuse=True), Candidate("dynamic", "sdpa", "float32", 1)
        )[0]
        == EXACT
    )


def test_the_mix_gives_every_shape_one_prefix_ending_before_its_shortest_prompt():
    mix = make_mix(profile_config("chat-agent"), model_config("gpt2"))
    shortest = min(w.prompt_tokens for w in mix.shapes)
    assert mix.shared_prefix_tokens == shortest - 1
    assert {w.shared_prefix_tokens for w in mix.shapes} == {shortest - 1}
    # 2000 of 2048 kept at its share of the trials' clamped 960-token prompt (938), then cut below 768.
    assert any("shared prefix scaled from 2000 to 938" in note for note in mix.notes)
    assert any("shared prefix clamped from 938 to 767" in note for note in mix.notes)
    assert make_mix(profile_config("ci-micro"), model_config("gpt2")).trial.shared_prefix_tokens == 0


def test_the_memory_model_keeps_the_prefix_and_prefills_the_rest():
    gpt2 = model_config("gpt2")
    shape = Workload(768, 256, shared_prefix_tokens=500)
    plain = predict_memory(gpt2, Candidate("dynamic", "eager", "float32", 1), shape)
    reuse = predict_memory(gpt2, Candidate("dynamic", "eager", "float32", 1, prefix_reuse=True), shape)
    per_token = 12 * 2 * 12 * 64 * 4  # gpt2: 12 layers, K and V, 12 heads of 64, float32
    assert reuse.kv_bytes - plain.kv_bytes == 500 * per_token
    assert reuse.activation_bytes < plain.activation_bytes


def test_a_prefix_reuse_setting_that_is_not_true_or_false_is_refused():
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3", job_name="kvopt"):
        shipped = validate(compose(config_name="config"))
        assert shipped.search_space.prefix_reuse == (False, True)
        with pytest.raises(ConfigError) as info:
            validate(compose(config_name="config", overrides=["search_space.dynamic.prefix_reuse=[sometimes]"]))
    assert "search_space.dynamic.prefix_reuse: got ['sometimes']; allowed: a list of true/false" in str(info.value)


def test_the_search_tries_prefix_reuse_early_where_the_prefix_is_most_of_the_prompt():
    # The performance model's prior: reuse leaves (1 - share) of the prompt to prefill, so
    # TTFT is expected to fall in proportion; the data overrule it once it is measured.
    from optuna.trial import create_trial

    from kvopt.sampler import ProfileSampler
    from kvopt.surrogate import CandidateEncoder

    base = Candidate("dynamic", "sdpa", "float32", 1, prefix_reuse=False)
    space = transformers_space(
        cache_implementation=["dynamic", "static"],
        attn_implementation=["sdpa", "eager"],
        dtype=["float32"],
        batch_size=[1, 2, 4],
        baseline=base,
        prefix_reuse=[False, True],
        prefix_share=500 / 768,
    )
    encoder = CandidateEncoder(space)
    mean = encoder.prior_mean("ttft_ms")
    assert mean[encoder.names.index("cache=dynamic+prefix")] == pytest.approx(math.log(268 / 768))
    assert encoder.prior_mean("decode_tok_s")[encoder.names.index("cache=dynamic+prefix")] == 0.0
    study = optuna.create_study(directions=["minimize", "maximize", "minimize"])
    study.add_trial(
        create_trial(
            params=base.params(),
            distributions={k: v for k, v in space.distributions().items() if k in base.params()},
            values=[1000.0, 15.0, 580.0],
            user_attrs={"baseline": True},
        )
    )
    # Early: among the first three proposals, each other one measured as no better than the baseline.
    sampler = ProfileSampler(space, profile_config("rag"), seed=0)
    proposed = []
    for number in range(1, 4):
        choice = sampler.choose(study, number)
        assert choice is not None
        proposed.append(choice[0])
        if choice[0].prefix_reuse:
            break
        params = choice[0].params()
        distributions = {k: v for k, v in space.distributions().items() if k in params}
        study.add_trial(create_trial(params=params, distributions=distributions, values=[1000.0, 15.0, 580.0]))
    assert proposed[-1].prefix_reuse is True, [c.label for c in proposed]
